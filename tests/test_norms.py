"""Norms, projections and random starts against mathematics and an independent solver."""

import math

import numpy as np
import pytest
import torch

from advrun.attacks.norms import dual_norm, lp_norm, parse_norm, project, random_in_ball, steepest_direction

# Comparisons without stated tolerances use torch.testing.assert_close's defaults (float32: rtol
# 1.3e-6, atol 1e-5) and pytest.approx's (rel 1e-6), a few ulps: the same formula evaluated in
# another order (per sample against batched, a sum against a norm).


@pytest.mark.parametrize("spelling, value", [
    ("inf", math.inf), ("Linf", math.inf), (math.inf, math.inf), (2, 2.0), ("l2", 2.0), ("2", 2.0), (1, 1.0), ("L1", 1.0),
    (0, 0.0), ("L0", 0.0), ("0", 0.0),
])
def test_parse_norm_spellings(spelling, value):
    assert parse_norm(spelling) == value


@pytest.mark.parametrize("bad", [3, "l3", "max", True, None])
def test_parse_norm_rejects_unknown(bad):
    with pytest.raises(ValueError, match="unknown norm"):
        parse_norm(bad)


def test_l0_is_the_count_of_changed_coordinates_and_other_attacks_refuse_it():
    """L0 parses and names itself, its norm counts non-zero coordinates, and the attacks that do
    not list it (all but FMN) refuse it with an InvalidValue naming the field."""
    from advrun.attacks import PGD
    from advrun.attacks.norms import norm_name
    from advrun.errors import InvalidValue

    assert norm_name(parse_norm("l0")) == "l0"
    delta = torch.tensor([[0.0, -0.5, 1e-9, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert lp_norm(delta, 0.0).tolist() == [2.0, 0.0]
    with pytest.raises(InvalidValue, match="not l0") as info:
        PGD(norm=0)
    assert info.value.field == "norm"


def test_linf_projection_is_coordinate_clipping():
    delta = torch.tensor([[0.5, -0.2, -0.9, 0.05]])
    assert torch.equal(project(delta, 0.3, math.inf), torch.tensor([[0.3, -0.2, -0.3, 0.05]]))


def test_l2_projection_closed_form():
    delta = torch.randn(16, 3, 5, 5)
    eps = 1.5
    out = project(delta, eps, 2.0)
    norms = delta.flatten(1).norm(dim=1)
    for i in range(16):
        expected = delta[i] if norms[i] <= eps else delta[i] * eps / norms[i]
        torch.testing.assert_close(out[i], expected)


def _l1_projection_by_bisection(v: np.ndarray, eps: float) -> np.ndarray:
    """Independent solver: the minimiser of ||w - v||_2 over the L1 ball is a soft threshold,
    with the threshold found by bisection on sum(max(|v| - t, 0)) = eps."""
    if np.abs(v).sum() <= eps:
        return v
    lo, hi = 0.0, np.abs(v).max()
    for _ in range(200):
        mid = (lo + hi) / 2
        if np.maximum(np.abs(v) - mid, 0).sum() > eps:
            lo = mid
        else:
            hi = mid
    return np.sign(v) * np.maximum(np.abs(v) - hi, 0)


def test_l1_projection_agrees_with_bisection_solver():
    delta = torch.randn(32, 20, dtype=torch.float64) * torch.rand(32, 1, dtype=torch.float64) * 3
    for eps in (0.1, 1.0, 5.0, 50.0):
        out = project(delta, eps, 1.0)
        for i in range(len(delta)):
            expected = _l1_projection_by_bisection(delta[i].numpy(), eps)
            # float64 on both sides: 200 bisection steps pin the threshold to float64 resolution, and
            # project's sorted cumulative sums over 20 entries of up to ~10 round by ~1e-14 << 1e-9
            np.testing.assert_allclose(out[i].numpy(), expected, atol=1e-9)
        assert (lp_norm(out, 1.0) <= eps + 1e-9).all()  # a float64 sum of 20 terms, eps <= 50: ~1e-13


def test_l1_projection_is_not_a_rescaling():
    delta = torch.tensor([[3.0, 1.0, 0.2]])
    out = project(delta, 2.0, 1.0)
    # soft threshold at 1.0: (2, 0, 0), whereas rescaling would give (1.43, 0.48, 0.1)
    torch.testing.assert_close(out, torch.tensor([[2.0, 0.0, 0.0]]))


@pytest.mark.parametrize("p", [math.inf, 2.0, 1.0])
def test_steepest_direction_has_unit_norm_and_is_an_ascent_direction(p):
    grad = torch.randn(8, 1, 4, 4)
    direction = steepest_direction(grad, p)
    torch.testing.assert_close(lp_norm(direction, p), torch.ones(8))
    # For the unit ball of norm p, <grad, d> equals the dual norm of grad.
    dual = {math.inf: 1.0, 2.0: 2.0, 1.0: math.inf}[p]
    torch.testing.assert_close((grad * direction).flatten(1).sum(1), lp_norm(grad, dual))


def test_dual_norm_is_the_largest_inner_product_over_the_unit_ball():
    """``q = dual_norm(p)`` gives ``max_{||d||_p <= 1} g . d = ||g||_q`` (Hoelder): no random unit
    direction exceeds it, the steepest direction reaches it, and the dual of ``q`` is ``p``."""
    assert (dual_norm(math.inf), dual_norm(2.0), dual_norm(1.0)) == (1.0, 2.0, math.inf)
    generator = torch.Generator().manual_seed(0)
    g = torch.randn(5, 12, generator=generator, dtype=torch.float64)
    for p in (math.inf, 2.0, 1.0):
        q = dual_norm(p)
        directions = torch.randn(500, 12, generator=generator, dtype=torch.float64)
        directions = directions / lp_norm(directions, p)[:, None]
        # float64 dot products and norms over 12 terms: ~12 eps64 (3e-15) relative << 1e-12
        assert (g @ directions.T <= lp_norm(g, q)[:, None] * (1 + 1e-12)).all()
        torch.testing.assert_close((g * steepest_direction(g, p)).sum(dim=1), lp_norm(g, q))
        assert dual_norm(q) == p
    with pytest.raises(ValueError, match="unknown norm"):
        dual_norm(3.0)


@pytest.mark.parametrize("p", [math.inf, 2.0, 1.0])
def test_random_start_lies_in_the_ball_and_fills_it(p):
    x = torch.zeros(2000, 6)
    sample = random_in_ball(x, 0.5, p)
    norms = lp_norm(sample, p)
    # float32 scaling and norm (1.2e-7 relative each, over 6 coordinates): a few ulps of 0.5 (6e-8)
    assert (norms <= 0.5 + 1e-6).all()
    # Uniform in a 6-dimensional ball: P(norm <= r * eps) = r^6 (for Linf the cube's own law).
    # 0.05 is sampling error, not float error: 2000 draws of p = 0.53 have a standard deviation
    # of 0.011, so 0.05 is about 4.5 of them.
    if p != math.inf:
        assert abs((norms <= 0.5 * 0.9).float().mean().item() - 0.9**6) < 0.05


def test_sparse_l1_direction_moves_the_largest_free_coordinates():
    from advrun.attacks.norms import sparse_l1_direction

    grad = torch.tensor([[0.1, -3.0, 2.0, 0.5, -1.0, 4.0, 0.0, 0.2, -0.3, 1.5]])
    x = torch.tensor([[0.5, 0.5, 0.5, 0.5, 0.5, 1.0, 0.5, 0.5, 0.5, 0.5]])  # coordinate 5 sits at the top
    direction = sparse_l1_direction(grad, x, (0.0, 1.0), sparsity=0.7)  # 3 of 10 coordinates
    expected = torch.zeros(1, 10)
    expected[0, [1, 2, 9]] = torch.tensor([-1.0, 1.0, 1.0]) / 3  # 4.0 is excluded: it cannot grow
    torch.testing.assert_close(direction, expected)
    assert lp_norm(direction, 1.0).item() == pytest.approx(1.0)


def test_sparse_l1_pgd_beats_single_coordinate_steps(trained):
    from advrun.attacks import PGD

    model, x, y = trained("mlp")
    torch.manual_seed(0)
    sparse = PGD(eps=4.0, norm=1, steps=40)(model, x, y).success.float().mean()
    torch.manual_seed(0)
    single = PGD(eps=4.0, norm=1, steps=40, l1_sparsity=1 - 1 / 64)(model, x, y).success.float().mean()
    assert sparse >= single and sparse > 0.9
