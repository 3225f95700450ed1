"""Projected gradient descent (Madry et al. 2018, "Towards Deep Learning Models Resistant
to Adversarial Attacks", eq. 2): iterated steepest-ascent steps on the loss, each followed
by the projection onto the eps-ball around ``x`` and the data bounds."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from advrun.attacks.base import BoundedAttack, Bounds, Goal, WorstCase
from advrun.attacks.norms import project, random_start, sparse_l1_direction, steepest_direction
from advrun.attacks.objectives import OBJECTIVES
from advrun.errors import Number, Switch, check_fields, require_int, require_positive


@dataclass
class PGD(BoundedAttack):
    """PGD in the Linf, L2 or L1 norm.

    The step is ``step_size`` when given, else ``step_scale * eps / steps`` (2.5 eps/steps by
    default, Madry et al.'s choice), so that every budget of a curve is attacked equally
    hard.  With ``random_start`` each restart begins at a random point of the ball, drawn as
    the field's PGD code draws it (:func:`~advrun.attacks.norms.random_start`: Linf uniform
    in the cube; L2 and L1 a uniform direction at a radius uniform in ``[0, eps]``).

    With ``keep_best`` (default) the worst case per sample over all restarts and iterates is
    kept: the first iterate that reaches the goal (misclassified, or classified as the
    target), else the one with the highest ``loss`` (the objective the steps ascend,
    :mod:`advrun.attacks.objectives`; cross-entropy by default); a sample that reaches the goal is not
    attacked further.  ``keep_best=false`` returns the last iterate, as Madry et
    al.'s code does (with several restarts: the last iterate of the first restart that
    reached the goal, else of the restart with the highest final loss).

    In the L1 norm each step moves the largest ``1 - l1_sparsity`` share of the gradient's
    coordinates (sparse L1 descent, Tramer & Boneh 2019): the exact steepest L1 step moves
    a single coordinate and makes slow progress.
    """

    name = "pgd"
    gradient_based = True
    losses = OBJECTIVES

    steps: int = 40
    step_size: float | None = None
    step_scale: float = 2.5
    random_start: bool = True
    restarts: int = 1
    keep_best: bool = True
    l1_sparsity: float = 0.95
    loss: str = "ce"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_steps()
        require_int("restarts", self.restarts, minimum=1)
        if self.step_size is not None:
            require_positive("step_size", self.step_size, hint=" (or null for step_scale * eps / steps)")
        require_positive("step_scale", self.step_scale)
        Number(0, 1, high_open=True).check("l1_sparsity", self.l1_sparsity)
        check_fields(self, {"random_start": Switch(), "keep_best": Switch()})

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
        worst = WorstCase(x)
        for _ in range(self.restarts):
            index = worst.unreached()  # later restarts attack the survivors only
            if len(index) == 0:
                break
            x0, goal_t = x[index], goal.subset(index)
            start = random_start(x0, self.eps, self.norm) if self.random_start else torch.zeros_like(x0)
            x_adv = (x0 + start).clamp(lo, hi)
            state = self._initial_state(x0)
            for _ in range(self.iterations):
                grad, losses, logits = self.gradient(model, x_adv, lambda z: self.objective(goal_t, z))
                if self.keep_best:
                    reached = goal_t.reached(logits)
                    worst.update(index, x_adv, losses, reached, logits)
                    if reached.any():  # samples that reached the goal are done
                        active = ~reached
                        index, x0, x_adv, grad, goal_t = index[active], x0[active], x_adv[active], grad[active], goal_t.subset(active)
                        state = None if state is None else state[active]
                        if len(index) == 0:
                            break
                direction, state = self._direction(grad, x_adv, bounds, state)
                x_adv = x_adv + self.alpha * direction
                x_adv = (x0 + project(x_adv - x0, self.eps, self.norm)).clamp(lo, hi)
            if len(index):
                with torch.no_grad():
                    logits = model(x_adv)
                worst.update(index, x_adv, self.objective(goal_t, logits), goal_t.reached(logits), logits)
        return worst.result()
