"""Certified radii (advrun.certify) checked against closed forms (the distance to an affine
boundary, the quadratic of the Lipschitz form of the Hein-Andriushchenko bound), the exact linear
attack, autograd, and attacks: a certificate never exceeds the norm of a successful attack, and
an attack restricted to the certified ball never succeeds."""

import copy
import math

import numpy as np
import pytest
import torch

from advrun.attacks import CW, PGD, DeepFool, LinearExact
from advrun.certify import (
    certified_accuracy,
    certified_radii,
    check_certifiable,
    cross_lipschitz_bound,
    decompose,
    describe,
    largest_certified_radius,
    smooth_activation,
    supports,
)
from advrun.errors import InvalidValue
from advrun.models import CNN, MLP, LogReg

pytestmark = pytest.mark.usefixtures("one_thread")

DUAL = {math.inf: 1, 2.0: 2, 1.0: np.inf}
SHAPE = (1, 8, 8)
WIDE = (-100.0, 100.0)  # bounds that never bind: the certificate ignores the box

#: An attack's norm may fall below the certified radius by this much (absolute) without the
#: certificate being wrong. The radius is float64 exact arithmetic about the weights; the attack's
#: point is float32 (relative precision 1.2e-7 per coordinate), its norm a float32 sum over 64
#: coordinates (~1e-6 relative for norms of order 1), and the float32 model it fooled may
#: disagree with exact arithmetic within rounding of the boundary (advrun.certify: ~1e-6 relative).
ATTACK_SLACK = 1e-6

# Comparisons without stated tolerances use the defaults, a few ulps: torch.testing.assert_close
# (float32 rtol 1.3e-6, atol 1e-5; float64 rtol 1e-7, atol 1e-7) and pytest.approx (rel 1e-6).
# They compare one float computation with the same computation in another order or batch.


def fit(make, digits, epochs):
    """``make()`` (built after seeding 0) trained on the digits for a few epochs (Adam), in eval mode."""
    torch.manual_seed(0)
    model = make()
    model.fit_normalization(digits.x_train)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for index in torch.randperm(len(digits.x_train), generator=generator).split(64):
            loss = torch.nn.functional.cross_entropy(model(digits.x_train[index]), digits.y_train[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def tanh_mlp(digits):
    """One hidden layer of 32 tanh units, normalisation inside (MLP's default)."""
    return fit(lambda: MLP(SHAPE, 10, hidden=[32], activation="tanh"), digits, epochs=8)


def correct(model, x, y):
    with torch.no_grad():
        return model(x).argmax(dim=1) == y


def closed_form_affine_radii(weight, bias, x, y, p):
    """Per sample, by a loop in numpy: 0 if misclassified, else min_j (z_y - z_j) / ||w_j - w_y||_dual."""
    w, b = weight.detach().double().numpy(), bias.detach().double().numpy()
    out = []
    for xi, yi in zip(x.flatten(1).double().numpy(), y.numpy()):
        z = w @ xi + b
        if z.argmax() != yi:
            out.append(0.0)
            continue
        out.append(min((z[yi] - z[j]) / np.linalg.norm(w[j] - w[yi], ord=DUAL[p]) for j in range(len(z)) if j != yi))
    return torch.tensor(out, dtype=torch.float64)


def folded_twin(model):
    """The same classifier without its Normalize layer: mean and std folded into the first Linear
    by hand (W' = W / std, b' = b - W' mean), every other layer copied."""
    normalize, first = model[0], model[2]
    std = normalize.std.expand(1, *SHAPE).flatten()
    mean = normalize.mean.expand(1, *SHAPE).flatten()
    twin = copy.deepcopy(model)
    del twin[0]
    with torch.no_grad():
        twin[1].weight.copy_(first.weight / std)
        twin[1].bias.copy_(first.bias - (first.weight / std) @ mean)
    return twin.eval()


def margins_and_gradients(model, x, y):
    """``g_j(x) = z_y - z_j`` and ``grad g_j(x)`` by autograd on a float64 copy; row ``j = y`` NaN."""
    net = copy.deepcopy(model).double()
    xd = x.double().detach().requires_grad_(True)
    logits = net(xd)
    jacobian = torch.stack([torch.autograd.grad(logits[:, k].sum(), xd, retain_graph=True)[0].flatten(1)
                            for k in range(logits.shape[1])], dim=1)  # (n, K, d)
    own = torch.nn.functional.one_hot(y, logits.shape[1]).bool()
    margins = (logits.gather(1, y[:, None]) - logits).detach().masked_fill(own, math.nan)
    gradients = (jacobian.gather(1, y[:, None, None].expand(-1, 1, jacobian.shape[2])) - jacobian)
    return margins, gradients.masked_fill(own[:, :, None], math.nan)


# ----------------------------------------------------------------------------- affine models


@pytest.mark.parametrize("norm", [math.inf, 2.0, 1.0])
def test_affine_radius_is_the_closed_form_distance_to_the_boundary(trained, norm):
    model, x, y = trained("logreg")
    radii = certified_radii(model, x, y, norm)
    expected = closed_form_affine_radii(model[-1].weight, model[-1].bias, x, y, norm)
    # certify reads W and b off the model by float32 autograd (1.2e-7 relative per entry, the bias
    # through a 64-term float32 sum, ~1e-6 absolute); the loop uses the stored weights in float64.
    torch.testing.assert_close(radii, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(radii == 0, ~correct(model, x, y))  # zero exactly where misclassified (no ties here)


@pytest.mark.parametrize("norm", [math.inf, 2.0])
def test_affine_radius_is_the_exact_attack_norm_where_the_box_does_not_bind(trained, norm):
    model, x, y = trained("logreg")
    inner = 0.3 + 0.4 * x  # in [0.3, 0.7]: a perturbation with every |d_i| <= r < 0.3 stays in [0, 1]
    radii = certified_radii(model, inner, y, norm)
    exact = LinearExact(norm=norm)(model, inner, y)
    free = (radii > 0) & (radii < 0.3)
    assert free.sum() >= 50 and exact.success[free].all()
    # LinearExact overshoots the boundary by 1e-6 (1 + max |z|) / ||w_j - w_y||_dual (a few 1e-6 here):
    # the attack's deliberate crossing margin, not float error; its norm is float32 besides.
    torch.testing.assert_close(exact.norms[free].double(), radii[free], rtol=1e-4, atol=2e-5)
    # On the raw images the box binds for some samples: it only ever increases the minimal norm.
    radii, exact = certified_radii(model, x, y, norm), LinearExact(norm=norm)(model, x, y)
    hit = exact.success & (radii > 0)
    # 1e-5: the float32 norm of a float32 point (64 coordinates, ~1e-6 relative) against float64
    assert (exact.norms[hit].double() >= radii[hit] * (1 - 1e-5)).all()
    assert (exact.norms[hit].double() > radii[hit] * 1.05).any()


@pytest.mark.parametrize("kind", ["logreg", "mlp"])
def test_the_normalisation_layer_is_folded_into_the_first_affine_map(digits, kind):
    make = {"logreg": lambda: LogReg(SHAPE, 10, normalize=True),
            "mlp": lambda: MLP(SHAPE, 10, hidden=[16], activation="tanh")}[kind]
    model = fit(make, digits, epochs=4)
    # default approx (rel 1e-6): only that the fitted statistics are not the identity's (far from it)
    assert model[0].std.item() != pytest.approx(1.0) and model[0].mean.item() != pytest.approx(0.0)
    twin = folded_twin(model)
    x, y = digits.x_test, digits.y_test
    # The fold is float32: W / std and a 64-term sum for the bias, each rounded (1.2e-7 relative),
    # carried to logits of up to ~10; measured at most 1.9e-6, so 1e-4 is loose.
    torch.testing.assert_close(twin(x), model(x), rtol=1e-4, atol=1e-4)
    for norm in (2.0, math.inf):
        radii = certified_radii(model, x, y, norm)
        assert (radii > 0).float().mean() > 0.8
        # Two float32 read-offs that differ by the fold's rounding: a ~1e-6 change of a margin moves
        # the radius by ~1e-6 / ||gradient|| absolute, a large relative change only for tiny radii
        # (measured: at most 1.5e-7 absolute, 8e-5 relative on the smallest radii).
        torch.testing.assert_close(radii, certified_radii(twin, x, y, norm), rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ one-hidden-layer networks

ATTACKS = {  # per norm: a minimum-norm attack where there is one, and PGD at three budgets
    2.0: [DeepFool(norm=2), *(PGD(eps=e, norm=2, steps=50) for e in (0.25, 0.5, 1.0))],
    math.inf: [DeepFool(norm="inf"), *(PGD(eps=e, norm="inf", steps=50) for e in (0.02, 0.05, 0.1))],
    1.0: [PGD(eps=e, norm=1, steps=50) for e in (1.0, 2.0, 4.0)],
}


@pytest.mark.parametrize("norm", [2.0, math.inf, 1.0])
def test_the_certificate_never_exceeds_a_successful_attack(tanh_mlp, digits, norm):
    x, y = digits.x_test, digits.y_test
    radii = certified_radii(tanh_mlp, x, y, norm)
    clean = correct(tanh_mlp, x, y)
    assert (radii[clean] > 0).all() and (radii[~clean] == 0).all()
    found = 0
    for attack in ATTACKS[norm]:
        result = attack(tanh_mlp, x, y)
        hit = result.success & clean
        found += int(hit.sum())
        assert (radii[hit] <= result.norms[hit].double() + ATTACK_SLACK).all(), attack.label
    assert found > 100  # the attacks did find perturbations to compare with


def test_the_certificate_never_exceeds_carlini_wagner(tanh_mlp, digits):
    x, y = digits.x_test[:60], digits.y_test[:60]
    radii = certified_radii(tanh_mlp, x, y, 2)
    result = CW(binary_steps=5, steps=100)(tanh_mlp, x, y)
    hit = result.success & correct(tanh_mlp, x, y)
    assert hit.sum() >= 40
    assert (radii[hit] <= result.norms[hit].double() + ATTACK_SLACK).all()


def test_no_attack_succeeds_inside_the_certified_ball(tanh_mlp, digits):
    """Soundness spot checks, bounds out of the way: each sample moved by (1 - 1e-6) r along
    DeepFool's direction and along a random one, and attacked by PGD at budget (1 - 1e-3) r."""
    x, y = digits.x_test, digits.y_test
    radii = certified_radii(tanh_mlp, x, y, 2)
    keep = radii > 0
    x, y, radii = x[keep], y[keep], radii[keep].float()
    found = DeepFool(norm=2)(tanh_mlp, x, y, bounds=WIDE)
    assert found.success.all()
    for direction in (found.x_adv - x, torch.randn(x.shape, generator=torch.Generator().manual_seed(0))):
        unit = direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        # 1 - 1e-6: stay clear of the boundary by more than the float32 rounding of x + r u (~1e-7
        # relative) and of the model's evaluation, so a tie at exactly r cannot decide the check
        moved = x + (1 - 1e-6) * radii.view(-1, 1, 1, 1) * unit
        assert correct(tanh_mlp, moved, y).all()
    for i in range(0, len(x), 25):  # PGD takes one budget per call
        # 1 - 1e-3: a margin well above float32 rounding of PGD's projected iterate (~1e-6 relative);
        # generous by choice, not derived from a float bound
        attack = PGD(eps=(1 - 1e-3) * radii[i].item(), norm=2, steps=100, restarts=2)
        assert not attack(tanh_mlp, x[i : i + 1], y[i : i + 1], bounds=WIDE).success.any()


def test_local_bound_is_at_least_the_lipschitz_form_and_below_the_first_order_limit(tanh_mlp, digits):
    x, y = digits.x_test, digits.y_test
    local = certified_radii(tanh_mlp, x, y, 2)
    lipschitz = certified_radii(tanh_mlp, x, y, 2, bound="lipschitz")
    # 1e-12: two float64 bisections of 60 steps (resolution 2^-60 of the start, ~1e-18 relative) on
    # the same float64 margins; their rounding (eps64 2.2e-16 per operation) stays far below 1e-12
    assert (local >= lipschitz - 1e-12).all() and (local > lipschitz * 1.05).any()
    # min_j g_j(x) / ||grad g_j(x)||_2 (autograd) bounds both: M_j(R) >= ||grad g_j(x)||.
    margins, gradients = margins_and_gradients(tanh_mlp, x, y)
    limit = (margins / gradients.norm(dim=2)).nan_to_num(math.inf).amin(dim=1).clamp_min(0)
    # 1e-6: the limit is computed from the stored weights in float64, the certificate from weights
    # read off by float32 autograd (1.2e-7 relative per entry, ~1e-6 after 64-term sums)
    assert (local <= limit * (1 + 1e-6)).all()


def test_lipschitz_form_solves_its_quadratic(tanh_mlp, digits):
    """With E_r = L rho_r the bound on ||grad g_j|| is G_j + R K_j, so the crossing of Theorem
    2.1 is the root of K_j R^2 + G_j R - m_j = 0, minimised over j."""
    x, y = digits.x_test, digits.y_test
    radii = certified_radii(tanh_mlp, x, y, 2, bound="lipschitz")
    twin = folded_twin(tanh_mlp)
    u, v = twin[1].weight.detach().double(), twin[3].weight.detach().double()
    reach = u.norm(dim=1)
    a = (v[y][:, None, :] - v[None]).abs()  # |v_c - v_j|
    growth = torch.minimum((a * reach**2).sum(dim=2), torch.linalg.matrix_norm(u, ord=2) * (a * reach).norm(dim=2))
    k = 4 / (3 * math.sqrt(3)) * growth  # max |tanh''| = 4 / (3 sqrt 3)
    margins, gradients = margins_and_gradients(tanh_mlp, x, y)
    g = gradients.norm(dim=2)
    roots = ((-g + (g**2 + 4 * k * margins).sqrt()) / (2 * k)).nan_to_num(math.inf).amin(dim=1)
    expected = torch.where(correct(tanh_mlp, x, y), roots, 0.0)
    # float64 roots, but of the float32-folded twin's weights against certify's float32 read-off
    # of the normalised model: ~1e-6 relative in the margins and gradients
    torch.testing.assert_close(radii, expected, rtol=1e-5, atol=1e-7)


def test_a_nearly_linear_network_is_certified_at_its_linear_distance(tanh_mlp, digits):
    """Hidden pre-activations scaled by s = 1e-3 and the output by 1/s: tanh(s h) / s is h to
    within s^2, so the network is the affine map V U x + V u + v and the certificate must reach
    that map's exact distance to its boundary (the bound is tight when sigma' barely changes)."""
    s = 1e-3
    net = copy.deepcopy(tanh_mlp)
    with torch.no_grad():
        net[2].weight.mul_(s), net[2].bias.mul_(s), net[4].weight.div_(s)
    twin = folded_twin(tanh_mlp)
    weight = twin[3].weight @ twin[1].weight
    bias = twin[3].weight @ twin[1].bias + twin[3].bias
    x, y = digits.x_test, digits.y_test
    linear = closed_form_affine_radii(weight, bias, x, y, 2.0)
    radii = certified_radii(net, x, y, 2)
    both = (radii > 0) & (linear > 0)
    assert both.float().mean() > 0.8
    ratio = radii[both] / linear[both]
    # Not float error: 1.001 allows the nonlinearity tanh(s h) / s - h ~ s^2 h^3 / 3 (s^2 = 1e-6) and
    # the float32 rescaling by s; 0.97 is how tight the certificate is here (algorithmic).
    assert ratio.min() > 0.97 and ratio.max() < 1.001


def plane_network(layer, hidden=6, classes=3, scale=3.0):
    """A random one-hidden-layer network on 2-D inputs, weights large enough to bend its boundaries."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, hidden), layer, torch.nn.Linear(hidden, classes)).eval()
    with torch.no_grad():
        model[0].weight.normal_(0, scale), model[0].bias.normal_(0, scale)
    return model


def square_grid(half_width, points):
    axis = torch.linspace(-half_width, half_width, points, dtype=torch.float64)
    return torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(-1, 2)


SMOOTH = [torch.nn.Tanh(), torch.nn.Sigmoid(), torch.nn.Softplus(), torch.nn.ELU()]


@pytest.mark.parametrize("layer", SMOOTH)
@pytest.mark.parametrize("bound", ["local", "lipschitz"])
@pytest.mark.parametrize("hidden", [1, 6])
def test_the_gradient_bound_holds_everywhere_in_the_ball(layer, bound, hidden):
    """M_j(R) >= ||grad g_j(x')||_q at every point x' of a dense grid of the Lp ball of radius R
    (gradients by autograd on the float64 network), for each norm and two radii. The local bound
    is the exact maximum for a single hidden unit, and close to it somewhere with six."""
    model = plane_network(layer, hidden=hidden, classes=2 if hidden == 1 else 3).double()
    x = torch.rand(8, 2, dtype=torch.float64) * 2 - 1
    y = model(x).argmax(dim=1)
    with torch.enable_grad():
        net = decompose(model, x)
    for norm in (2.0, math.inf, 1.0):
        _, bound_at = cross_lipschitz_bound(net, x, y, norm, bound)
        for radius in (0.2, 1.0):
            bounds = bound_at(torch.full((len(x),), radius, dtype=torch.float64))
            offsets = square_grid(radius, 121)
            offsets = offsets[torch.linalg.vector_norm(offsets, ord=norm, dim=1) <= radius]
            ratios = []
            for point, label, limit in zip(x, y, bounds):
                _, gradients = margins_and_gradients(model, point + offsets, label.expand(len(offsets)))
                largest = torch.linalg.vector_norm(gradients, ord=DUAL[norm], dim=2).nan_to_num(0).amax(dim=0)
                other = torch.arange(len(limit)) != label
                # float64 on both sides; the single-unit bound is attained on the grid, so the two
                # meet up to rounding (eps64 2.2e-16 per operation, a few dozen operations) << 1e-9
                assert (largest[other] <= limit[other] * (1 + 1e-9)).all(), (norm, radius)
                ratios.append((largest[other] / limit[other]).max().item())
            if bound == "local" and hidden == 1:
                assert min(ratios) > 0.995
            if bound == "local" and radius == 0.2:
                assert max(ratios) > 0.85


@pytest.mark.parametrize("layer", SMOOTH)
def test_a_single_hidden_unit_is_certified_below_and_close_to_its_exact_boundary(layer):
    """Two classes, one hidden unit: g(x) = a sigma(u.x + b) + c changes sign where the
    pre-activation reaches h* = sigma^-1(-c / a), so the exact minimal perturbation in Lp is
    |u.x + b - h*| / ||u||_q (sigma is monotone). The certificate lies below it, and close to
    it for the samples whose path to the boundary barely changes the slope."""
    inverse = {torch.nn.Tanh: torch.atanh, torch.nn.Sigmoid: torch.logit,
               torch.nn.Softplus: lambda s: torch.log(torch.expm1(s)),
               torch.nn.ELU: lambda s: torch.where(s > 0, s, torch.log1p(s))}[type(layer)]
    model = plane_network(layer, hidden=1, classes=2).double()
    x = torch.rand(200, 2, dtype=torch.float64) * 2 - 1
    y = model(x).argmax(dim=1)
    a = (model[2].weight[0, 0] - model[2].weight[1, 0]).item()
    c = (model[2].bias[0] - model[2].bias[1]).item()
    u, pre = model[0].weight[0].detach(), (x @ model[0].weight[0] + model[0].bias[0]).detach()
    h_star = inverse(torch.tensor(-c / a, dtype=torch.float64))
    assert torch.isfinite(h_star)
    for norm in (2.0, math.inf, 1.0):
        exact = (pre - h_star).abs() / torch.linalg.vector_norm(u, ord=DUAL[norm])
        radii = certified_radii(model, x, y, norm)
        # float64 throughout (the inverse activation, the norm, a 60-step bisection); the certificate
        # nearly reaches the exact distance, so only float64 rounding (~1e-15 relative) separates them
        assert (radii <= exact * (1 + 1e-9)).all()
        assert (radii / exact).max() > 0.99 and (radii / exact).median() > 0.6


@pytest.mark.parametrize("layer", [torch.nn.Tanh(), torch.nn.Softplus(), torch.nn.ELU()])
def test_no_point_of_a_dense_grid_inside_the_certified_ball_changes_the_decision(layer):
    """Two-dimensional inputs, where the whole neighbourhood can be searched: a random network
    (3 classes, 6 hidden units, weights large enough to bend the boundaries) is evaluated on a
    dense grid around each point, and every misclassified grid point must lie farther than the
    certified radius, in each norm. The nearest one is close to it (the certificate is tight
    enough here that an unsound shortcut in the bound would be caught)."""
    model = plane_network(layer)
    x = torch.rand(40, 2) * 2 - 1
    y = model(x).argmax(dim=1).detach()
    axis = torch.linspace(-3, 3, 301)
    offsets = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(-1, 2)
    with torch.no_grad():
        wrong = torch.stack([model(point + offsets).argmax(dim=1) != label for point, label in zip(x, y)])
    tightest = 0.0
    for norm in (2.0, math.inf, 1.0):
        radii = certified_radii(model, x, y, norm)
        distances = torch.linalg.vector_norm(offsets, ord=norm, dim=1).double()
        nearest = torch.where(wrong, distances, math.inf).amin(dim=1)
        assert (radii > 0).all() and torch.isfinite(nearest).all()
        assert (radii <= nearest).all(), norm
        tightest = max(tightest, (radii / nearest).max().item())
    assert tightest > 0.7


@pytest.mark.parametrize("activation", ["sigmoid", "softplus", "elu"])
def test_other_smooth_activations_are_certified_soundly(digits, activation):
    model = fit(lambda: MLP(SHAPE, 10, hidden=[16], activation=activation), digits, epochs=4)
    x, y = digits.x_test, digits.y_test
    radii = certified_radii(model, x, y, 2)
    clean = correct(model, x, y)
    assert (radii[clean] > 0).all()
    for attack in (DeepFool(norm=2), PGD(eps=0.5, norm=2, steps=50)):
        result = attack(model, x, y, bounds=WIDE)
        hit = result.success & clean
        assert hit.sum() > 20 and (radii[hit] <= result.norms[hit].double() + ATTACK_SLACK).all()


@pytest.mark.parametrize("layer", [*SMOOTH, torch.nn.Softplus(beta=3.0)])
def test_activation_derivative_and_its_range_over_an_interval(layer):
    """sigma' against autograd, and its (min, max) over [lo, hi] against a dense grid."""
    activation = smooth_activation(layer)
    t = torch.linspace(-30, 30, 6001, dtype=torch.float64, requires_grad=True)
    (slope,) = torch.autograd.grad(layer(t).sum(), t)
    # float64, two formulas for sigma' (closed form and autograd's); where sigma' saturates (|t| up to
    # 30) forms like 1 - tanh(t)^2 cancel to an absolute error of a few eps64 (2.2e-16) << 1e-12
    torch.testing.assert_close(activation.derivative(t.detach()), slope, rtol=1e-9, atol=1e-12)
    generator = torch.Generator().manual_seed(0)
    lo = torch.empty(200, dtype=torch.float64).uniform_(-8, 8, generator=generator)
    hi = lo + torch.empty(200, dtype=torch.float64).exponential_(0.5, generator=generator)
    lowest, highest = activation.derivative_range(lo, hi)
    grid = lo[:, None] + (hi - lo)[:, None] * torch.linspace(0, 1, 20001, dtype=torch.float64)
    values = activation.derivative(grid)
    # atol 1e-6 is the grid's resolution, not float error: spacing up to ~1e-3, and at an interior
    # extremum the grid misses it by ~|sigma'''| h^2 / 8 (endpoints lie on the grid).
    torch.testing.assert_close(lowest, values.amin(dim=1), rtol=0, atol=1e-6)
    torch.testing.assert_close(highest, values.amax(dim=1), rtol=0, atol=1e-6)
    # 1e-15: the range must contain every grid value up to float64 rounding (values <= 1, ~4 eps64)
    assert (lowest <= values.amin(dim=1) + 1e-15).all() and (highest >= values.amax(dim=1) - 1e-15).all()
    # The Lipschitz constant of sigma' bounds its change between grid neighbours (plus any jump).
    steps = (values.diff(dim=1).abs() / (grid.diff(dim=1))).amax()
    # 1 + 1e-6: float64 rounding of a difference quotient, ~eps64 |sigma'| / spacing, ~1e-9 at the
    # finest spacing here (~5e-7). 0.9 is how close the grid gets to the constant (a tightness
    # check, not a float tolerance).
    assert steps <= activation.lipschitz * (1 + 1e-6) and steps >= activation.lipschitz * 0.9


# ----------------------------------------------------------------------- refusals and helpers


@pytest.mark.parametrize(("model", "field"), [
    (MLP(SHAPE, 10, hidden=[32], activation="relu"), "activation"),
    (MLP(SHAPE, 10, hidden=[32], activation="leaky_relu"), "activation"),
    (torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8), torch.nn.ELU(alpha=0.5), torch.nn.Linear(8, 10)),
     "activation"),
    (MLP(SHAPE, 10, hidden=[32, 32], activation="tanh"), "hidden"),
    (CNN(SHAPE, 10, activation="tanh"), "hidden"),
    (torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8), torch.nn.Tanh(), torch.nn.Linear(8, 10),
                         torch.nn.Softmax(dim=1)), "_target_"),
])
def test_unsupported_models_are_refused_with_the_key_to_change(model, field, digits):
    assert not supports(model, 2, SHAPE)
    with pytest.raises(InvalidValue) as raised:
        check_certifiable(model, 2, SHAPE)
    assert raised.value.field == field
    with pytest.raises(InvalidValue):
        certified_radii(model, digits.x_test[:5], digits.y_test[:5], 2)


def test_supported_models_norms_and_options(trained, tanh_mlp):
    logreg, x, y = trained("logreg")
    for model in (logreg, tanh_mlp, LogReg(SHAPE, 10, binary=False)):  # affine, with and without normalisation
        assert all(supports(model, norm, SHAPE) for norm in ("inf", 2, "l1"))
    with pytest.raises(InvalidValue) as raised:
        certified_radii(logreg, x, y, "l3")
    assert raised.value.field == "norm"
    with pytest.raises(InvalidValue) as raised:
        certified_radii(tanh_mlp, x, y, 2, bound="global")
    assert raised.value.field == "bound"
    torch.testing.assert_close(certified_radii(tanh_mlp, x, y, 2, batch_size=7), certified_radii(tanh_mlp, x, y, 2))
    assert describe("inf") == "certified-linf" and describe(2, "lipschitz") == "certified-l2-lipschitz"


def test_certified_accuracy_counts_radii_strictly_above_eps_over_all_samples(trained):
    radii = torch.tensor([0.0, 0.5, 1.0, 2.0], dtype=torch.float64)
    assert certified_accuracy(radii, [0, 0.5, 1.5, 3]) == [0.75, 0.5, 0.25, 0.0]
    model, x, y = trained("logreg")
    radii = certified_radii(model, x, y, 2)
    clean = correct(model, x, y).double().mean().item()
    curve = certified_accuracy(radii, [0.0, 0.25, 0.5, 1.0])
    assert curve[0] == pytest.approx(clean) and curve == sorted(curve, reverse=True) and curve[-1] < curve[0]
    with pytest.raises(InvalidValue):
        certified_accuracy(radii, [-0.1])


def test_the_outer_maximum_is_the_crossing_of_the_bound_with_r():
    """max_R min(c / (1 + R), R) is the root of R^2 + R - c = 0; with an infinite start
    (4 / R, unbounded at 0) the upper end is found by doubling: the crossing is R = 2."""
    c = torch.tensor([0.0, 0.1, 1.0, 30.0], dtype=torch.float64)
    radii = largest_certified_radius(lambda r: c / (1 + r), c)
    # float64 bisection of 60 steps: resolution 2^-60 (~1e-18) of the start, plus the closed form's
    # own rounding (a sqrt, a few eps64); rtol 1e-12 is ~4000 ulps
    torch.testing.assert_close(radii, (-1 + (1 + 4 * c).sqrt()) / 2, rtol=1e-12, atol=1e-15)
    # Stopped early, the bisection returns a radius that is itself certified.
    rough = largest_certified_radius(lambda r: c / (1 + r), c, steps=3)
    assert (c / (1 + rough) >= rough).all() and (rough < radii).any()
    start = torch.tensor([math.inf], dtype=torch.float64)
    crossing = largest_certified_radius(lambda r: 4 / r, start)
    torch.testing.assert_close(crossing, torch.tensor([2.0], dtype=torch.float64))
