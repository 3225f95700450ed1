"""Exact robustness verification of small piecewise linear networks as mixed-integer linear
programs (Tjeng, Xiao & Tedrake 2019, "Evaluating robustness of neural networks with mixed
integer programming"), solved by HiGHS through :func:`scipy.optimize.milp`.

For a sample ``x`` of label ``y`` and a budget ``eps`` the question is whether any input ``x'``
of the ball ``||x' - x||_p <= eps`` intersected with the data box reaches a margin
``z_y(x') - z_j(x') <= 0`` for some class ``j``. The network is written as linear constraints
on its input, on the output of every nonlinear unit and on one binary variable per unit whose
sign can change over the ball:

* **Affine segments** between nonlinear layers (linear, convolution, the normalisation layer,
  flatten, batch norm and dropout in eval mode, average pooling, ``BinaryLogits``) are read off
  the model as dense maps ``(W, b)`` (``b`` the segment at 0, column ``i`` the segment at
  ``e_i`` minus ``b``), stored sparse.
* **ReLU and leaky ReLU** ``a = max(z, s z)`` (slope ``s`` in ``[0, 1)``) with ``z`` in
  ``[l, u]``: a stable unit needs no binary (``l >= 0``: ``a = z``; ``u <= 0``: ``a = s z``, a
  dead relu is the constant 0); an unstable one gets the big-M formulation of the paper's
  Section 4.1 with a binary ``d`` (``d = 1``: ``z >= 0``), here for any slope:
  ``a >= z``, ``a >= s z``, ``a <= z + (1 - s)(-l)(1 - d)``, ``a <= s z + (1 - s) u d``.
* **Max pooling** ``m = max_k z_k`` (the paper's formulation of the maximum): the window's
  units whose upper bound lies below the largest lower bound can never be the maximum and are
  dropped; with one unit left ``m = z_k``, else one binary per unit, ``sum d_k = 1``,
  ``m >= z_k`` and ``m <= z_k + (U - l_k)(1 - d_k)`` with ``U`` the largest upper bound.
* **Ball**: Linf, the input's bounds (the ball intersected with the data box); L1 the same box
  and auxiliary variables ``t_i >= |x'_i - x_i|``, ``sum t_i <= eps``. The L2 ball is a
  quadratic constraint, which ``milp`` (linear constraints only) does not take: refused.

The intervals ``[l, u]`` (the big M's, and which units are stable) are CROWN's, computed in
float64 by :meth:`advrun.bounds.BoundedNetwork.intervals`; the tighter they are, the fewer
binaries and the tighter the relaxation each node of the branch and bound solves.

Per sample, budget and class ``j`` the solver first decides whether ``margin_j <= tau`` is
feasible (objective 0: it stops at the first feasible point), with ``tau = 1e-6 (1 + max |z(x)|)``
a small band above 0 so that an infeasibility proof never rests on the solver's own tolerances
(primal feasibility 1e-7, integrality 1e-6): infeasible proves ``margin_j > tau > 0`` over the
whole set. A feasible point is checked by running the float64 model on it (projected onto the
set first): a margin below ``-1e-9 (1 + max |z|)`` is a counterexample. If it is not, its
binaries are fixed and the margin minimised over that linear piece (a linear program) and the
new point checked the same way; failing that (a point within rounding of the boundary, or one
the solver's integrality tolerance let through) the margin is minimised over the whole program
and the incumbent checked the same way. A class that CROWN's margin bound already proves
(``screen``) is not solved.

Verdicts, per sample and budget: ``1`` (:data:`ROBUST`) every class proven; ``0``
(:data:`NOT_ROBUST`) a counterexample checked on the model, or the clean point misclassified
(or on a tie, which the certificates of :mod:`advrun.certify` count as not certified either);
``-1`` (:data:`UNKNOWN`) neither within the time limit, or the minimum margin lies within the
band ``[-1e-9 (1 + max |z|), tau]`` around 0 where rounding decides. "Exact" means: about the
float64 model, up to that band and to HiGHS's tolerances; a verdict is never a guess, and
unknown is reported as unknown.

Budgets are decided by bisection over the sorted budgets, using monotonicity: verified at
``eps`` is verified at every smaller budget, and a counterexample at distance ``r`` is one at
every budget ``>= r``. ``time_limit`` is the wall time of one sample: building and solving all
its programs (budgets and classes together; the bounds of all samples, computed beforehand,
not counted). When it runs out, the remaining budgets are unknown unless monotonicity or CROWN
decides them.

Size: one binary per unstable unit, so the cost grows exponentially with the unstable units in
the worst case; small MLPs on 8x8 digits are solved in milliseconds per class, a LeNet-style
CNN on MNIST at small budgets in seconds to minutes, larger budgets and networks end unknown.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import optimize, sparse
from torch import nn

from advrun.attacks.norms import norm_field, norm_name, parse_norm
from advrun.bounds import Ball, BoundedNetwork, float64_copy
from advrun.errors import InvalidValue, require_non_negative, require_positive
from advrun.structure import Layer, activation_of, as_module

#: Norms of the balls a program can encode (linear constraints).
NORMS = (math.inf, 1.0)
#: Verdicts of :func:`verify`.
ROBUST, NOT_ROBUST, UNKNOWN = 1, 0, -1
#: The activations encoded exactly (piecewise linear with two pieces: one binary per unit).
PIECEWISE_LINEAR = ("relu", "leaky_relu")
#: Relative band above 0 asked of the margin before infeasibility counts as a proof.
CUTOFF = 1e-6
#: Relative margin below 0 that makes a point a counterexample on the float64 model.
TIE = 1e-9
_UNDECIDED = 2
#: Entries computed at once when a segment is read off (basis vectors x (inputs + outputs)).
_CHUNK = 2**22
#: Shortest time worth handing to the solver, in seconds.
_SHORTEST = 1e-3


@dataclass(frozen=True)
class Verification:
    """What :func:`verification` found: ``verdicts`` (int8, samples x budgets: 1 robust, 0 not
    robust, -1 unknown), ``counterexamples`` (float64, samples x budgets x input shape; the point
    that changes the decision where the verdict is 0, the clean input for a misclassified sample,
    NaN elsewhere), ``solves`` (programs solved per sample) and ``seconds`` (wall time per sample,
    the limit's clock)."""

    verdicts: torch.Tensor
    counterexamples: torch.Tensor
    solves: torch.Tensor
    seconds: torch.Tensor


def _parse_norm(norm: object) -> float:
    try:
        p = parse_norm(norm)
    except ValueError as e:
        raise InvalidValue("norm", str(e)) from None
    if p == 2.0:
        raise InvalidValue("norm", "the L2 ball ||x' - x||_2 <= eps is a quadratic constraint, which scipy's milp "
                                   "(HiGHS, linear constraints only) does not take; exact verification supports "
                                   "linf and l1 (advrun.bounds bounds L2 balls)")
    return norm_field(p, NORMS, "exact verification")


def _refusal(layer: Layer) -> str | None:
    """Why a layer (already accepted by :class:`~advrun.bounds.BoundedNetwork`) cannot be encoded, or None."""
    module = layer.module
    where = f"layer {layer.name or '0'} ({type(module).__name__})"
    if layer.kind == "activation":
        activation = activation_of(module)
        if activation.name not in PIECEWISE_LINEAR:
            return (f"{where}: {activation.name} is not piecewise linear with two pieces, so a mixed-integer "
                    f"linear program cannot encode it exactly; exact verification knows relu and leaky relu "
                    f"(advrun.bounds bounds the others)")
    if isinstance(module, nn.MaxPool2d) and module.return_indices:
        return f"{where}: max pooling that returns indices is not a map to the next layer"
    return None


def _network(model: nn.Module, in_shape: Sequence[int]) -> BoundedNetwork:
    try:
        net = BoundedNetwork(model, in_shape)
    except InvalidValue as e:
        raise InvalidValue(e.field, f"exact verification: {e.message}") from None
    for i, layer in enumerate(net.layers):
        why = _refusal(layer)
        if why is None and isinstance(layer.module, nn.MaxPool2d) and len(net.shapes[i]) != 3:
            why = f"layer {layer.name} (MaxPool2d): needs (channels, height, width) inputs, got {net.shapes[i]}"
        if why is not None:
            raise InvalidValue("_target_", why)
    return net


def check_exact(model: nn.Module, in_shape: Sequence[int], norm: object) -> None:
    """Raise :class:`InvalidValue` (field ``norm`` for the norm, ``_target_`` for a layer) unless
    :func:`verify` can encode ``model`` (inputs of shape ``in_shape``) and balls of ``norm``
    exactly: a sequence of affine layers, relu, leaky relu and max pooling (module docstring),
    in the Linf or L1 norm."""
    _parse_norm(norm)
    _network(model, in_shape)


def supports(model: nn.Module, in_shape: Sequence[int], norm: object) -> bool:
    """Whether :func:`verify` can encode ``model`` in ``norm`` (:func:`check_exact`)."""
    try:
        check_exact(model, in_shape, norm)
    except InvalidValue:
        return False
    return True


# ------------------------------------------------------------------------------------ encoding


def _segment(layers: Sequence[Layer], in_shape: Sequence[int]) -> tuple[sparse.csc_matrix, np.ndarray]:
    """``(W, b)`` of affine layers (float64, eval mode): ``b`` their output at 0, column ``i`` of
    ``W`` the output at ``e_i`` minus ``b`` (entries that are exactly 0 are not stored)."""
    d = math.prod(in_shape)
    if not layers:
        return sparse.identity(d, dtype=np.float64, format="csc"), np.zeros(d)
    segment = as_module(layers)
    with torch.no_grad():
        bias = segment(torch.zeros((1, *in_shape), dtype=torch.float64)).flatten()
        step = max(1, _CHUNK // (d + bias.numel()))
        blocks = []
        for start in range(0, d, step):
            count = min(step, d - start)
            basis = torch.zeros(count, d, dtype=torch.float64)
            basis[torch.arange(count), start + torch.arange(count)] = 1.0
            columns = segment(basis.reshape(count, *in_shape)).flatten(1) - bias
            blocks.append(sparse.csr_matrix(columns.numpy()))
    return sparse.vstack(blocks).T.tocsc(), bias.numpy().copy()


def _pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def pool_windows(module: nn.MaxPool2d, in_shape: Sequence[int], out_shape: Sequence[int]) -> np.ndarray:
    """Per output unit of max pooling (flattened ``(C, OH, OW)``), the flat indices into its
    input ``(C, H, W)`` of the window's units; ``-1`` for padding (torch pads with ``-inf``)."""
    channels, height, width = in_shape
    _, out_h, out_w = out_shape
    (kh, kw), (sh, sw) = _pair(module.kernel_size), _pair(module.stride)
    (ph, pw), (dh, dw) = _pair(module.padding), _pair(module.dilation)
    rows = (np.arange(out_h)[:, None] * sh - ph + np.arange(kh)[None] * dh)[:, None, :, None]
    cols = (np.arange(out_w)[:, None] * sw - pw + np.arange(kw)[None] * dw)[None, :, None, :]
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    flat = np.arange(channels)[:, None, None, None, None] * height * width + (rows * width + cols)[None]
    return np.where(inside[None], flat, -1).reshape(channels * out_h * out_w, kh * kw)


@dataclass
class _Affine:
    """Units ``k`` of ``matrix[k] . v[columns] + constant[k]``: ``v`` the program's variables."""

    matrix: sparse.csr_matrix
    columns: np.ndarray
    constant: np.ndarray

    def rows(self, units: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``scale`` times the variable part of ``units``, as (row within ``units``, variable, value)."""
        part = self.matrix[units].tocoo()
        return part.row, self.columns[part.col], part.data * scale


def _expression(segment: tuple[sparse.csc_matrix, np.ndarray], columns: np.ndarray,
                constant: np.ndarray) -> _Affine:
    """The segment applied to the previous layer's outputs: variable ``columns[i]`` where
    ``columns[i] >= 0``, the constant ``constant[i]`` elsewhere (a dead relu)."""
    weight, bias = segment
    live = columns >= 0
    fixed = bias + (weight[:, ~live] @ constant[~live] if (~live).any() else 0.0)
    return _Affine(weight[:, live].tocsr(), columns[live], fixed)


def _diagonal(variables: np.ndarray, value) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.arange(len(variables)), variables, np.broadcast_to(np.asarray(value, dtype=np.float64), variables.shape)


class _Program:
    """A mixed-integer linear program assembled block by block."""

    def __init__(self):
        self.n = 0
        self.m = 0
        self._bounds: list[tuple[np.ndarray, np.ndarray, bool]] = []
        self._entries: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._limits: list[tuple[np.ndarray, np.ndarray]] = []

    def variables(self, lower, upper, integer: bool = False) -> np.ndarray:
        lower = np.atleast_1d(np.asarray(lower, dtype=np.float64))
        upper = np.atleast_1d(np.asarray(upper, dtype=np.float64))
        index = np.arange(self.n, self.n + len(lower))
        self._bounds.append((lower, upper, integer))
        self.n += len(lower)
        return index

    def constraints(self, count: int, parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], lower, upper) -> None:
        """``count`` rows ``lower <= sum of parts <= upper``; each part is (row, variable, value)."""
        if count == 0:
            return
        for row, column, value in parts:
            self._entries.append((row + self.m, column, value))
        self._limits.append((np.broadcast_to(np.asarray(lower, dtype=np.float64), (count,)),
                             np.broadcast_to(np.asarray(upper, dtype=np.float64), (count,))))
        self.m += count

    def assemble(self) -> tuple[sparse.csr_matrix, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(A, row lower, row upper, variable lower, variable upper, integrality)``."""
        if self._entries:
            rows, cols, values = (np.concatenate(part) for part in zip(*self._entries))
        else:
            rows, cols, values = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0)
        matrix = sparse.csr_matrix((values, (rows, cols)), shape=(self.m, self.n))
        lower = np.concatenate([lo for lo, _ in self._limits]) if self._limits else np.zeros(0)
        upper = np.concatenate([hi for _, hi in self._limits]) if self._limits else np.zeros(0)
        var_lower = np.concatenate([lo for lo, _, _ in self._bounds])
        var_upper = np.concatenate([hi for _, hi, _ in self._bounds])
        integrality = np.concatenate([np.full(len(lo), 1 if integer else 0) for lo, _, integer in self._bounds])
        return matrix, lower, upper, var_lower, var_upper, integrality


def _encode_activation(program: _Program, z: _Affine, lower: np.ndarray, upper: np.ndarray,
                       slope: float) -> tuple[np.ndarray, np.ndarray]:
    """``a = max(z, slope z)`` per unit (module docstring); the outputs as (variables, constants)."""
    units = len(lower)
    columns, constant = np.full(units, -1), np.zeros(units)
    linear = slope == 1.0
    active = (lower >= 0) | linear
    dead = (upper <= 0) & (slope == 0) & ~active
    inactive = (upper <= 0) & ~dead & ~active
    unstable = ~(active | dead | inactive)
    for kind, scale in ((active, 1.0), (inactive, slope)):  # a - scale z = scale b
        units_k = np.flatnonzero(kind)
        a = program.variables(np.minimum(scale * lower[units_k], scale * upper[units_k]),
                              np.maximum(scale * lower[units_k], scale * upper[units_k]))
        columns[units_k] = a
        program.constraints(len(units_k), [_diagonal(a, 1.0), z.rows(units_k, -scale)],
                            scale * z.constant[units_k], scale * z.constant[units_k])
    units_k = np.flatnonzero(unstable)
    count = len(units_k)
    low, up, b = lower[units_k], upper[units_k], z.constant[units_k]
    a = program.variables(slope * low, up)
    d = program.variables(np.zeros(count), np.ones(count), integer=True)
    columns[units_k] = a
    gap_low, gap_up = (1 - slope) * -low, (1 - slope) * up
    program.constraints(count, [_diagonal(a, 1.0), z.rows(units_k, -1.0)], b, math.inf)  # a >= z
    if slope > 0:
        program.constraints(count, [_diagonal(a, 1.0), z.rows(units_k, -slope)], slope * b, math.inf)  # a >= s z
    program.constraints(count, [_diagonal(a, 1.0), z.rows(units_k, -1.0), _diagonal(d, gap_low)],  # a <= z + ..(1-d)
                        -math.inf, b + gap_low)
    program.constraints(count, [_diagonal(a, 1.0), z.rows(units_k, -slope), _diagonal(d, -gap_up)],  # a <= s z + ..d
                        -math.inf, slope * b)
    return columns, constant


def _encode_max_pool(program: _Program, z: _Affine, lower: np.ndarray, upper: np.ndarray,
                     windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``m = max`` over each window (module docstring); the outputs as (variables, constants)."""
    valid = windows >= 0
    safe = np.where(valid, windows, 0)
    floor = np.where(valid, lower[safe], -np.inf).max(axis=1)
    candidate = valid & (upper[safe] >= floor[:, None])
    top = np.where(candidate, upper[safe], -np.inf).max(axis=1)
    m = program.variables(floor, top)
    single = candidate.sum(axis=1) == 1
    out = np.flatnonzero(single)
    units_k = windows[out, candidate[out].argmax(axis=1)]
    program.constraints(len(out), [_diagonal(m[out], 1.0), z.rows(units_k, -1.0)],
                        z.constant[units_k], z.constant[units_k])
    out, slot = np.nonzero(candidate & ~single[:, None])
    units_k = windows[out, slot]
    count = len(units_k)
    d = program.variables(np.zeros(count), np.ones(count), integer=True)
    window = np.unique(out, return_inverse=True)[1]  # the rank of each unit's window among those with binaries
    gap = top[out] - lower[units_k]
    b = z.constant[units_k]
    program.constraints(count, [_diagonal(m[out], 1.0), z.rows(units_k, -1.0)], b, math.inf)  # m >= z_k
    program.constraints(count, [_diagonal(m[out], 1.0), z.rows(units_k, -1.0), _diagonal(d, gap)],
                        -math.inf, b + gap)  # m <= z_k + (U - l_k)(1 - d_k)
    groups = int(window.max()) + 1 if count else 0
    program.constraints(groups, [(window, d, np.ones(count))], 1.0, 1.0)  # one d_k per window
    return m, np.zeros(len(m))


class _Encoder:
    """A model read as affine segments and nonlinear layers, in float64."""

    def __init__(self, model: nn.Module, in_shape: Sequence[int]):
        self.model = float64_copy(model).eval()
        self.net = _network(self.model, in_shape)
        layers, shapes = self.net.layers, self.net.shapes
        self.nonlinear = self.net.nonlinear()
        starts, ends = [0, *(i + 1 for i in self.nonlinear)], [*self.nonlinear, len(layers)]
        self.segments = [_segment(layers[s:e], shapes[s]) for s, e in zip(starts, ends)]
        self.pieces: list[tuple[str, object]] = []
        for i in self.nonlinear:
            module = layers[i].module
            if isinstance(module, nn.MaxPool2d):
                self.pieces.append(("max", pool_windows(module, shapes[i], shapes[i + 1])))
            else:
                self.pieces.append(("act", float(getattr(module, "negative_slope", 0.0))))
        self.d = math.prod(shapes[0])

    def encode(self, x: np.ndarray, corners: tuple[np.ndarray, np.ndarray], eps: float, p: float,
               intervals: list[tuple[np.ndarray, np.ndarray]]) -> tuple[_Program, _Affine]:
        """The program of one sample (flat ``x``) and budget: its variables start with the input;
        returns it with the logits as an affine function of its variables."""
        program = _Program()
        inputs = program.variables(*corners)
        if p == 1.0:
            t = program.variables(np.zeros(self.d), np.full(self.d, eps))
            program.constraints(self.d, [_diagonal(t, 1.0), _diagonal(inputs, -1.0)], -x, math.inf)
            program.constraints(self.d, [_diagonal(t, 1.0), _diagonal(inputs, 1.0)], x, math.inf)
            program.constraints(1, [(np.zeros(self.d, int), t, np.ones(self.d))], -math.inf, eps)
        columns, constant = inputs, np.zeros(self.d)
        for (kind, detail), segment, (lower, upper) in zip(self.pieces, self.segments, intervals):
            z = _expression(segment, columns, constant)
            lower, upper = np.minimum(lower, upper), np.maximum(lower, upper)
            if kind == "max":
                columns, constant = _encode_max_pool(program, z, lower, upper, detail)
            else:
                columns, constant = _encode_activation(program, z, lower, upper, detail)
        return program, _expression(self.segments[-1], columns, constant)


# ------------------------------------------------------------------------------------- solving


@dataclass
class _Sample:
    """One sample's data for the solves: flat float64 input, label, logits scale, deadline."""

    x: np.ndarray
    y: int
    tau: float
    deadline: float
    solves: int = 0


class _Solver:
    def __init__(self, encoder: _Encoder, p: float, box: tuple[float, float] | None, in_shape: Sequence[int]):
        self.encoder, self.p, self.box, self.in_shape = encoder, p, box, tuple(in_shape)

    def project(self, point: np.ndarray, sample: _Sample, eps: float) -> np.ndarray:
        """``point`` moved onto the set (the solver's point may stray by its tolerances)."""
        delta = np.clip(point - sample.x, -eps, eps)
        if self.p == 1.0:
            total = np.abs(delta).sum()
            if total > eps:
                delta *= eps / total
        moved = sample.x + delta
        return np.clip(moved, *self.box) if self.box is not None else moved

    def margin(self, point: np.ndarray, y: int) -> float:
        """``z_y - max_{j != y} z_j`` of the float64 model at ``point``, relative to ``1 + max |z|``."""
        with torch.no_grad():
            z = self.encoder.model(torch.from_numpy(point).reshape(1, *self.in_shape))[0]
        others = torch.cat([z[:y], z[y + 1:]])
        return float((z[y] - others.max()) / (1 + z.abs().max()))

    def distance(self, point: np.ndarray, sample: _Sample) -> float:
        delta = point - sample.x
        return float(np.abs(delta).max() if self.p == math.inf else np.abs(delta).sum())

    @staticmethod
    def _milp(c, A, lower, upper, var_lower, var_upper, integrality, seconds):
        constraints = optimize.LinearConstraint(A, lower, upper) if A.shape[0] else None
        return optimize.milp(c, integrality=integrality, bounds=optimize.Bounds(var_lower, var_upper),
                             constraints=constraints, options={"time_limit": max(seconds, _SHORTEST), "presolve": True})

    def decide_class(self, sample: _Sample, eps: float, parts, objective: np.ndarray,
                     constant: float) -> tuple[int, np.ndarray | None]:
        """ROBUST, NOT_ROBUST (with the counterexample) or UNKNOWN for one class (module docstring)."""
        A, lower, upper, var_lower, var_upper, integrality = parts
        cut = sparse.vstack([A, sparse.csr_matrix(objective[None])]).tocsr()
        cut_lower, cut_upper = np.append(lower, -math.inf), np.append(upper, sample.tau - constant)
        for stage in ("feasibility", "minimum"):
            left = sample.deadline - time.perf_counter()
            if left < _SHORTEST:
                return UNKNOWN, None
            c = np.zeros_like(objective) if stage == "feasibility" else objective
            result = self._milp(c, cut, cut_lower, cut_upper, var_lower, var_upper, integrality, left)
            sample.solves += 1
            if result.status == 2:  # infeasible: margin_j > tau over the whole set
                return (ROBUST if stage == "feasibility" else UNKNOWN), None
            if result.x is None:
                return UNKNOWN, None
            point = self.project(result.x[:self.encoder.d], sample, eps)
            if self.margin(point, sample.y) < -TIE:
                return NOT_ROBUST, point
            if integrality.any() and time.perf_counter() < sample.deadline - _SHORTEST:
                fixed = np.round(np.clip(result.x, var_lower, var_upper))  # the point's linear piece
                piece_lower = np.where(integrality == 1, fixed, var_lower)
                piece_upper = np.where(integrality == 1, fixed, var_upper)
                piece = self._milp(objective, A, lower, upper, piece_lower, piece_upper, np.zeros_like(integrality),
                                   sample.deadline - time.perf_counter())
                sample.solves += 1
                if piece.x is not None:
                    point = self.project(piece.x[:self.encoder.d], sample, eps)
                    if self.margin(point, sample.y) < -TIE:
                        return NOT_ROBUST, point
        return UNKNOWN, None


def _validate(x: torch.Tensor, y: torch.Tensor, epsilons: Sequence[float], box, time_limit) -> list[float]:
    if x.dim() < 2 or y.shape != (len(x),):
        raise InvalidValue("x", f"expected a batch of inputs and one label each, got shapes {tuple(x.shape)} and "
                                f"{tuple(y.shape)}")
    if isinstance(epsilons, (int, float)):
        epsilons = [epsilons]
    epsilons = list(epsilons)
    if not epsilons:
        raise InvalidValue("epsilons", "expected at least one budget")
    for eps in epsilons:
        require_non_negative("epsilons", eps)
    require_positive("time_limit", time_limit)
    if box is not None:
        if len(box) != 2 or not box[0] < box[1]:
            raise InvalidValue("box", f"expected (low, high) with low < high, got {box!r}")
        if len(x) and (x.min() < box[0] or x.max() > box[1]):
            raise InvalidValue("x", f"inputs must lie inside the data box {tuple(box)}")
    return [float(e) for e in epsilons]


def verification(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilons: Sequence[float],
                 norm: object = math.inf, box: tuple[float, float] | None = (0.0, 1.0), time_limit: float = 10.0,
                 *, screen: bool = True) -> Verification:
    """Decide for each sample and budget whether any input of the ball (``norm``: ``inf`` or
    ``1``) around ``x`` inside ``box`` (None: no data box) changes the model's decision from
    ``y`` (module docstring), within ``time_limit`` seconds per sample. ``screen``: classes whose
    CROWN margin bound is positive are proven without a program. Raises :class:`InvalidValue`
    for a model or norm that cannot be encoded (:func:`check_exact`)."""
    p = _parse_norm(norm)
    epsilons = _validate(x, y, epsilons, box, time_limit)
    in_shape = tuple(x.shape[1:])
    encoder = _Encoder(model, in_shape)
    net = encoder.net
    x64, y = x.detach().to("cpu", torch.float64), y.detach().cpu().long()
    n, count = len(x64), len(epsilons)
    order = sorted(range(count), key=lambda k: epsilons[k])
    budgets = [epsilons[k] for k in order]
    verdicts = np.full((n, count), _UNDECIDED, dtype=np.int8)
    points = np.full((n, count, encoder.d), np.nan)
    solves, seconds = np.zeros(n, dtype=np.int64), np.zeros(n)
    if n == 0:
        return Verification(torch.from_numpy(verdicts), torch.from_numpy(points).reshape(0, count, *in_shape),
                            torch.from_numpy(solves), torch.from_numpy(seconds))
    with torch.no_grad():
        logits = encoder.model(x64)
    if logits.shape[1] <= int(y.max()) or int(y.min()) < 0:
        raise InvalidValue("y", f"labels must be classes 0..{logits.shape[1] - 1}")
    own = torch.nn.functional.one_hot(y, logits.shape[1]).bool()
    clean = (logits.gather(1, y[:, None])[:, 0] - logits.masked_fill(own, -math.inf).amax(1)) > 0
    screened = []  # per sorted budget: CROWN's lower bounds on the margins (n, classes)
    for eps in budgets:
        screened.append(net.margins(x64, y, eps, p, box, "crown").best if screen
                        else torch.full(logits.shape, -math.inf, dtype=torch.float64).masked_fill(own, math.inf))
    intervals: dict[int, list] = {}

    def bounds_at(k: int) -> list:
        if k not in intervals:
            ball = Ball(x64, torch.full((n,), budgets[k], dtype=torch.float64), p, box)
            found, _ = net.intervals(ball, "crown")
            intervals[k] = [tuple(t.flatten(1).numpy() for t in found[i]) for i in encoder.nonlinear]
        return intervals[k]

    solver = _Solver(encoder, p, box, in_shape)
    flat = x64.flatten(1).numpy()
    for i in range(n):
        start = time.perf_counter()
        row = verdicts[i]
        if not clean[i]:
            row[:] = NOT_ROBUST
            points[i, :] = flat[i]
            seconds[i] = time.perf_counter() - start
            continue
        for k in range(count):
            if (screened[k][i] > 0).all():
                row[: k + 1] = ROBUST
        scale = float(logits[i].abs().max())
        sample = _Sample(flat[i], int(y[i]), CUTOFF * (1 + scale), start + time_limit)
        pending = [(0, count - 1)]
        while pending:
            lo, hi = pending.pop()
            open_ = [k for k in range(lo, hi + 1) if row[k] == _UNDECIDED]
            if not open_:
                continue
            k = open_[len(open_) // 2]
            verdict, point = _decide_budget(solver, encoder, sample, budgets[k], screened[k][i],
                                            lambda k=k, i=i: [(lower[i], upper[i]) for lower, upper in bounds_at(k)], box)
            if verdict == ROBUST:
                smaller = row[: k + 1]
                smaller[(smaller == _UNDECIDED) | (smaller == UNKNOWN)] = ROBUST
                pending.append((k + 1, hi))
            elif verdict == NOT_ROBUST:
                reach = min(solver.distance(point, sample), budgets[k])  # in the ball up to rounding
                for m in range(count):
                    if budgets[m] >= reach and row[m] in (_UNDECIDED, UNKNOWN):
                        row[m], points[i, m] = NOT_ROBUST, point
                pending.append((lo, k - 1))
            else:
                row[k] = UNKNOWN
                pending += [(k + 1, hi), (lo, k - 1)]
        solves[i], seconds[i] = sample.solves, time.perf_counter() - start
    inverse = np.argsort(order)
    return Verification(torch.from_numpy(verdicts[:, inverse].copy()),
                        torch.from_numpy(points[:, inverse].copy()).reshape(n, count, *in_shape),
                        torch.from_numpy(solves), torch.from_numpy(seconds))


def _decide_budget(solver: _Solver, encoder: _Encoder, sample: _Sample, eps: float, bounds: torch.Tensor,
                   intervals, box) -> tuple[int, np.ndarray | None]:
    """ROBUST, NOT_ROBUST (with a counterexample) or UNKNOWN for one sample at one budget."""
    classes = [j for j in torch.argsort(bounds).tolist() if j != sample.y and not bounds[j] > 0]
    if not classes:
        return ROBUST, None
    if time.perf_counter() > sample.deadline - _SHORTEST:
        return UNKNOWN, None
    x = torch.from_numpy(sample.x)[None]
    lo, hi = Ball(x, torch.tensor([eps], dtype=torch.float64), solver.p, box).corners()
    program, logits = encoder.encode(sample.x, (lo[0].numpy(), hi[0].numpy()), eps, solver.p, intervals())
    parts = program.assemble()
    unknown = False
    for j in classes:
        row = np.zeros(program.n)
        for unit, sign in ((sample.y, 1.0), (j, -1.0)):
            _, variables, values = logits.rows(np.array([unit]), sign)
            np.add.at(row, variables, values)
        constant = float(logits.constant[sample.y] - logits.constant[j])
        verdict, point = solver.decide_class(sample, eps, parts, row, constant)
        if verdict == NOT_ROBUST:
            return NOT_ROBUST, point
        unknown |= verdict == UNKNOWN
    return (UNKNOWN if unknown else ROBUST), None


def verify(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilons: Sequence[float], norm: object = math.inf,
           box: tuple[float, float] | None = (0.0, 1.0), time_limit: float = 10.0) -> torch.Tensor:
    """Per sample and budget (int8): 1 verified robust, 0 not robust, -1 unknown (module
    docstring; :func:`verification` also returns the counterexamples)."""
    return verification(model, x, y, epsilons, norm, box, time_limit).verdicts


def describe(norm: object) -> str:
    """Short label for tables, e.g. ``exact-linf``."""
    return f"exact-{norm_name(_parse_norm(norm))}"
