"""Certified robustness: per sample and budget, a proof that no perturbation within the budget
changes the model's decision (where attacks give only upper bounds).

:func:`certify` runs a method by name (:data:`METHODS`, docs/certification.md): ``ibp`` and
``crown`` (:mod:`advrun.bounds`, any network of supported layers), ``exact`` (:mod:`advrun.exact`,
mixed-integer programs), ``smoothing`` (:mod:`advrun.smoothing`, the smoothed classifier) and
``hein``, the closed forms below; :func:`choose` is ``eval.certify=auto``'s choice.

``hein`` gives a radius ``r`` per sample, for three families of models, computed in float64 from
the model's float32 weights:

* **Affine classifiers** ``z = W x + b`` (``model=logreg``, or any model whose logits are affine
  in the input, a normalisation layer included): the exact distance to the decision boundary,
  ``r = min_{j != y} (z_y - z_j) / ||w_j - w_y||_q`` with ``q`` the dual norm of ``p``
  (``1/p + 1/q = 1``: L1 for Linf, L2 for L2, Linf for L1), by Hoelder's inequality with
  equality for the aligned direction. The data bounds are ignored: the box only removes
  perturbations, so the smallest perturbation that stays inside it is at least ``r`` (``r`` is a
  valid lower bound), and equal to ``r`` when the box does not bind, where it is the norm that
  :class:`advrun.attacks.LinearExact` returns.
* **One-hidden-layer networks** ``z = V sigma(U x + u) + v`` with a differentiable activation
  (tanh, sigmoid, softplus, elu with alpha = 1): the bound of Hein & Andriushchenko 2017, "Formal
  guarantees on the robustness of a classifier against adversarial manipulation" (NIPS),
  Theorem 2.1: with ``c = y`` and ``g_j = f_c - f_j``, the decision is ``c`` at every ``x + d``
  with

      ``||d||_p <= max_{R > 0} min( min_{j != c} g_j(x) / max_{||x'-x||_p <= R} ||grad g_j(x')||_q , R )``,

  specialised to one hidden layer, as the paper does for its networks, by bounding how much
  ``sigma'`` can change inside the ball: ``grad g_j(x') = U^T (a_j * sigma'(U x' + u))`` with
  ``a_j = v_c - v_j``; a pre-activation moves by at most ``rho_r = R ||u_r||_q`` inside the ball,
  so ``|sigma'(h_r(x')) - sigma'(h_r(x))| <= E_r(R)`` and

      ``max ||grad g_j(x')||_q <= M_j(R) = ||grad g_j(x)||_q + sum_r |a_jr| E_r(R) ||u_r||_q``

  (triangle inequality; for p = 2 the sum may be replaced by ``||U||_2 ||a_j * E(R)||_2``, and the
  smaller is used). ``bound="lipschitz"`` takes the paper's ``E_r = L_sigma' rho_r`` with the
  Lipschitz constant of the activation's derivative (max |tanh''| = 4 / (3 sqrt 3), max
  |sigmoid''| = 1 / (6 sqrt 3), softplus beta / 4, elu 1). ``bound="local"`` (default) takes the
  exact ``E_r = max_{|t - h_r| <= rho_r} |sigma'(t) - sigma'(h_r)|``, read off the monotone
  pieces of ``sigma'`` (never larger than ``L_sigma' rho_r``: a saturated unit barely changes
  its slope), and caps ``M_j(R)`` by the same sums over ``max |sigma'|`` on each unit's interval
  (the gradient norm itself, without the first-order term; exact for a single hidden unit).
  The outer maximum over ``R`` is found per sample by bisection on the crossing of the
  non-increasing ``min_j g_j(x) / M_j(R)`` with ``R``; every ``R`` the bisection keeps is itself
  certified, so stopping early only loses tightness, never soundness. The argument only needs
  ``g_j`` to be the integral of its gradient along segments, so torch's softplus, which turns
  into the identity above ``threshold`` (a jump of about 2e-9 in ``sigma'``), is covered: the
  local ``E_r`` is read off torch's own ``sigma'``, and the Lipschitz form adds the jump.

* **Gaussian-kernel machines** ``f_k(x) = sum_i alpha_ki exp(-gamma ||x - c_i||^2) + b_k``
  (``model=kernel``, :class:`advrun.models.KernelMachine`): a bound in the kernel's feature space,
  the route Hein & Andriushchenko 2017 take for kernel methods (derived here and checked in
  tests/test_kernel.py, not copied from the paper). The Gaussian kernel is an inner product of features,
  ``k(x, z) = <Phi(x), Phi(z)>_H`` with ``||Phi(x)||_H = 1``, so ``||Phi(x) - Phi(z)||_H^2 = 2 - 2 k(x, z)``.
  With ``c = y``, ``g_j = f_c - f_j = <w_j, Phi(.)>_H + b_c - b_j`` with
  ``w_j = sum_i beta_i Phi(c_i)``, ``beta = alpha_c - alpha_j`` and ``||w_j||_H^2 = beta^T G beta``
  (``G`` the kernel of the centres with each other); the bias cancels from any change of ``g_j``, and
  by Cauchy-Schwarz ``|g_j(x + d) - g_j(x)| <= ||w_j||_H sqrt(2 - 2 exp(-gamma ||d||_2^2))``.
  The decision stays ``c`` while this is below every margin ``g_j(x)``, so

      ``r_2 = min_{j != c} sqrt(-log(1 - g_j(x)^2 / (2 ||w_j||_H^2)) / gamma)``,

  infinite where ``g_j(x) >= sqrt(2) ||w_j||_H`` (the kernel part cannot move ``g_j`` that far).
  ``bound="lipschitz"`` uses ``2 - 2 exp(-s) <= 2 s`` (the feature map is ``sqrt(2 gamma)``-Lipschitz),
  the global form ``g_j(x) / (sqrt(2 gamma) ||w_j||_H)``, never larger. Other norms through
  ``||d||_2 <= ||d||_1`` and ``||d||_2 <= sqrt(d) ||d||_inf``: ``r_1 = r_2``, ``r_inf = r_2 / sqrt(d)``.
  The float64 rounding of the kernel values and sums is bounded (:func:`_kernel_rounding`) and
  taken from the margins and added to the norms, and the radius loses a few units of its last
  place, so the radius holds for the exact arithmetic of the weights despite rounding (``G`` is
  positive semi-definite, but a float64 ``beta^T G beta`` can cancel to near 0).

ReLU, leaky ReLU and abs networks are refused by ``hein``: their derivative jumps at 0, so the
theorem's Lipschitz-derivative argument does not apply. Deeper networks and CNNs are refused
too (``crown`` and ``exact`` certify them).

Softplus of sharpness ``beta`` (``model.softplus_beta``), ``(1 / beta) log(1 + exp(beta t))``, has
``sigma'(t) = sigmoid(beta t)``, so its Lipschitz constant is ``beta / 4``: the certificate
loosens as softplus approaches relu. A binary ``logreg`` (one logit ``z``, logits ``(0, z)``) is
affine with ``W = [[0], [w]]``, so its radius is ``|z| / ||w||_q``, the same as that of any
two-logit model with ``w_1 - w_0 = w``. Certificates are about the model in eval mode: batch
norm is then the affine map of its running statistics and dropout the identity, both folded into
the affine parts read off by autograd (``model.batch_norm`` and ``model.dropout`` are certified
as such); the certificate says nothing about the model in train mode.

Conventions: the radius of a sample the model misclassifies (or puts on a tie) is 0; the
certificate is exact arithmetic about the model's weights, so float32 evaluation of the model
can disagree within rounding (about 1e-6 relative) of the boundary. A sample is certified at
budget ``eps`` when its radius is strictly larger than ``eps`` (at distance exactly ``r`` a tie
can be reached); certified accuracy, like robust accuracy, counts over all N samples.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from advrun.attacks.base import eval_mode
from advrun.attacks.norms import dual_norm, norm_field, norm_name
from advrun.errors import InvalidValue, require_int, require_non_negative
from advrun.structure import (
    ACTIVATIONS, SmoothActivation, activation_of, affine_map, as_module, parameter_like, probe_points,
    split_at_activations,
)

#: Norms a certificate can be asked for.
NORMS = (math.inf, 2.0, 1.0)
#: How the change of the activation's slope inside the ball is bounded (module docstring).
BOUNDS = ("local", "lipschitz")
_BISECTION_STEPS = 60
#: Added to every computed square of an RKHS norm and taken from every kernel margin: the
#: absolute error of kernel values that underflow (below the smallest normal float64).
_TINY = 1e-300
#: Names of the activations whose derivative is Lipschitz (as the table builds them: elu with alpha 1).
_SMOOTH = [activation.name for activation in ACTIVATIONS.values() if activation.smooth(activation.build(1.0))]


def smooth_activation(module: nn.Module) -> SmoothActivation:
    """The :class:`~advrun.structure.SmoothActivation` of an activation layer; :class:`InvalidValue`
    (field ``activation``) for one whose derivative is not Lipschitz (relu, leaky relu) or unknown."""
    activation = activation_of(module)
    if activation is None:
        raise InvalidValue("activation", f"certify knows {', '.join(_SMOOTH[:-1])} and {_SMOOTH[-1]}, "
                                         f"not {type(module).__name__}")
    smooth = activation.smooth(module)
    if smooth is None:
        raise InvalidValue("activation", f"{type(module).__name__} has a derivative that jumps, so the "
                                         f"Hein-Andriushchenko certificate (which needs a Lipschitz derivative) "
                                         f"does not apply; use {', '.join(_SMOOTH[:-1])} or {_SMOOTH[-1]}")
    return smooth


@dataclass
class AffinePart:
    """``z = weight @ x.flatten() + bias`` (float64; a normalisation layer folded in)."""

    weight: torch.Tensor
    bias: torch.Tensor


@dataclass
class OneHiddenLayer:
    """``z = outer(sigma(inner(x)))`` with both affine parts read off the model."""

    inner: AffinePart
    activation: SmoothActivation
    outer: AffinePart


@dataclass
class KernelPart:
    """``z = weight @ k(x) + bias`` with ``k_i(x) = exp(-gamma ||x.flatten() - centres_i||^2)``
    (float64; :class:`advrun.models.KernelMachine`)."""

    centres: torch.Tensor
    gamma: float
    weight: torch.Tensor
    bias: torch.Tensor

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``k(x)`` for flat float64 inputs ``(n, d)``, squared distances summed from the coordinates'
        differences (no cancellation; the rounding :func:`_kernel_radii` allows for)."""
        distances = torch.cdist(x, self.centres, compute_mode="donot_use_mm_for_euclid_dist")
        return torch.exp(-self.gamma * distances.square())

    @functools.cached_property
    def gram(self) -> torch.Tensor:
        """``G_lm = k(c_l, c_m)``, the kernel of the centres with each other."""
        return self.features(self.centres)

    @functools.cached_property
    def rkhs_norms(self) -> torch.Tensor:
        """``(K, K)``: an upper bound on ``||g_cj||_H``, the RKHS norm of ``sum_i (alpha_ci - alpha_ji) k(c_i, .)``,
        from ``beta^T G beta`` with ``beta = alpha_c - alpha_j`` plus its float64 rounding."""
        beta = self.weight[:, None, :] - self.weight[None]  # (K, K, N)
        squared = ((beta @ self.gram) * beta).sum(dim=2)
        size = ((beta.abs() @ self.gram) * beta.abs()).sum(dim=2)
        return (squared.clamp_min(0.0) + _kernel_rounding(self) * size + _TINY).sqrt()


def _kernel_rounding(part: KernelPart) -> float:
    """A relative bound on the float64 rounding of a sum over centres of ``beta_i k_i``: each
    kernel value carries at most ``746 (d + 5)`` units of roundoff (``gamma ||x - c||^2`` is at most
    745 where ``exp`` does not underflow, its squared distance off by ``d + 4`` units), each sum of
    ``N`` (for the Gram form ``2N``) terms adds ``2N`` units; 1% on top for the products."""
    count, dims = part.centres.shape
    return 1.01 * 2.0**-53 * (746 * (dims + 5) + 2 * count + 16)


def _read_affine(part: nn.Module, probes: torch.Tensor, what: str) -> AffinePart:
    try:
        weight, bias = affine_map(part, probes)
    except InvalidValue:
        raise InvalidValue("_target_", f"certify handles affine models (logreg) and one-hidden-layer networks "
                                       f"(mlp with one hidden width), but {what} is not affine") from None
    return AffinePart(weight.detach().double(), bias.detach().double())


def decompose(model: nn.Module, probes: torch.Tensor) -> AffinePart | OneHiddenLayer | KernelPart:
    """The model as an :class:`AffinePart` or a :class:`OneHiddenLayer` (read off by autograd at
    ``probes``, so a normalisation layer is folded into the first affine map); raises
    :class:`InvalidValue` for any other model; a :class:`KernelPart` for a Gaussian-kernel machine.
    Needs gradients enabled and eval mode."""
    from advrun.models import KernelMachine  # not at the top: models imports structure, as this module does

    if isinstance(model, KernelMachine):
        return KernelPart(model.kernel.centres.detach().double(), float(model.kernel.gamma),
                          model.head.weight.detach().double(), model.head.bias.detach().double())
    split = split_at_activations(model)
    count = len(split.activations)
    if split.nested:
        raise InvalidValue("_target_", f"certify handles affine models and networks with one hidden layer (e.g. "
                                       f"model=mlp model.hidden=[64]); {type(model).__name__} has "
                                       f"{split.nested + count} activation layers, {split.nested} inside blocks")
    if not count:
        return _read_affine(model, probes, type(model).__name__)
    if count > 1:
        raise InvalidValue("hidden", f"certify handles affine models and networks with one hidden layer (e.g. "
                                     f"model=mlp model.hidden=[64]); this one has {count} activation layers")
    activation = smooth_activation(split.activations[0].module)
    inner, outer = (as_module(piece) for piece in split.pieces)
    inner_part = _read_affine(inner, probes, "the part before the activation")
    with torch.no_grad():
        hidden = activation.module(inner(probes))
    if hidden.dim() != 2:
        raise InvalidValue("_target_", "certify needs flat hidden units (a dense hidden layer, not a convolution)")
    hidden_probes = probe_points(hidden.shape[1:], hidden, first=hidden)
    outer_part = _read_affine(outer, hidden_probes, "the part after the activation")
    return OneHiddenLayer(inner_part, activation, outer_part)


def _parse(norm: object, bound: str = "local") -> float:
    p = norm_field(norm)
    if bound not in BOUNDS:
        raise InvalidValue("bound", f"choose one of {list(BOUNDS)}, got {bound!r}")
    return p


def check_certifiable(model: nn.Module, norm: object, in_shape: Sequence[int]) -> None:
    """Raise :class:`InvalidValue` (fields ``norm``, ``activation``, ``hidden`` or ``_target_``)
    unless :func:`certified_radii` can certify this model in this norm. Cheap: the runner can
    call it before training, as it does an attack's ``check_model``."""
    _parse(norm)
    with eval_mode(model), torch.enable_grad():
        decompose(model, probe_points(in_shape, parameter_like(model)))


def supports(model: nn.Module, norm: object, in_shape: Sequence[int]) -> bool:
    """Whether :func:`certified_radii` can certify ``model`` (inputs of shape ``in_shape``) in ``norm``."""
    try:
        check_certifiable(model, norm, in_shape)
    except InvalidValue:
        return False
    return True


def _ratio(margins: torch.Tensor, rates: torch.Tensor) -> torch.Tensor:
    """``margins / rates`` with ``m / 0 = inf`` for ``m > 0``, and 0 for a non-positive margin."""
    return torch.where(margins > 0, margins / rates, 0.0)


def _affine_radii(part: AffinePart, x: torch.Tensor, y: torch.Tensor, q: float) -> torch.Tensor:
    """Exact distance to the decision boundary of ``W x + b``: ``min_j (z_y - z_j) / ||w_j - w_y||_q``."""
    w = part.weight
    logits = x @ w.T + part.bias
    margins = logits.gather(1, y[:, None]) - logits
    pair_norms = torch.linalg.vector_norm(w[None] - w[:, None], ord=q, dim=2)  # [c, j] = ||w_j - w_c||_q
    distances = _ratio(margins, pair_norms[y]).scatter(1, y[:, None], math.inf)
    return distances.amin(dim=1)


def cross_lipschitz_bound(net: OneHiddenLayer, x: torch.Tensor, y: torch.Tensor, p: float,
                          bound: str = "local") -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """For flat float64 inputs ``x`` (n, d) and labels ``c = y``: the margins ``g_j(x) = f_c(x) - f_j(x)``
    (n, K), and ``M(R)``, mapping per-sample radii (n,) to ``M_j(R)`` (n, K) with
    ``M_j(R) >= max_{||x' - x||_p <= R} ||grad g_j(x')||_q`` (the local cross-Lipschitz constant
    of Theorem 2.1; the column ``j = c`` is meaningless).

    ``M_j(R) = ||grad g_j(x)||_q + S_j(R)`` with ``S_j`` from the change ``E_r(R)`` of each unit's
    slope (module docstring). With ``bound="local"`` it is also capped by the same sums over the
    largest slope itself, ``max |sigma'|`` on each unit's interval in place of ``E_r``, which
    wins where the units saturate or ``grad g_j(x)`` owes its size to cancellations."""
    q = dual_norm(p)
    u, act, v = net.inner.weight, net.activation, net.outer.weight
    pre = x @ u.T + net.inner.bias  # (n, H)
    slope = act.derivative(pre)
    logits = act.module(pre) @ v.T + net.outer.bias
    a = (v[y][:, None, :] - v[None]).abs()  # |v_c - v_j|, (n, K, H)
    margins = logits.gather(1, y[:, None]) - logits
    first_order = torch.linalg.vector_norm(((v[y][:, None, :] - v[None]) * slope[:, None]) @ u, ord=q, dim=2)
    reach = torch.linalg.vector_norm(u, ord=q, dim=1)  # ||u_r||_q: a pre-activation moves by at most R ||u_r||_q
    operator = torch.linalg.matrix_norm(u, ord=2) if p == 2.0 else None

    def summed(per_unit: torch.Tensor) -> torch.Tensor:
        """An upper bound on ``||U^T (a_j * e)||_q`` over all ``|e_r| <= per_unit_r``."""
        weighted = a * per_unit[:, None]
        total = (weighted * reach).sum(dim=2)  # triangle inequality
        return total if operator is None else torch.minimum(total, operator * torch.linalg.vector_norm(weighted, dim=2))

    def bound_at(radius: torch.Tensor) -> torch.Tensor:
        rho = radius[:, None] * reach
        if bound == "lipschitz":
            return first_order + summed(act.lipschitz * rho + act.jump)
        lowest, highest = act.derivative_range(pre - rho, pre + rho)
        change = torch.maximum(highest - slope, slope - lowest)
        return torch.minimum(first_order + summed(change), summed(torch.maximum(highest.abs(), lowest.abs())))

    return margins, bound_at


def _one_hidden_layer_radii(net: OneHiddenLayer, x: torch.Tensor, y: torch.Tensor, p: float,
                            bound: str) -> torch.Tensor:
    """Theorem 2.1 of Hein & Andriushchenko 2017 for one hidden layer (module docstring)."""
    margins, bound_at = cross_lipschitz_bound(net, x, y, p, bound)
    own = torch.nn.functional.one_hot(y, margins.shape[1]).bool()

    def certified_by(radius: torch.Tensor) -> torch.Tensor:
        return _ratio(margins, bound_at(radius)).masked_fill(own, math.inf).amin(dim=1)

    return largest_certified_radius(certified_by, certified_by(torch.zeros(len(x), dtype=x.dtype, device=x.device)))


def _kernel_radii(part: KernelPart, x: torch.Tensor, y: torch.Tensor, p: float, bound: str) -> torch.Tensor:
    """The Gaussian-kernel certificate (module docstring): with ``g_j = f_y - f_j``, ``m_j = g_j(x)``
    and ``t_j = m_j^2 / (2 ||g_j||_H^2)``, the L2 radius ``min_j sqrt(-log(1 - t_j) / gamma)``
    (infinite where ``t_j >= 1``), or ``min_j sqrt(t_j / gamma)`` with ``bound="lipschitz"``;
    divided by ``d^(1/2 - 1/p)`` for ``p > 2``. Margins lose, and norms gain, their float64 rounding."""
    features = part.features(x)
    logits = features @ part.weight.T + part.bias
    sizes = features @ part.weight.abs().T + part.bias.abs()  # what each logit's rounding is relative to
    margins = logits.gather(1, y[:, None]) - logits - _kernel_rounding(part) * (sizes.gather(1, y[:, None]) + sizes)
    margins = margins - _TINY
    norms = part.rkhs_norms[y]
    ratio = torch.where(margins > 0, margins.square() / (2 * norms.square()), 0.0) * (1 - 2.0**-50)
    if bound == "lipschitz":
        squared = ratio / part.gamma
    else:
        squared = torch.where(ratio < 1, -torch.log1p(-ratio.clamp_max(1.0)) / part.gamma, math.inf)
    own = torch.nn.functional.one_hot(y, logits.shape[1]).bool()
    radii = squared.sqrt().masked_fill(own, math.inf).amin(dim=1)
    return radii / x.shape[1] ** max(0.0, 0.5 - 1 / p) * (1 - 2.0**-50)  # less a few units of the last place


def largest_certified_radius(certified_by: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor,
                             steps: int = _BISECTION_STEPS) -> torch.Tensor:
    """Per sample ``max_R min(certified_by(R), R)`` for a non-increasing ``certified_by`` (the
    outer maximum of Theorem 2.1), by bisection on the crossing ``certified_by(R) = R``.

    ``start = certified_by(0)`` is an upper end (``certified_by(start) <= start``) unless it is
    infinite, where the upper end is found by doubling. The lower end always satisfies
    ``certified_by(R) >= R``, so it is certified whenever the bisection stops."""
    lo = torch.zeros_like(start)
    hi = start.clone()
    unbounded = ~torch.isfinite(hi)
    if unbounded.any():
        hi = torch.where(unbounded, 1.0, hi)
        for _ in range(64):
            grow = unbounded & (certified_by(hi) > hi)
            if not grow.any():
                break
            lo, hi = torch.where(grow, hi, lo), torch.where(grow, 2 * hi, hi)
    for _ in range(steps):
        mid = (lo + hi) / 2
        inside = certified_by(mid) >= mid
        lo, hi = torch.where(inside, mid, lo), torch.where(inside, hi, mid)
    return torch.maximum(lo, torch.minimum(certified_by(hi), hi))


def certified_radii(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: object = 2.0, *,
                    bound: str = "local", batch_size: int = 1024) -> torch.Tensor:
    """Per sample (float64, on ``x``'s device) a radius ``r`` in ``norm`` (``inf``, ``2`` or ``1``)
    such that the model classifies every ``x + d`` with ``||d|| <= r`` as ``y`` (data bounds
    ignored, which keeps ``r`` a valid lower bound); 0 where the model misclassifies ``x``.

    Exact for affine models; the Hein-Andriushchenko bounds for Gaussian-kernel machines and
    one-hidden-layer networks, with
    ``bound`` ``"local"`` (default, tighter) or ``"lipschitz"`` (the paper's constant; ignored for
    affine models). Other models raise :class:`InvalidValue` (see :func:`check_certifiable`).
    ``batch_size`` samples are certified at once (memory ~ batch * classes * input size)."""
    p = _parse(norm, bound)
    require_int("batch_size", batch_size, minimum=1)
    x, y = x.detach(), y.detach()
    if len(x) == 0:
        return torch.zeros(0, dtype=torch.float64, device=x.device)
    with eval_mode(model):
        with torch.enable_grad():
            net = decompose(model, probe_points(x.shape[1:], x, first=x[:1]))
        parts = []
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size], y[i : i + batch_size]
            with torch.no_grad():
                correct = model(xb).argmax(dim=1) == yb
            flat = xb.flatten(1).double()
            radii = (_affine_radii(net, flat, yb, dual_norm(p)) if isinstance(net, AffinePart)
                     else _kernel_radii(net, flat, yb, p, bound) if isinstance(net, KernelPart)
                     else _one_hidden_layer_radii(net, flat, yb, p, bound))
            parts.append(torch.where(correct, radii, 0.0))
    return torch.cat(parts)


def certified_accuracy(radii: torch.Tensor, epsilons: Sequence[float]) -> list[float]:
    """Per budget ``eps``, the fraction of ALL samples whose certified radius is strictly larger
    than ``eps`` (misclassified samples have radius 0, so they never count): a lower bound on
    the robust accuracy at ``eps`` that any attack can measure."""
    if radii.dim() != 1 or len(radii) == 0:
        raise InvalidValue("radii", f"expected a non-empty vector of per-sample radii, got shape {tuple(radii.shape)}")
    for eps in epsilons:
        require_non_negative("epsilons", eps)
    return [(radii > eps).double().mean().item() for eps in epsilons]


def describe(norm: object, bound: str = "local") -> str:
    """Short label for tables and plots, e.g. ``certified-l2``; ``certified-l2-lipschitz`` for the paper's constant."""
    p = _parse(norm, bound)
    return f"certified-{norm_name(p)}" + ("" if bound == "local" else f"-{bound}")


# ------------------------------------------------------------------------- every method, by name

#: Methods ``eval.certify`` names (``auto`` chooses among them, :func:`choose`).
METHODS = ("ibp", "crown", "exact", "smoothing", "hein")
#: Logit-difference coefficients held at once per bound pass (samples x classes x widest layer).
_BOUND_ENTRIES = 2**24


@dataclass(frozen=True)
class Certificate:
    """Per sample and budget (ascending), whether ``method`` proved that no input of the ball
    (inside the data box) changes the decision (of the model; for ``smoothing``, of the smoothed
    classifier). ``radii`` (float64, per sample) where the method gives a radius, ``unknown``
    (bool, per sample and budget) where the exact verifier ran out of time. A sample proven at a budget is counted proven at every
    smaller one (the balls are nested)."""

    method: str
    epsilons: list[float]
    verdicts: torch.Tensor
    radii: torch.Tensor | None = None
    unknown: torch.Tensor | None = None

    @property
    def label(self) -> str:
        """The curve's ``attack`` name of the certified rows, e.g. ``certified-crown``."""
        return f"certified-{self.method}"

    def accuracy(self) -> list[float]:
        """Per budget, the share of ALL samples proven (a lower bound on robust accuracy, except
        for smoothing, which proves the smoothed classifier)."""
        return self.verdicts.double().mean(dim=0).tolist()


def check_method(model: nn.Module, method: str, norm: object, in_shape: Sequence[int]) -> None:
    """Raise :class:`InvalidValue` unless ``method`` can certify ``model`` in ``norm`` (before training)."""
    p = _parse(norm)
    if method == "hein":
        check_certifiable(model, p, in_shape)
    elif method in ("ibp", "crown"):
        from advrun.bounds import BoundedNetwork

        with eval_mode(model):
            BoundedNetwork(model, in_shape)
    elif method == "exact":
        from advrun.exact import check_exact

        check_exact(model, in_shape, p)
    elif method == "smoothing":
        if p != 2.0:
            raise InvalidValue("norm", f"randomized smoothing certifies L2 radii only, not {norm_name(p)}")
    else:
        raise InvalidValue("method", f"choose one of {', '.join(METHODS)} or auto, got {method!r}")


def _applies(model: nn.Module, method: str, norm: float, in_shape: Sequence[int]) -> bool:
    try:
        check_method(model, method, norm, in_shape)
    except InvalidValue:
        return False
    return True


def choose(model: nn.Module, norm: object, in_shape: Sequence[int]) -> list[str]:
    """The methods ``auto`` runs: ``hein`` where it applies (exact for affine models; the
    Hein-Andriushchenko bounds for one hidden layer and for Gaussian-kernel machines, which
    ``crown`` cannot read), together with ``crown`` for networks (the
    union of two sound proofs); ``crown`` for any other network of supported layers; nothing for
    the rest. The exact verifier (time exponential in the unstable units) and smoothing (another
    classifier) run only by name."""
    p = _parse(norm)
    chosen = [method for method in ("hein", "crown") if _applies(model, method, p, in_shape)]
    with eval_mode(model), torch.enable_grad():
        affine = "hein" in chosen and isinstance(decompose(model, probe_points(in_shape, parameter_like(model))),
                                                 AffinePart)
    return ["hein"] if affine else chosen


def _bound_verdicts(model: nn.Module, x: torch.Tensor, y: torch.Tensor, p: float, epsilons: list[float],
                    method: str, box: tuple[float, float] | None, batch_size: int) -> torch.Tensor:
    from advrun.bounds import BoundedNetwork, float64_copy

    copied = float64_copy(model).eval()
    network = BoundedNetwork(copied, x.shape[1:])
    widest = max(math.prod(shape) for shape in network.shapes)
    step = max(1, min(batch_size, _BOUND_ENTRIES // (network.num_classes * widest)))
    verdicts = torch.zeros(len(x), len(epsilons), dtype=torch.bool, device=x.device)
    with torch.no_grad():
        open_ = copied(x.double()).argmax(dim=1) == y  # misclassified samples are never certified
        for k, eps in enumerate(epsilons):  # ascending: a sample not proven at eps is not tried above it
            index = open_.nonzero().flatten()
            for i in range(0, len(index), step):
                chunk = index[i : i + step]
                proven = network.margins(x[chunk].double(), y[chunk], eps, p, box, method).best.amin(dim=1) > 0
                verdicts[chunk, k] = proven
            open_ &= verdicts[:, k]
    return verdicts


def certify(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: object, epsilons: Sequence[float],
            method: str, *, box: tuple[float, float] | None = (0.0, 1.0), batch_size: int = 500,
            time_limit: float = 10.0, smoothing=None, seed: int = 0) -> Certificate:
    """Certify ``model`` at every budget of ``epsilons`` with ``method`` (:data:`METHODS`; a
    ``+``-joined list, as :func:`choose` returns, takes the union of the methods' proofs).

    ``box``: the data bounds the inputs stay in (IBP, CROWN and the exact verifier use them; the
    closed forms of ``hein`` ignore them, which keeps their radii valid). ``time_limit``: the
    exact verifier's seconds per sample. ``smoothing``: a :class:`advrun.smoothing.Smoothing`
    (its defaults when None), with ``seed`` for its noise."""
    p = _parse(norm)
    budgets = sorted(float(eps) for eps in epsilons)
    x, y = x.detach(), y.detach()
    names = method.split("+")
    verdicts = torch.zeros(len(x), len(budgets), dtype=torch.bool, device=x.device)
    radii = unknown = None
    with eval_mode(model):
        with torch.no_grad():
            correct = torch.cat([model(x[i : i + batch_size]).argmax(dim=1) == y[i : i + batch_size]
                                 for i in range(0, len(x), batch_size)]) if len(x) else verdicts[:, 0]
        for name in names:
            if name not in METHODS:
                raise InvalidValue("method", f"choose one of {', '.join(METHODS)} or auto, got {name!r}")
            if name == "hein":
                radii = certified_radii(model, x, y, p, batch_size=batch_size)
                proven = radii[:, None] > torch.tensor(budgets, dtype=radii.dtype, device=radii.device)
            elif name in ("ibp", "crown"):
                proven = _bound_verdicts(model, x, y, p, budgets, name, box, batch_size) & correct[:, None]
            elif name == "exact":
                from advrun.exact import verify

                found = verify(model, x, y, budgets, p, box=box, time_limit=time_limit)
                proven, unknown = found == 1, found == -1
            else:
                from advrun.smoothing import Smoothing, certified_radii as smoothed_radii

                radii = smoothed_radii(model, x, y, smoothing or Smoothing(), seed)
                proven = radii[:, None] > torch.tensor(budgets, dtype=radii.dtype, device=radii.device)
            verdicts |= proven.to(verdicts.device)
    # proven at a budget: proven at every smaller one (the reversed running maximum)
    verdicts = verdicts.flip(1).to(torch.uint8).cummax(dim=1).values.flip(1).bool()
    if unknown is not None:
        unknown &= ~verdicts
    return Certificate(method, budgets, verdicts, radii, unknown)
