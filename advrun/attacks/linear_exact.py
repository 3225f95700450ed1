"""The exact minimal adversarial perturbation of an affine classifier, inside the data bounds.

For logits ``z = W x + b`` a sample of label ``y`` is misclassified once some class ``j``
overtakes ``y``: ``g_j . delta >= m_j`` with ``g_j = w_j - w_y`` and ``m_j = z_y - z_j``. The
smallest such ``delta`` is the smallest over ``j`` of the smallest ``delta`` in each
half-space (the classic distance ``m_j / ||g_j||_dual`` when the bounds do not bind; for two
classes the Linf optimum at budget eps is ``-y eps sign(theta)``, Goodfellow et al. 2015).
With the box ``lo <= x + delta <= hi`` each half-space problem stays separable:

* Linf at budget ``s``: the best ``delta_i = sign(g_i) min(s, room_i)`` (clipping is optimal
  coordinate by coordinate);
* L2: the KKT conditions of ``min ||delta||_2 s.t. g . delta >= m`` in the box give
  ``delta_i = clip(t g_i, lo - x_i, hi - x_i)`` for a multiplier ``t >= 0``;
* L1: a unit of ``|delta_i|`` costs 1 and buys ``|g_i|`` of ``g . delta``, up to ``room_i``
  units: a fractional knapsack, solved greedily. Coordinates move by their whole room in
  decreasing order of ``|g_i|`` until ``g . delta`` reaches ``m``; the last moves by what is
  still missing (without the box: the single largest ``|g_i|`` carries ``m / ||g||_inf``).

where ``room_i`` is the distance to the bound in the direction of ``g_i``. For Linf and L2,
``g . delta`` is a piecewise-linear increasing function of ``s`` (or ``t``) with one
breakpoint per coordinate, so the smallest parameter that reaches ``m`` is solved exactly
by sorting the breakpoints (no bisection); for L1 the sort is by ``|g_i|``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from advrun.attacks.base import Bounds, Goal, MinimumNormAttack
from advrun.attacks.norms import lp_norm
from advrun.errors import InvalidValue, require_positive
from advrun.structure import affine_map, check_affine, probe_points


def halfspace_minimum(g: torch.Tensor, m: torch.Tensor, room_up: torch.Tensor, room_down: torch.Tensor,
                      p: float) -> torch.Tensor:
    """Per row, the smallest ``delta`` (Lp, p = inf, 2 or 1) with ``g . delta >= m`` and
    ``-room_down <= delta <= room_up``; a row of ``inf`` where the box cannot reach ``m``."""
    if p == 1.0:
        return halfspace_minimum_l1(g, m, room_up, room_down)
    delta, reachable = _halfspace_minimum_sorted(g, m, room_up, room_down, p)
    return torch.where(reachable, delta, math.inf)


def _halfspace_minimum_sorted(g: torch.Tensor, m: torch.Tensor, room_up: torch.Tensor, room_down: torch.Tensor,
                              p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`halfspace_minimum` for Linf and L2 by sorting the breakpoints: ``delta`` (meaningless
    in a row the box cannot reach) and per row whether the box reaches ``m`` (``[n, 1]``)."""
    magnitude = g.abs()
    room = torch.where(g > 0, room_up, room_down)
    if p == math.inf:  # |delta_i| = min(s, room_i): coordinate i saturates at s = room_i
        breaks, order = room.sort(dim=1)
        saturated = (magnitude * room).gather(1, order)
        free = magnitude.gather(1, order)
    else:  # |delta_i| = min(s |g_i|, room_i)
        breaks = torch.where(magnitude > 0, room / magnitude.clamp_min(1e-300), math.inf)
        breaks, order = breaks.sort(dim=1)
        saturated = (magnitude * room).gather(1, order)
        free = (magnitude * magnitude).gather(1, order)
    saturated = saturated.cumsum(dim=1) - saturated  # g . delta of the coordinates saturated before break k
    free = free.flip(1).cumsum(dim=1).flip(1)  # slope of coordinates k, k+1, ...
    value_at_break = saturated + torch.where(free > 0, breaks * free, 0.0)
    reached = value_at_break >= m[:, None]
    first = reached.to(torch.int64).argmax(dim=1, keepdim=True)  # g . delta = m is reached on (b_k-1, b_k]
    s = (m[:, None] - saturated.gather(1, first)) / free.gather(1, first).clamp_min(1e-300)
    s = torch.minimum(s, breaks.gather(1, first))
    step = s if p == math.inf else s * magnitude
    delta = g.sign() * torch.minimum(step, room)
    return delta, reached.any(dim=1, keepdim=True)


def halfspace_minimum_l1(g: torch.Tensor, m: torch.Tensor, room_up: torch.Tensor,
                         room_down: torch.Tensor) -> torch.Tensor:
    """Per row, the smallest ``delta`` in L1 with ``g . delta >= m`` and ``-room_down <= delta <= room_up``
    (the fractional knapsack of the module docstring); a row of ``inf`` where the box cannot reach ``m``."""
    magnitude = g.abs()
    room = torch.where(g > 0, room_up, room_down)
    magnitude, order = magnitude.sort(dim=1, descending=True, stable=True)
    room = room.gather(1, order)
    reach = (magnitude * room).cumsum(dim=1)  # g . delta once coordinates 0..k have moved by their room
    reached = reach >= m[:, None]
    last = reached.to(torch.int64).argmax(dim=1, keepdim=True)  # the coordinate that moves only part way
    before = reach.gather(1, last) - (magnitude * room).gather(1, last)
    part = ((m[:, None] - before) / magnitude.gather(1, last).clamp_min(1e-300)).clamp_min(0.0)
    part = torch.minimum(part, room.gather(1, last))
    rank = torch.arange(g.shape[1], device=g.device)
    amount = torch.where(rank < last, room, torch.where(rank == last, part, 0.0))
    delta = torch.zeros_like(g).scatter(1, order, amount) * g.sign()
    return torch.where(reached.any(dim=1, keepdim=True), delta, math.inf)


@dataclass
class LinearExact(MinimumNormAttack):
    """The minimal untargeted perturbation of an affine model, in Linf, L2 or L1, in the bounds.

    Exact: with ``W, b`` read off the model, the returned perturbation solves
    ``min ||delta||_p  s.t.  max_{j != y} (W (x + delta) + b)_j >= (W (x + delta) + b)_y,
    lo <= x + delta <= hi`` in float64, except that each margin ``m_j`` is raised by
    ``overshoot * (1 + max_k |z_k|)`` so that the returned float32 point lies strictly across the
    boundary; the norm exceeds the exact minimum by that margin's price (without the box: the
    margin over ``||g_j||_dual``; in the box, over the slope of the last coordinate moved).
    Samples the box cannot misclassify are returned unchanged. Only affine models are
    accepted (:meth:`check_model`); untargeted only (a target needs ``K - 1`` constraints at
    once, not one half-space).
    """

    name = "linear_exact"
    norms = (math.inf, 2.0, 1.0)
    targetable = False

    overshoot: float = 1e-6

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive("overshoot", self.overshoot)

    def check_model(self, model: nn.Module, in_shape: tuple[int, ...]) -> None:
        super().check_model(model, in_shape)
        try:
            check_affine(model, in_shape)  # as attacked: no batch statistics, no dropout
        except InvalidValue as e:
            raise InvalidValue("_target_", f"linear_exact needs an affine classifier (e.g. model=logreg), but "
                                           f"{e.message}; use deepfool or cw for non-linear models") from None

    def perturb(self, model: nn.Module, x: torch.Tensor, goal: Goal, bounds: Bounds) -> torch.Tensor:
        lo, hi = bounds
        weight, bias = (t.double() for t in affine_map(model, probe_points(x.shape[1:], x, first=x[:1])))
        x64 = x.flatten(1).double()
        logits = x64 @ weight.T + bias
        y = goal.labels
        scale = 1 + logits.abs().amax(dim=1)
        x_adv = x.clone()
        todo = (logits.argmax(dim=1) == y).nonzero().squeeze(1)  # the others need no perturbation
        for attempt in range(4):  # raise the crossing margin where float32 rounding undid it
            if len(todo) == 0:
                break
            delta = self._minimal_delta(weight, logits[todo], y[todo], x64[todo], bounds,
                                        self.overshoot * 10**attempt * scale[todo])
            found = torch.isfinite(delta).all(dim=1)
            candidate = (x[todo] + delta.nan_to_num(0.0, 0.0, 0.0).to(x.dtype).view_as(x[todo])).clamp(lo, hi)
            with torch.no_grad():
                fooled = found & (model(candidate).argmax(dim=1) != y[todo])
            x_adv[todo[fooled]] = candidate[fooled]
            todo = todo[found & ~fooled]
        return x_adv

    def _minimal_delta(self, weight, logits, y, x, bounds, extra) -> torch.Tensor:
        """Per sample the smallest perturbation over all classes ``j != y`` (rows of ``inf`` where none)."""
        lo, hi = bounds
        best = torch.full_like(x, math.inf)
        best_norm = torch.full((len(x),), math.inf, dtype=x.dtype, device=x.device)
        own = logits.gather(1, y[:, None]).squeeze(1)
        for j in range(weight.shape[0]):  # a loop over classes, vectorised over samples
            g = weight[j] - weight[y]
            delta = halfspace_minimum(g, own - logits[:, j] + extra, hi - x, x - lo, self.norm)
            norms = torch.where((y != j) & torch.isfinite(delta).all(dim=1), lp_norm(delta, self.norm), math.inf)
            better = norms < best_norm
            best[better], best_norm[better] = delta[better], norms[better]
        return best
