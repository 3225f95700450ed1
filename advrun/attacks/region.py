"""The randomized gradient-free attack on ReLU networks (Croce & Hein 2018, "A randomized
gradient-free attack on ReLU networks", GCPR), on its linear regions.

A network of affine layers and ReLU (or leaky ReLU) activations is affine on each linear
region: the set of inputs on which every pre-activation keeps its sign. With the signs of an
anchor point ``z`` frozen, the network's logits are ``f(x) = W_z x + c_z`` and each unit's
pre-activation ``a_u(x) = g_u . x + h_u``; the region is the polytope
``{x : s_u (g_u . x + h_u) >= 0 for every unit u}`` with ``s_u`` the sign of ``a_u(z)``. The
smallest perturbation ``delta`` of a sample ``x`` (label ``y``) whose end point lies in that
region, in the data box ``[lo, hi]``, and on the other side of the decision boundary is a
convex program (the paper's problem (4)):

``min ||delta||_p  s.t.  s_u (g_u . (x + delta) + h_u) >= 0,  lo <= x + delta <= hi,
(W_z (x + delta) + c_z)_j - (W_z (x + delta) + c_z)_y >= tau``

per class ``j != y`` (untargeted; targeted: the target over every other class at once), a
linear program for L1 and Linf (SciPy's HiGHS, :func:`scipy.optimize.linprog`) and a
quadratic program for L2 (DAQP, a dual active-set solver). The network is continuous, so on
the closed region it equals its affine map: an optimum is a point of the model's own with
margin ``tau = overshoot * (1 + max |z(x)|)`` past the boundary, up to the solvers' feasibility
tolerances; every point is checked on the float32 model before it counts.

The attack (the paper's scheme): the regions solved are those of anchors ``z`` around ``x``.
The first is ``x``'s own region. Each round then adds, per sample,

* a *walk* step: the minimiser of the relaxed problem (the same program without the region's
  constraints: per class the half-space of ``W_z``'s margin in the box,
  :func:`~advrun.attacks.linear_exact.halfspace_minimum`) from the last anchor's region, the
  region-wise counterpart of a DeepFool step measured from ``x`` (it is also tried on the
  model as a candidate itself);
* ``samples`` random anchors: before any success, points ``x + r u`` of growing
  neighbourhoods of ``x`` (``u`` a random direction of unit Lp norm, ``r`` uniform up to the
  relaxed distance from ``x``'s region times ``growth`` per round); after one, as in the paper,
  points along promising directions: on the segment from ``x`` to the best point so far and
  around the best point ``b`` at ``b + ||b - x|| rho^gamma v`` with ``rho`` uniform and ``v`` a
  random unit direction tilted towards ``x`` with probability 0.8.

Per anchor the classes are taken in increasing order of their relaxed distance, which bounds
the region's optimum from below, and only while that bound beats the best norm found (at most
``classes`` of them). The best point is finally shrunk towards ``x`` by bisection along its
own perturbation (``refine_steps`` forward passes; regions crossed on the way may fool the
model sooner).

Supported models: sequences of the layers :class:`~advrun.bounds.BoundedNetwork` reads
(linear, convolution, flatten, advrun's normalisation layer, batch norm and dropout in eval
mode, average and max pooling) with relu and leaky relu activations; others are refused
(:meth:`RegionAttack.check_model`). Max pooling is piecewise linear too: on a region each
window passes the unit the anchor's window chose, and the region's rows say that the window's
other units stay at most that one. All affine maps of a round's anchors come from one batched
float64 pass (the network with each anchor's signs and choices frozen, run on the anchor, zero
and the unit basis); the programs are dense, ``d`` variables (``2d`` for L1) by one row per
unit (and per other unit of a pooling window), solved one per class and anchor on the CPU.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import optimize
from torch import nn

from advrun.attacks.base import Bounds, Goal, MinimumNormAttack, eval_mode, least_factor
from advrun.attacks.linear_exact import halfspace_minimum
from advrun.attacks.norms import lp_norm
from advrun.errors import InvalidValue, require_int, require_non_negative, require_positive
from advrun.structure import activation_of

#: Activations whose linear regions the attack reads (piecewise linear with two pieces).
PIECEWISE_LINEAR = ("relu", "leaky_relu")
#: Entries of one batched pass that computes the anchors' affine maps (anchors x (d + 2) x widest layer).
_CHUNK = 2**24


def _refusal(model: nn.Module, in_shape: tuple[int, ...]) -> str | None:
    """Why the attack cannot read ``model``'s linear regions, or None."""
    from advrun.bounds import BoundedNetwork

    try:
        net = BoundedNetwork(model, in_shape)
    except InvalidValue as e:
        return e.message
    for i, layer in enumerate(net.layers):
        where = f"layer {layer.name or '0'} ({type(layer.module).__name__})"
        if isinstance(layer.module, nn.MaxPool2d) and len(net.shapes[i]) != 3:
            return f"{where}: needs (channels, height, width) inputs, got {net.shapes[i]}"
        if layer.kind == "activation" and activation_of(layer.module).name not in PIECEWISE_LINEAR:
            name = activation_of(layer.module).name
            return f"{where}: the activation {name} (model.activation) is not piecewise linear"
    return None


@dataclass(frozen=True)
class Regions:
    """The linear regions of ``m`` anchors: logits ``weight @ x + bias`` (``(m, K, d)``, ``(m, K)``)
    and the region's rows ``rows @ x <= limit`` (``(m, H, d)``, ``(m, H)``), all float64."""

    weight: torch.Tensor
    bias: torch.Tensor
    rows: torch.Tensor
    limit: torch.Tensor


def linear_regions(model: nn.Module, anchors: torch.Tensor) -> Regions:
    """The affine map of the logits and the region's constraints at each anchor (module docstring).

    ``model``: a float64 model of supported layers in eval mode. The network runs with every
    activation's slopes, and every max pooling window's choice, frozen at the anchor's: on the
    anchor itself (which sets them), on 0 (the constants) and on the unit basis (the columns).
    A relu unit adds the row of its sign; a pooling window adds one row per other unit of the
    window, which must stay at most the chosen one."""
    from advrun.bounds import BoundedNetwork

    in_shape = tuple(anchors.shape[1:])
    net = BoundedNetwork(model, in_shape)
    d = math.prod(in_shape)
    widest = max(math.prod(s) for s in net.shapes)
    step = max(1, _CHUNK // ((d + 2) * widest))
    basis = torch.eye(d, dtype=torch.float64, device=anchors.device).reshape(1, d, *in_shape)
    parts = []
    for start in range(0, len(anchors), step):
        z = anchors[start:start + step].double()
        m = len(z)
        h = torch.cat([z[:, None], torch.zeros_like(z)[:, None], basis.expand(m, d, *in_shape)], 1)
        h = h.reshape(m * (d + 2), *in_shape)
        rows, limits = [], []
        with torch.no_grad():
            for i, layer in enumerate(net.layers):
                if layer.kind == "activation":
                    pre = h.reshape(m, d + 2, -1)
                    on = pre[:, :1] > 0  # the anchor's signs
                    slope = float(getattr(layer.module, "negative_slope", 0.0))
                    sign = torch.where(on, -1.0, 1.0).to(pre.dtype)  # on: -a(x) <= 0; off: a(x) <= 0
                    _add_rows(rows, limits, sign.transpose(1, 2) * pre.transpose(1, 2))
                    h = (pre * torch.where(on, 1.0, slope)).reshape(h.shape)
                elif isinstance(layer.module, nn.MaxPool2d):
                    h = _frozen_pool(layer.module, h.reshape(m, d + 2, *net.shapes[i]), net.shapes[i + 1], rows, limits)
                    h = h.reshape(m * (d + 2), *net.shapes[i + 1])
                else:
                    h = layer.module(h)
            out = h.reshape(m, d + 2, -1)
        weight = (out[:, 2:] - out[:, 1:2]).transpose(1, 2)
        empty = weight.new_zeros(m, 0, d), weight.new_zeros(m, 0)
        parts.append((weight, out[:, 1], torch.cat(rows, 1) if rows else empty[0],
                      torch.cat(limits, 1) if limits else empty[1]))
    return Regions(*(torch.cat(t) for t in zip(*parts)))


def _add_rows(rows: list, limits: list, values: torch.Tensor) -> None:
    """Rows ``a(x) <= 0`` from the values ``a`` of affine functions on the anchor, 0 and the basis
    (``(m, functions, d + 2)``): coefficients ``a(e_i) - a(0)``, limit ``-a(0)``."""
    rows.append(values[:, :, 2:] - values[:, :, 1:2])
    limits.append(-values[:, :, 1])


def _frozen_pool(module: nn.MaxPool2d, h: torch.Tensor, out_shape: tuple[int, ...], rows: list,
                 limits: list) -> torch.Tensor:
    """Max pooling with each window's unit chosen by the anchor (slot 0 of ``h``, ``(m, d + 2, C, H, W)``);
    adds the rows ``h_u - h_chosen <= 0`` of the window's other units."""
    from advrun.exact import pool_windows

    m, slots = h.shape[:2]
    in_shape = tuple(h.shape[2:])
    _, index = F.max_pool2d(h[:, 0], module.kernel_size, module.stride, module.padding, module.dilation,
                            module.ceil_mode, return_indices=True)  # per channel, flat in H x W
    channels, plane = in_shape[0], in_shape[1] * in_shape[2]
    chosen = (index.flatten(2) + torch.arange(channels).view(1, -1, 1) * plane).flatten(1)  # (m, outputs)
    flat = h.reshape(m, slots, -1)
    pooled = flat.gather(2, chosen[:, None].expand(m, slots, -1))
    windows = torch.from_numpy(pool_windows(module, in_shape, out_shape))  # (outputs, k); -1: padding
    others = (windows >= 0)[None] & (windows[None] != chosen[:, :, None])  # (m, outputs, k)
    members = windows.clamp_min(0).flatten()
    values = flat[:, :, members].reshape(m, slots, *windows.shape) - pooled[:, :, :, None]
    values = values * others[:, None]  # a chosen or padding entry: the row 0 <= 0
    _add_rows(rows, limits, values.flatten(2).transpose(1, 2))
    return pooled


def solve_program(p: float, rows: np.ndarray, limit: np.ndarray, margin_rows: np.ndarray, margin: np.ndarray,
                  up: np.ndarray, down: np.ndarray) -> np.ndarray | None:
    """``argmin ||delta||_p`` subject to ``rows @ delta <= limit``, ``margin_rows @ delta >= margin``
    and ``-down <= delta <= up`` (float64); None where the program is infeasible or unsolved.

    By constraint generation: the program is solved with the margin rows and those of ``rows``
    that the last solution violates (none at first), added until a solution satisfies every row
    (within 1e-9 relative). Each program
    relaxes the full one, so the last is the full optimum, and an infeasible one proves the full
    one infeasible; most rows of a linear region are far from the optimum and never enter."""
    kept = np.zeros(len(rows), dtype=bool)
    delta = _solve_rows(p, rows[kept], limit[kept], margin_rows, margin, up, down)
    tolerance = 1e-9 * (1 + np.abs(limit))
    while delta is not None:
        violated = ~kept & (rows @ delta > limit + tolerance)
        if not violated.any():
            return delta
        kept |= violated
        delta = _solve_rows(p, rows[kept], limit[kept], margin_rows, margin, up, down)
    return None


def _solve_rows(p: float, rows: np.ndarray, limit: np.ndarray, margin_rows: np.ndarray, margin: np.ndarray,
                up: np.ndarray, down: np.ndarray) -> np.ndarray | None:
    """:func:`solve_program` with every row at once. L1 and Linf: linear programs (HiGHS); L2: a
    quadratic program (DAQP)."""
    d = len(up)
    a = np.vstack([rows, -margin_rows])
    b = np.concatenate([limit, -margin])
    if p == 2.0:
        import daqp

        bounds_up = np.concatenate([up, b])
        bounds_down = np.concatenate([-down, np.full(len(b), -np.inf)])
        delta, _, flag, _ = daqp.solve(np.eye(d), np.zeros(d), np.ascontiguousarray(a), bounds_up, bounds_down,
                                       np.zeros(d + len(b), dtype=np.intc), primal_tol=1e-9)
        return np.asarray(delta) if flag >= 1 else None
    if p == 1.0:  # delta = u - v, u, v >= 0: min sum(u + v)
        result = optimize.linprog(np.ones(2 * d), A_ub=np.hstack([a, -a]), b_ub=b,
                                  bounds=np.concatenate([np.stack([np.zeros(d), up], 1),
                                                         np.stack([np.zeros(d), down], 1)]), method="highs")
        return result.x[:d] - result.x[d:] if result.status == 0 else None
    # Linf: min t with -t <= delta_i <= t
    eye = np.eye(d)
    a = np.vstack([np.hstack([a, np.zeros((len(a), 1))]),
                   np.hstack([eye, -np.ones((d, 1))]), np.hstack([-eye, -np.ones((d, 1))])])
    b = np.concatenate([b, np.zeros(2 * d)])
    bounds = np.concatenate([np.stack([-down, up], 1), [[0.0, np.inf]]])
    result = optimize.linprog(np.r_[np.zeros(d), 1.0], A_ub=a, b_ub=b, bounds=bounds, method="highs")
    return result.x[:d] if result.status == 0 else None


@dataclass
class RegionAttack(MinimumNormAttack):
    """Minimal perturbations of ReLU networks by convex programs on sampled linear regions
    (Croce & Hein 2018; module docstring), in Linf, L2 or L1; untargeted or targeted.

    ``rounds`` rounds of one walk step and ``samples`` random anchors per sample and round
    (``1 + rounds * (1 + samples)`` regions per sample); ``classes``: most programs per anchor;
    ``growth``: factor per round of the neighbourhood sampled before a success; ``gamma``: the
    exponent of the radius around the best point (larger: closer to it); ``overshoot``: the
    logit margin asked past the boundary, times ``1 + max |logit|`` (raised tenfold, twice at
    most, where the float32 model disagrees); ``refine_steps``: bisection steps shrinking the
    result towards ``x``.
    """

    name = "region"
    norms = (math.inf, 2.0, 1.0)
    targetable = True

    norm: float | str = 2.0
    rounds: int = 6
    samples: int = 4
    classes: int = 2
    growth: float = 1.5
    gamma: float = 2.0
    overshoot: float = 1e-5
    refine_steps: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        require_int("rounds", self.rounds, minimum=0)
        require_int("samples", self.samples, minimum=0)
        require_int("classes", self.classes, minimum=1)
        require_int("refine_steps", self.refine_steps, minimum=0)
        require_positive("growth", self.growth)
        require_non_negative("gamma", self.gamma)
        require_positive("overshoot", self.overshoot)

    def check_model(self, model: nn.Module, in_shape: tuple[int, ...]) -> None:
        super().check_model(model, in_shape)
        why = _refusal(model, in_shape)
        if why is not None:
            raise InvalidValue("_target_", f"region needs a piecewise-linear network (linear and convolution layers "
                                           f"with relu or leaky_relu), but {why}; use deepfool, fmn or cw for other "
                                           f"models")

    def perturb(self, model: nn.Module, x: torch.Tensor, goal: Goal, bounds: Bounds) -> torch.Tensor:
        from advrun.bounds import float64_copy

        why = _refusal(model, tuple(x.shape[1:]))
        if why is not None:
            raise InvalidValue("_target_", f"region: {why}")
        device = x.device  # the programs are solved on the CPU; the model judges on its device
        judge = model if device.type == "cpu" else (lambda points: model(points.to(device)).cpu())
        goal_cpu = Goal(goal.labels.cpu(), goal.targeted, goal.source.cpu())
        search = _Search(self, judge, float64_copy(copy.deepcopy(model).cpu()), x.cpu(), goal_cpu, bounds)
        with eval_mode(search.model64):
            search.run()
        return search.result().to(device)


class _Search:
    """The state of one batch: per sample the best point found and its norm."""

    def __init__(self, attack: RegionAttack, model: Callable[[torch.Tensor], torch.Tensor], model64: nn.Module,
                 x: torch.Tensor, goal: Goal, bounds: Bounds):
        self.attack, self.model, self.model64 = attack, model, model64
        self.x, self.goal, self.bounds = x, goal, bounds
        self.p = float(attack.norm)
        self.flat = x.flatten(1).double()
        lo, hi = bounds
        self.up, self.down = (hi - self.flat).clamp_min(0), (self.flat - lo).clamp_min(0)
        self.best = x.clone()
        self.best_norm = torch.full((len(x),), math.inf, dtype=torch.float64)
        with torch.no_grad():
            clean = model(x)
        self.scale = 1 + clean.double().abs().amax(dim=1)
        self.todo = (~goal.reached(clean)).nonzero().squeeze(1)  # the others need no perturbation
        self.labels = goal.labels
        self._advance: Callable[[], None] = lambda: None

    # ---------------------------------------------------------------------------- rounds

    def run(self) -> None:
        if len(self.todo) == 0:
            return
        from advrun.console import progress_bar

        rows = self.todo
        total = len(rows) * (1 + self.attack.rounds * (1 + self.attack.samples))
        with progress_bar(transient=True) as bar:  # under the evaluation's bar, which counts batches
            self._advance = lambda: bar.advance(task)
            task = bar.add_task(f"{self.attack.label}: regions", total=total)
            self._rounds(rows)
        self._refine()

    def _rounds(self, rows: torch.Tensor) -> None:
        walk, reach = self._round(rows, self.x[rows].flatten(1).double())  # x's own region
        for r in range(self.attack.rounds):
            anchors, owners = [walk], [rows]
            if self.attack.samples:
                extra = rows.repeat_interleave(self.attack.samples)
                anchors.append(self._random_anchors(extra, reach.repeat_interleave(self.attack.samples)
                                                    * self.attack.growth ** r))
                owners.append(extra)
            owner = torch.cat(owners)
            steps, _ = self._round(owner, torch.cat(anchors))
            walk = steps[:len(rows)]

    def _random_anchors(self, rows: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
        """Anchors around ``x`` (no success yet) or along promising directions (module docstring)."""
        x0 = self.flat[rows]
        u = self._direction(torch.randn_like(x0))
        near = x0 + radius[:, None] * torch.rand(len(rows), 1, dtype=x0.dtype) * u
        found = torch.isfinite(self.best_norm[rows])
        if not found.any():
            return near
        best = self.best[rows].flatten(1).double()
        distance = self.best_norm[rows][:, None].clamp_max(torch.finfo(torch.float64).max)
        towards = x0 - best
        towards = towards / lp_norm(towards, 2.0).clamp_min(1e-300)[:, None]
        v = torch.randn_like(x0)
        v = v - (v * towards).sum(1, keepdim=True) * towards
        v = v / lp_norm(v, 2.0).clamp_min(1e-300)[:, None]
        angle = torch.rand(len(rows), 1, dtype=x0.dtype) * math.pi
        angle = torch.where(torch.rand(len(rows), 1, dtype=x0.dtype) < 0.8, angle, -angle)
        tilted = self._direction(torch.sin(angle) * towards + torch.cos(angle) * v)
        around = best + distance * torch.rand(len(rows), 1, dtype=x0.dtype) ** self.attack.gamma * tilted
        segment = x0 + (0.5 + 0.5 * torch.rand(len(rows), 1, dtype=x0.dtype)) * (best - x0)
        chosen = torch.where(torch.rand(len(rows), 1) < 0.5, around, segment)
        return torch.where(found[:, None], chosen, near)

    def _direction(self, v: torch.Tensor) -> torch.Tensor:
        return v / lp_norm(v, self.p).clamp_min(1e-300)[:, None]

    def _round(self, owners: torch.Tensor, anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Solve the regions of ``anchors`` (flat, float64) for the samples ``owners``; returns the
        walk's next anchors (the relaxed minimisers) and their relaxed distances from ``x``."""
        lo, hi = self.bounds
        regions = linear_regions(self.model64, anchors.clamp(lo, hi).reshape(len(anchors), *self.x.shape[1:]))
        x0 = self.flat[owners]
        relaxed, relaxed_norm, lower, order = self._relaxed(regions, owners, x0)
        self._try(owners, x0 + relaxed.nan_to_num(0.0, 0.0, 0.0), torch.isfinite(relaxed_norm))
        for k in range(len(owners)):
            i = int(owners[k])
            for j in order[k][: self.attack.classes]:
                if not lower[k, j] < self.best_norm[i]:  # the region's optimum is no better
                    break
                self._solve(i, regions, k, int(j))
            self._advance()
        step = torch.where(torch.isfinite(relaxed_norm)[:, None], x0 + relaxed.nan_to_num(0.0, 0.0, 0.0), anchors)
        return step, torch.where(torch.isfinite(relaxed_norm), relaxed_norm, 0.0)

    def _relaxed(self, regions: Regions, owners: torch.Tensor,
                 x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[list[int]]]:
        """Per anchor the relaxed minimiser (the region's constraints dropped) and its norm
        (inf where the box cannot reach the goal), per class a lower bound on the region's
        optimum (``(m, K)``), and the classes to solve in order."""
        y = self.labels[owners]
        logits = (regions.weight @ x0[:, :, None]).squeeze(2) + regions.bias
        tau = self.attack.overshoot * self.scale[owners]
        k = logits.shape[1]
        m, d = len(owners), x0.shape[1]
        g = regions.weight - regions.weight[torch.arange(m), y][:, None]  # (m, K, d): w_j - w_y
        need = logits.gather(1, y[:, None]) - logits + tau[:, None]  # g_j . delta >= need_j
        if self.goal.targeted:
            g, need = -g, logits - logits.gather(1, y[:, None]) + tau[:, None]  # w_t - w_j . delta >= ...
        up, down = self.up[owners], self.down[owners]
        delta = halfspace_minimum(g.reshape(m * k, d), need.reshape(-1), up.repeat_interleave(k, 0),
                                  down.repeat_interleave(k, 0), self.p).reshape(m, k, d)
        norms = torch.where(torch.isfinite(delta).all(2), lp_norm(delta.reshape(m * k, d).nan_to_num(0.0, 0.0, 0.0),
                                                                   self.p).reshape(m, k), math.inf)
        own = torch.nn.functional.one_hot(y, k).bool()
        if self.goal.targeted:  # every class must be overtaken: the largest bound, one program
            norms = norms.masked_fill(own, -math.inf)
            worst = norms.argmax(dim=1)
            bound = norms.gather(1, worst[:, None]).squeeze(1)
            pick = delta[torch.arange(m), worst]
            return (torch.where(torch.isfinite(bound)[:, None], pick, math.nan), bound,
                    bound[:, None].expand(m, k), [[int(t)] for t in y])
        norms = norms.masked_fill(own, math.inf)
        order = norms.argsort(dim=1)
        nearest = order[:, 0]
        bound = norms.gather(1, nearest[:, None]).squeeze(1)
        pick = delta[torch.arange(m), nearest]
        return torch.where(torch.isfinite(bound)[:, None], pick, math.nan), bound, norms, order.tolist()

    def _solve(self, i: int, regions: Regions, k: int, j: int) -> None:
        """The program of sample ``i`` in the region of anchor ``k`` towards class ``j`` (untargeted)
        or the target ``j``; the solution counts once the model confirms it."""
        x0 = self.flat[i]
        weight, bias = regions.weight[k], regions.bias[k]
        logits = weight @ x0 + bias
        rows = regions.rows[k].numpy()
        limit = (regions.limit[k] - regions.rows[k] @ x0).numpy()
        y = int(self.labels[i])
        others = [c for c in range(len(logits)) if c != j] if self.goal.targeted else [y]
        winners = [j] * len(others) if self.goal.targeted else [j]
        margin_rows = (weight[winners] - weight[others]).numpy()
        base = (logits[others] - logits[winners]).numpy()
        for attempt in range(3):  # raise the margin where float32 rounding undid it
            tau = self.attack.overshoot * 10**attempt * float(self.scale[i])
            delta = solve_program(self.p, rows, limit, margin_rows, base + tau, self.up[i].numpy(),
                                  self.down[i].numpy())
            if delta is None:
                return
            delta = torch.from_numpy(delta)
            if not float(lp_norm(delta[None], self.p)) < self.best_norm[i]:
                return
            if self._try(torch.tensor([i]), (x0 + delta)[None], torch.tensor([True])).item():
                return

    def _try(self, rows: torch.Tensor, points: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Keep each valid point (flat, float64) that the float32 model confirms and that beats its
        sample's best; returns which were kept."""
        lo, hi = self.bounds
        candidate = points.to(self.x.dtype).clamp(lo, hi).reshape(len(rows), *self.x.shape[1:])
        with torch.no_grad():
            fooled = self.goal.subset(rows).reached(self.model(candidate))
        norms = lp_norm((candidate - self.x[rows]).double(), self.p)
        kept = torch.zeros(len(rows), dtype=torch.bool)
        for k in (valid & fooled).nonzero().squeeze(1).tolist():  # in order: a sample may come twice
            i = int(rows[k])
            if norms[k] < self.best_norm[i]:
                self.best[i], self.best_norm[i] = candidate[k], norms[k]
                kept[k] = True
        return kept

    def _refine(self) -> None:
        """Shrink each success towards ``x`` along its own perturbation (:func:`least_factor`)."""
        index = torch.isfinite(self.best_norm).nonzero().squeeze(1)
        if not self.attack.refine_steps or len(index) == 0:
            return
        x, delta = self.x[index], self.best[index] - self.x[index]
        factor = least_factor(self.model, self.goal.subset(index), x, delta, self.attack.refine_steps,
                              bounds=self.bounds)
        shrunk = factor < 1  # each of these was checked at its factor
        shape = (-1,) + (1,) * (x.dim() - 1)
        self.best[index[shrunk]] = (x + factor.view(shape) * delta).clamp(*self.bounds)[shrunk]

    def result(self) -> torch.Tensor:
        return self.best
