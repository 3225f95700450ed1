"""Norms, projections and steepest-ascent directions shared by every attack.

All functions work on whole batches: the first dimension indexes samples and the
norm is taken over the remaining dimensions.
"""

from __future__ import annotations

import math

import torch

#: Accepted spellings of each norm, mapped to the canonical value used everywhere.
_NORM_ALIASES = {
    "inf": math.inf, "linf": math.inf, "l_inf": math.inf, "infinity": math.inf,
    "2": 2.0, "l2": 2.0,
    "1": 1.0, "l1": 1.0,
    "0": 0.0, "l0": 0.0,
}


def parse_norm(norm: object) -> float:
    """Turn ``"inf"``, ``"Linf"``, ``2``, ``"l2"``, ``1``, ``0`` ... into ``math.inf``, ``2.0``, ``1.0``
    or ``0.0``. L0 (the number of changed coordinates) is a norm of minimum-norm attacks only
    (FMN): attacks list the norms they support, and the others refuse it."""
    if isinstance(norm, bool):
        raise ValueError(f"unknown norm {norm!r}; use inf, 2, 1 or 0")
    if isinstance(norm, (int, float)):
        if float(norm) in (math.inf, 2.0, 1.0, 0.0):
            return float(norm)
    elif isinstance(norm, str) and norm.strip().lower() in _NORM_ALIASES:
        return _NORM_ALIASES[norm.strip().lower()]
    raise ValueError(f"unknown norm {norm!r}; use inf, 2, 1 or 0")


def norm_field(value: object, supported: tuple[float, ...] = (math.inf, 2.0, 1.0), what: str = "this") -> float:
    """``parse_norm(value)`` for a config field called ``norm``: an unknown or unsupported norm
    raises :class:`~advrun.errors.InvalidValue` naming the field and the norms ``what`` supports."""
    from advrun.errors import InvalidValue

    try:
        p = parse_norm(value)
    except ValueError as e:
        raise InvalidValue("norm", str(e)) from None
    if p not in supported:
        raise InvalidValue("norm", f"{what} supports {', '.join(norm_name(q) for q in supported)}, not {norm_name(p)}")
    return p


def norm_name(p: float) -> str:
    """``math.inf`` -> ``"linf"``, ``2.0`` -> ``"l2"``, ``1.0`` -> ``"l1"``, ``0.0`` -> ``"l0"``."""
    return "linf" if p == math.inf else f"l{int(p)}"


def dual_norm(p: float) -> float:
    """The norm ``q`` dual to ``p`` (``1/p + 1/q = 1``: 1 for inf, 2 for 2, inf for 1), so that
    ``max_{||d||_p <= eps} g . d = eps ||g||_q`` (Hoelder's inequality, an equality for the
    aligned ``d``): the distance ``m / ||g||_q`` to a hyperplane ``g . d = m`` in Lp."""
    if p not in (math.inf, 2.0, 1.0):
        raise ValueError(f"unknown norm {p!r}")
    return 1.0 if p == math.inf else math.inf if p == 1.0 else 2.0


def _flat(t: torch.Tensor) -> torch.Tensor:
    """``(n, features)``; also for an empty batch, where ``reshape(n, -1)`` is ambiguous."""
    return t.reshape(t.shape[0], math.prod(t.shape[1:]))


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample vector so that it broadcasts against ``like``."""
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


def lp_norm(delta: torch.Tensor, p: float) -> torch.Tensor:
    """Per-sample Lp norm of ``delta`` (``p = 0``: the number of non-zero coordinates)."""
    return torch.linalg.vector_norm(_flat(delta), ord=p, dim=1)


def project(delta: torch.Tensor, eps: float | torch.Tensor, p: float) -> torch.Tensor:
    """Euclidean projection of each sample of ``delta`` onto the Lp ball of radius ``eps``.

    Linf: clip each coordinate.  L2: rescale samples whose norm exceeds ``eps``.
    L1: the exact projection (Duchi et al. 2008, soft thresholding at the level that
    puts the result on the sphere), not a rescaling.
    """
    if p == math.inf:
        if isinstance(eps, torch.Tensor):
            eps = _per_sample(eps, delta)
            return torch.maximum(torch.minimum(delta, eps), -eps)
        return delta.clamp(-eps, eps)
    if p == 2.0:
        norms = lp_norm(delta, 2.0)
        factor = torch.clamp(eps / norms.clamp_min(1e-12), max=1.0)
        return delta * _per_sample(factor, delta)
    if p == 1.0:
        return _project_l1(delta, eps)
    raise ValueError(f"unknown norm {p!r}")


def _project_l1(delta: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    flat = _flat(delta)
    n, d = flat.shape
    eps_t = torch.as_tensor(eps, dtype=flat.dtype, device=flat.device).expand(n)
    mags = flat.abs()
    outside = mags.sum(dim=1) > eps_t
    # Threshold theta with sum(max(|v| - theta, 0)) = eps, from the sorted magnitudes.
    sorted_mags, _ = mags.sort(dim=1, descending=True)
    cumsum = sorted_mags.cumsum(dim=1)
    ranks = torch.arange(1, d + 1, device=flat.device, dtype=flat.dtype)
    candidates = (cumsum - eps_t[:, None]) / ranks
    active = sorted_mags > candidates
    k = active.to(torch.int64).cumsum(dim=1).argmax(dim=1, keepdim=True)  # last active index
    theta = candidates.gather(1, k).squeeze(1).clamp_min(0.0)
    theta = torch.where(outside, theta, torch.zeros_like(theta))
    projected = flat.sign() * (mags - theta[:, None]).clamp_min(0.0)
    return projected.reshape(delta.shape)


def steepest_direction(grad: torch.Tensor, p: float) -> torch.Tensor:
    """The unit-Lp-norm direction of steepest ascent for a first-order model with gradient ``grad``.

    Linf: ``sign(grad)``.  L2: ``grad / ||grad||_2``.  L1: the sign of the largest
    gradient coordinate, on that coordinate only (ties share the step).
    """
    if p == math.inf:
        return grad.sign()
    if p == 2.0:
        norms = lp_norm(grad, 2.0).clamp_min(1e-12)
        return grad / _per_sample(norms, grad)
    if p == 1.0:
        flat = _flat(grad)
        top = flat.abs().amax(dim=1, keepdim=True)
        mask = (flat.abs() == top) & (top > 0)
        direction = flat.sign() * mask / mask.sum(dim=1, keepdim=True).clamp_min(1)
        return direction.reshape(grad.shape)
    raise ValueError(f"unknown norm {p!r}")


def random_in_ball(like: torch.Tensor, eps: float, p: float) -> torch.Tensor:
    """Samples drawn uniformly from the Lp ball of radius ``eps`` (shape and dtype of ``like``)."""
    n = like.shape[0]
    d = like[0].numel()
    if p == math.inf:
        return torch.empty_like(like).uniform_(-eps, eps)
    if p == 2.0:
        direction = torch.randn_like(like)
        direction = direction / _per_sample(lp_norm(direction, 2.0).clamp_min(1e-12), like)
        radius = eps * torch.rand(n, device=like.device, dtype=like.dtype) ** (1.0 / d)
        return direction * _per_sample(radius, like)
    if p == 1.0:
        # Uniform on the L1 ball: Laplace directions scaled by a Beta-distributed radius.
        direction = torch.distributions.Laplace(0.0, 1.0).sample(like.shape).to(like)
        direction = direction / _per_sample(lp_norm(direction, 1.0).clamp_min(1e-12), like)
        radius = eps * torch.rand(n, device=like.device, dtype=like.dtype) ** (1.0 / d)
        return direction * _per_sample(radius, like)
    raise ValueError(f"unknown norm {p!r}")


def random_start(like: torch.Tensor, eps: float, p: float) -> torch.Tensor:
    """PGD's usual random start (shape and dtype of ``like``): Linf uniform in the cube; L2 and L1
    a direction uniform on the unit sphere of the norm at a radius uniform in ``[0, eps]``
    (torchattacks' ``PGDL2`` and the common PGD code draw the L2 start this way).

    Not uniform in the ball's volume (:func:`random_in_ball`): in ``d`` dimensions that puts
    almost every start at radius ``eps`` (the radius is ``eps * u^(1/d)``), at the rim, where
    PGD fools measurably fewer samples than from starts spread over ``[0, eps]``."""
    if p == math.inf:
        return torch.empty_like(like).uniform_(-eps, eps)
    if p not in (2.0, 1.0):
        raise ValueError(f"unknown norm {p!r}")
    if p == 2.0:
        direction = torch.randn_like(like)
    else:  # normalised i.i.d. Laplace samples are uniform on the L1 sphere
        direction = torch.distributions.Laplace(0.0, 1.0).sample(like.shape).to(like)
    direction = direction / _per_sample(lp_norm(direction, p).clamp_min(1e-12), like)
    radius = eps * torch.rand(like.shape[0], device=like.device, dtype=like.dtype)
    return direction * _per_sample(radius, like)


def sparse_l1_direction(
    grad: torch.Tensor, x: torch.Tensor, bounds: tuple[float, float], sparsity: float
) -> torch.Tensor:
    """The L1 step of sparse L1 descent (Tramer & Boneh 2019, "Adversarial training and
    robustness for multiple perturbations", SLIDE): the sign of the gradient on its largest
    ``1 - sparsity`` share of coordinates (at least one), scaled to unit L1 norm.

    Coordinates at a bound that the gradient pushes further out are left out, so the step is
    not wasted on pixels that cannot move. ``sparsity -> 1`` is the exact steepest-ascent
    direction (one coordinate); a few percent of the coordinates per step work much better.
    """
    lo, hi = bounds
    g = grad.reshape(len(grad), -1)
    xf = x.reshape(len(x), -1)
    stuck = ((xf >= hi) & (g > 0)) | ((xf <= lo) & (g < 0))
    magnitude = g.abs().masked_fill(stuck, 0.0)
    k = max(1, int(round((1 - sparsity) * g.shape[1])))
    threshold = magnitude.topk(k, dim=1).values[:, -1:]
    mask = (magnitude >= threshold) & (magnitude > 0)
    direction = g.sign() * mask
    direction = direction / direction.abs().sum(dim=1, keepdim=True).clamp_min(1)
    return direction.reshape(grad.shape)
