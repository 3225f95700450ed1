"""FAB (Croce & Hein 2020) checked against closed forms: the projection onto a hyperplane in the
box, the exact minimal perturbation of an affine model (LinearExact), targeted runs reaching
their target, the contract (bounds, failures returned unchanged) and its settings."""

import math

import pytest
import torch
from torch import nn

from advrun.attacks import FAB, LinearExact, lp_norm
from advrun.attacks.base import Goal
from advrun.attacks.fab import hyperplane_projection
from advrun.errors import InvalidValue
from tests.conftest import linear_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("p", [math.inf, 2.0, 1.0])
def test_hyperplane_projection_is_the_smallest_step_onto_the_plane(p):
    """Against random feasible steps: the projection lies on the plane, in the box, and no
    feasible step found by rescaling random directions onto the plane is shorter."""
    torch.manual_seed(0)
    n, d = 50, 6
    w = torch.randn(n, d, dtype=torch.float64)
    z = torch.rand(n, d, dtype=torch.float64)
    m = torch.randn(n, dtype=torch.float64) * 0.3
    up, down = 1 - z, z
    delta = hyperplane_projection(w, m, up, down, p)
    reachable = torch.where(m[:, None] > 0, torch.where(w > 0, up, -down), torch.where(w > 0, -down, up))
    feasible = (w * reachable).sum(1).abs() >= m.abs()
    assert feasible.sum() > 30
    torch.testing.assert_close((w * delta).sum(1)[feasible], m[feasible])
    assert (delta <= up + 1e-12).all() and (delta >= -down - 1e-12).all()
    norms = lp_norm(delta, p)
    for _ in range(200):  # random directions scaled onto the plane, kept where inside the box
        r = torch.randn(n, d, dtype=torch.float64)
        r = r * (m / (w * r).sum(1))[:, None]
        inside = feasible & (r <= up).all(1) & (r >= -down).all(1)
        assert (norms[inside] <= lp_norm(r, p)[inside] + 1e-9).all()
    # unreachable: every coordinate saturated towards the plane
    torch.testing.assert_close(delta[~feasible], reachable[~feasible])


@pytest.mark.parametrize("norm, q", [("inf", 1), (2, 2)])
def test_fab_finds_the_exact_minimal_perturbation_of_an_affine_model(norm, q):
    """Interior points of a 4-class softmax regression: the minimal norm is min_j m_j / ||w_j - w_y||_q;
    FAB reaches it up to its convergence (measured, seed 0: at most 1.1e-4 above in Linf, where the
    iterates' direction is not exactly the optimal corner's, 7.6e-6 in L2; LinearExact, which adds
    a crossing margin, up to 5.2e-4 above), and never below it beyond float rounding."""
    model, w, b = linear_model(d=20, k=4, seed=1)
    x = torch.rand(200, 20) * 0.4 + 0.3
    y = model(x).argmax(1)
    z = x.double() @ w.double().T + b.double()
    g = w.double()[None] - w.double()[y][:, None]
    distance = (z.gather(1, y[:, None]) - z) / torch.linalg.vector_norm(g, ord=q, dim=2)
    exact = distance.masked_fill(nn.functional.one_hot(y, 4).bool(), math.inf).min(1).values
    fab = FAB(norm=norm)(model, x, y)
    linear = LinearExact(norm=norm)(model, x, y)
    assert fab.success.all() and linear.success.all()
    ratio = fab.norms.double() / exact
    assert ratio.max() <= 1 + 3e-4 and ratio.min() >= 1 - 1e-5
    assert (fab.norms <= linear.norms * (1 + 3e-4)).all()


def test_fab_without_refinement_stays_close_to_the_boundary():
    """The paper's points (refine_steps 0): the extrapolation eta and the backward step beta leave
    the iterates about (eta - 1)(1 - beta) = 0.5% of the norm beyond the boundary of an affine model."""
    model, w, b = linear_model(d=20, k=4, seed=1)
    x = torch.rand(100, 20) * 0.4 + 0.3
    y = model(x).argmax(1)
    refined = FAB(norm=2)(model, x, y)
    paper = FAB(norm=2, refine_steps=0)(model, x, y)
    assert paper.success.all()
    ratio = paper.norms / refined.norms
    assert ratio.min() >= 1.0 and ratio.max() <= 1.01


@pytest.mark.parametrize("norm", ["inf", 2, 1])
def test_targeted_fab_reaches_the_target_in_the_bounds(trained, norm):
    model, x, y = trained("mlp")
    x, y = x[:60], y[:60]
    result = FAB(norm=norm, target="least_likely", n_iter=50)(model, x, y)
    assert torch.equal(result.success, result.predictions == result.targets)
    assert result.success.float().mean() >= 0.9
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert torch.equal(result.x_adv[~result.success], x[~result.success])


@pytest.mark.parametrize("norm", ["inf", 2, 1])
def test_fab_fools_the_mlp_and_fab_t_adds_to_it(trained, norm):
    """FAB-T over 9 classes never loses a sample to the first class alone, and its norms are the
    minimum over the classes (no larger than with fewer classes)."""
    model, x, y = trained("mlp")
    x, y = x[:60], y[:60]
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    fab = FAB(norm=norm, n_iter=50)(model, x, y)
    assert fab.success[correct].all()
    assert fab.x_adv.min() >= 0 and fab.x_adv.max() <= 1
    one = FAB(norm=norm, n_iter=50, n_target_classes=1)(model, x, y)
    nine = FAB(norm=norm, n_iter=50, n_target_classes=9)(model, x, y)
    assert nine.success[correct].all() and (nine.success | ~one.success).all()
    assert (nine.norms[one.success] <= one.norms[one.success] * (1 + 1e-6)).all()


def test_fab_at_a_budget_stops_once_within_it(trained):
    """perturb_at_budget (an ensemble's member): every sample fooled within eps alone is fooled
    within eps at the budget too; a huge budget stops at the first success of each sample."""
    model, x, y = trained("mlp")
    x, y = x[:60], y[:60]
    attack = FAB(n_iter=30, n_target_classes=3)
    alone = attack(model, x, y)
    goal = Goal(y)
    with torch.enable_grad():
        at_budget = attack.perturb_at_budget(model, x, goal, (0.0, 1.0), 0.1)
    with torch.no_grad():
        fooled = model(at_budget).argmax(1) != y
    within = fooled & (lp_norm(at_budget - x, math.inf) <= 0.1 + 1e-6)
    assert (within | ~(alone.success & (alone.norms <= 0.1))).all()


def test_fab_takes_gradients_with_respect_to_the_input_only(trained):
    model, x, y = trained("mlp")
    grads = [p.grad for p in model.parameters()]
    FAB(n_iter=5, eot_samples=2)(model, x[:20], y[:20])
    assert all(p.grad is g for p, g in zip(model.parameters(), grads))


@pytest.mark.parametrize("kwargs, field", [
    ({"n_iter": 0}, "n_iter"), ({"n_restarts": 0}, "n_restarts"), ({"alpha_max": 1.5}, "alpha_max"),
    ({"eta": 0.0}, "eta"), ({"beta": 0.0}, "beta"), ({"beta": 1.2}, "beta"), ({"n_target_classes": 0}, "n_target_classes"),
    ({"refine_steps": -1}, "refine_steps"), ({"norm": 3}, "norm"), ({"eot_samples": 0}, "eot_samples"),
])
def test_invalid_settings_name_the_field(kwargs, field):
    with pytest.raises(InvalidValue) as info:
        FAB(**kwargs)
    assert info.value.field == field


def test_labels_and_config(make_cfg):
    from advrun.config import build

    assert FAB().label == "fab-linf" and FAB(norm=2, n_target_classes=9).label == "fab-t-l2"
    attack = build(make_cfg("attack=fab", "attack.norm=1", "attack.n_target_classes=9").attack, "attack")
    assert isinstance(attack, FAB) and attack.norm == 1.0 and attack.n_target_classes == 9 and attack.eps == math.inf
    assert (attack.n_iter, attack.n_restarts, attack.alpha_max, attack.eta, attack.beta) == (100, 1, 0.1, 1.05, 0.9)
