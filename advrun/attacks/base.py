"""The attack contract: ``attack(model, x, y) -> AttackResult``.

Every attack runs on a whole batch with the model in eval mode (restored afterwards),
takes gradients with respect to the input only (the parameters' ``.grad`` is never
touched), and its output is checked: finite, inside the data bounds, within the budget.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from advrun.attacks.norms import lp_norm, norm_name, parse_norm
from advrun.errors import AttackCheckError, InvalidValue

Bounds = tuple[float, float]


@dataclass
class AttackResult:
    """What an attack returns for a batch of ``n`` inputs.

    ``x_adv``: the adversarial inputs (same shape as ``x``), ``success``: per-sample bool,
    the model's decision on ``x_adv`` differs from the label (untargeted), ``norms``:
    per-sample Lp norm of ``x_adv - x`` in the attack's norm, ``predictions``: the
    model's labels for ``x_adv``.
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    norms: torch.Tensor
    predictions: torch.Tensor


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode and give each its own mode back afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode


def input_gradient(loss_fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of ``loss_fn(x).sum()`` with respect to ``x`` alone, and the per-sample losses.

    ``torch.autograd.grad`` differentiates only with respect to ``x``: parameter
    gradients are neither computed into ``.grad`` nor accumulated.
    """
    x = x.detach().requires_grad_(True)
    losses = loss_fn(x)
    (grad,) = torch.autograd.grad(losses.sum(), x)
    return grad, losses.detach()


def cross_entropy(model: nn.Module):
    """Per-sample cross-entropy of ``model`` at an input, as a function of that input."""

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y, reduction="none")

    return loss


@dataclass
class Attack:
    """Base class. Subclasses implement :meth:`perturb` on a batch and set ``name``.

    ``eps`` is the perturbation budget in the attack's ``norm`` (``"inf"``, ``2`` or ``1``).
    """

    name: ClassVar[str] = "attack"

    eps: float = 0.1
    norm: float | str = "inf"

    def __post_init__(self) -> None:
        try:
            self.norm = parse_norm(self.norm)
        except ValueError as e:
            raise InvalidValue("norm", str(e)) from None
        if isinstance(self.eps, bool) or not (isinstance(self.eps, (int, float)) and math.isfinite(self.eps) and self.eps >= 0):
            raise InvalidValue("eps", f"must be a finite number >= 0, got {self.eps!r}")
        self.eps = float(self.eps)

    @property
    def label(self) -> str:
        """Short name for tables and plots, e.g. ``pgd-linf``."""
        return f"{self.name}-{norm_name(self.norm)}"

    def with_eps(self, eps: float) -> "Attack":
        """A copy of this attack with another budget (the rest of the settings unchanged)."""
        return dataclasses.replace(self, eps=eps)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, bounds: Bounds) -> torch.Tensor:
        raise NotImplementedError

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, bounds: Bounds = (0.0, 1.0)
    ) -> AttackResult:
        """Attack the labels ``y`` (not the model's predictions) of the inputs ``x``."""
        x = x.detach()
        y = y.detach()
        with eval_mode(model):
            if self.eps == 0:
                x_adv = x.clone()
            else:
                with torch.enable_grad():
                    x_adv = self.perturb(model, x, y, bounds).detach()
            check_adversarial(x, x_adv, self.eps, self.norm, bounds, attack=self.label)
            with torch.no_grad():
                predictions = model(x_adv).argmax(dim=1)
        return AttackResult(
            x_adv=x_adv,
            success=predictions != y,
            norms=lp_norm(x_adv - x, self.norm),
            predictions=predictions,
        )


def check_adversarial(
    x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: float, bounds: Bounds, *, attack: str = "attack"
) -> None:
    """Raise :class:`AttackCheckError` unless ``x_adv`` is finite, in bounds and within ``eps``."""
    if x_adv.shape != x.shape:
        raise AttackCheckError(f"{attack}: output shape {tuple(x_adv.shape)} != input shape {tuple(x.shape)}")
    if not torch.isfinite(x_adv).all():
        raise AttackCheckError(f"{attack}: non-finite values in the adversarial inputs")
    lo, hi = bounds
    tol = 1e-6 * max(1.0, abs(lo), abs(hi))
    if x_adv.min() < lo - tol or x_adv.max() > hi + tol:
        raise AttackCheckError(
            f"{attack}: adversarial inputs leave the bounds [{lo}, {hi}] "
            f"(min {x_adv.min().item():.6g}, max {x_adv.max().item():.6g})"
        )
    largest = lp_norm(x_adv - x, norm).max().item() if len(x) else 0.0
    if largest > eps * (1 + 1e-5) + 1e-6:
        raise AttackCheckError(f"{attack}: perturbation norm {largest:.6g} exceeds eps {eps:.6g}")
