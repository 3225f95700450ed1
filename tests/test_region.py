"""The linear-region attack (Croce & Hein 2018): exact on affine models (LinearExact's optimum),
its programs inside one region checked against independent solvers (SLSQP, brute force in 2-D),
every returned point checked on the model, refusals, and a run through the runner."""

import math

import numpy as np
import pandas as pd
import pytest
import scipy.optimize
import torch
from torch import nn

from advrun import experiment
from advrun.attacks import LinearExact, RegionAttack
from advrun.attacks.linear_exact import halfspace_minimum
from advrun.attacks.region import linear_regions, solve_program
from advrun.bounds import float64_copy
from advrun.errors import ConfigError, InvalidValue
from tests.conftest import TINY

pytestmark = pytest.mark.usefixtures("one_thread")

NORMS = (math.inf, 2.0, 1.0)


def interior(x):
    """The images squeezed into [0.3, 0.7], far from the bounds."""
    return 0.3 + 0.4 * x


def tiny_relu_net(d: int = 2, hidden: int = 6, k: int = 3, seed: int = 0, leaky: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    def act():
        return nn.LeakyReLU(0.1) if leaky else nn.ReLU()

    return nn.Sequential(nn.Linear(d, hidden), act(), nn.Linear(hidden, hidden), act(), nn.Linear(hidden, k)).eval()


def assert_valid(result, model, x, y, bounds=(0.0, 1.0)):
    """Every success misclassified by the float32 model, every point in the box, failures unchanged."""
    with torch.no_grad():
        predictions = model(result.x_adv).argmax(dim=1)
    assert torch.equal(predictions[result.success] != y[result.success], torch.ones_like(y[result.success]).bool())
    assert result.x_adv.min() >= bounds[0] and result.x_adv.max() <= bounds[1]
    assert torch.equal(result.x_adv[~result.success], x[~result.success])


# ------------------------------------------------------------------------------ affine models


@pytest.mark.parametrize("norm", NORMS)
def test_on_an_affine_model_it_returns_linear_exacts_optimum(trained, norm):
    model, x, y = trained("logreg")
    x, y = x[:40], y[:40]
    exact = LinearExact(norm=norm, overshoot=1e-8)(model, x, y)
    ours = RegionAttack(norm=norm, rounds=1, samples=1)(model, x, y)
    assert torch.equal(ours.success, exact.success)
    assert_valid(ours, model, x, y)
    both = ours.success & (exact.norms > 0)
    # Region asks a logit margin of 1e-5 (1 + max |z|) past the boundary (LinearExact here 1e-8):
    # at most ~1e-5 relative on these logits of size ~10 over gaps ||w_j - w_y|| of size ~10; the
    # bisection can only shrink towards the boundary. Never below the exact minimum (float32: 1e-5).
    ratio = ours.norms[both].double() / exact.norms[both].double()
    assert ratio.min() >= 1 - 1e-5 and ratio.max() <= 1 + 1e-3, (ratio.min(), ratio.max())


# ------------------------------------------------------------------------- one linear region


@pytest.mark.parametrize("norm", NORMS)
def test_a_program_without_region_rows_is_linear_exacts_half_space_minimum(norm):
    """One margin row in the box: the LP / QP optimum equals LinearExact's closed form (sorted
    breakpoints, the greedy knapsack for L1) on random half-spaces, reachable or not."""
    generator = torch.Generator().manual_seed(0)
    g = torch.randn(40, 16, dtype=torch.float64, generator=generator)
    x = torch.rand(40, 16, dtype=torch.float64, generator=generator)
    need = torch.rand(40, dtype=torch.float64, generator=generator) * 10  # some beyond the box's reach
    closed = halfspace_minimum(g, need, 1 - x, x, norm)
    reachable = 0
    for i in range(len(g)):
        ours = solve_program(norm, np.zeros((0, 16)), np.zeros(0), g[i].numpy()[None], need[i:i + 1].numpy(),
                             (1 - x[i]).numpy(), x[i].numpy())
        if not torch.isfinite(closed[i]).all():
            assert ours is None
            continue
        reachable += 1
        expected = torch.linalg.vector_norm(closed[i], ord=norm).item()
        assert np.linalg.norm(ours, norm) == pytest.approx(expected, rel=1e-7, abs=1e-9)
    assert 5 <= reachable < len(g)


def test_the_regions_affine_map_is_the_networks_on_the_region():
    """Inside each anchor's region the network equals ``W x + b`` and every row holds; a point
    whose pattern differs violates some row."""
    model = tiny_relu_net(d=5, hidden=8, k=4, leaky=True).double()
    torch.manual_seed(1)
    anchors = torch.rand(6, 5, dtype=torch.float64)
    regions = linear_regions(model, anchors)
    with torch.no_grad():
        logits = model(anchors)
    assert torch.allclose((regions.weight @ anchors[:, :, None]).squeeze(2) + regions.bias, logits, atol=1e-12)
    inside = (regions.rows @ anchors[:, :, None]).squeeze(2) <= regions.limit + 1e-12
    assert inside.all()
    others = torch.rand(200, 5, dtype=torch.float64)  # random points: in anchor 0's region exactly when its rows hold
    rows_hold = ((others @ regions.rows[0].T) <= regions.limit[0]).all(dim=1)
    same_map = torch.isclose(others @ regions.weight[0].T + regions.bias[0], model(others).detach(), atol=1e-10).all(1)
    assert rows_hold.any() and (~rows_hold).any()
    assert torch.equal(rows_hold & same_map, rows_hold)  # the map holds on the whole region


def test_the_regions_of_a_cnn_with_max_pooling_are_its_linear_pieces(trained):
    """On advrun's digits CNN (normalisation, convolutions, relu, max pooling, dense layers) the
    map is the network's at each anchor, and on points near an anchor it holds exactly when all of
    the region's rows (signs and the pooling windows' choices) hold there."""
    model = float64_copy(trained("cnn")[0]).eval()
    _, x, _ = trained("cnn")
    generator = torch.Generator().manual_seed(0)
    # off the images: their constant borders tie pooling windows, so that the image sits on a face
    anchors = x[:4].double() + 0.01 * torch.randn(4, 1, 8, 8, dtype=torch.float64, generator=generator)
    regions = linear_regions(model, anchors)
    with torch.no_grad():
        assert torch.allclose((regions.weight @ anchors.flatten(1)[:, :, None]).squeeze(2) + regions.bias,
                              model(anchors), atol=1e-10)
        for k in range(len(anchors)):
            scale = torch.logspace(-6, -1, 300, dtype=torch.float64).view(-1, 1, 1, 1)  # inside and beyond
            near = (anchors[k] + scale * torch.randn(300, 1, 8, 8, dtype=torch.float64, generator=generator))
            hold = ((near.flatten(1) @ regions.rows[k].T) <= regions.limit[k] + 1e-12).all(dim=1)
            same = torch.isclose(near.flatten(1) @ regions.weight[k].T + regions.bias[k], model(near), atol=1e-9).all(1)
            assert hold.any() and (~hold).any(), k
            assert torch.equal(same | ~hold, torch.ones_like(hold))  # the map holds wherever the rows do


def _independent(p, rows, limit, margin_rows, margin, up, down):
    """The program by another solver: SciPy's SLSQP on a smooth form (L2 squared; Linf with a
    slack variable), L1 by HiGHS's interior-point method on another form."""
    d = len(up)
    if p == 2.0:
        cons = [{"type": "ineq", "fun": lambda v: limit - rows @ v},
                {"type": "ineq", "fun": lambda v: margin_rows @ v - margin}]
        res = scipy.optimize.minimize(lambda v: v @ v, np.zeros(d), jac=lambda v: 2 * v, constraints=cons,
                                      bounds=list(zip(-down, up)), method="SLSQP", options={"ftol": 1e-14, "maxiter": 500})
        return res.x, res.success
    if p == math.inf:  # variables (delta, t)
        cons = [{"type": "ineq", "fun": lambda v: limit - rows @ v[:d]},
                {"type": "ineq", "fun": lambda v: margin_rows @ v[:d] - margin},
                {"type": "ineq", "fun": lambda v: np.r_[v[d] - v[:d], v[d] + v[:d]]}]
        res = scipy.optimize.minimize(lambda v: v[d], np.r_[np.zeros(d), 1.0], constraints=cons,
                                      bounds=list(zip(-down, up)) + [(0, None)], method="SLSQP",
                                      options={"ftol": 1e-14, "maxiter": 500})
        return res.x[:d], res.success
    # L1: an interior-point method on another form, variables (delta, t) with |delta_i| <= t_i
    eye = np.eye(d)
    a = np.vstack([np.hstack([rows, np.zeros_like(rows)]), np.hstack([-margin_rows, np.zeros_like(margin_rows)]),
                   np.hstack([eye, -eye]), np.hstack([-eye, -eye])])
    b = np.concatenate([limit, -margin, np.zeros(2 * d)])
    res = scipy.optimize.linprog(np.r_[np.zeros(d), np.ones(d)], A_ub=a, b_ub=b,
                                 bounds=list(zip(-down, up)) + [(0, None)] * d, method="highs-ipm")
    return (res.x[:d] if res.status == 0 else np.zeros(d)), res.status == 0


@pytest.mark.parametrize("norm", NORMS)
def test_the_program_in_one_region_matches_an_independent_solver(norm):
    """In the regions of random anchors of a small ReLU net, each class's program (HiGHS / DAQP)
    has the optimum that another solver finds on the same constraints; infeasible ones agree too."""
    model = tiny_relu_net(d=6, hidden=10, k=4, seed=3).double()
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(1, 6, dtype=torch.float64, generator=generator)
    anchors = (x0 + 0.3 * torch.randn(8, 6, dtype=torch.float64, generator=generator)).clamp(0, 1)
    regions = linear_regions(model, anchors)
    y = int(model(x0).argmax())
    up, down = (1 - x0[0]).numpy(), x0[0].numpy()
    solved = infeasible = 0
    for k in range(len(anchors)):
        rows = regions.rows[k].numpy()
        limit = (regions.limit[k] - regions.rows[k] @ x0[0]).numpy()
        logits = (regions.weight[k] @ x0[0] + regions.bias[k]).numpy()
        for j in set(range(4)) - {y}:
            margin_rows = (regions.weight[k][j] - regions.weight[k][y]).numpy()[None]
            margin = np.array([logits[y] - logits[j] + 1e-6])
            ours = solve_program(norm, rows, limit, margin_rows, margin, up, down)
            theirs, ok = _independent(norm, rows, limit, margin_rows, margin, up, down)
            feasible = ok and (rows @ theirs <= limit + 1e-7).all() and (margin_rows @ theirs >= margin - 1e-7).all()
            if ours is None:
                assert not feasible, (k, j)
                infeasible += 1
                continue
            assert (rows @ ours <= limit + 1e-7).all() and (margin_rows @ ours >= margin - 1e-7).all()
            assert (ours <= up + 1e-9).all() and (ours >= -down - 1e-9).all()
            assert feasible, (k, j)
            # both solvers' tolerances are 1e-7 .. 1e-9 on norms of order 0.1-1
            assert np.linalg.norm(ours, norm) == pytest.approx(np.linalg.norm(theirs, norm), rel=1e-5, abs=1e-7)
            solved += 1
    assert solved >= 3 and infeasible >= 1, (solved, infeasible)


@pytest.mark.parametrize("leaky", [False, True])
def test_in_two_dimensions_the_region_minimum_is_the_brute_force_one(leaky):
    """On a 2-D ReLU (or leaky ReLU) net, the region attack's L2 norm is within a grid step of the
    smallest distance to a misclassified grid point (the brute-force minimum), and never below the
    smallest distance to the boundary that a fine grid resolves."""
    model = tiny_relu_net(d=2, hidden=8, k=3, seed=5, leaky=leaky)
    grid = torch.stack(torch.meshgrid(torch.linspace(0, 1, 801), torch.linspace(0, 1, 801), indexing="ij"), -1)
    grid = grid.reshape(-1, 2)
    with torch.no_grad():
        labels = model(grid).argmax(dim=1)
    torch.manual_seed(0)
    x = torch.rand(30, 2)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    result = RegionAttack(norm=2)(model, x, y)
    assert_valid(result, model, x, y)
    step = 1 / 800 * math.sqrt(2) / 2  # a grid point lies within this of any point of the square
    for i in range(len(x)):
        other = labels != y[i]
        if not other.any():
            continue
        brute = torch.linalg.vector_norm(grid[other] - x[i], dim=1).min().item()
        assert result.success[i]
        assert brute - step - 1e-6 <= result.norms[i].item() <= brute + 1e-3, (i, result.norms[i].item(), brute)


# ---------------------------------------------------------------------------- ReLU networks


@pytest.mark.parametrize("kind, norm", [("mlp", math.inf), ("mlp", 2.0), ("mlp", 1.0), ("cnn", 2.0)])
def test_every_returned_point_is_misclassified_and_in_the_box(trained, kind, norm):
    model, x, y = trained(kind)
    x, y = x[:12], y[:12]
    result = RegionAttack(norm=norm, rounds=2, samples=2)(model, x, y)
    assert result.success.float().mean() >= 0.9
    assert_valid(result, model, x, y)


def test_targeted_reaches_the_target(trained):
    model, x, y = trained("mlp")
    x, y = x[:10], y[:10]
    result = RegionAttack(norm=2, target="least_likely", rounds=2, samples=2)(model, x, y)
    assert result.targets is not None and result.success.any()
    with torch.no_grad():
        predictions = model(result.x_adv).argmax(dim=1)
    assert torch.equal(predictions[result.success], result.targets[result.success])


def test_on_a_relu_mlp_it_is_no_worse_than_the_linearisation_from_x(trained):
    """The relaxed minimiser from x's own region is a DeepFool step measured exactly: the attack
    tries it, so its norm is at most that point's wherever that point fools the model."""
    model, x, y = trained("mlp")
    x, y = interior(x[:20]), y[:20]
    result = RegionAttack(norm=2, rounds=0, samples=0, refine_steps=0)(model, x, y)
    regions = linear_regions(float64_copy(model).eval(), x.double())
    flat = x.flatten(1).double()
    for i in range(len(x)):
        w, b = regions.weight[i], regions.bias[i]
        z = w @ flat[i] + b
        g = w - w[y[i]]
        need = z[y[i]] - z + 1e-5 * (1 + z.abs().max())
        delta = halfspace_minimum(g, need, (1 - flat[i]).expand_as(g), flat[i].expand_as(g), 2.0)
        lengths = torch.linalg.vector_norm(delta.nan_to_num(0.0, 0.0, 0.0), dim=1)
        norms = torch.where(torch.isfinite(delta).all(1), lengths, math.inf)
        norms[y[i]] = math.inf
        point = (flat[i] + delta[norms.argmin()]).float().clamp(0, 1).view_as(x[i])
        with torch.no_grad():
            fools = model(point[None]).argmax(dim=1).item() != y[i].item()
        if fools:
            assert result.norms[i] <= torch.linalg.vector_norm(point - x[i]) + 1e-6


# ----------------------------------------------------------------------------------- refusals


def test_refuses_models_that_are_not_piecewise_linear(trained):
    from advrun.models import MLP

    mlp_tanh = MLP(in_shape=(1, 8, 8), num_classes=10, activation="tanh")
    with pytest.raises(InvalidValue, match=r"relu or leaky_relu.*tanh \(model\.activation\) is not piecewise linear") as error:
        RegionAttack().check_model(mlp_tanh, (1, 8, 8))
    assert error.value.field == "_target_"
    class Skip(nn.Module):  # a residual unit: a block whose insides are not read
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(64, 64)

        def forward(self, x):
            return x + torch.relu(self.linear(x))

    with pytest.raises(InvalidValue, match="block"):
        RegionAttack().check_model(nn.Sequential(nn.Flatten(), Skip(), nn.Linear(64, 10)), (1, 8, 8))
    RegionAttack().check_model(trained("cnn")[0], (1, 8, 8))  # convolutions and max pooling
    RegionAttack().check_model(trained("mlp")[0], (1, 8, 8))
    RegionAttack().check_model(trained("logreg")[0], (1, 8, 8))
    RegionAttack().check_model(MLP(in_shape=(1, 8, 8), num_classes=10, activation="leaky_relu"), (1, 8, 8))


@pytest.mark.parametrize("field, value", [("rounds", -1), ("classes", 0), ("overshoot", 0.0), ("growth", 0.0),
                                          ("norm", 0)])
def test_rejects_bad_settings(field, value):
    with pytest.raises(InvalidValue, match=field):
        RegionAttack(**{field: value})


def test_the_runner_refuses_a_tanh_model_before_training(make_cfg, tmp_path):
    cfg = make_cfg("attack=region", "model.activation=tanh", *TINY)
    with pytest.raises(ConfigError, match=r"^attack\._target_: region needs .*model\.activation"):
        experiment.run(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "model.pt").exists()


def test_the_config_runs_through_the_runner(make_cfg, tmp_path):
    cfg = make_cfg("attack=region", "attack.rounds=1", "attack.samples=1", *TINY)
    metrics = experiment.run(cfg, tmp_path / "run")
    curve = pd.read_csv(tmp_path / "run" / "curve.csv")
    assert set(curve["attack"]) == {"region"} and set(curve["norm"]) == {"l2"}
    # a minimum-norm attack: its success rate grows with the budget to its final rate
    assert curve["robust_accuracy"].is_monotonic_decreasing
    assert 0 <= metrics["clean_accuracy"] <= 1
