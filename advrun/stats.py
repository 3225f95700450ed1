"""How sure a measured proportion is: the exact binomial (Clopper-Pearson) confidence interval.

Every accuracy and success rate advrun reports is a count ``k`` of ``n`` samples; the interval
says where the proportion lies for the population the ``n`` samples were drawn from. It is
exact (its coverage is at least ``level`` for every true proportion), hence conservative, and
needs no normal approximation, so it holds for small ``n`` and near 0 or 1 (Clopper & Pearson
1934, "The use of confidence or fiducial limits illustrated in the case of the binomial").
The certificates of randomized smoothing (:mod:`advrun.smoothing`) take its one-sided lower
bound instead (:func:`clopper_pearson_lower`).
"""

from __future__ import annotations

import math

#: The confidence level of every interval advrun reports.
LEVEL = 0.95
#: The method, as reports state it once.
METHOD = f"{100 * LEVEL:g}% Clopper-Pearson (exact binomial) interval"


def clopper_pearson(successes: float, n: float, level: float = LEVEL) -> tuple[float, float]:
    """The two-sided ``level`` interval ``(low, high)`` of the proportion ``successes / n``.

    ``low`` is the ``alpha/2`` quantile of Beta(k, n - k + 1) and ``high`` the ``1 - alpha/2``
    quantile of Beta(k + 1, n - k), ``alpha = 1 - level``; ``k = 0`` gives ``low = 0`` and
    ``k = n`` gives ``high = 1``. A count that is not a whole number (the mean count of several
    evaluations of one set, say) takes the same Beta quantiles. ``n = 0`` (nothing to count):
    ``(nan, nan)``. Raises ValueError unless ``0 <= successes <= n`` and ``0 < level < 1``.
    """
    from scipy.stats import beta

    k, n = float(successes), float(n)
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
    if math.isnan(k) or math.isnan(n) or n == 0:
        return math.nan, math.nan
    if not 0 <= k <= n:
        raise ValueError(f"needs 0 <= successes <= n, got {successes} of {n}")
    alpha = 1 - level
    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


def clopper_pearson_lower(successes, n, confidence: float):
    """The one-sided ``confidence`` lower bound of the proportion ``successes / n``: the
    ``1 - confidence`` quantile of Beta(k, n - k + 1), 0 for ``k = 0``. It is the ``low`` end of
    :func:`clopper_pearson` at level ``2 confidence - 1`` (all of the ``1 - confidence`` on one
    side) and has coverage at least ``confidence`` for every true proportion; ``k = n`` gives
    ``(1 - confidence) ** (1 / n)``. ``successes`` and ``n`` may be numbers (a float comes back)
    or arrays of counts (an array of bounds, one per count). Raises ValueError unless
    ``0 < confidence < 1``, ``n >= 1`` and ``0 <= successes <= n``.
    """
    import numpy as np
    from scipy.stats import beta

    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    k, total = np.broadcast_arrays(np.asarray(successes, dtype=np.float64), np.asarray(n, dtype=np.float64))
    if np.isnan(k).any() or np.isnan(total).any() or (total < 1).any() or (k < 0).any() or (k > total).any():
        raise ValueError(f"needs n >= 1 and 0 <= successes <= n, got {successes} of {n}")
    low = np.where(k == 0, 0.0, beta.ppf(1 - confidence, np.maximum(k, 1.0), total - k + 1))
    return float(low) if low.ndim == 0 else low


def bracketed(low: float | None, high: float | None) -> str:
    """An interval of a proportion as reports show it after the value, in percent with one decimal:
    `` [70.4, 75.9]``; empty where there is none (NaN, or a file written before intervals)."""
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return ""
    return f" [{100 * low:.1f}, {100 * high:.1f}]"
