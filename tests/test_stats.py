"""The Clopper-Pearson interval against its closed forms, its definition and published values."""

import math

import pytest

from advrun.stats import clopper_pearson


def binomial_tail(k: int, n: int, p: float, upper: bool) -> float:
    """P(X >= k) (``upper``) or P(X <= k) for X ~ Binomial(n, p), summed term by term."""
    terms = range(k, n + 1) if upper else range(0, k + 1)
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in terms)


@pytest.mark.parametrize("n", [1, 7, 60, 450])
def test_no_success_and_all_successes_have_closed_forms(n):
    assert clopper_pearson(0, n) == (0.0, pytest.approx(1 - 0.025 ** (1 / n)))
    assert clopper_pearson(n, n) == (pytest.approx(0.025 ** (1 / n)), 1.0)
    low, high = clopper_pearson(0, n, level=0.9)
    assert high == pytest.approx(1 - 0.05 ** (1 / n))


@pytest.mark.parametrize("k, n", [(1, 10), (5, 10), (37, 60), (300, 450)])
def test_the_bounds_are_where_the_binomial_tails_are_alpha_over_two(k, n):
    # the definition: at the lower bound P(X >= k) = alpha/2, at the upper bound P(X <= k) = alpha/2
    low, high = clopper_pearson(k, n)
    assert binomial_tail(k, n, low, upper=True) == pytest.approx(0.025, rel=1e-6)
    assert binomial_tail(k, n, high, upper=False) == pytest.approx(0.025, rel=1e-6)


@pytest.mark.parametrize("k, n", [(0, 5), (3, 10), (17, 60), (449, 450)])
def test_k_and_n_minus_k_mirror_each_other(k, n):
    low, high = clopper_pearson(k, n)
    mirror_low, mirror_high = clopper_pearson(n - k, n)
    assert (low, high) == (pytest.approx(1 - mirror_high), pytest.approx(1 - mirror_low))


def test_published_values():
    # Clopper-Pearson 95% intervals as tabulated (e.g. Brown, Cai & DasGupta 2001; R binom.test)
    assert clopper_pearson(5, 10) == (pytest.approx(0.1871, abs=1e-4), pytest.approx(0.8129, abs=1e-4))
    assert clopper_pearson(1, 10) == (pytest.approx(0.0025, abs=1e-4), pytest.approx(0.4450, abs=1e-4))


def test_coverage_is_at_least_the_level():
    # exact coverage at many true proportions: the probability that the interval holds p
    n = 30
    intervals = [clopper_pearson(k, n) for k in range(n + 1)]
    for p in [i / 97 for i in range(1, 97)]:
        coverage = sum(math.comb(n, k) * p**k * (1 - p) ** (n - k)
                       for k, (low, high) in enumerate(intervals) if low <= p <= high)
        assert coverage >= 0.95 - 1e-12, p


def test_the_interval_narrows_with_more_samples_and_holds_the_estimate():
    widths = []
    for n in (10, 100, 1000):
        low, high = clopper_pearson(0.7 * n, n)
        assert low < 0.7 < high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]


def test_nothing_to_count_and_impossible_counts():
    assert all(math.isnan(v) for v in clopper_pearson(0, 0))
    for k, n, level in ((-1, 5, 0.95), (6, 5, 0.95), (1, 5, 1.0), (1, 5, 0.0)):
        with pytest.raises(ValueError):
            clopper_pearson(k, n, level)
