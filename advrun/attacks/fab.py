"""FAB, the fast adaptive boundary attack (Croce & Hein 2020, "Minimally distorted adversarial
examples with a fast adaptive boundary attack", ICML, Sect. 3 and Algorithm 1): minimal
perturbations in Linf, L2 or L1 by repeated projection onto the linearised decision boundary
intersected with the data bounds, biased towards the original input, with a backward step
after each success. FAB-T, its targeted form over the most likely wrong classes, is a member
of AutoAttack's standard ensemble (Croce & Hein 2020, "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from advrun.attacks.base import Bounds, Goal, MinimumNormAttack, least_factor
from advrun.attacks.linear_exact import halfspace_minimum
from advrun.attacks.norms import dual_norm, lp_norm, norm_name
from advrun.errors import InvalidValue, Number, require_int, require_positive

__all__ = ["FAB", "hyperplane_projection"]


def hyperplane_projection(w: torch.Tensor, m: torch.Tensor, room_up: torch.Tensor, room_down: torch.Tensor,
                          p: float) -> torch.Tensor:
    """Per row of ``w`` (``[n, d]``), the smallest ``delta`` in Lp with ``w . delta = m`` and
    ``-room_down <= delta <= room_up``: the step from a point ``z`` to its projection onto the
    hyperplane ``{w . xi = w . z + m}`` intersected with the box (Croce & Hein 2020, Sect. 3.1;
    ``room_up = hi - z``, ``room_down = z - lo``). Solved exactly by sorting
    (:func:`~advrun.attacks.linear_exact.halfspace_minimum`; in L1 a fractional knapsack). Where
    the box does not reach the hyperplane: the point of the box closest to it, every coordinate
    saturated towards it. Computed in float64, returned in ``w``'s dtype."""
    dtype = w.dtype
    w, m, room_up, room_down = (t.double() for t in (w, m, room_up, room_down))
    w = torch.where(m[:, None] < 0, -w, w)  # w . delta = m  <=>  (-w) . delta = -m
    m = m.abs()
    saturated = torch.where(w > 0, room_up, torch.where(w < 0, -room_down, 0.0))
    delta = halfspace_minimum(w, m, room_up, room_down, p)
    return torch.where(torch.isfinite(delta).all(dim=1, keepdim=True), delta, saturated).to(dtype)


@dataclass
class FAB(MinimumNormAttack):
    """Minimal perturbations in Linf, L2 or L1 (Croce & Hein 2020, Algorithm 1), untargeted,
    targeted, or FAB-T; batched, every sample on its own trajectory.

    Each iteration linearises the model at the current point ``x_i``: for each class ``s``
    that may win, ``f_s = z_s - z_c`` (``c`` the class to leave) and its gradient ``w_s``
    (Jacobian rows, through :meth:`Attack.gradient`, so ``eot_samples`` averages them). The
    hyperplane ``pi_s`` of the nearest one, ``s = argmin |f_s| / ||w_s||_q`` (``q`` the dual
    norm), is where the step aims: ``delta = proj(x_i) - x_i`` and ``delta_0 = proj(x_0) - x_0``
    are the steps of the current point and of the original input ``x_0`` onto ``pi_s``
    intersected with the box (:func:`hyperplane_projection`), and

        ``x_{i+1} = clip((1 - a) (x_i + eta delta) + a (x_0 + eta delta_0))``,
        ``a = min(||delta|| / (||delta|| + ||delta_0||), alpha_max)``,

    the bias ``a`` pulling towards the input, the extrapolation ``eta`` (1.05) crossing the
    boundary. Where ``x_{i+1}`` reaches the goal it is kept if smaller than the best so far,
    and the iterate steps back towards the input: ``x_{i+1} = (1 - beta) x_0 + beta x_{i+1}``.

    Runs: ``n_restarts`` per target class, each ``n_iter`` iterations; the first starts at the
    input, later ones at a random point of the sphere of radius ``min(best norm, eps) / 2``
    around it (eps the budget: the attack's ``eps`` or the ensemble's; where neither bounds it,
    the largest norm in the box), clipped to the box, as AutoAttack does. Per sample the
    smallest perturbation over all runs is returned (the input where none reached the goal).

    The goal and its hyperplanes: untargeted, every class other than the label (``K - 1``
    Jacobian rows per iteration); targeted (``target`` set), ``f = z_t - max_{j != t} z_j``
    towards the target ``t``; FAB-T (``n_target_classes: k``, untargeted goal), one run per
    each of the ``k`` classes most likely at the clean input other than the label, with
    ``f = z_t - z_y``, any misclassification counting (AutoAttack's FAB-T: one Jacobian row per
    iteration). On a targeted goal ``n_target_classes`` is not used.

    At a budget (:meth:`perturb_at_budget`, an ensemble's member) a sample leaves the search
    once it has a perturbation within the budget, as in AutoAttack; alone, FAB runs every run on
    every sample and returns the minimum.
    """

    name = "fab"
    gradient_based = True

    norm: float | str = "inf"
    n_iter: int = 100
    n_restarts: int = 1
    alpha_max: float = 0.1
    eta: float = 1.05
    beta: float = 0.9
    n_target_classes: int | None = None
    refine_steps: int = 20

    def __post_init__(self) -> None:
        super().__post_init__()
        require_int("n_iter", self.n_iter, minimum=1)
        require_int("n_restarts", self.n_restarts, minimum=1)
        Number(0, 1, what="a number in [0, 1]").check("alpha_max", self.alpha_max)
        require_positive("eta", self.eta)
        Number(0, 1, low_open=True, what="a number in (0, 1]").check("beta", self.beta)
        if self.n_target_classes is not None:
            require_int("n_target_classes", self.n_target_classes, minimum=1)
        require_int("refine_steps", self.refine_steps, minimum=0)

    @property
    def label(self) -> str:
        return f"fab{'-t' if self.n_target_classes is not None else ''}-{norm_name(self.norm)}"

    def check_classes(self, num_classes: int) -> None:
        super().check_classes(num_classes)
        if num_classes < 2:
            raise InvalidValue("n_target_classes", f"FAB needs at least two classes, not {num_classes}")

    def perturb(self, model: nn.Module, x: torch.Tensor, goal: Goal, bounds: Bounds) -> torch.Tensor:
        return self._search(model, x, goal, bounds, budget=None)

    def perturb_at_budget(self, model: nn.Module, x: torch.Tensor, goal: Goal, bounds: Bounds,
                          eps: float) -> torch.Tensor:
        """:meth:`perturb` at budget ``eps``: a sample leaves the search once it has a perturbation
        of norm at most ``eps`` (its point may then not be minimal), and ``eps`` bounds the radius
        of the random restarts (AutoAttack's FAB at a budget). Points beyond ``eps`` are returned
        as found: the caller decides what they count for."""
        return self._search(model, x, goal, bounds, budget=eps)

    # --- the search ---------------------------------------------------------------------------

    def _search(self, model: nn.Module, x: torch.Tensor, goal: Goal, bounds: Bounds,
                budget: float | None) -> torch.Tensor:
        with torch.no_grad():
            clean = model(x)
        best = _Best(x, goal.reached(clean), self.norm)
        radius = self.eps if budget is None else budget
        for targets in self._target_columns(clean, goal):
            for restart in range(self.n_restarts):
                rows = best.open(budget)
                if len(rows) == 0:
                    return best.x
                start = x[rows] if restart == 0 else self._random_start(x[rows], best.norms[rows], radius, bounds)
                self._run(model, x[rows], start, goal.subset(rows), None if targets is None else targets[rows],
                          bounds, best, rows, budget)
        if budget is None and self.refine_steps:
            self._refine(model, x, goal, best)
        return best.x

    def _target_columns(self, clean: torch.Tensor, goal: Goal) -> list[torch.Tensor | None]:
        """``[None]``, or for FAB-T one tensor of target classes per rank 1..k of the clean logits."""
        if self.n_target_classes is None or goal.targeted:
            return [None]
        k = min(self.n_target_classes, clean.shape[1] - 1)
        ranking = clean.scatter(1, goal.labels[:, None], -torch.inf).argsort(dim=1, descending=True)
        return list(ranking[:, :k].T)

    def _random_start(self, x: torch.Tensor, best: torch.Tensor, eps: float, bounds: Bounds) -> torch.Tensor:
        """A point of the sphere of radius ``min(best, eps) / 2`` around each input (uniform
        coordinates for Linf, Gaussian ones for L2 and L1, scaled to the radius), clipped to the
        box; where neither bounds the radius, the largest norm in the box, ``(hi - lo) d^(1/p)``."""
        lo, hi = bounds
        d = x[0].numel()
        widest = (hi - lo) * (1.0 if self.norm == math.inf else d ** (1.0 / self.norm))
        radius = torch.clamp(best.clamp_max(eps), max=widest) / 2
        direction = torch.empty_like(x).uniform_(-1, 1) if self.norm == math.inf else torch.randn_like(x)
        direction = direction / lp_norm(direction, self.norm).clamp_min(1e-12).view(_column(x))
        return (x + radius.view(_column(x)) * direction).clamp(lo, hi)

    def _linearise(self, model: nn.Module, point: torch.Tensor, goal: Goal,
                   targets: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(f, w)`` of the hyperplane to aim at: per sample the value ``f < 0`` (until the goal is
        reached) and its gradient ``w``, flattened to ``[n, d]``."""
        labels = goal.labels
        if targets is not None:  # FAB-T's run towards one class, leaving the label
            def objective(z):
                return z.gather(1, targets[:, None]).squeeze(1) - z.gather(1, labels[:, None]).squeeze(1)
        elif goal.targeted:  # towards the target, against the strongest other class
            def objective(z):
                rest = z.scatter(1, labels[:, None], -torch.inf).amax(dim=1)
                return z.gather(1, labels[:, None]).squeeze(1) - rest
        else:  # every class other than the label; the nearest hyperplane is chosen below
            def objective(z):
                others = _others(labels, z.shape[1])
                return z.gather(1, others) - z.gather(1, labels[:, None])
        w, f, _ = self.gradient(model, point, objective)
        w = w.flatten(start_dim=2 if f.dim() == 2 else 1)
        if f.dim() == 2:
            scale = lp_norm(w.flatten(0, 1), dual_norm(self.norm)).view(f.shape)
            distance = torch.where(scale > 0, f.abs() / scale.clamp_min(1e-30), torch.inf)
            nearest = distance.argmin(dim=1)
            index = torch.arange(len(f), device=f.device)
            f, w = f[index, nearest], w[index, nearest]
        return f, w

    def _run(self, model: nn.Module, x: torch.Tensor, start: torch.Tensor, goal: Goal, targets: torch.Tensor | None,
             bounds: Bounds, best: "_Best", rows: torch.Tensor, budget: float | None) -> None:
        """One run of Algorithm 1 from ``start`` on the inputs ``x`` (the rows ``rows`` of the batch),
        offering every point that reaches the goal to ``best``."""
        lo, hi = bounds
        point, column = start.clone(), _column(x)
        for _ in range(self.n_iter):
            f, w = self._linearise(model, point, goal, targets)
            flat, origin = point.flatten(1), x.flatten(1)
            # The hyperplane w . (xi - x_i) + f = 0, reached from x_i and from x_0: both projections
            # in one batch of 2n rows (each row is solved on its own).
            m_origin = -(f + (w * (origin - flat)).sum(dim=1))
            from_both = hyperplane_projection(torch.cat([w, w]), torch.cat([-f, m_origin]),
                                              hi - torch.cat([flat, origin]), torch.cat([flat, origin]) - lo,
                                              self.norm)
            sizes = lp_norm(from_both, self.norm)
            n = len(x)
            step, step_origin = from_both[:n].view_as(x), from_both[n:].view_as(x)
            size, size_origin = sizes[:n], sizes[n:]
            total = size + size_origin
            alpha = torch.where(total > 0, size / total.clamp_min(1e-30), 0.0).clamp(max=self.alpha_max).view(column)
            point = ((1 - alpha) * (point + self.eta * step) + alpha * (x + self.eta * step_origin)).clamp(lo, hi)
            with torch.no_grad():
                reached = goal.reached(model(point))
            if reached.any():
                best.offer(rows[reached], point[reached])
                # the backward step: towards the input, to look for a closer crossing
                point[reached] = (1 - self.beta) * x[reached] + self.beta * point[reached]
            if budget is not None:  # at a budget, a sample is done once within it
                keep = best.norms[rows] > budget
                if not keep.all():
                    if not keep.any():
                        return
                    rows, x, point, goal = rows[keep], x[keep], point[keep], goal.subset(keep)
                    targets = None if targets is None else targets[keep]

    def _refine(self, model: nn.Module, x: torch.Tensor, goal: Goal, best: "_Best") -> None:
        """Shrink each success along its own perturbation: bisect for the smallest factor ``s`` in
        ``[0, 1]`` for which ``x + s (x_best - x)`` still reaches the goal (``refine_steps`` forward
        passes). The iterates cross the boundary by the extrapolation ``eta`` and step back by
        ``beta``, which on an affine model leaves them about ``(eta - 1)(1 - beta)`` of the norm
        beyond it; the bisection removes that gap."""
        rows = (best.norms > 0).logical_and(torch.isfinite(best.norms)).nonzero().squeeze(1)
        if len(rows) == 0:
            return
        origin, delta = x[rows], best.x[rows] - x[rows]
        factor = least_factor(model, goal.subset(rows), origin, delta, self.refine_steps)
        shrunk = factor < 1  # each of these was checked at its factor
        best.x[rows[shrunk]] = (origin + factor.view(_column(x)) * delta)[shrunk]
        best.norms[rows[shrunk]] = lp_norm(best.x[rows[shrunk]] - x[rows[shrunk]], self.norm)


def _column(x: torch.Tensor) -> tuple[int, ...]:
    """The shape that broadcasts a per-sample value against ``x``."""
    return (-1,) + (1,) * (x.dim() - 1)


def _others(labels: torch.Tensor, k: int) -> torch.Tensor:
    """Per sample, the ``k - 1`` classes other than its label, ``[n, k - 1]``."""
    classes = torch.arange(k, device=labels.device).expand(len(labels), k)
    return classes[classes != labels[:, None]].view(len(labels), k - 1)


class _Best:
    """Per sample of a batch, the smallest perturbation found that reaches the goal: the point
    (the input until one is found) and its norm (0 where the input already reaches the goal,
    inf until one is found)."""

    def __init__(self, x: torch.Tensor, reached: torch.Tensor, norm: float):
        self.origin, self.norm = x, norm
        self.x = x.clone()
        self.norms = torch.where(reached, 0.0, torch.inf).to(device=x.device, dtype=x.dtype)

    def open(self, budget: float | None) -> torch.Tensor:
        """The samples still searched: alone, every one not fooled by the input itself; at a
        budget, every one without a perturbation within it."""
        return (self.norms > (0.0 if budget is None else budget)).nonzero().squeeze(1)

    def offer(self, rows: torch.Tensor, points: torch.Tensor) -> None:
        norms = lp_norm(points - self.origin[rows], self.norm)
        better = norms < self.norms[rows]
        self.x[rows[better]] = points[better].detach()
        self.norms[rows[better]] = norms[better]
