"""Projected gradient descent (Madry et al. 2018, "Towards Deep Learning Models Resistant
to Adversarial Attacks", eq. 2): iterated steepest-ascent steps on the loss, each followed
by the projection onto the eps-ball around ``x`` and the data bounds."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from advrun.attacks.base import Attack, Bounds, Goal
from advrun.attacks.norms import project, random_in_ball, steepest_direction
from advrun.errors import InvalidValue, require_int, require_positive


@dataclass
class PGD(Attack):
    """PGD in the Linf, L2 or L1 norm.

    The step is ``step_size`` when given, else ``step_scale * eps / steps`` (2.5 eps/steps by
    default, Madry et al.'s choice), so that every budget of a curve is attacked equally
    hard.  With ``random_start`` each restart begins at a uniform point of the ball.  Per
    sample, the worst case over all restarts and iterates is kept: the first iterate that is
    misclassified (or, targeted, classified as the target), else the one with the highest loss.
    """

    name = "pgd"

    steps: int = 40
    step_size: float | None = None
    step_scale: float = 2.5
    random_start: bool = True
    restarts: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        require_int("steps", self.steps, minimum=1)
        require_int("restarts", self.restarts, minimum=1)
        if self.step_size is not None:
            require_positive("step_size", self.step_size, hint=" (or null for step_scale * eps / steps)")
        require_positive("step_scale", self.step_scale)
        if not isinstance(self.random_start, bool):
            raise InvalidValue("random_start", f"must be true or false, got {self.random_start!r}")

    @property
    def alpha(self) -> float:
        """The step size actually used."""
        return self.step_size if self.step_size is not None else self.step_scale * self.eps / self.steps

    def perturb(self, model: nn.Module, x: torch.Tensor, goal: Goal, bounds: Bounds) -> torch.Tensor:
        lo, hi = bounds
        best_x = x.clone()
        best_loss = torch.full((len(x),), -torch.inf, device=x.device)
        best_fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)

        def keep_worst(x_adv: torch.Tensor, logits: torch.Tensor) -> None:
            losses = goal.loss(logits)
            fooled = goal.reached(logits)
            better = ~best_fooled & (fooled | (losses > best_loss))
            best_x[better] = x_adv[better]
            best_loss[better] = losses[better]
            best_fooled[better] = fooled[better]

        for _ in range(self.restarts):
            start = random_in_ball(x, self.eps, self.norm) if self.random_start else torch.zeros_like(x)
            x_adv = (x + start).clamp(lo, hi)
            for _ in range(self.steps):
                x_adv.requires_grad_(True)
                logits = model(x_adv)
                (grad,) = torch.autograd.grad(goal.loss(logits).sum(), x_adv)
                x_adv = x_adv.detach()
                keep_worst(x_adv, logits.detach())
                x_adv = x_adv + self.alpha * steepest_direction(grad, self.norm)
                x_adv = (x + project(x_adv - x, self.eps, self.norm)).clamp(lo, hi)
            with torch.no_grad():
                keep_worst(x_adv, model(x_adv))
        return best_x
