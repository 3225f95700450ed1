"""Exact verification (advrun.exact) checked against the closed-form distance of an affine model,
the bounds it refines (IBP and CROWN verify less, never more), the attack it bounds (PGD never
fools a verified sample, and every "not robust" comes with a counterexample that the model gets
wrong), brute force over the whole ball of 2-D inputs, its time limit, and its refusals."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from advrun.attacks import PGD
from advrun.bounds import BoundedNetwork, float64_copy
from advrun.certify import certified_radii
from advrun.errors import InvalidValue
from advrun.exact import (
    NOT_ROBUST,
    ROBUST,
    UNKNOWN,
    check_exact,
    describe,
    pool_windows,
    supports,
    verification,
    verify,
)
from advrun.models import CNN, MLP, LogReg, PreActBlock
from tests.test_certify import fit

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (1, 8, 8)

# Counterexamples are checked on the float64 copy of the model: advrun.exact counts a point only
# when its float64 margin is below -1e-9 (1 + max |z|), far outside float64 rounding (~1e-15), so
# the float64 model must get every returned point wrong without any tolerance here.


@pytest.fixture(scope="module")
def relu_mlp(digits):
    return fit(lambda: MLP(SHAPE, 10, hidden=[16, 16]), digits, epochs=4)


def in_set(points, x, eps, p, box):
    """Whether each point lies in the ball of ``x`` (up to 1e-12 relative: the projection's own
    float64 rounding) and inside the box (exactly: it is clipped there)."""
    distance = torch.linalg.vector_norm((points - x).flatten(1), ord=p, dim=1)
    inside = distance <= eps * (1 + 1e-12)
    if box is not None:
        inside &= (points >= box[0]).flatten(1).all(1) & (points <= box[1]).flatten(1).all(1)
    return inside


def assert_counterexamples(model, result, x, y, epsilons, p, box):
    """Every "not robust" verdict carries a point of the set that the float64 model misclassifies."""
    net = float64_copy(model).eval()
    for k, eps in enumerate(epsilons):
        wrong = result.verdicts[:, k] == NOT_ROBUST
        if not wrong.any():
            continue
        points = result.counterexamples[wrong, k]
        assert torch.isfinite(points).all()
        assert in_set(points, x[wrong].double(), eps, p, box).all()
        with torch.no_grad():
            assert (net(points).argmax(1) != y[wrong]).all()
        assert torch.isnan(result.counterexamples[~wrong, k]).all()


# ----------------------------------------------------------------------------- affine models


@pytest.mark.parametrize("norm", [math.inf, 1.0])
def test_an_affine_model_is_decided_by_its_distance_to_the_boundary(trained, norm):
    """No data box: the exact verdict is the closed-form test radius > eps (certify's exact
    distance for affine models), at budgets spread over the radii, with and without screening."""
    model, x, y = trained("logreg")
    torch.manual_seed(1)
    binary = LogReg(SHAPE, 2, binary=True).eval()
    for net, inputs, labels, count in ((model, x[:40], y[:40], 40), (binary, x[:12], None, 12)):
        labels = net(inputs).argmax(1) if labels is None else labels
        radii = certified_radii(net, inputs, labels, norm)
        positive = radii[radii > 0]
        epsilons = [float(positive.quantile(q)) * 1.001 for q in (0.2, 0.5, 0.8)]
        for screen in (True, False):
            if not screen:
                inputs, labels, radii = inputs[:count // 3], labels[:count // 3], radii[:count // 3]
            result = verification(net, inputs, labels, epsilons, norm, box=None, screen=screen)
            expected = torch.stack([(radii > eps).to(torch.int8) for eps in epsilons], dim=1)
            # Budgets within 1e-5 relative of a radius are the boundary's tie band: certify reads W by
            # float32 autograd (~1e-6 relative), the program cuts at margin <= 1e-6 (1 + max |z|).
            near = torch.stack([(radii - eps).abs() <= 1e-5 * eps for eps in epsilons], dim=1)
            assert (result.verdicts[~near] == expected[~near]).all(), screen
            assert (result.verdicts != UNKNOWN).all() and not near.all()
            assert_counterexamples(net, result, inputs, labels, epsilons, norm, None)
    # Inside the data box the set only shrinks: verified wherever the distance exceeds eps.
    radii = certified_radii(model, x[:40], y[:40], norm)
    eps = float(radii[radii > 0].median())
    verdicts = verify(model, x[:40], y[:40], [eps], norm)[:, 0]
    assert (verdicts[radii > eps * (1 + 1e-5)] == ROBUST).all()


# ------------------------------------------------------------------------------ ReLU networks


def random_mlp():
    """64 inputs, a relu and a leaky relu layer of 12 units, 5 classes; random weights."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 12), nn.LeakyReLU(0.1),
                         nn.Linear(12, 5)).eval()


@pytest.mark.parametrize(("which", "norm", "epsilons", "gains"), [
    ("digits", math.inf, [0.02, 0.05, 0.08], True),
    ("digits", 1.0, [0.3, 0.8], False),  # CROWN is already exact on these 8 samples (measured)
    ("random", math.inf, [0.05, 0.12], True),
])
def test_ibp_crown_exact_and_pgd_are_ordered(which, norm, epsilons, gains, relu_mlp, digits):
    """Per sample and budget: IBP verified => CROWN verified => exact verified => PGD fails, and
    every exact "not robust" has a counterexample; exact decides every case, and (where
    measured so) verifies more than CROWN at some budget."""
    if which == "digits":
        count = 16 if norm == math.inf else 8
        model, x, y = relu_mlp, digits.x_test[:count], digits.y_test[:count]
    else:
        model = random_mlp()
        x = torch.rand(12, *SHAPE, generator=torch.Generator().manual_seed(0))
        y = model(x).argmax(1)
    result = verification(model, x, y, epsilons, norm, time_limit=30.0)
    assert (result.verdicts != UNKNOWN).all()
    assert_counterexamples(model, result, x, y, epsilons, norm, (0.0, 1.0))
    net, twin = BoundedNetwork(float64_copy(model), SHAPE), float64_copy(model)
    gained = 0
    for k, eps in enumerate(epsilons):
        ibp = (net.margins(x.double(), y, eps, norm, method="ibp").best > 0).all(1)
        crown = (net.margins(x.double(), y, eps, norm, method="crown").best > 0).all(1)
        exact = result.verdicts[:, k] == ROBUST
        attack = PGD(eps=eps, norm=norm, steps=50, restarts=3)(model, x, y)
        with torch.no_grad():  # a PGD success counts when the float64 model also misclassifies its point
            fooled = attack.success & (twin(attack.x_adv.double()).argmax(1) != y)
        assert not (ibp & ~crown).any() and not (crown & ~exact).any() and not (exact & fooled).any(), eps
        gained += int((exact & ~crown).sum())
    assert gained > 0 or not gains


def plane_network(kind):
    """A 2-D input network of 3 classes whose decision boundaries cross the box [0, 1]^2, and the
    Lipschitz constant of its margins in Linf (``|w_y - w_j|`` through the absolute weights).
    ``dense``: two relu layers of 8 units, the first layer's hyperplanes through random points
    of the box (two classes share it about 40 / 60 with this seed). ``pooled``: the two
    coordinates as a 1 x 2 image, six 1x1 convolution channels (each zero at a random point of
    [0, 1]), relu, max pooling over the two pixels (max pooling is 1-Lipschitz in Linf), a relu
    layer of 8 units (classes about 35 / 65)."""
    if kind == "dense":
        torch.manual_seed(2)
        model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
        first, middle, shape = model[0], model[2], (2,)
    else:
        torch.manual_seed(3)
        model = nn.Sequential(nn.Conv2d(1, 6, 1), nn.ReLU(), nn.MaxPool2d((1, 2)), nn.Flatten(), nn.Linear(6, 8),
                              nn.ReLU(), nn.Linear(8, 3))
        first, middle, shape = model[0], model[4], (1, 1, 2)
    model = model.double().eval().requires_grad_(False)
    first.weight.normal_(0, 4)
    weight = first.weight.reshape(len(first.weight), -1)
    first.bias.copy_(-(weight * torch.rand(weight.shape, dtype=torch.float64)).sum(1))
    last = model[-1].weight
    pairs = (last[:, None] - last[None]).abs()  # |w_i - w_j| per pair of classes
    reach = weight.abs().sum(1) if kind == "dense" else weight.abs()[:, 0]
    return model, shape, float((pairs @ middle.weight.abs() @ reach).max())


@pytest.mark.parametrize("kind", ["dense", "pooled"])
@pytest.mark.parametrize("norm", [math.inf, 1.0])
def test_exact_agrees_with_a_dense_grid_over_the_ball(kind, norm):
    """2-D inputs in the box [0, 1]^2, where the whole set can be searched: a 201 x 201 grid over
    the ball's bounding square (points of the ball and the box kept) finds a misclassified point
    exactly where the verdict is 0. Between grid points the margin changes by at most L h (L its
    Lipschitz constant in Linf, h the spacing), so a grid minimum margin in (0, L h] decides
    nothing and is skipped."""
    model, shape, lipschitz = plane_network(kind)
    x = torch.rand(12, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = model(x).argmax(1)
    epsilons = [0.05, 0.1, 0.2]
    result = verification(model, x, y, epsilons, norm, time_limit=30.0)
    assert (result.verdicts != UNKNOWN).all()
    assert_counterexamples(model, result, x, y, epsilons, norm, (0.0, 1.0))
    skipped = decided = 0
    for k, eps in enumerate(epsilons):
        step = torch.linspace(-eps, eps, 201, dtype=torch.float64)
        offsets = torch.stack(torch.meshgrid(step, step, indexing="ij"), dim=-1).reshape(-1, *shape)
        offsets = offsets[torch.linalg.vector_norm(offsets.flatten(1), ord=norm, dim=1) <= eps]
        spacing = 2 * eps / 200
        for i in range(len(x)):
            points = x[i] + offsets
            points = points[((points >= 0) & (points <= 1)).flatten(1).all(1)]
            z = model(points)
            others = z.clone()
            others[:, y[i]] = -math.inf
            lowest = float((z[:, y[i]] - others.amax(1)).min())
            if lowest < 0:
                assert result.verdicts[i, k] == NOT_ROBUST, (i, eps)
            elif lowest > lipschitz * spacing:
                assert result.verdicts[i, k] == ROBUST, (i, eps)
            else:
                skipped += 1
                continue
            decided += 1
    assert skipped <= decided // 5 and (result.verdicts == ROBUST).any() and (result.verdicts == NOT_ROBUST).any()


def encoded_margins(model, x, eps, norm, points, j):
    """White box: the program of ``x`` at ``eps`` (advrun.exact's encoder; its first variables
    are the input) with the input fixed at each of ``points``, and the margin ``z_y - z_j``
    minimised and maximised over the rest: an exact encoding leaves one value, the model's."""
    from scipy import optimize

    from advrun.bounds import Ball
    from advrun.exact import _Encoder

    encoder = _Encoder(model, x.shape)
    x64 = x.double()[None]
    ball = Ball(x64, torch.tensor([eps], dtype=torch.float64), norm, (0.0, 1.0))
    found, _ = encoder.net.intervals(ball, "crown")
    intervals = [tuple(t.flatten(1)[0].numpy() for t in found[i]) for i in encoder.nonlinear]
    lo, hi = ball.corners()
    program, logits = encoder.encode(x64.flatten().numpy(), (lo.flatten().numpy(), hi.flatten().numpy()), eps, norm,
                                     intervals)
    A, lower, upper, var_lower, var_upper, integrality = program.assemble()
    y = int(model(x[None]).argmax(1))
    objective = np.zeros(program.n)
    for unit, sign in ((y, 1.0), (j, -1.0)):
        _, variables, values = logits.rows(np.array([unit]), sign)
        np.add.at(objective, variables, values)
    constant = logits.constant[y] - logits.constant[j]
    found = []
    for point in points:
        fixed_lower, fixed_upper = var_lower.copy(), var_upper.copy()
        fixed_lower[:encoder.d] = fixed_upper[:encoder.d] = point.flatten().numpy()
        ends = [optimize.milp(sign * objective, integrality=integrality,
                              bounds=optimize.Bounds(fixed_lower, fixed_upper),
                              constraints=optimize.LinearConstraint(A, lower, upper)) for sign in (1.0, -1.0)]
        assert all(end.status == 0 for end in ends)
        found.append((ends[0].fun + constant, -ends[1].fun + constant))
    z = float64_copy(model)(points.double())
    return torch.tensor(found, dtype=torch.float64), z[:, y] - z[:, j]


@pytest.mark.parametrize("which", ["cnn", "mlp"])
def test_the_program_leaves_the_model_s_value_at_each_input(which, digits):
    """At points of the ball (random corners, where many relu and max pooling units of the CNN
    are unstable, and the centre) the program's margin is the model's: a unit whose constraints
    admitted a wrong value (a wrong big M, a max pooling candidate dropped that can be the
    maximum) would move or widen it."""
    torch.manual_seed(0)
    model = (CNN(SHAPE, 10, channels=[2], hidden=8) if which == "cnn" else
             nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 12), nn.LeakyReLU(0.1),
                           nn.Linear(12, 5))).eval()
    x, eps = digits.x_test[0], 0.1
    generator = torch.Generator().manual_seed(0)
    signs = torch.randint(0, 2, (6, *SHAPE), generator=generator) * 2 - 1
    points = torch.cat([x[None], (x + eps * signs).clamp(0, 1)])
    for j in (1, 3):
        program, model_margin = encoded_margins(model, x, eps, math.inf, points, j)
        # HiGHS's tolerances (primal feasibility 1e-7 per row, carried through a few layers) on
        # margins of order 1: 1e-5 absolute is loose
        torch.testing.assert_close(program[:, 0], model_margin, rtol=0, atol=1e-5)
        torch.testing.assert_close(program[:, 1], model_margin, rtol=0, atol=1e-5)


def test_max_pooling_is_encoded_soundly(digits):
    """A small CNN (convolution, relu, 2x2 max pooling, dense relu layer): verified samples are
    never fooled by PGD and every counterexample is real; without screening the programs decide
    as with it. The windows of max pooling are torch's, for padding, stride, dilation and ceil mode."""
    model = fit(lambda: CNN(SHAPE, 10, channels=[2], hidden=8), digits, epochs=4)
    x, y, epsilons = digits.x_test[:8], digits.y_test[:8], [0.01, 0.03]
    screened = verification(model, x, y, epsilons, time_limit=20.0)
    solved = verification(model, x, y, epsilons, time_limit=20.0, screen=False)
    assert (screened.verdicts != UNKNOWN).all() and torch.equal(screened.verdicts, solved.verdicts)
    assert solved.solves.sum() > screened.solves.sum()
    assert_counterexamples(model, solved, x, y, epsilons, math.inf, (0.0, 1.0))
    for k, eps in enumerate(epsilons):
        attack = PGD(eps=eps, norm="inf", steps=50, restarts=3)(model, x, y)
        assert not (attack.success & (solved.verdicts[:, k] == ROBUST)).any()
    generator = torch.Generator().manual_seed(0)
    for pool in (nn.MaxPool2d(2), nn.MaxPool2d(3, stride=2, padding=1), nn.MaxPool2d(2, stride=1, dilation=2),
                 nn.MaxPool2d(3, stride=2, ceil_mode=True)):
        h = torch.randn(1, 3, 7, 7, generator=generator, dtype=torch.float64)
        out = pool(h)
        windows = pool_windows(pool, h.shape[1:], out.shape[1:])
        flat = h.flatten().numpy()
        expected = np.where(windows >= 0, flat[np.maximum(windows, 0)], -np.inf).max(1)
        np.testing.assert_array_equal(expected, out.flatten().numpy())


def test_a_short_time_limit_answers_unknown(digits):
    """A wider random network at a budget where CROWN proves nothing, with 0.05 s per sample: the
    verdicts are unknown, or right (a real counterexample, or robust and not fooled by PGD); the
    time per sample stays near the limit (1 s allows the solver's last check of its clock on a
    busy machine)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    x = digits.x_test[:6]
    y = model(x).argmax(1)
    eps = [0.1]
    result = verification(model, x, y, eps, time_limit=0.05)
    assert (result.verdicts == UNKNOWN).sum() >= 3
    assert (result.seconds <= 1.05).all()
    assert_counterexamples(model, result, x, y, eps, math.inf, (0.0, 1.0))
    attack = PGD(eps=eps[0], steps=50, restarts=3)(model, x, y)
    assert not (attack.success & (result.verdicts[:, 0] == ROBUST)).any()


# ----------------------------------------------------------------------- refusals and helpers


@pytest.mark.parametrize(("model", "norm", "field", "words"), [
    (MLP(SHAPE, 10, hidden=[8]), 2, "norm", "quadratic"),
    (MLP(SHAPE, 10, hidden=[8]), "l0", "norm", "linf, l1"),
    (MLP(SHAPE, 10, hidden=[8], activation="tanh"), "inf", "_target_", "tanh is not piecewise linear"),
    (MLP(SHAPE, 10, hidden=[8], activation="abs"), "inf", "_target_", "abs is not piecewise linear"),
    (nn.Sequential(PreActBlock(1, 2), nn.Flatten(), nn.Linear(128, 10)), "inf", "_target_", "residual"),
])
def test_unsupported_models_and_norms_are_refused_with_the_field(model, norm, field, words):
    model.eval()
    assert not supports(model, SHAPE, norm)
    with pytest.raises(InvalidValue) as raised:
        check_exact(model, SHAPE, norm)
    assert raised.value.field == field and words in raised.value.message
    with pytest.raises(InvalidValue) as raised:
        verify(model, torch.rand(2, *SHAPE), torch.zeros(2, dtype=torch.long), [0.1], norm)
    assert raised.value.field == field


def test_supported_layers_arguments_and_trivial_cases(relu_mlp, digits):
    pooled = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AvgPool2d(2), nn.BatchNorm2d(2), nn.Dropout(0.2),
                           nn.Flatten(), nn.Linear(18, 2)).eval()
    for model in (relu_mlp, CNN(SHAPE, 10), MLP(SHAPE, 10, activation="leaky_relu", batch_norm=True), pooled,
                  LogReg(SHAPE, 2, binary=True)):
        assert supports(model, SHAPE, "inf") and supports(model, SHAPE, "l1")
    x, y = digits.x_test[:6], digits.y_test[:6]
    clean = relu_mlp(x).argmax(1) == y
    wrong = y.clone()
    wrong[0] = (relu_mlp(x[:1]).argmax(1) + 1) % 10  # a label the model gets wrong
    result = verification(relu_mlp, x, wrong, [0.0, 0.3, 0.01])
    assert (result.verdicts[0] == NOT_ROBUST).all() and torch.equal(result.counterexamples[0, 1], x[0].double())
    assert ((result.verdicts[1:, 0] == ROBUST) == clean[1:]).all()  # budget 0: the clean decision
    assert result.verdicts.dtype == torch.int8 and result.verdicts.shape == (6, 3)
    assert (result.verdicts[:, 1] <= result.verdicts[:, 2]).all()  # in the given order, not sorted
    for field, call in (("epsilons", lambda: verify(relu_mlp, x, y, [-0.1])),
                        ("time_limit", lambda: verify(relu_mlp, x, y, [0.1], time_limit=0)),
                        ("x", lambda: verify(relu_mlp, x + 2, y, [0.1])),
                        ("box", lambda: verify(relu_mlp, x, y, [0.1], box=(1.0, 0.0)))):
        with pytest.raises(InvalidValue) as raised:
            call()
        assert raised.value.field == field
    assert describe("inf") == "exact-linf" and describe(1) == "exact-l1"
