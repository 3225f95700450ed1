"""DeepFool (Moosavi-Dezfooli, Fawzi & Frossard 2016, "DeepFool: a simple and accurate method
to fool deep neural networks", Algorithm 2 (multi-class) and its Lp extension, Section 3.3)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from advrun.attacks.base import Bounds, Goal, MinimumNormAttack, least_factor
from advrun.attacks.norms import dual_norm, lp_norm, steepest_direction
from advrun.errors import require_int, require_non_negative


@dataclass
class DeepFool(MinimumNormAttack):
    """Untargeted minimal perturbations in L2 or Linf by repeated linearisation.

    At the current point every candidate class ``k`` defines, to first order, the boundary
    ``f'_k + w'_k . r = 0`` with ``f'_k = f_k - f_y`` and ``w'_k = grad f_k - grad f_y``; the
    step goes to the nearest one, ``r = |f'_l| / ||w'_l||_q * steepest(w'_l)`` with ``q`` the
    dual norm (Algorithm 2 and Section 3.3). Steps add up to ``delta``; the point examined at
    each step is ``clip(x + (1 + overshoot) * delta)``: the overshoot scales the total
    perturbation once, as in the paper, not every step.

    Candidates are the ``candidates`` classes other than the label with the highest clean
    logits (the paper's top-10 on ImageNet). Bounds: a coordinate that sits on a bound
    and would have to leave it is taken out of ``w'_k`` before the step, so the step uses
    the pixels that can still move instead of stalling on saturated ones; the examined
    point is the clipped one, so a success is a success of the returned input. Each sample
    stops at its first misclassified point; samples never misclassified within ``steps``
    are returned unchanged.

    Refinement (not in the paper): the last linearisation and the overshoot usually carry
    the point past the boundary. With ``refine_steps > 0`` each success is shrunk along its
    own perturbation to the smallest factor ``s`` in ``[0, 1 + overshoot]`` (bisection,
    forward passes only) for which ``clip(x + s delta)`` still fools the model; on an
    affine model that is the boundary itself. ``refine_steps: 0`` returns
    ``clip(x + (1 + overshoot) delta)`` as in the paper.
    """

    name = "deepfool"
    gradient_based = True
    norms = (math.inf, 2.0)
    targetable = False

    norm: float | str = 2.0
    steps: int = 50
    overshoot: float = 0.02
    candidates: int = 10
    refine_steps: int = 12

    def __post_init__(self) -> None:
        super().__post_init__()
        require_int("steps", self.steps, minimum=1)
        require_int("candidates", self.candidates, minimum=1)
        require_int("refine_steps", self.refine_steps, minimum=0)
        require_non_negative("overshoot", self.overshoot)

    def perturb(self, model: nn.Module, x: torch.Tensor, goal: Goal, bounds: Bounds) -> torch.Tensor:
        lo, hi = bounds
        y = goal.labels
        with torch.no_grad():
            clean = model(x)
        k = min(self.candidates, clean.shape[1] - 1)
        classes = clean.scatter(1, y[:, None], -math.inf).topk(k, dim=1).indices  # (n, k)

        x_adv = x.clone()
        done = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        delta = torch.zeros_like(x)
        active = torch.arange(len(x), device=x.device)
        dual = dual_norm(self.norm)
        for step in range(self.steps + 1):
            point = (x[active] + (1 + self.overshoot) * delta[active]).clamp(lo, hi)
            labels, candidates = y[active], classes[active]
            # f_k - f_y for the candidate classes and their gradients (the Jacobian rows).
            w, f, logits = self.gradient(
                model, point, lambda z, c=candidates, t=labels: z.gather(1, c) - z.gather(1, t[:, None]))
            fooled = logits.argmax(dim=1) != labels
            x_adv[active[fooled]] = point[fooled]
            done[active[fooled]] = True
            if step == self.steps or fooled.all():
                break
            keep = ~fooled
            active, point = active[keep], point[keep]
            f, w = f[keep], w[keep]  # (m, k): negative while the label wins; (m, k, *shape)
            # Coordinates pinned on a bound that the step would push further out cannot move.
            at_hi, at_lo = (point >= hi).unsqueeze(1), (point <= lo).unsqueeze(1)
            w = w.masked_fill((at_hi & (w > 0)) | (at_lo & (w < 0)), 0.0)
            scale = lp_norm(w.flatten(0, 1), dual).view(f.shape)
            distance = torch.where(scale > 0, f.abs() / scale, math.inf)  # inf: no coordinate can move towards k
            distance, nearest = distance.min(dim=1)
            movable = torch.isfinite(distance)
            if not movable.all():  # nothing can move any more: a failure, returned unchanged
                active, point, w, distance, nearest = (
                    t[movable] for t in (active, point, w, distance, nearest))
                if len(active) == 0:
                    break
            w_nearest = w[torch.arange(len(active), device=x.device), nearest]
            r = steepest_direction(w_nearest, self.norm) * distance.view((-1,) + (1,) * (x.dim() - 1))
            delta[active] = (x[active] + delta[active] + r).clamp(lo, hi) - x[active]
        if self.refine_steps and done.any():
            index = done.nonzero().squeeze(1)
            x_adv[index] = self._least_overshoot(model, x[index], delta[index], y[index], x_adv[index], bounds)
        return x_adv

    def _least_overshoot(self, model, x, delta, y, x_adv, bounds) -> torch.Tensor:
        """Bisect each success's factor on ``delta`` in ``[0, 1 + overshoot]`` for the smallest
        that still fools the model (``refine_steps`` forward passes, no gradients)."""
        top = 1 + self.overshoot
        factor = least_factor(model, Goal(y), x, delta, self.refine_steps, top=top, bounds=bounds)
        shape = (-1,) + (1,) * (x.dim() - 1)
        shrunk = factor < top  # each of these was checked at its factor
        return torch.where(shrunk.view(shape), (x + factor.view(shape) * delta).clamp(*bounds), x_adv)
