"""Confidence far from the data (``eval.ood``): how sure the model is on images that look like nothing.

Nguyen, Yosinski & Clune (2015, "Deep neural networks are easily fooled: high confidence
predictions for unrecognizable images") found networks that give 99.6% confidence to noise-like
images. A classifier that knows what it does not know should give about ``1/K`` confidence far
from its training data; a robust one should at least not be driven to certainty by a few
gradient steps. Two measurements, each over ``n`` images of the data's shape:

* **uniform**: noise drawn uniformly from the data's bounds, ``U[lo, hi]^d``;
* **optimised** (fooling images): each of those noise images moved by ``steps`` signed-gradient
  steps of ``step_size * (hi - lo)`` that raise ``max_k log softmax(f(x))_k`` (the log-probability
  of the class on top, which may change on the way), clipped to the bounds, keeping each image's
  most confident iterate (so it is never below its uniform start).

For each, the mean and largest top-class confidence ``max_k softmax(f(x))_k`` and the share of
images at or above ``threshold`` (0.99 by default). The noise is drawn from the run's seed, so
two runs of one seed see the same images. The model is in eval mode, the input gradients only are
taken (no parameter's ``.grad`` is touched).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from advrun.attacks.base import eval_mode, input_gradient
from advrun.errors import Number, require_int, require_positive

#: The two kinds of images measured, in the order reports show them.
KINDS = ("uniform", "optimised")


@dataclass(frozen=True)
class OutOfDistribution:
    """The ``eval.ood`` settings: ``n`` noise images (0: not measured), ``steps`` signed-gradient
    steps of ``step_size`` (a fraction of the data range) for the fooling images, and the
    confidence ``threshold`` whose share is reported."""

    n: int = 500
    steps: int = 10
    step_size: float = 0.05
    threshold: float = 0.99

    def __post_init__(self) -> None:
        require_int("n", self.n, minimum=0)
        require_int("steps", self.steps, minimum=0)
        require_positive("step_size", self.step_size)
        Number(0, 1, low_open=True, high_open=True).check("threshold", self.threshold)

    @property
    def enabled(self) -> bool:
        return self.n > 0

    def measure(self, model: nn.Module, shape: tuple[int, ...], bounds: tuple[float, float], seed: int,
                batch_size: int, device: torch.device | str = "cpu") -> dict[str, Any]:
        """The record written under ``ood`` in ``metrics.json`` (module docstring)."""
        generator = torch.Generator().manual_seed(seed)
        lo, hi = bounds
        noise = (lo + (hi - lo) * torch.rand((self.n, *shape), generator=generator)).to(device)
        uniform = top_confidence(model, noise, batch_size)
        optimised = fooling_confidence(model, noise, self.steps, self.step_size * (hi - lo), bounds, batch_size)
        record: dict[str, Any] = {"n": self.n, "steps": self.steps, "step_size": self.step_size,
                                  "threshold": self.threshold}
        for kind, confidence in zip(KINDS, (uniform, optimised)):
            record[kind] = summary(confidence, self.threshold)
        return record


def summary(confidence: torch.Tensor, threshold: float) -> dict[str, float]:
    """Mean and largest confidence, and the share at or above ``threshold``."""
    return {"mean_confidence": float(confidence.mean()), "max_confidence": float(confidence.max()),
            "confident_share": float((confidence >= threshold).double().mean())}


def top_confidence(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Per image, the model's largest softmax probability (eval mode, no gradients)."""
    parts = []
    with eval_mode(model), torch.no_grad():
        for start in range(0, len(x), batch_size):
            parts.append(model(x[start:start + batch_size]).softmax(dim=1).amax(dim=1))
    return torch.cat(parts)


def _top_log_probability(model: nn.Module):
    return lambda z: model(z).log_softmax(dim=1).amax(dim=1)


def fooling_confidence(model: nn.Module, x: torch.Tensor, steps: int, step: float, bounds: tuple[float, float],
                       batch_size: int) -> torch.Tensor:
    """Per image of ``x``, the largest top-class confidence over ``steps`` signed-gradient steps of
    length ``step`` (in every coordinate) raising the top class's log-probability, each iterate
    clipped to ``bounds``; the start ``x`` counts as an iterate."""
    lo, hi = bounds
    objective = _top_log_probability(model)
    best = []
    with eval_mode(model):
        for start in range(0, len(x), batch_size):
            point = x[start:start + batch_size].detach()
            grad, value = input_gradient(objective, point)
            most = value
            for _ in range(steps):
                point = (point + step * grad.sign()).clamp(lo, hi)
                grad, value = input_gradient(objective, point)
                most = torch.maximum(most, value)
            best.append(most.exp())
    return torch.cat(best) if best else torch.zeros(0)

