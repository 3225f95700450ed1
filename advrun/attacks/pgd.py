"""Projected gradient descent (Madry et al. 2018, "Towards Deep Learning Models Resistant
to Adversarial Attacks", eq. 2): iterated steepest-ascent steps on the loss, each followed
by the projection onto the eps-ball around ``x`` and the data bounds."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from advrun.attacks.base import Attack, Bounds, Goal
from advrun.attacks.norms import project, random_in_ball, sparse_l1_direction, steepest_direction
from advrun.errors import InvalidValue, require_int, require_positive


@dataclass
class PGD(Attack):
    """PGD in the Linf, L2 or L1 norm.

    The step is ``step_size`` when given, else ``step_scale * eps / steps`` (2.5 eps/steps by
    default, Madry et al.'s choice), so that every budget of a curve is attacked equally
    hard.  With ``random_start`` each restart begins at a uniform point of the ball.

    With ``keep_best`` (default) the worst case per sample over all restarts and iterates is
    kept: the first iterate that reaches the goal (misclassified, or classified as the
    target), else the one with the highest loss; a sample that reaches the goal is not
    attacked further.  ``keep_best=false`` returns each restart's last iterate, as Madry et
    al.'s code does (a restart that reached the goal still wins over later ones).

    In the L1 norm each step moves the largest ``1 - l1_sparsity`` share of the gradient's
    coordinates (sparse L1 descent, Tramer & Boneh 2019): the exact steepest L1 step moves
    a single coordinate and makes slow progress.
    """

    name = "pgd"

    steps: int = 40
    step_size: float | None = None
    step_scale: float = 2.5
    random_start: bool = True
    restarts: int = 1
    keep_best: bool = True
    l1_sparsity: float = 0.95

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_steps()
        require_int("restarts", self.restarts, minimum=1)
        if self.step_size is not None:
            require_positive("step_size", self.step_size, hint=" (or null for step_scale * eps / steps)")
        require_positive("step_scale", self.step_scale)
        if isinstance(self.l1_sparsity, bool) or not isinstance(self.l1_sparsity, (int, float)) or not 0 <= self.l1_sparsity < 1:
            raise InvalidValue("l1_sparsity", f"must lie in [0, 1), got {self.l1_sparsity!r}")
        for field in ("random_start", "keep_best"):
            if not isinstance(getattr(self, field), bool):
                raise InvalidValue(field, f"must be true or false, got {getattr(self, field)!r}")

    def _check_steps(self) -> None:
        require_int("steps", self.steps, minimum=1)

    @property
    def iterations(self) -> int:
        """The number of steps taken at this budget."""
        return self.steps

    @property
    def alpha(self) -> float:
        """The step size actually used."""
        return self.step_size if self.step_size is not None else self.step_scale * self.eps / self.iterations

    def _initial_state(self, x0: torch.Tensor) -> torch.Tensor | None:
        """Per-sample state carried from step to step (e.g. a momentum); PGD has none."""
        return None

    def _direction(
        self, grad: torch.Tensor, x_adv: torch.Tensor, bounds: Bounds, state: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The step direction (unit norm) from the gradient, and the updated state."""
        if self.norm == 1.0:
            return sparse_l1_direction(grad, x_adv, bounds, self.l1_sparsity), state
        return steepest_direction(grad, self.norm), state

    def perturb(
        self, model: nn.Module, x: torch.Tensor, goal: Goal, bounds: Bounds
    ) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = bounds
        best_x = x.clone()
        best_logits: torch.Tensor | None = None
        best_loss = torch.full((len(x),), -torch.inf, device=x.device)
        best_fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)

        def record(index: torch.Tensor, x_adv: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
            """Keep, per sample, the iterate to return; return which of these iterates reach the goal."""
            nonlocal best_logits
            if best_logits is None:
                best_logits = torch.full((len(x), logits.shape[1]), torch.nan, device=x.device)
            losses, fooled = goal.subset(index).loss(logits), goal.subset(index).reached(logits)
            better = ~best_fooled[index]
            if self.keep_best:
                better &= fooled | (losses > best_loss[index])
            chosen = index[better]
            best_x[chosen] = x_adv[better]
            best_logits[chosen] = logits[better]
            best_loss[chosen] = losses[better]
            best_fooled[chosen] = fooled[better]
            return fooled

        for _ in range(self.restarts):
            index = (~best_fooled).nonzero().squeeze(1)  # later restarts attack the survivors only
            if len(index) == 0:
                break
            x0 = x[index]
            start = random_in_ball(x0, self.eps, self.norm) if self.random_start else torch.zeros_like(x0)
            x_adv = (x0 + start).clamp(lo, hi)
            state = self._initial_state(x0)
            for _ in range(self.iterations):
                x_adv.requires_grad_(True)
                logits = model(x_adv)
                (grad,) = torch.autograd.grad(goal.subset(index).loss(logits).sum(), x_adv)
                x_adv = x_adv.detach()
                if self.keep_best:
                    active = ~record(index, x_adv, logits.detach())  # fooled samples are done
                    index, x0, x_adv, grad = index[active], x0[active], x_adv[active], grad[active]
                    state = None if state is None else state[active]
                    if len(index) == 0:
                        break
                direction, state = self._direction(grad, x_adv, bounds, state)
                x_adv = x_adv + self.alpha * direction
                x_adv = (x0 + project(x_adv - x0, self.eps, self.norm)).clamp(lo, hi)
            if len(index):
                with torch.no_grad():
                    record(index, x_adv, model(x_adv))
        return best_x, best_logits
