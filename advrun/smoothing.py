"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019, "Certified adversarial robustness via
randomized smoothing", ICML): certified L2 radii of the SMOOTHED classifier.

From any base model ``f`` (the trained network, in eval mode) it builds the smoothed classifier

    ``g(x) = argmax_c P(f(x + e) = c),   e ~ N(0, sigma^2 I)``,

and certifies ``g``. Theorem 1 of the paper: if the top class ``c_A`` has probability at least
``p_A > 1/2`` under the noise, then ``g(x + d) = c_A`` for every ``||d||_2 < R = sigma
Phi^{-1}(p_A)`` (the theorem's ``sigma/2 (Phi^{-1}(p_A) - Phi^{-1}(p_B))`` with ``p_B = 1 -
p_A``; ``Phi^{-1}`` the standard normal quantile). The radius is tight: a linear ``f`` reaches it
(Theorem 2), and then ``g = f``.

What such a certificate says, and what it does not:

* **It is about g, not f.** The radius is one of the smoothed classifier, which is evaluated by
  sampling (:meth:`Smoothing.predict`); the base model's own decision at ``x`` may differ from
  ``g``'s, and ``f`` carries no guarantee at all. A model certified this way must be deployed
  as ``g``.
* **It holds with probability at least 1 - alpha per sample**, over the Monte Carlo noise of the
  certification (Proposition 2 of the paper): ``p_A`` is not known, only a one-sided
  Clopper-Pearson lower bound from ``n`` noisy samples (:func:`advrun.stats.clopper_pearson_lower`
  at confidence ``1 - alpha``). Over N samples up to about ``alpha N`` certificates may be wrong;
  no union bound is taken.
* **It is in L2 only.** Gaussian noise certifies L2 balls; an Linf or L1 budget is not certified
  by these radii.

The noise is added to the input and NOT clipped to the data's bounds, as in the paper and its
code: ``g`` is defined on all of ``R^d`` and the certified ball ignores the box, which only
removes perturbations (so the radius stays a valid lower bound inside the box, as in
:mod:`advrun.certify`). A model that is to be smoothed should be trained on such noise:
``defense=gaussian`` (:class:`advrun.defenses.Gaussian`, the paper's training).

The two procedures are the paper's pseudocode:

* ``PREDICT`` (:meth:`Smoothing.predict`): ``n`` noisy samples; with ``n_A >= n_B`` the counts of
  the two most frequent classes, return the top class if the two-sided binomial test of ``n_A``
  successes in ``n_A + n_B`` trials at ``p = 1/2`` has p-value at most ``alpha``, else abstain.
  It returns a class other than ``g(x)`` with probability at most ``alpha`` (Proposition 1).
* ``CERTIFY`` (:meth:`Smoothing.certify`): ``n0`` noisy samples select ``c_A`` (their most
  frequent class); ``n`` fresh ones count it; ``p_A`` is the one-sided ``1 - alpha``
  Clopper-Pearson lower bound of that count; if ``p_A > 1/2`` return ``c_A`` and ``sigma
  Phi^{-1}(p_A)``, else abstain.

Abstention is class ``-1`` with radius 0. The noise is drawn from the ``generator`` passed in
(on its device), so results are a function of the generator's state and ``batch_size``, which
fixes how the draws are split. Many samples are processed together: the ``len(x) * n`` noisy
inputs form one stream, cut into forward passes of ``batch_size`` inputs (memory ~ ``batch_size``
noisy inputs and their logits), in eval mode and without gradients. The paper's defaults are
``n0 = 100``, ``n = 100,000`` and ``alpha = 0.001``; advrun's ``n = 10,000`` costs a tenth of the
time and certifies at most ``sigma Phi^{-1}(0.001^(1/10000)) = 3.20 sigma`` (``n = 100,000``:
``3.81 sigma``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from advrun.attacks.base import eval_mode
from advrun.errors import SEED, Number, require_int, require_positive
from advrun.stats import clopper_pearson_lower

#: Class returned where the smoothed classifier abstains.
ABSTAIN = -1


@dataclass
class Smoothing:
    """Monte Carlo prediction and certification of the smoothed classifier ``g`` of a base model
    (module docstring): noise level ``sigma`` (in the data's pixel scale), ``n0`` samples to select
    the class, ``n`` samples to estimate its probability, failure probability ``alpha``, and
    ``batch_size`` noisy inputs per forward pass."""

    sigma: float = 0.25
    n0: int = 100
    n: int = 10_000
    alpha: float = 0.001
    batch_size: int = 1000

    def __post_init__(self) -> None:
        require_positive("sigma", self.sigma)
        require_int("n0", self.n0, minimum=1)
        require_int("n", self.n, minimum=1)
        Number(0, 1, low_open=True, high_open=True).check("alpha", self.alpha)
        require_int("batch_size", self.batch_size, minimum=1)

    def counts(self, model: nn.Module, x: torch.Tensor, samples: int, generator: torch.Generator) -> torch.Tensor:
        """Per sample of ``x`` and per class, how often ``model`` decides that class on ``samples``
        noisy copies ``x + sigma e``, ``e ~ N(0, I)`` drawn from ``generator``: ``(len(x), K)`` int64.
        Call with the model in eval mode and without gradients (:meth:`predict` and :meth:`certify` do)."""
        total = len(x) * samples
        counts = None
        for start in range(0, total, self.batch_size):
            index = torch.arange(start, min(start + self.batch_size, total), device=x.device) // samples
            noise = torch.randn((len(index), *x.shape[1:]), generator=generator, device=generator.device,
                                dtype=x.dtype).to(x.device)
            logits = model(x[index] + self.sigma * noise)
            decided = logits.argmax(dim=1)
            if counts is None:
                counts = torch.zeros(len(x), logits.shape[1], dtype=torch.int64, device=x.device)
            counts.view(-1).index_add_(0, index * counts.shape[1] + decided, torch.ones_like(decided))
        if counts is None:  # no samples: the number of classes from one forward pass of zeros
            classes = model(torch.zeros(1, *x.shape[1:], dtype=x.dtype, device=x.device)).shape[1]
            counts = torch.zeros(0, classes, dtype=torch.int64, device=x.device)
        return counts

    def predict(self, model: nn.Module, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Cohen et al.'s PREDICT per sample of ``x``: ``g(x)``, or :data:`ABSTAIN` (-1) where the
        two-sided binomial test of the top two counts of ``n`` noisy samples does not reject
        ``p = 1/2`` at level ``alpha``. A returned class differs from ``g(x)`` with probability at
        most ``alpha`` (Proposition 1). int64 on ``x``'s device."""
        from scipy.stats import binom

        x = x.detach()
        with eval_mode(model), torch.no_grad():
            counts = self.counts(model, x, self.n, generator)
        if counts.shape[1] < 2:
            counts = torch.cat([counts, torch.zeros_like(counts[:, :1])], dim=1)
        top = counts.topk(2, dim=1)
        n_a, n_b = (top.values[:, i].cpu().numpy() for i in (0, 1))
        # binomial(n_a + n_b, 1/2) is symmetric: the two tails beyond n_b and n_a weigh 2 P(X <= n_b)
        p_value = np.minimum(1.0, 2 * binom.cdf(n_b, n_a + n_b, 0.5))
        decided = torch.from_numpy(p_value <= self.alpha).to(x.device)
        return torch.where(decided, top.indices[:, 0], ABSTAIN)

    def certify(self, model: nn.Module, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Cohen et al.'s CERTIFY per sample of ``x``: the class ``c_A`` and the L2 radius ``sigma
        Phi^{-1}(p_A)`` within which ``g`` decides ``c_A`` (with probability at least ``1 - alpha``,
        Proposition 2), ``p_A`` the one-sided ``1 - alpha`` Clopper-Pearson lower bound of ``c_A``'s
        count among ``n`` noisy samples, ``c_A`` selected by ``n0`` other samples; class -1 and
        radius 0 where ``p_A <= 1/2`` (abstain). Classes int64, radii float64, on ``x``'s device."""
        from scipy.stats import norm

        x = x.detach()
        with eval_mode(model), torch.no_grad():
            selected = self.counts(model, x, self.n0, generator).argmax(dim=1)
            counted = self.counts(model, x, self.n, generator).gather(1, selected[:, None]).squeeze(1)
        p_a = clopper_pearson_lower(counted.cpu().numpy(), self.n, 1 - self.alpha)
        certain = p_a > 0.5
        radii = np.where(certain, self.sigma * norm.ppf(np.where(certain, p_a, 0.5)), 0.0)
        certain = torch.from_numpy(np.asarray(certain)).to(x.device)
        return (torch.where(certain, selected, ABSTAIN),
                torch.from_numpy(np.asarray(radii, dtype=np.float64)).to(x.device))


def certified_radii(model: nn.Module, x: torch.Tensor, y: torch.Tensor, smoothing: Smoothing,
                    seed: int) -> torch.Tensor:
    """Per sample (float64, on ``x``'s device) the L2 radius certified by :meth:`Smoothing.certify`
    for the SMOOTHED classifier ``g`` of ``model`` (not for ``model`` itself), each with
    probability at least ``1 - alpha``; 0 where it abstains or its class is not ``y``. The noise
    comes from a generator on ``x``'s device seeded with ``seed``. The radii suit
    :func:`advrun.certify.certified_accuracy` (certified at ``eps`` when strictly larger)."""
    SEED.check("seed", seed)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    classes, radii = smoothing.certify(model, x, generator)
    return torch.where(classes == y.to(classes.device), radii, 0.0)


__all__ = ["ABSTAIN", "Smoothing", "certified_radii"]
