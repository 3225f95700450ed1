"""Minimum-norm attacks (DeepFool, C&W, L-BFGS, exact linear) checked against closed forms on
affine models, against independent solvers (scipy's LP and SLSQP) and against each other only
through the exact lower bound."""

import math

import numpy as np
import pytest
import scipy.optimize
import torch
import torch.nn.functional as F
from torch import nn

from advrun.attacks import CW, LBFGS, PGD, DeepFool, LinearExact, MinimumNormAttack
from advrun.errors import InvalidValue

DUAL = {math.inf: 1, 2.0: 2, 1.0: math.inf}

#: Relative slack between an attack's norm and a float64 closed form: the attack works in float32
#: (relative precision 1.2e-7) on a model whose logits are float32 sums over 64 pixels, and its
#: norm is a float32 sum over 64 coordinates, ~1e-6 relative in all; 1e-5 leaves a factor ten.
FLOAT32_NORM = 1e-5

#: Absolute slack on float32 adversarial points in [0, 1] against a float64 closed form: the
#: point's own rounding (ulp <= 1.2e-7) plus the float32 step, whose logits and gradient carry
#: ~1e-6 relative error on steps of order 1.
FLOAT32_POINT = 2e-6


pytestmark = pytest.mark.usefixtures("one_thread")


def affine(model):
    """``(W, b)`` of a trained LogReg in float64, read from its parameters (not by autograd)."""
    linear = model[-1]
    return linear.weight.detach().double(), linear.bias.detach().double()


def interior(x):
    """The images squeezed into [0.3, 0.7], far from the bounds."""
    return 0.3 + 0.4 * x


def predicted(model, x):
    with torch.no_grad():
        return model(x).argmax(dim=1)


def nearest_boundary(w, b, x, y, p, classes=None):
    """Closed form, bounds ignored: per sample ``min_j (z_y - z_j) / ||w_j - w_y||_dual`` over
    the classes ``j != y`` (or over ``j = classes`` alone)."""
    z = x.flatten(1).double() @ w.T + b
    g = w[None] - w[y][:, None]
    distance = (z.gather(1, y[:, None]) - z) / torch.linalg.vector_norm(g, ord=DUAL[p], dim=2)
    excluded = F.one_hot(y, w.shape[0]).bool() if classes is None else ~F.one_hot(classes, w.shape[0]).bool()
    return distance.masked_fill(excluded, math.inf).amin(dim=1)


def margin_of(logits, y):
    """``Z_y - max_{j != y} Z_j``."""
    return logits.gather(1, y[:, None]).squeeze(1) - logits.scatter(1, y[:, None], -math.inf).amax(dim=1)


# ----------------------------------------------------------------------------------- DeepFool


@pytest.mark.parametrize("norm", [2.0, math.inf])
def test_deepfool_on_a_binary_affine_model_is_one_projection(trained, norm):
    """f(x) = (w_1 - w_0) . x + b_1 - b_0: DeepFool's step is the projection onto f = 0,
    x - f/||w||_2^2 w (L2) or x - f/||w||_1 sign(w) (Linf), scaled once by 1 + overshoot;
    the refinement then shrinks that factor to just above 1 (the boundary)."""
    model, x, _ = trained("logreg", classes=(0, 1))
    x = interior(x)
    y = predicted(model, x)
    w, b = affine(model)
    theta, offset = w[1] - w[0], b[1] - b[0]
    f = x.flatten(1).double() @ theta + offset
    step = theta / theta.pow(2).sum() if norm == 2.0 else theta.sign() / theta.abs().sum()
    projection = -f[:, None] * step
    assert ((x.flatten(1) + 1.02 * projection >= 0) & (x.flatten(1) + 1.02 * projection <= 1)).all()
    distance = f.abs() / theta.norm(p=DUAL[norm])

    paper = DeepFool(norm=norm, overshoot=0.02, refine_steps=0)(model, x, y)
    assert paper.success.all()
    torch.testing.assert_close(paper.x_adv.flatten(1).double(), x.flatten(1) + 1.02 * projection, rtol=0,
                               atol=FLOAT32_POINT)
    torch.testing.assert_close(paper.norms.double(), 1.02 * distance, rtol=FLOAT32_NORM, atol=1e-6)

    refined = DeepFool(norm=norm, overshoot=0.02)(model, x, y)
    assert refined.success.all()
    factor = refined.norms.double() / distance
    # 1.02 / 2**11: the resolution of the refinement's bisection on [0, 1.02], not float error
    assert factor.min() >= 1 - FLOAT32_NORM and factor.max() <= 1 + 1.02 / 2**11
    torch.testing.assert_close(refined.x_adv.flatten(1).double(), x.flatten(1) + factor[:, None] * projection,
                               rtol=0, atol=FLOAT32_POINT)


@pytest.mark.parametrize("norm", [2.0, math.inf])
def test_deepfool_on_softmax_regression_steps_to_the_nearest_hyperplane(trained, norm):
    model, x, _ = trained("logreg")
    x = interior(x[:150])
    y = predicted(model, x)
    w, b = affine(model)
    distance = nearest_boundary(w, b, x, y, norm)
    result = DeepFool(norm=norm, refine_steps=0)(model, x, y)
    assert result.success.all()
    torch.testing.assert_close(result.norms.double(), 1.02 * distance, rtol=FLOAT32_NORM, atol=1e-6)
    refined = DeepFool(norm=norm)(model, x, y)
    factor = refined.norms.double() / distance  # at most the bisection's resolution 1.02 / 2**11 above 1
    assert refined.success.all() and factor.min() >= 1 - FLOAT32_NORM and factor.max() <= 1 + 1.02 / 2**11


@pytest.mark.parametrize("norm", [2.0, math.inf])
def test_deepfool_within_the_bounds_of_softmax_regression(trained, norm):
    """Real digits, where the bounds bind: the overshoot scales the total perturbation once, so
    the paper's DeepFool lies between the exact minimum and about 1.02 times it (a bit more
    where a later step turns to another class); the refinement only shrinks it, to about
    the minimum."""
    model, x, y = trained("logreg")
    correct = predicted(model, x) == y
    exact = LinearExact(norm=norm, overshoot=1e-8)(model, x, y).norms[correct].double()
    paper = DeepFool(norm=norm, refine_steps=0)(model, x, y)
    refined = DeepFool(norm=norm)(model, x, y)
    assert paper.success[correct].all() and refined.success[correct].all()
    paper_norms, refined_norms = paper.norms[correct].double(), refined.norms[correct].double()
    ratio = paper_norms / exact
    # 1.03 and the 2% share are the algorithm (a later step may turn to another class), not float
    # error; 1.02 * (1 + 1e-4) is the overshoot with room for float32 norms (~1e-6), loose by choice.
    assert ratio.min() >= 1 - FLOAT32_NORM and ratio.max() <= 1.03
    assert (ratio <= 1.02 * (1 + 1e-4)).float().mean() > 0.98
    # 1e-6: both are float32 norms of the same delta scaled by 1.02 or a smaller factor (~1e-7 relative each)
    assert (refined_norms >= exact * (1 - FLOAT32_NORM)).all() and (refined_norms <= paper_norms * (1 + 1e-6)).all()
    # the refinement's bisection resolution 1.02 / 2**11 (5e-4), not float error
    assert (refined_norms / exact).median() <= 1.001


def test_deepfool_considers_only_the_top_candidates(trained):
    """candidates=1: the only class examined is the runner-up of the clean logits."""
    model, x, _ = trained("logreg")
    x = interior(x[:150])
    y = predicted(model, x)
    w, b = affine(model)
    with torch.no_grad():
        runner_up = model(x).scatter(1, y[:, None], -math.inf).argmax(dim=1)
    to_runner_up = nearest_boundary(w, b, x, y, 2.0, classes=runner_up)
    nearest = nearest_boundary(w, b, x, y, 2.0)
    assert (to_runner_up > nearest * 1.01).any()  # the restriction matters for some samples
    result = DeepFool(candidates=1, refine_steps=0)(model, x, y)
    assert result.success.all()
    torch.testing.assert_close(result.norms.double(), 1.02 * to_runner_up, rtol=FLOAT32_NORM, atol=1e-6)


@pytest.mark.parametrize("norm", [2.0, math.inf])
def test_deepfool_moves_saturated_images(trained, norm):
    """Binarised digits: every pixel sits on a bound. Steps that push pixels further out must
    not stall the attack: every correctly classified image is fooled, inside the bounds."""
    model, x, y = trained("mlp")
    x, y = x[:150].round(), y[:150]
    correct = predicted(model, x) == y
    result = DeepFool(norm=norm)(model, x, y)
    assert result.success[correct].all()
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1


def test_deepfool_stops_each_sample_once_it_is_fooled(trained):
    model, x, y = trained("mlp")
    steps = []  # the batch size of each linearisation (the passes that need a gradient)

    def record(module, inputs, output):
        if inputs[0].requires_grad:
            steps.append(len(inputs[0]))

    hook = model.register_forward_hook(record)
    try:
        result = DeepFool()(model, x[:100], y[:100])
    finally:
        hook.remove()
    assert result.success.sum() > 90
    assert steps[0] == 100 and steps == sorted(steps, reverse=True) and len(steps) < 10 and steps[-1] < 50


def test_deepfool_returns_the_input_where_it_fails(trained):
    model, x, y = trained("mlp")
    result = DeepFool(steps=1, overshoot=0.0)(model, x[:100], y[:100])
    failed = ~result.success
    assert failed.any()
    assert torch.equal(result.x_adv[failed], x[:100][failed])


# -------------------------------------------------------------------------------- LinearExact


@pytest.mark.parametrize("norm", [2.0, math.inf])  # L1 moves one pixel by more than 0.3: the box binds
def test_linear_exact_is_the_distance_to_the_nearest_boundary(trained, norm):
    model, x, _ = trained("logreg")
    x = interior(x)
    y = predicted(model, x)
    w, b = affine(model)
    distance = nearest_boundary(w, b, x, y, norm)
    result = LinearExact(norm=norm)(model, x, y)
    assert result.success.all()
    # LinearExact crosses the boundary on purpose by 1e-6 (1 + max |z|) / ||w_j - w_y||_dual (a few
    # 1e-6, not float error), on top of float32 norms (FLOAT32_NORM)
    torch.testing.assert_close(result.norms.double(), distance, rtol=2e-5, atol=5e-6)


def test_linear_exact_on_two_classes_is_the_sign_of_theta(trained):
    """Linf, two classes: delta* = -eps* sign(theta) towards the other side, eps* = |f| / ||theta||_1."""
    model, x, _ = trained("logreg", classes=(0, 1))
    x = interior(x)
    y = predicted(model, x)
    w, b = affine(model)
    theta = w[1] - w[0]
    f = x.flatten(1).double() @ theta + b[1] - b[0]
    eps = f.abs() / theta.abs().sum()
    side = torch.where(y == 1, 1.0, -1.0).double()  # +1 for class 1 (f > 0)
    expected = x.flatten(1).double() - side[:, None] * eps[:, None] * theta.sign()
    result = LinearExact(norm="inf")(model, x, y)
    assert result.success.all()
    # per coordinate: LinearExact's deliberate crossing margin 1e-6 (1 + max |z|) / ||theta||_1 plus
    # the float32 point (FLOAT32_POINT)
    torch.testing.assert_close(result.x_adv.flatten(1).double(), expected, rtol=0, atol=1e-5)


def _scipy_minimal_norm(g, m, x, p):
    """Smallest ||delta||_p with g . delta >= m and 0 <= x + delta <= 1, by scipy (LP or SLSQP)."""
    d = len(g)
    box = list(zip(-x, 1 - x))
    if p == 1.0:  # delta = u - v, u, v >= 0: min sum(u + v), -g.(u - v) <= -m, u <= 1 - x, v <= x
        lp = scipy.optimize.linprog(np.ones(2 * d), A_ub=np.r_[-g, g][None], b_ub=[-m],
                                    bounds=list(zip(np.zeros(d), 1 - x)) + list(zip(np.zeros(d), x)), method="highs")
        return lp.fun if lp.status == 0 else math.inf
    if p == math.inf:  # variables (delta, t): min t, -g.delta <= -m, |delta_i| <= t
        c = np.r_[np.zeros(d), 1.0]
        a = np.vstack([np.r_[-g, 0.0], np.c_[np.eye(d), -np.ones(d)], np.c_[-np.eye(d), -np.ones(d)]])
        ub = np.r_[-m, np.zeros(2 * d)]
        lp = scipy.optimize.linprog(c, A_ub=a, b_ub=ub, bounds=box + [(0, None)], method="highs")
        return lp.fun if lp.status == 0 else math.inf
    start = np.clip(g * m / (g @ g), -x, 1 - x)
    qp = scipy.optimize.minimize(
        lambda v: v @ v, start, jac=lambda v: 2 * v, bounds=box, method="SLSQP",
        constraints=[{"type": "ineq", "fun": lambda v: g @ v - m, "jac": lambda v: g}],
        options={"ftol": 1e-14, "maxiter": 500},
    )
    # SLSQP meets g . delta >= m only up to its float64 constraint residual; 1e-7 accepts that
    # residual and rejects a point that missed the constraint
    return math.sqrt(qp.fun) if qp.success and g @ qp.x >= m - 1e-7 else math.inf


@pytest.mark.parametrize("norm", [2.0, math.inf, 1.0])
def test_linear_exact_respects_the_bounds_exactly(trained, norm):
    """Real digits (many pixels at 0 or 1): the box binds; compare with scipy's solvers."""
    model, x, y = trained("logreg")
    x, y = x[:12], y[:12]
    w, b = affine(model)
    z = x.flatten(1).double() @ w.T + b
    result = LinearExact(norm=norm)(model, x, y)
    unconstrained = nearest_boundary(w, b, x, y, norm)
    for i in range(len(x)):
        if z[i].argmax() != y[i]:
            continue
        xi = x[i].flatten().double().numpy()
        best = min(
            _scipy_minimal_norm((w[j] - w[y[i]]).numpy(), (z[i, y[i]] - z[i, j]).item(), xi, norm)
            for j in range(10) if j != y[i]
        )
        assert result.success[i]
        # LinearExact's crossing margin (a few 1e-6 relative), float32 norms (FLOAT32_NORM), HiGHS's
        # feasibility tolerance (1e-7) and SLSQP's convergence: rel 2e-4 is loose against all of them
        assert result.norms[i].item() == pytest.approx(best, rel=2e-4)
    assert (result.norms.double() > unconstrained * 1.01).any()  # the bounds did bind


@pytest.mark.parametrize("norm", [2.0, math.inf])
def test_pgd_cannot_beat_linear_exact(trained, norm):
    """Below a sample's exact minimal norm no attack can succeed; at a budget above it, the
    exact perturbation is within the budget and fools the model."""
    model, x, y = trained("logreg")
    x, y = x[:200], y[:200]
    exact = LinearExact(norm=norm)(model, x, y)
    correct = predicted(model, x) == y
    for eps in exact.norms[correct].quantile(torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9])).tolist():
        pgd = PGD(eps=eps, norm=norm, steps=40)(model, x, y)
        # 1.001: well above LinearExact's crossing margin and PGD's float32 projection (~1e-6
        # relative each); a sample that close to the budget may go either way
        out_of_reach = correct & (exact.norms > eps * 1.001)
        assert not pgd.success[out_of_reach].any()
        within = correct & (exact.norms <= eps)
        assert exact.success[within].all()
        assert pgd.success[correct].sum() <= within.sum() + (correct & (exact.norms <= eps * 1.001)).sum()


def test_linear_exact_is_a_lower_bound_for_every_other_attack(trained):
    model, x, y = trained("logreg")
    x, y = x[:100], y[:100]
    correct = predicted(model, x) == y
    # a crossing margin of 1e-8 (times the logit scale) keeps the exact norms within ~1e-7 of the infimum
    results = {norm: LinearExact(norm=norm, overshoot=1e-8)(model, x, y) for norm in (2.0, math.inf)}
    others = [
        DeepFool(norm=2.0), DeepFool(norm=math.inf), CW(steps=200, binary_steps=5, initial_const=0.1),
        LBFGS(steps=50, binary_steps=6, initial_const=1.0),
    ]
    for attack in others:
        other = attack(model, x, y)
        exact = results[attack.norm]
        fooled = correct & other.success
        assert fooled.float().mean() > 0.9
        assert (other.norms[fooled] >= exact.norms[fooled] * (1 - FLOAT32_NORM)).all(), attack.label


def test_linear_exact_l1_is_the_lp_optimum_on_random_problems():
    """Random affine models (12 inputs, 3 classes) and points in [0, 1]: the L1 minimum over the
    classes j != y, each an LP solved by HiGHS, equals LinearExact's norm; the gains are scaled
    up so that the box binds (the optimum moves several coordinates, some by their whole room)."""
    from tests.conftest import linear_model

    bound = 0
    for seed in range(20):
        model, w, b = linear_model(d=12, k=3, seed=seed, gain=0.5 + seed / 4)
        x = torch.rand(8, 12)
        with torch.no_grad():
            y = model(x).argmax(dim=1)
        result = LinearExact(norm=1, overshoot=1e-9)(model, x, y)
        z = x.double() @ w.double().T + b.double()
        for i in range(len(x)):
            xi = x[i].double().numpy()
            best = min(_scipy_minimal_norm((w[j] - w[y[i]]).double().numpy(), (z[i, y[i]] - z[i, j]).item(), xi, 1.0)
                       for j in range(3) if j != y[i])
            if math.isinf(best):
                assert not result.success[i]
                continue
            assert result.success[i]
            delta = (result.x_adv[i] - x[i]).abs()
            bound += int(((delta > 0) & ((result.x_adv[i] == 0) | (result.x_adv[i] == 1))).any())
            # float32 norms (FLOAT32_NORM), the crossing margin 1e-9 (1 + max |z|) over slopes >= 1e-2,
            # HiGHS's feasibility tolerance (1e-7): rel 1e-5 is loose against all of them
            assert result.norms[i].item() == pytest.approx(best, rel=1e-5, abs=1e-6)
    assert bound > 20  # the box did bind (measured: see docs/verification.md)


def test_linear_exact_l1_half_space_is_the_greedy_knapsack():
    """One half-space by hand: |g| = (3, 2, 1), rooms (0.1, 0.5, 1): the largest slope moves by its
    whole room (0.3 bought), the next by what is missing (m = 0.5: 0.1 at slope 2), the last not at all."""
    from advrun.attacks.linear_exact import halfspace_minimum

    g = torch.tensor([[-3.0, 2.0, 1.0]], dtype=torch.float64)
    room_up = torch.tensor([[0.0, 0.5, 1.0]], dtype=torch.float64)
    room_down = torch.tensor([[0.1, 0.0, 0.0]], dtype=torch.float64)
    delta = halfspace_minimum(g, torch.tensor([0.5], dtype=torch.float64), room_up, room_down, 1.0)
    torch.testing.assert_close(delta, torch.tensor([[-0.1, 0.1, 0.0]], dtype=torch.float64))
    unreachable = halfspace_minimum(g, torch.tensor([10.0], dtype=torch.float64), room_up, room_down, 1.0)
    assert torch.isinf(unreachable).all()


def test_linear_exact_leaves_samples_the_box_cannot_misclassify():
    """z_1 - z_0 = x_1 + x_2 - 3 < 0 everywhere in [0, 1]^2: class 0 can never be left."""
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
        model.bias.copy_(torch.tensor([3.0, 0.0]))
    x = torch.rand(20, 2)
    y = torch.cat([torch.zeros(10, dtype=torch.long), torch.ones(10, dtype=torch.long)])
    result = LinearExact(norm=2)(model, x, y)
    assert not result.success[:10].any() and torch.equal(result.x_adv[:10], x[:10])
    assert result.success[10:].all()  # class 1 is already misclassified: nothing to do
    assert torch.equal(result.x_adv[10:], x[10:])


def test_linear_exact_refuses_non_linear_models(trained):
    mlp, _, _ = trained("mlp")
    with pytest.raises(InvalidValue, match="affine") as info:
        LinearExact().check_model(mlp, (1, 8, 8))
    assert info.value.field == "_target_"
    logreg, _, _ = trained("logreg")
    LinearExact().check_model(logreg, (1, 8, 8))
    from advrun.models import LogReg

    LinearExact().check_model(LogReg((1, 8, 8), 10, normalize=True), (1, 8, 8))


# ----------------------------------------------------------------------------------------- CW


def test_cw_confidence_is_the_margin_of_its_adversarial_logits(trained):
    model, x, y = trained("mlp")
    x, y = x[:60], y[:60]
    result = CW(kappa=3.0, steps=100, binary_steps=5, initial_const=0.1, lr=0.05)(model, x, y)
    assert result.success.float().mean() > 0.9
    with torch.no_grad():
        margins = -margin_of(model(result.x_adv), y)  # max_{j != y} Z_j - Z_y
    # float32 logits of order 10 (ulp ~1e-6) recomputed in another batch shape than CW's own check
    assert (margins[result.success] >= 3.0 - 1e-4).all()
    assert margins[result.success].min() < 3.3  # and it does not go much further


def test_targeted_cw_reaches_the_target(trained):
    model, x, y = trained("mlp")
    x, y = x[:60], y[:60]
    result = CW(target="random", steps=100, binary_steps=5, initial_const=0.1, lr=0.05)(model, x, y)
    assert (result.targets != y).all()
    assert result.success.all()
    assert torch.equal(result.predictions, result.targets)


def test_cw_returns_the_input_where_it_fails(trained):
    model, x, y = trained("mlp")
    x, y = x[:60], y[:60]
    correct = predicted(model, x) == y
    result = CW(kappa=1e4, steps=20, binary_steps=2)(model, x, y)
    assert not result.success[correct].any()
    assert torch.equal(result.x_adv[correct], x[correct])
    assert (result.norms[correct] == 0).all()


def test_cw_binary_search_lowers_the_norms(trained):
    """The first round of the search is the single-constant attack; the later rounds can only
    keep or shrink each sample's perturbation, and they do shrink them."""
    model, x, y = trained("mlp")
    x, y = x[:60], y[:60]
    single = CW(steps=100, binary_steps=1, initial_const=10.0)(model, x, y)
    searched = CW(steps=100, binary_steps=6, initial_const=10.0)(model, x, y)
    assert (searched.success | ~single.success).all()
    both = single.success & searched.success
    # float32 norms of order 1 (~1e-7 relative) from rounds that may run in other batch shapes
    assert (searched.norms[both] <= single.norms[both] + 1e-6).all()
    assert searched.norms[both].median() < 0.9 * single.norms[both].median()


def test_cw_is_close_to_the_exact_minimum_on_softmax_regression(trained):
    model, x, y = trained("logreg")
    x, y = x[:60], y[:60]
    exact = LinearExact(norm=2)(model, x, y)
    result = CW(steps=300, binary_steps=8, initial_const=0.1)(model, x, y)
    correct = predicted(model, x) == y
    assert result.success[correct].all()
    ratio = result.norms[correct] / exact.norms[correct]
    # FLOAT32_NORM, and LinearExact's own crossing margin (~1e-6 relative); the median bound 1.01 is
    # CW's convergence in 8 x 300 steps, not float error
    assert ratio.min() >= 1 - FLOAT32_NORM and ratio.median() < 1.01


# -------------------------------------------------------------------------------------- LBFGS


def test_targeted_lbfgs_reaches_the_target(trained):
    model, x, y = trained("mlp")
    x, y = x[:60], y[:60]
    result = LBFGS(target="least_likely", steps=30, binary_steps=6, initial_const=1.0)(model, x, y)
    assert result.success.all()
    assert torch.equal(result.predictions, result.targets)


def test_lbfgs_is_close_to_the_exact_minimum_on_two_classes(trained):
    """Two classes, interior points: the minimum is |f(x)| / ||theta||_2."""
    model, x, _ = trained("logreg", classes=(0, 1))
    x = interior(x[:60])
    y = predicted(model, x)
    w, b = affine(model)
    theta = w[1] - w[0]
    distance = (x.flatten(1).double() @ theta + b[1] - b[0]).abs() / theta.norm()
    result = LBFGS(steps=50, binary_steps=10, initial_const=1.0)(model, x, y)
    assert result.success.all()
    ratio = result.norms.double() / distance
    # the median bound 1.02 is L-BFGS's convergence in 10 x 50 steps, not float error
    assert ratio.min() >= 1 - FLOAT32_NORM and ratio.median() < 1.02


# --------------------------------------------------------------------------------- settings


@pytest.mark.parametrize("cls, kwargs, field", [
    (DeepFool, {"steps": 0}, "steps"), (DeepFool, {"candidates": 0}, "candidates"),
    (DeepFool, {"overshoot": -0.1}, "overshoot"), (DeepFool, {"refine_steps": -1}, "refine_steps"),
    (DeepFool, {"norm": 1}, "norm"),
    (DeepFool, {"target": 3}, "target"),
    (CW, {"kappa": -1.0}, "kappa"), (CW, {"binary_steps": 0}, "binary_steps"), (CW, {"lr": 0.0}, "lr"),
    (CW, {"initial_const": -1.0}, "initial_const"), (CW, {"norm": "inf"}, "norm"), (CW, {"steps": 1.5}, "steps"),
    (LBFGS, {"binary_steps": 0}, "binary_steps"), (LBFGS, {"initial_const": 0.0}, "initial_const"),
    (LBFGS, {"norm": "inf"}, "norm"),
    (LinearExact, {"norm": 0}, "norm"), (LinearExact, {"target": "random"}, "target"),
    (LinearExact, {"overshoot": 0.0}, "overshoot"),
])
def test_invalid_settings_name_the_field(cls, kwargs, field):
    with pytest.raises(InvalidValue) as info:
        cls(**kwargs)
    assert info.value.field == field


@pytest.mark.parametrize("option, cls", [("deepfool", DeepFool), ("cw", CW), ("lbfgs", LBFGS),
                                         ("linear_exact", LinearExact)])
def test_configs_build_the_attacks_with_their_defaults(make_cfg, option, cls):
    from hydra.utils import instantiate

    cfg = make_cfg(f"attack={option}")
    attack = instantiate(cfg.attack, eps=None)
    assert type(attack) is cls and isinstance(attack, MinimumNormAttack)
    assert attack == cls(eps=None)  # the YAML repeats the class defaults
