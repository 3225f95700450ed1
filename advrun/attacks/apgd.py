"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble
of diverse parameter-free attacks", Algorithm 1): PGD with momentum whose step size halves at
fixed checkpoints when progress stalls, restarting from the best point found. Losses:
cross-entropy, the difference of logits ratio (DLR, eq. 7) and its targeted form (DLR-T, eq. 8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from advrun.attacks.base import BoundedAttack, Bounds, Goal, WorstCase
from advrun.attacks.norms import norm_name, project, random_in_ball, steepest_direction
from advrun.attacks.objectives import OBJECTIVES, dlr_loss, dlr_targeted_loss
from advrun.errors import InvalidValue, require_int

__all__ = ["APGD", "checkpoints", "dlr_loss", "dlr_targeted_loss"]

#: Momentum weight alpha and the fraction rho of loss increases between checkpoints (Sect. 3.1).
MOMENTUM = 0.75
RHO = 0.75


def checkpoints(n_iter: int) -> list[int]:
    """The iterations ``w_j = ceil(p_j * n_iter)`` at which APGD may halve its step, for
    ``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` while
    ``p_j <= 1`` (duplicates, possible for small ``n_iter``, appear once). Computed in
    hundredths so that no rounding error moves a ceiling."""
    previous, current = 0, 22
    points = [0]
    while current <= 100:
        points.append(-(-current * n_iter // 100))
        previous, current = current, current + max(current - previous - 3, 6)
    return sorted(set(points))


@dataclass
class APGD(BoundedAttack):
    """APGD in the Linf or L2 norm (Algorithm 1), with ``n_iter`` gradient steps per run.

    Each run starts at a uniform point of the ball with step ``eta = 2 eps``; the step is
    ``x_{k+1} = P(x_k + alpha (z_{k+1} - x_k) + (1 - alpha)(x_k - x_{k-1}))`` with
    ``z_{k+1} = P(x_k + eta * direction(grad))`` (sign for Linf, normalised gradient for L2),
    ``alpha = 0.75`` (plain step at k = 0) and ``P`` the projection onto the ball and the bounds.
    At each checkpoint ``w_j`` (:func:`checkpoints`) a sample halves its step and restarts
    from its best point when (1) its loss increased in fewer than ``rho = 0.75`` of the steps
    since ``w_{j-1}``, or (2) its step was not halved at ``w_{j-1}`` and its best loss has
    not grown since.

    ``loss``: ``ce``; ``dlr`` (eq. 7); ``dlr_targeted`` (DLR-T, eq. 8); or any other objective of
    :mod:`advrun.attacks.objectives` (``margin``, ``mse``, ...). With ``target`` set the attack is
    targeted: ``ce`` descends the target's cross-entropy, both DLR losses use DLR-T with the true
    label ``y`` and the target ``t`` (eq. 8).

    AutoAttack's APGD-T is ``loss: dlr_targeted`` with ``target: null``: the goal stays
    untargeted (any wrong class counts), and for each of the ``n_target_classes`` classes
    most likely at the clean input other than the label (at most K - 1) one run of DLR-T
    toward that class (eq. 8 with the true label) is made on the samples still unfooled.

    Per sample the worst case over all runs and iterates is returned: the first point that
    reaches the goal (its attack then stops), else the point with the highest loss.
    """

    name = "apgd"
    norms: ClassVar[tuple[float, ...]] = (math.inf, 2.0)
    gradient_based = True
    losses = (*OBJECTIVES, "dlr_targeted")

    loss: str = "ce"
    n_iter: int = 100
    n_restarts: int = 1
    n_target_classes: int = 9

    def __post_init__(self) -> None:
        super().__post_init__()
        require_int("n_iter", self.n_iter, minimum=1)
        require_int("n_restarts", self.n_restarts, minimum=1)
        require_int("n_target_classes", self.n_target_classes, minimum=1)

    @property
    def label(self) -> str:
        variant = {"dlr_targeted": "t"}.get(self.loss, self.loss)
        return f"apgd-{variant}-{norm_name(self.norm)}"

    def check_classes(self, num_classes: int) -> None:
        super().check_classes(num_classes)
        if self.loss == "dlr_targeted" and num_classes < 4:
            raise InvalidValue("loss", f"DLR-T (eq. 8) uses the 3rd and 4th largest logits and needs >= 4 classes, "
                                       f"not {num_classes}; use loss ce")

    def perturb(self, model: nn.Module, x: torch.Tensor, goal: Goal, bounds: Bounds) -> tuple[torch.Tensor, torch.Tensor]:
        worst = WorstCase(x)
        for targets in self._target_columns(model, x, goal):
            for _ in range(self.n_restarts):
                rows = worst.unreached()
                if len(rows) == 0:
                    return worst.result()
                subset_targets = None if targets is None else targets[rows]
                run = self._run(model, x[rows], goal.subset(rows), subset_targets, bounds)
                worst.update(rows, run.x, run.loss, run.reached, run.logits)
        return worst.result()

    def _target_columns(self, model: nn.Module, x: torch.Tensor, goal: Goal) -> list[torch.Tensor | None]:
        """``[None]``, or for APGD-T one tensor of target classes per rank 1..k."""
        if self.loss != "dlr_targeted" or goal.targeted:
            return [None]
        with torch.no_grad():
            logits = model(x)
        k = min(self.n_target_classes, logits.shape[1] - 1)
        ranking = logits.scatter(1, goal.labels[:, None], -torch.inf).argsort(dim=1, descending=True)
        return list(ranking[:, :k].T)

    def _objective(self, logits: torch.Tensor, goal: Goal, targets: torch.Tensor | None) -> torch.Tensor:
        """Per-sample loss to maximise: DLR-T towards ``targets`` (APGD-T's runs), else ``loss``
        towards the goal (:meth:`Attack.objective`; ``dlr_targeted`` on a goal without targets is DLR)."""
        if targets is not None:
            return dlr_targeted_loss(logits, goal.labels, targets)
        return self.objective(goal, logits)

    def objective(self, goal: Goal, logits: torch.Tensor) -> torch.Tensor:
        if self.loss == "dlr_targeted":
            return dlr_targeted_loss(logits, goal.source, goal.labels) if goal.targeted else dlr_loss(logits, goal.labels)
        return super().objective(goal, logits)

    def _into_set(self, x: torch.Tensor, point: torch.Tensor, bounds: Bounds) -> torch.Tensor:
        return (x + project(point - x, self.eps, self.norm)).clamp(*bounds)

    def _run(
        self, model: nn.Module, x: torch.Tensor, goal: Goal, targets: torch.Tensor | None, bounds: Bounds
    ) -> WorstCase:
        """One run of Algorithm 1 from a random start: the per-sample worst case for the rows of ``x``.

        Samples that reach the goal leave the run (their trajectories are independent of the
        others), so the trajectory holds the rows still being attacked."""
        result = WorstCase(x)
        x_0 = self._into_set(x, x + random_in_ball(x, self.eps, self.norm), bounds)
        path = _Trajectory.start(x, goal, targets, x_0, step=2 * self.eps)
        schedule, last_check = set(checkpoints(self.n_iter)), 0
        for k in range(self.n_iter + 1):
            if k < self.n_iter:
                grad, f, logits = self.gradient(model, path.x_k, lambda z: self._objective(z, path.goal, path.targets))
            else:
                with torch.no_grad():
                    logits = model(path.x_k)
                    f, grad = self._objective(logits, path.goal, path.targets), None
            reached = path.goal.reached(logits)
            result.update(path.rows, path.x_k, f, reached, logits)
            if k == self.n_iter:
                break
            path.record(f, grad)
            if reached.all():
                break
            if reached.any():  # fooled samples leave the run with their first successful point
                grad = path.keep(~reached, grad)
            if k in schedule:
                grad = path.checkpoint(k, last_check, grad)
                last_check = k
            shape = (-1,) + (1,) * (x.dim() - 1)
            z = self._into_set(path.origin, path.x_k + path.step.view(shape) * steepest_direction(grad, self.norm),
                               bounds)
            if k > 0:
                z = self._into_set(path.origin, path.x_k + MOMENTUM * (z - path.x_k)
                                   + (1 - MOMENTUM) * (path.x_k - path.x_prev), bounds)
            path.x_prev, path.x_k = path.x_k, z
        return result


@dataclass
class _Trajectory:
    """The state of one APGD run, one entry per row still attacked: the current and previous
    iterates, the step size, the best point so far (with its gradient and loss), and the
    counts that decide at each checkpoint whether the step halves (Sect. 3.1, conditions 1, 2)."""

    rows: torch.Tensor
    origin: torch.Tensor
    goal: Goal
    targets: torch.Tensor | None
    x_k: torch.Tensor
    x_prev: torch.Tensor
    step: torch.Tensor
    x_max: torch.Tensor
    grad_max: torch.Tensor
    f_max: torch.Tensor
    f_prev: torch.Tensor
    increases: torch.Tensor
    f_max_at_check: torch.Tensor
    halved_at_check: torch.Tensor

    @classmethod
    def start(cls, x: torch.Tensor, goal: Goal, targets: torch.Tensor | None, x_0: torch.Tensor,
              step: float) -> "_Trajectory":
        n, like = len(x), dict(device=x.device, dtype=x.dtype)
        f_max = torch.full((n,), -torch.inf, **like)
        return cls(rows=torch.arange(n, device=x.device), origin=x, goal=goal, targets=targets, x_k=x_0, x_prev=x_0,
                   step=torch.full((n,), step, **like), x_max=x_0.clone(), grad_max=torch.zeros_like(x),
                   f_max=f_max, f_prev=f_max.clone(), increases=torch.zeros(n, device=x.device),
                   f_max_at_check=f_max.clone(), halved_at_check=torch.zeros(n, dtype=torch.bool, device=x.device))

    def record(self, f: torch.Tensor, grad: torch.Tensor) -> None:
        """Keep the best point, and count the iterations that increased the loss."""
        improved = f > self.f_max
        column = improved.view((-1,) + (1,) * (self.x_k.dim() - 1))
        self.x_max = torch.where(column, self.x_k, self.x_max)
        self.grad_max = torch.where(column, grad, self.grad_max)
        self.f_max = torch.where(improved, f, self.f_max)
        self.increases += (f > self.f_prev).float()
        self.f_prev = f

    def keep(self, keep: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """Drop the rows outside ``keep``; returns ``grad`` of the rows kept."""
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(self, name, value[keep])
        self.goal = self.goal.subset(keep)
        return grad[keep]

    def checkpoint(self, k: int, last_check: int, grad: torch.Tensor) -> torch.Tensor:
        """At a checkpoint ``w_j``: halve the step (and restart from the best point) where the loss
        rose in fewer than ``rho`` of the iterations since the last one, or where the step was not
        halved then and the best loss did not improve; returns the gradient at the points kept."""
        if k > 0:
            shape = (-1,) + (1,) * (self.x_k.dim() - 1)
            stalled = self.increases < RHO * (k - last_check)
            halve = stalled | (~self.halved_at_check & (self.f_max <= self.f_max_at_check))
            self.step = torch.where(halve, self.step / 2, self.step)
            self.x_k = torch.where(halve.view(shape), self.x_max, self.x_k)
            grad = torch.where(halve.view(shape), self.grad_max, grad)
            self.f_prev = torch.where(halve, self.f_max, self.f_prev)
            self.halved_at_check = halve
        self.f_max_at_check, self.increases = self.f_max.clone(), torch.zeros_like(self.increases)
        return grad
