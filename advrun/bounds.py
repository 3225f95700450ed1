"""Bounds on a feed-forward network's margins over a ball of inputs: interval bound propagation
(IBP) and linear relaxation bounds (CROWN). They make the certificates of :mod:`advrun.certify`
for any network of the supported layers and the losses of certified training
(:class:`advrun.certified_training.IBP`, :class:`advrun.certified_training.CrownIBP`).

The input set is the ball ``{x + d : ||d||_p <= eps}`` intersected with the data box
``[lo, hi]`` (:class:`Ball`); the quantity bounded is the margin ``z_y(x') - z_j(x')`` of the
label ``y`` over every other class ``j``: a lower bound above 0 for every ``j`` proves that
no input of the set changes the decision.

* **IBP** (Gowal et al. 2018, "On the effectiveness of interval bound propagation for training
  verifiably robust models", eqs. 6-7): per layer, an interval ``[l, u]`` for every unit. An
  affine layer maps the centre ``m = (l + u) / 2`` through itself and the radius
  ``r = (u - l) / 2`` through its absolute weights (``|W| r``); a monotone layer (the
  activations, max pooling) maps the two ends. The input box is the Linf ball intersected with
  the data box; for L2 and L1 balls the first affine layers are bounded by Hoelder's inequality
  as well, ``c_i +- eps ||row_i||_q`` with ``q`` the dual norm, and the tighter of the two kept.
  The last affine layers are folded with the margins (the paper's elision of the last layer):
  the margins are bounded as linear functions of the last nonlinear layer's output over its box.
* **CROWN** (Zhang et al. 2018, "Efficient neural network robustness certification with general
  activation functions", Theorem 3.2): the margins are bounded by linear functions of the input,
  propagated backwards through the network; each nonlinear unit with input in ``[l, u]`` is
  replaced by a lower and an upper line (:func:`relaxation`), and the linear function is
  minimised over the ball in closed form (:meth:`Ball.minimum`: ``A+ . x_lo + A- . x_hi`` over a
  box, ``A . x - eps ||A||_q`` over an Lp ball; the larger of the two, both being valid). The
  intervals ``[l, u]`` of the hidden units come from IBP, tightened by the same backward
  propagation from each hidden layer whose units times the widest earlier layer fit
  ``crown_budget`` coefficients per sample (262,144: every layer of the digits and MNIST MLPs
  and the dense layer of the digits CNN; the convolutional layers, and the dense layer of the
  MNIST CNN, keep IBP's intervals, as CROWN-IBP does). Every margin bound is the
  larger of IBP's and CROWN's, so CROWN never certifies less than IBP.
* **CROWN-IBP** (Zhang et al. 2020, "Towards stable and efficient training of verifiably robust
  neural networks"): IBP intervals for every hidden layer and one CROWN pass for the margins;
  cheap enough for training.

Relaxations (:func:`relaxation`): relu and leaky relu, the triangle of CROWN (the chord above,
the adaptive slope below: 1 where ``u > -l``, else the negative slope); abs, the chord above
and ``+-t`` below; the convex smooth activations (softplus, elu) the chord above and the
tangent at the midpoint below, the S-shaped ones (tanh, sigmoid) the same on intervals where
they are convex (``u <= 0``) or concave (``l >= 0``, mirrored), and on intervals across 0 the
lines through ``(l, sigma(l))`` and ``(u, sigma(u))`` with the smallest slope ``sigma'`` takes
there (sound since ``sigma(t) - sigma(l) = int sigma' >= min sigma' (t - l)``); any other
monotone activation two constants. Max pooling: below, the unit with the largest lower bound
of each window; above, the largest upper bound (a constant).

Supported layers (:func:`advrun.structure.layer_sequence`): Linear, Conv2d (zero padding),
advrun's normalisation layer, Flatten, batch norm and dropout in eval mode, average, adaptive
average and max pooling, the activations of :data:`advrun.structure.ACTIVATIONS` and advrun's
``BinaryLogits``. Residual blocks and any module whose insides are not a sequence of these are
refused (:class:`~advrun.errors.InvalidValue`, field ``_target_``).

Precision: the certificates compute in float64 on a copy of the model; training computes in
the model's precision, differentiably. Memory: IBP costs about two forward passes; CROWN's
margin pass holds ``classes x widest layer`` coefficients per sample, its intermediate passes
``crown_budget`` per sample at most.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from advrun.attacks.base import eval_mode
from advrun.attacks.norms import dual_norm
from advrun.errors import InvalidValue
from advrun.structure import Layer, activation_of, layer_kind, layer_sequence

#: Methods of :meth:`BoundedNetwork.margins`.
METHODS = ("ibp", "crown", "crown-ibp")
#: Coefficients per sample above which a hidden layer keeps IBP's intervals under ``crown``.
CROWN_BUDGET = 2**18
#: Coefficients held at once by one backward pass (samples x specifications x width).
_CHUNK = 2**25
_AFFINE = ("normalize", "binary_logits", "linear", "conv", "flatten", "batch_norm", "dropout")
_CONVEX = ("softplus", "elu")
_S_SHAPED = ("tanh", "sigmoid")


@dataclass(frozen=True)
class Ball:
    """The inputs ``x + d`` with ``||d||_p <= eps`` (``eps`` per sample) inside the data box."""

    x: torch.Tensor
    eps: torch.Tensor
    p: float
    box: tuple[float, float] | None

    def corners(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The smallest box holding the set: the Linf ball of radius ``eps``, clipped to the data box."""
        e = self.eps.reshape(-1, *[1] * (self.x.dim() - 1))
        lo, hi = self.x - e, self.x + e
        if self.box is not None:
            lo, hi = lo.clamp(min=self.box[0], max=self.box[1]), hi.clamp(min=self.box[0], max=self.box[1])
        return lo, hi

    def minimum(self, a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """A lower bound on ``a . x' + c`` over the set, per sample and row: ``a`` is
        ``(n, rows, *input shape)``, ``c`` is ``(n, rows)``."""
        lo, hi = self.corners()
        flat = a.flatten(2)
        over_box = (flat.clamp(min=0) * lo.flatten(1)[:, None]).sum(2) + (flat.clamp(max=0) * hi.flatten(1)[:, None]).sum(2)
        if self.p == math.inf:
            return c + over_box
        over_ball = (flat * self.x.flatten(1)[:, None]).sum(2) - self.eps[:, None] * torch.linalg.vector_norm(
            flat, ord=dual_norm(self.p), dim=2)
        return c + torch.maximum(over_box, over_ball)


@dataclass(frozen=True)
class Lines:
    """Per unit, ``lower_slope * t + lower_shift <= sigma(t) <= upper_slope * t + upper_shift`` on the unit's interval."""

    lower_slope: torch.Tensor
    lower_shift: torch.Tensor
    upper_slope: torch.Tensor
    upper_shift: torch.Tensor


@dataclass(frozen=True)
class PoolLines:
    """Max pooling: ``max >= h_k`` with ``k`` the unit of largest lower bound in each window
    (read off the input's ``lower`` bounds), and ``max <=`` the output's ``upper`` bound."""

    lower: torch.Tensor
    upper: torch.Tensor


@dataclass(frozen=True)
class MarginBounds:
    """Lower bounds on ``z_y - z_j`` per sample and class (``+inf`` at ``j = y``): ``ibp`` always,
    ``crown`` from the backward pass (None under ``ibp``); ``best`` the larger of the two."""

    ibp: torch.Tensor
    crown: torch.Tensor | None

    @property
    def best(self) -> torch.Tensor:
        return self.ibp if self.crown is None else torch.maximum(self.ibp, self.crown)


def _check_layer(layer: Layer) -> None:
    module, kind = layer.module, layer.kind
    where = f"layer {layer.name or '0'} ({type(module).__name__})"
    if kind == "block":
        raise InvalidValue("_target_", f"bounds need a sequence of supported layers; {where} is a block whose insides "
                                       f"are not read (residual units are not supported)")
    if kind == "conv" and module.padding_mode != "zeros":
        raise InvalidValue("_target_", f"{where}: only zero padding is supported, not {module.padding_mode!r}")
    if kind == "pool" and not isinstance(module, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        raise InvalidValue("_target_", f"{where} is not supported")
    if kind == "batch_norm" and (module.running_var is None or module.running_mean is None):
        raise InvalidValue("_target_", f"{where} keeps no running statistics, so it is not a fixed map in eval mode")
    if kind == "activation":
        if isinstance(module, nn.LeakyReLU) and not 0 <= module.negative_slope <= 1:
            raise InvalidValue("_target_", f"{where}: leaky relu needs a slope in [0, 1] to be monotone and convex")
        if isinstance(module, nn.ELU) and module.alpha < 0:
            raise InvalidValue("_target_", f"{where}: elu needs alpha >= 0 to be monotone")


def _is_max_pool(layer: Layer) -> bool:
    return isinstance(layer.module, nn.MaxPool2d)


def _nonlinear(layer: Layer) -> bool:
    return layer.kind == "activation" or _is_max_pool(layer)


def _absolute(layer: Layer, radius: torch.Tensor) -> torch.Tensor:
    """``|L| r``: the radius an affine layer's linear part ``L`` maps an interval's radius to."""
    module, kind = layer.module, layer.kind
    if kind == "linear":
        return F.linear(radius, module.weight.abs())
    if kind == "conv":
        return F.conv2d(radius, module.weight.abs(), None, module.stride, module.padding, module.dilation, module.groups)
    if kind == "normalize":
        return radius / module.std.abs()
    if kind == "batch_norm":
        scale = torch.rsqrt(module.running_var + module.eps)
        if module.weight is not None:
            scale = scale * module.weight.abs()
        return radius * scale.reshape(1, -1, *[1] * (radius.dim() - 2))
    if kind == "dropout":
        return radius
    return module(radius)  # flatten, BinaryLogits, average pooling: nonnegative weights


def _interval(layer: Layer, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IBP through one layer (eval mode)."""
    module = layer.module
    if layer.kind == "dropout":
        return lower, upper
    if not _nonlinear(layer):
        centre, radius = module((upper + lower) / 2), _absolute(layer, (upper - lower) / 2)
        return centre - radius, centre + radius
    if activation_of(module) is not None and activation_of(module).name == "abs":
        low = torch.where((lower < 0) & (upper > 0), 0.0, torch.minimum(lower.abs(), upper.abs()))
        return low, torch.maximum(lower.abs(), upper.abs())
    return module(lower), module(upper)  # monotone non-decreasing


def relaxation(module: nn.Module, lower: torch.Tensor, upper: torch.Tensor) -> Lines:
    """The lower and upper lines of an activation on the intervals ``[lower, upper]`` (module docstring)."""
    activation = activation_of(module)
    name = activation.name
    width = upper - lower
    flat = width <= 1e-12  # a point: two constants
    safe = torch.where(flat, 1.0, width)
    if name in ("relu", "leaky_relu", "abs"):
        slope = float(module.negative_slope) if name == "leaky_relu" else (-1.0 if name == "abs" else 0.0)
        # the values in exact arithmetic (torch's vectorised leaky relu rounds its slope to float32)
        low_value, up_value = (torch.where(t > 0, t, slope * t) for t in (lower, upper))
        chord = (up_value - low_value) / safe
        across = (lower < 0) & (upper > 0)
        one, below = torch.ones_like(lower), torch.full_like(lower, slope)  # in the bounds' dtype, not float32
        up_slope = torch.where(across, chord, torch.where(upper <= 0, below, one))
        up_shift = torch.where(across, up_value - chord * upper, 0.0)
        adaptive = torch.where(upper > -lower, one, below if name != "abs" else -one)  # CROWN's lower slope
        low_slope = torch.where(across, adaptive, up_slope)
        return Lines(low_slope, torch.zeros_like(lower), up_slope, up_shift)
    smooth = activation.smooth(module)
    low_value, up_value = module(lower), module(upper)
    if smooth is None or name not in _CONVEX + _S_SHAPED:
        zero = torch.zeros_like(lower)
        return Lines(zero, low_value, zero, up_value)
    middle = (lower + upper) / 2
    chord = (up_value - low_value) / safe
    tangent = smooth.derivative(middle)
    tangent_shift = module(middle) - tangent * middle
    chord_shift = low_value - chord * lower
    if name in _CONVEX:
        convex, concave = torch.ones_like(flat), torch.zeros_like(flat)
    else:
        convex, concave = upper <= 0, lower >= 0
    least = torch.minimum(smooth.derivative(lower), smooth.derivative(upper))  # min of sigma' for S shapes
    low_slope = torch.where(convex, tangent, torch.where(concave, chord, least))
    low_shift = torch.where(convex, tangent_shift, torch.where(concave, chord_shift, low_value - least * lower))
    up_slope = torch.where(convex, chord, torch.where(concave, tangent, least))
    up_shift = torch.where(convex, chord_shift, torch.where(concave, tangent_shift, up_value - least * upper))
    slack = smooth.jump * width  # torch's softplus turns into the identity above its threshold
    zero = torch.zeros_like(lower)
    return Lines(torch.where(flat, zero, low_slope), torch.where(flat, low_value, low_shift - slack),
                 torch.where(flat, zero, up_slope), torch.where(flat, up_value, up_shift + slack))


def _transpose(layer: Layer, a: torch.Tensor, in_shape: Sequence[int], differentiable: bool) -> torch.Tensor:
    """``L^T a`` for the linear part ``L`` of an affine layer, ``a`` of shape ``(n, rows, *out)``."""
    n, rows = a.shape[:2]
    flat = a.reshape(n * rows, *a.shape[2:])
    module = layer.module
    if layer.kind == "linear":
        return (flat @ module.weight).reshape(n, rows, *in_shape)
    if layer.kind in ("dropout", "flatten"):
        return a.reshape(n, rows, *in_shape)
    if layer.kind == "normalize":
        return a / module.std
    if layer.kind == "conv":
        grad = torch.nn.grad.conv2d_input((n * rows, *in_shape), module.weight, flat, module.stride, module.padding,
                                          module.dilation, module.groups)
        return grad.reshape(n, rows, *in_shape)
    with torch.enable_grad():  # any other affine layer (batch norm, pooling): its vector-Jacobian product
        z = torch.zeros((n * rows, *in_shape), dtype=a.dtype, device=a.device, requires_grad=True)
        (grad,) = torch.autograd.grad(module(z), z, flat, create_graph=differentiable)
    return grad.reshape(n, rows, *in_shape)


def _bias(layer: Layer, in_shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """``layer(0)``: the constant of an affine layer, shape ``(1, *out)``."""
    return layer.module(torch.zeros((1, *in_shape), dtype=like.dtype, device=like.device))


class BoundedNetwork:
    """A model read as a sequence of supported layers (module docstring), for inputs of ``in_shape``.

    Raises :class:`~advrun.errors.InvalidValue` (field ``_target_``) for an unsupported layer.
    The model must be in eval mode whenever bounds are computed."""

    def __init__(self, model: nn.Module, in_shape: Sequence[int]):
        self.model = model
        self.layers = layer_sequence(model)
        if len(self.layers) == 1 and self.layers[0].kind == "block" and not isinstance(model, nn.Sequential):
            self.layers = [Layer("", layer_kind(model), model)]
        for layer in self.layers:
            _check_layer(layer)
        self.in_shape = tuple(in_shape)
        self._row_norms: dict = {}
        like = next(model.parameters(), torch.zeros(()))
        with torch.no_grad(), eval_mode(model):
            h = torch.zeros((1, *self.in_shape), dtype=like.dtype, device=like.device)
            self.shapes = []
            for layer in self.layers:
                self.shapes.append(tuple(h.shape[1:]))
                h = layer.module(h)
        self.shapes.append(tuple(h.shape[1:]))
        if len(self.shapes[-1]) != 1:
            raise InvalidValue("_target_", f"bounds need logits of shape (classes,), got {self.shapes[-1]}")

    @property
    def num_classes(self) -> int:
        return self.shapes[-1][0]

    def nonlinear(self) -> list[int]:
        """Indices of the layers (activations, max pooling) that are relaxed rather than propagated exactly."""
        return [i for i, layer in enumerate(self.layers) if _nonlinear(layer)]

    # ------------------------------------------------------------------------ forward (IBP)

    def _first_rows(self, end: int, q: float, like: torch.Tensor, differentiable: bool) -> torch.Tensor:
        """``||row_i||_q`` of the affine map made by layers ``[0, end)``, per unit of its output."""
        key = (end, q, like.dtype, like.device)
        if not differentiable and key in self._row_norms:
            return self._row_norms[key]
        shape = self.shapes[end]
        units = math.prod(shape)
        norms = []
        step = max(1, _CHUNK // max(1, math.prod(self.in_shape)))
        for start in range(0, units, step):
            rows = torch.eye(units, dtype=like.dtype, device=like.device)[start:start + step].reshape(1, -1, *shape)
            a = self._backward_affine(rows, end, 0, differentiable)
            norms.append(torch.linalg.vector_norm(a.flatten(2), ord=q, dim=2)[0])
        norms = torch.cat(norms).reshape(shape)
        if not differentiable:
            self._row_norms[key] = norms
        return norms

    def intervals(self, ball: Ball, method: str = "ibp", crown_budget: int = CROWN_BUDGET,
                  differentiable: bool = False, relax: bool = True) -> tuple[list, dict[int, Lines]]:
        """Per layer ``i`` the interval ``(l, u)`` of its input (``len(layers) + 1`` entries, the
        last for the logits) and, with ``relax``, the :class:`Lines` of each nonlinear layer.
        ``method="crown"`` tightens the inputs of nonlinear layers by backward passes where they
        fit ``crown_budget``."""
        lower, upper = ball.corners()
        out: list = []
        lines: dict[int, Lines] = {}
        first = True
        for i, layer in enumerate(self.layers):
            if _nonlinear(layer):
                if first and ball.p != math.inf:
                    centre = self._affine_prefix(ball.x, i)
                    reach = ball.eps.reshape(-1, *[1] * len(self.shapes[i])) * self._first_rows(
                        i, dual_norm(ball.p), ball.x, differentiable)
                    lower, upper = torch.maximum(lower, centre - reach), torch.minimum(upper, centre + reach)
                if method == "crown" and not (first and self._one_mixing_layer(i)) and self._fits(i, crown_budget):
                    lower, upper = self._crown_units(ball, i, lines, lower, upper, differentiable)
                first = False
                out.append((lower, upper))
                if _is_max_pool(layer):
                    pooled_lower, pooled_upper = _interval(layer, lower, upper)
                    lines[i] = PoolLines(lower, pooled_upper)
                    lower, upper = pooled_lower, pooled_upper
                else:
                    if relax or method == "crown":
                        lines[i] = relaxation(layer.module, lower, upper)
                    lower, upper = _interval(layer, lower, upper)
            else:
                out.append((lower, upper))
                lower, upper = _interval(layer, lower, upper)
        out.append((lower, upper))
        return out, lines

    def _affine_prefix(self, x: torch.Tensor, end: int) -> torch.Tensor:
        for layer in self.layers[:end]:
            x = layer.module(x)
        return x

    def _one_mixing_layer(self, end: int) -> bool:
        """Whether layers ``[0, end)`` mix units in at most one layer, so that IBP is already
        exact on the box there (``|D W| = |D| |W|`` for diagonal ``D``)."""
        return sum(layer.kind in ("linear", "conv", "pool") for layer in self.layers[:end]) <= 1

    def _fits(self, index: int, budget: int) -> bool:
        widest = max(math.prod(shape) for shape in self.shapes[:index + 1])
        return math.prod(self.shapes[index]) * widest <= budget

    # ----------------------------------------------------------------------- backward (CROWN)

    def _backward_affine(self, a: torch.Tensor, end: int, stop: int, differentiable: bool) -> torch.Tensor:
        """``a`` through the linear parts of the affine layers ``[stop, end)`` (no constants)."""
        for i in range(end - 1, stop - 1, -1):
            a = _transpose(self.layers[i], a, self.shapes[i], differentiable)
        return a

    def _backward(self, a: torch.Tensor, c: torch.Tensor, end: int, stop: int, lines: dict,
                  differentiable: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Carry the lower bound ``a . h_end + c`` back to ``a' . h_stop + c'`` (``h_i``: the input of
        layer ``i``), relaxing the nonlinear layers by ``lines``."""
        for i in range(end - 1, stop - 1, -1):
            layer = self.layers[i]
            if _is_max_pool(layer):
                a, c = self._backward_max_pool(i, a, c, lines[i])
            elif layer.kind == "activation":
                relaxed = lines[i]
                positive, negative = a.clamp(min=0), a.clamp(max=0)
                c = c + (positive * relaxed.lower_shift[:, None] + negative * relaxed.upper_shift[:, None]).flatten(2).sum(2)
                a = positive * relaxed.lower_slope[:, None] + negative * relaxed.upper_slope[:, None]
            else:
                c = c + (a * _bias(layer, self.shapes[i], a)[:, None]).flatten(2).sum(2)
                a = _transpose(layer, a, self.shapes[i], differentiable)
        return a, c

    def _backward_max_pool(self, i: int, a: torch.Tensor, c: torch.Tensor,
                           pool: PoolLines) -> tuple[torch.Tensor, torch.Tensor]:
        """Max pooling relaxed by :class:`PoolLines`."""
        module, upper_out = self.layers[i].module, pool.upper
        _, index = F.max_pool2d(pool.lower, module.kernel_size, module.stride, module.padding, module.dilation,
                                module.ceil_mode, return_indices=True)
        positive, negative = a.clamp(min=0), a.clamp(max=0)
        c = c + (negative * upper_out[:, None]).flatten(2).sum(2)
        n, rows, channels = positive.shape[:3]
        spatial = math.prod(self.shapes[i][1:])
        target = positive.new_zeros(n, rows, channels, spatial)
        target = target.scatter_add(3, index.flatten(2)[:, None].expand(n, rows, channels, -1), positive.flatten(3))
        return target.reshape(n, rows, *self.shapes[i]), c

    def _crown_units(self, ball: Ball, index: int, lines: dict, lower: torch.Tensor, upper: torch.Tensor,
                     differentiable: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The intervals ``lower, upper`` of the input of layer ``index``, tightened by CROWN. Before
        a relu-family activation only the units some sample has unstable (``l < 0 < u``) are
        tightened: a stable unit's lines are exact whatever its interval."""
        shape = self.shapes[index]
        n = len(ball.x)
        flat_lower, flat_upper = lower.flatten(1), upper.flatten(1)
        layer = self.layers[index]
        units = torch.arange(flat_lower.shape[1], device=lower.device)
        if layer.kind == "activation" and activation_of(layer.module).name in ("relu", "leaky_relu", "abs"):
            units = units[((flat_lower < 0) & (flat_upper > 0)).any(dim=0)]
        if not len(units):
            return lower, upper
        widest = max(math.prod(s) for s in self.shapes[:index + 1])
        step = max(1, _CHUNK // (2 * n * widest))
        eye = torch.eye(flat_lower.shape[1], dtype=ball.x.dtype, device=ball.x.device)
        lows, ups = [], []
        for start in range(0, len(units), step):
            picked = eye[units[start:start + step]]
            rows = torch.cat([picked, -picked]).reshape(1, -1, *shape).expand(n, -1, *shape)
            a, c = self._backward(rows, rows.new_zeros(n, rows.shape[1]), index, 0, lines, differentiable)
            bound = ball.minimum(a, c)
            half = bound.shape[1] // 2
            lows.append(bound[:, :half])
            ups.append(-bound[:, half:])
        tightened_lower = flat_lower.clone()
        tightened_upper = flat_upper.clone()
        tightened_lower[:, units] = torch.maximum(flat_lower[:, units], torch.cat(lows, 1))
        tightened_upper[:, units] = torch.minimum(flat_upper[:, units], torch.cat(ups, 1))
        return tightened_lower.reshape(lower.shape), tightened_upper.reshape(upper.shape)

    # ----------------------------------------------------------------------------- margins

    def specification(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Rows ``e_y - e_j`` per sample: ``(n, classes, classes)`` (the row ``j = y`` is zero)."""
        eye = torch.eye(self.num_classes, dtype=like.dtype, device=like.device)
        return eye[y][:, None, :] - eye[None]

    def margins(self, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor | float, p: float = math.inf,
                box: tuple[float, float] | None = (0.0, 1.0), method: str = "ibp", *,
                crown_budget: int = CROWN_BUDGET, differentiable: bool = False) -> MarginBounds:
        """Lower bounds on ``z_y(x') - z_j(x')`` over the ball of radius ``eps`` around each ``x``
        (inside ``box``), per sample and class; ``+inf`` at ``j = y``."""
        if method not in METHODS:
            raise InvalidValue("method", f"choose one of {list(METHODS)}, got {method!r}")
        eps = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
        eps = eps.expand(len(x)) if eps.dim() == 0 else eps
        ball = Ball(x, eps, p, box)
        bounds, lines = self.intervals(ball, "crown" if method == "crown" else "ibp", crown_budget, differentiable,
                                       relax=method != "ibp")
        spec = self.specification(y, x)
        zeros = spec.new_zeros(spec.shape[:2])
        nonlinear = self.nonlinear()
        last = nonlinear[-1] + 1 if nonlinear else 0
        a, c = self._backward(spec, zeros, len(self.layers), last, lines, differentiable)
        if nonlinear:
            low, up = bounds[last]
            ibp = c + (a.clamp(min=0) * low[:, None]).flatten(2).sum(2) + (a.clamp(max=0) * up[:, None]).flatten(2).sum(2)
        else:
            ibp = ball.minimum(a, c)
        crown = None
        if method != "ibp" and nonlinear:
            a, c = self._backward(spec, zeros, len(self.layers), 0, lines, differentiable)
            crown = ball.minimum(a, c)
        own = F.one_hot(y, self.num_classes).bool()
        return MarginBounds(ibp.masked_fill(own, math.inf),
                            None if crown is None else crown.masked_fill(own, math.inf))


def float64_copy(model: nn.Module) -> nn.Module:
    """A float64 copy of ``model`` without gradients, for certificates."""
    copied = copy.deepcopy(model).double()
    for parameter in copied.parameters():
        parameter.requires_grad_(False)
    return copied
