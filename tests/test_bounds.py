"""Bounds on a network's margins (advrun.bounds): IBP against a plain layer-by-layer computation
written here, every bound against dense sampling of its ball on random networks of every
supported layer, the relaxations against their activations, CROWN at least as tight as IBP, and
no attack (PGD, APGD, FAB, DeepFool) succeeding on a sample the bounds certify."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advrun.attacks import APGD, FAB, PGD, DeepFool
from advrun.bounds import Ball, BoundedNetwork, float64_copy, relaxation
from advrun.errors import InvalidValue
from advrun.models import CNN, MLP, Normalize, PreActResNet18, make_activation
from advrun.structure import ACTIVATIONS

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (1, 8, 8)
BOX = (0.0, 1.0)
#: Float64 sums of a few hundred terms of order 1 agree to ~1e-13; a sampled margin may sit below a
#: bound only by rounding of that size.
ROUNDING = 1e-9


def _batch_norm(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """A batch norm layer with random running statistics and affine parameters (negative scales too)."""
    features = module.num_features
    module.running_mean = torch.rand(features, generator=generator) - 0.5
    module.running_var = torch.rand(features, generator=generator) + 0.5
    module.weight.data = 2 * torch.rand(features, generator=generator) - 1
    module.bias.data = torch.rand(features, generator=generator) - 0.5
    return module


def random_networks() -> dict[str, nn.Module]:
    """Small random networks covering every supported layer kind and activation (eval mode)."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    normalize = Normalize(1, image=True)
    normalize.mean.fill_(0.3)
    normalize.std.fill_(0.4)
    nets = {f"mlp-{name}": MLP(SHAPE, 10, hidden=[16, 12], activation=name) for name in ACTIVATIONS}
    nets["cnn-maxpool"] = CNN(SHAPE, 10, channels=[4, 6], hidden=12)
    nets["cnn-batchnorm-tanh"] = CNN(SHAPE, 10, channels=[3], hidden=8, batch_norm=True, activation="tanh")
    nets["conv-avgpool"] = nn.Sequential(
        normalize, nn.Conv2d(1, 4, 3, stride=2, padding=1), _batch_norm(nn.BatchNorm2d(4), g), nn.ReLU(),
        nn.AvgPool2d(2), nn.Conv2d(4, 5, 2), nn.LeakyReLU(0.2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(5, 7), _batch_norm(nn.BatchNorm1d(7), g), nn.Dropout(0.5), nn.Softplus(beta=2.0),
        nn.Linear(7, 10))
    nets["overlapping-maxpool"] = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ELU(), nn.MaxPool2d(3, stride=2, padding=1), nn.Flatten(),
        nn.Linear(48, 10))
    for net in nets.values():
        net.eval()
    return nets


NETS = random_networks()


def sampled_margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, p: float,
                    draws: int = 2000) -> torch.Tensor:
    """The smallest margin ``z_y - z_j`` found by ``draws`` points of each sample's ball inside the
    box: uniform and sign vertices for Linf, directions scaled to the sphere and inside for L2, sparse
    directions for L1 (where L1's extreme points lie), each clipped to the box."""
    g = torch.Generator().manual_seed(1)
    n = len(x)
    shape = (draws, n, *x.shape[1:])
    if p == math.inf:
        d = (2 * torch.rand(shape, generator=g, dtype=torch.float64) - 1) * eps
        d = torch.where(torch.rand(shape, generator=g, dtype=torch.float64) < 0.5, d.sign() * eps, d)
    else:
        d = torch.randn(shape, generator=g, dtype=torch.float64)
        if p == 1.0:
            d = d * (torch.rand(shape, generator=g, dtype=torch.float64) < 0.05)
        size = d.flatten(2).norm(p=p, dim=2).clamp_min(1e-12).reshape(draws, n, *[1] * (x.dim() - 1))
        scale = torch.rand((draws, n, *[1] * (x.dim() - 1)), generator=g, dtype=torch.float64) ** 0.2
        d = d / size * eps * scale
    points = (x[None] + d).clamp(*BOX).reshape(-1, *x.shape[1:])
    with torch.no_grad():
        z = model(points).reshape(draws, n, -1)
    margins = z.gather(2, y[None, :, None].expand(draws, n, 1)) - z
    return margins.amin(0).masked_fill(F.one_hot(y, z.shape[2]).bool(), math.inf)


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize(("p", "eps"), [(math.inf, 0.03), (2.0, 0.3), (1.0, 1.0)])
def test_every_bound_holds_against_dense_sampling_of_the_ball(name, p, eps):
    model = float64_copy(NETS[name])
    x = torch.rand(6, *SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    network = BoundedNetwork(model, SHAPE)
    sampled = sampled_margins(model, x, y, eps, p)
    bounds = {method: network.margins(x, y, eps, p, BOX, method) for method in ("ibp", "crown", "crown-ibp")}
    for method, found in bounds.items():
        assert (found.best <= sampled + ROUNDING).all(), method
        assert (found.ibp <= sampled + ROUNDING).all() and (found.crown is None or (found.crown <= sampled + ROUNDING).all())
    assert (bounds["crown"].best >= bounds["ibp"].best).all()  # CROWN keeps IBP's bound where it is tighter
    intervals, _ = network.intervals(Ball(x, torch.full((6,), eps, dtype=torch.float64), p, BOX), "crown")
    h = x
    with torch.no_grad():
        for layer, (low, up) in zip(network.layers, intervals):  # the centre lies in every interval
            assert (low <= h + ROUNDING).all() and (h <= up + ROUNDING).all(), layer.name
            h = layer.module(h)


def reference_ibp(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, eps: float):
    """Plain interval arithmetic, written out per layer with the positive and negative parts of the
    weights (not the centre-radius form of advrun.bounds): the input interval of every layer, then
    the margins from the last hidden layer's box through ``(W_y - W_j) h + b_y - b_j``."""
    low, up = (x - eps).clamp(*BOX), (x + eps).clamp(*BOX)
    layers = list(model)
    seen = []
    for layer in layers[:-1]:
        seen.append((low, up))
        if isinstance(layer, nn.Linear):
            pos, neg = layer.weight.clamp(min=0), layer.weight.clamp(max=0)
            low, up = low @ pos.T + up @ neg.T + layer.bias, up @ pos.T + low @ neg.T + layer.bias
        elif isinstance(layer, nn.Conv2d):
            pos, neg = layer.weight.clamp(min=0), layer.weight.clamp(max=0)
            conv = lambda t, w: F.conv2d(t, w, None, layer.stride, layer.padding)  # noqa: E731
            bias = layer.bias.reshape(1, -1, 1, 1)
            low, up = conv(low, pos) + conv(up, neg) + bias, conv(up, pos) + conv(low, neg) + bias
        elif isinstance(layer, Normalize):
            low, up = (low - layer.mean) / layer.std, (up - layer.mean) / layer.std
        else:  # flatten, max pooling and the activations: monotone
            low, up = layer(low), layer(up)
    seen.append((low, up))
    last = layers[-1]
    w = last.weight[y][:, None, :] - last.weight[None]  # (n, classes, features)
    b = last.bias[y][:, None] - last.bias[None]
    margins = (w.clamp(min=0) * low[:, None]).sum(2) + (w.clamp(max=0) * up[:, None]).sum(2) + b
    return seen, margins.masked_fill(F.one_hot(y, 10).bool(), math.inf)


@pytest.mark.parametrize("name", ["mlp-relu", "mlp-sigmoid", "cnn-maxpool"])
def test_ibp_equals_a_plain_layer_by_layer_computation(name):
    model = float64_copy(NETS[name])
    model[0].mean.fill_(0.2)
    model[0].std.fill_(0.5)
    x = torch.rand(5, *SHAPE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = torch.arange(5)
    eps = 0.05
    network = BoundedNetwork(model, SHAPE)
    intervals, _ = network.intervals(Ball(x, torch.full((5,), eps, dtype=torch.float64), math.inf, BOX), "ibp")
    expected, margins = reference_ibp(model, x, y, eps)
    assert len(expected) == len(network.layers)
    for (low, up), (want_low, want_up) in zip(intervals, expected):
        torch.testing.assert_close(low, want_low)
        torch.testing.assert_close(up, want_up)
    torch.testing.assert_close(network.margins(x, y, eps, math.inf, BOX, "ibp").ibp, margins)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_each_relaxation_bounds_its_activation_on_its_interval(name):
    module = make_activation(name, 2.0).double()
    g = torch.Generator().manual_seed(4)
    centre = 6 * torch.randn(400, generator=g, dtype=torch.float64)
    width = torch.rand(400, generator=g, dtype=torch.float64) * torch.tensor([0.01, 1.0, 10.0]).double().repeat(134)[:400]
    lower, upper = centre - width, centre + width
    lines = relaxation(module, lower, upper)
    t = lower[:, None] + (upper - lower)[:, None] * torch.linspace(0, 1, 501, dtype=torch.float64)
    values = module(t)
    if name == "leaky_relu":  # exact arithmetic: torch's vectorised kernel rounds the slope to float32 (~1e-8 off)
        values = torch.where(t > 0, t, module.negative_slope * t)
    below = lines.lower_slope[:, None] * t + lines.lower_shift[:, None]
    above = lines.upper_slope[:, None] * t + lines.upper_shift[:, None]
    assert (below <= values + ROUNDING).all() and (values <= above + ROUNDING).all()
    # not vacuous: at the interval's middle the lines are within the interval's range of values
    middle = (lower + upper) / 2
    spread = (values.amax(1) - values.amin(1))
    # (softplus's lines keep a slack of 2e-9 per unit of width for torch's switch to the identity)
    slack = 1e-8 * (upper - lower) + ROUNDING
    assert ((module(middle) - (lines.lower_slope * middle + lines.lower_shift)) <= spread + slack).all()
    assert ((lines.upper_slope * middle + lines.upper_shift) - module(middle) <= spread + slack).all()


def test_l2_bounds_use_the_ball_not_only_its_bounding_box():
    """In L2 the first layer is bounded by Hoelder's inequality: for eps 1 on 64 pixels the box
    [x - 1, x + 1] is the whole data box, yet the ball's bound still certifies."""
    model = float64_copy(NETS["mlp-relu"])
    x = torch.full((1, *SHAPE), 0.5, dtype=torch.float64)
    network = BoundedNetwork(model, SHAPE)
    with torch.no_grad():
        y = model(x).argmax(1)
    ball = network.margins(x, y, 0.01, 2.0, BOX, "ibp").best
    box = network.margins(x, y, 0.01, math.inf, BOX, "ibp").best
    assert (ball[0][ball[0].isfinite()] > box[0][box[0].isfinite()]).all()  # the L2 ball is inside the Linf one


def test_bounds_at_eps_zero_are_the_margins_themselves():
    for name in ("mlp-tanh", "cnn-maxpool", "conv-avgpool"):
        model = float64_copy(NETS[name])
        x = torch.rand(4, *SHAPE, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        y = torch.tensor([0, 3, 5, 9])
        with torch.no_grad():
            z = model(x)
        margins = (z.gather(1, y[:, None]) - z).masked_fill(F.one_hot(y, 10).bool(), math.inf)
        bounds = BoundedNetwork(model, SHAPE).margins(x, y, 0.0, math.inf, BOX, "crown")
        torch.testing.assert_close(bounds.best, margins, rtol=1e-9, atol=1e-9)


def test_training_bounds_are_differentiable_in_the_parameters():
    model = MLP(SHAPE, 10, hidden=[16])
    x, y = torch.rand(8, *SHAPE), torch.randint(0, 10, (8,))
    network = BoundedNetwork(model, SHAPE)
    for method in ("ibp", "crown-ibp"):
        model.zero_grad()
        bounds = network.margins(x, y, 0.1, math.inf, BOX, method, differentiable=True)
        worst = -bounds.best.masked_fill(F.one_hot(y, 10).bool(), 0.0)
        F.cross_entropy(worst, y).backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert model[-1].weight.grad.abs().sum() > 0 and model[-3].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(("model", "words"), [
    (PreActResNet18(in_shape=(3, 8, 8), num_classes=10), "block"),
    (nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"), nn.Flatten(), nn.Linear(128, 10)), "zero padding"),
    (nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.LeakyReLU(-0.5)), "slope"),
])
def test_unsupported_layers_are_refused_naming_the_model(model, words):
    shape = (3, 8, 8) if isinstance(model, PreActResNet18) else SHAPE
    with pytest.raises(InvalidValue) as raised:
        BoundedNetwork(model.eval(), shape)
    assert raised.value.field == "_target_" and words in raised.value.message


# ------------------------------------------------------------------- soundness against attacks


def _certified(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples CROWN certifies at ``eps`` (float64) and their smallest margin bound."""
    copied = float64_copy(model)
    network = BoundedNetwork(copied, x.shape[1:])
    with torch.no_grad():
        correct = copied(x.double()).argmax(1) == y
    least = network.margins(x.double(), y, eps, p, BOX, "crown").best.amin(1)
    return correct & (least > 0), least


#: A certified margin below this may be crossed by float32 rounding of the attacked model (logits of
#: order 10, float32 relative precision 1.2e-7, sums over a few hundred terms): such samples are
#: left out of the check rather than counted as the certificate's failure.
FLOAT32_MARGIN = 1e-4


#: Per model: the samples checked, the budgets per norm, and how many (sample, budget) pairs must be
#: certified for the check to mean something (measured: MLP 1,920 of 2,700, CNN 88 of 480).
SOUNDNESS = {
    "mlp": (slice(None), {math.inf: (0.01, 0.03, 0.05), 2.0: (0.1, 0.3, 0.5)}, 1000),
    "cnn": (slice(0, 120), {math.inf: (0.01, 0.03), 2.0: (0.1, 0.3)}, 60),
}


@pytest.mark.parametrize("kind", sorted(SOUNDNESS))
def test_no_attack_succeeds_on_a_certified_sample(trained, kind):
    model, x, y = trained(kind)
    subset, grid, least_checked = SOUNDNESS[kind]
    x, y = x[subset], y[subset]
    checked = 0
    for p, budgets in grid.items():
        norm = "inf" if p == math.inf else 2
        for eps in budgets:
            certified, least = _certified(model, x, y, eps, p)
            keep = certified & (least > FLOAT32_MARGIN)
            checked += int(keep.sum())
            if not keep.any():
                continue
            xs, ys = x[keep], y[keep]
            for attack in (PGD(eps=eps, norm=norm, steps=20, restarts=2), APGD(eps=eps, norm=norm, n_iter=20)):
                assert not attack(model, xs, ys, bounds=BOX).success.any(), (attack.label, eps)
            for attack in (FAB(norm=norm, n_iter=10), DeepFool(norm=norm)):  # minimum norm: found within eps?
                found = attack(model, xs, ys, bounds=BOX)
                assert not (found.success & (found.norms <= eps)).any(), (attack.label, eps)
    print(f"{kind}: {checked} certified (sample, budget) pairs checked")
    assert checked >= least_checked  # enough certified (sample, budget) pairs for the check to mean something


def test_an_activation_object_used_twice_is_bounded_at_both_places():
    """One ReLU module placed after two layers: nn.Sequential applies it twice, so the bounds must
    too (a network read without its second ReLU has other margins)."""
    torch.manual_seed(3)
    relu = nn.ReLU()
    model = float64_copy(nn.Sequential(nn.Flatten(), nn.Linear(64, 20), relu, nn.Linear(20, 20), relu,
                                       nn.Linear(20, 10)))
    x = torch.rand(6, *SHAPE, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        z = model(x)
    y = z.argmax(1)
    network = BoundedNetwork(model, SHAPE)
    exact = (z.gather(1, y[:, None]) - z).masked_fill(F.one_hot(y, 10).bool(), math.inf)
    torch.testing.assert_close(network.margins(x, y, 0.0, math.inf, BOX, "crown").best, exact, rtol=1e-9, atol=1e-9)
    sampled = sampled_margins(model, x, y, 0.05, math.inf)
    assert (network.margins(x, y, 0.05, math.inf, BOX, "crown").best <= sampled + ROUNDING).all()
