"""Models: shapes, normalisation inside the model, activations against their formulas, dropout and
batch norm in train and eval mode, the one-logit binary logistic regression against its two-logit
twin, PreActResNet-18 against an independent parameter count, clear errors for impossible set-ups."""

import copy
import math

import pandas as pd
import pytest
import torch
import torchvision

from advrun import experiment
from advrun.attacks import LinearExact
from advrun.certify import certified_radii, check_certifiable, smooth_activation, supports
from advrun.defenses import CrossLipschitz
from advrun.errors import InvalidValue
from advrun.models import ACTIVATIONS, CNN, MLP, LogReg, Normalize, PreActResNet18, make_activation
from advrun.structure import Abs
from advrun.training import batch_starts
from tests.conftest import TINY

pytestmark = pytest.mark.usefixtures("one_thread")

# Comparisons without stated tolerances use the defaults, a few ulps: torch.testing.assert_close
# (float32 rtol 1.3e-6, atol 1e-5; float64 rtol 1e-7, atol 1e-7) and pytest.approx (rel 1e-6).
# They compare one float computation with the same one in another order, kernel or batch shape.


@pytest.mark.parametrize("cls", [LogReg, MLP, CNN])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32), (1, 28, 28)])
def test_models_map_inputs_to_logits(cls, shape):
    model = cls(in_shape=shape, num_classes=7)
    assert model(torch.rand(5, *shape)).shape == (5, 7)


def test_vector_inputs_work_for_dense_models_only():
    assert MLP(in_shape=(2,), num_classes=2)(torch.rand(3, 2)).shape == (3, 2)
    with pytest.raises(InvalidValue, match="image inputs"):
        CNN(in_shape=(2,), num_classes=2)


def test_normalization_is_a_layer_fitted_to_the_training_set():
    x = torch.rand(500, 3, 4, 4) * torch.tensor([1.0, 0.5, 0.2]).reshape(1, 3, 1, 1)
    model = MLP(in_shape=(3, 4, 4), num_classes=2, normalize=True)
    model.fit_normalization(x)
    norm = model[0]
    assert isinstance(norm, Normalize)
    z = norm(x)
    # float32 statistics over 8000 values of order 1 (1.2e-7 relative each, ~1e-6 after summation);
    # 1e-3 on the std is loose: the same estimator (unbiased, over the same set) fitted the layer
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3, rtol=0)
    assert "0.mean" in model.state_dict() and "0.std" in model.state_dict()


def test_logreg_is_affine_in_the_pixels():
    model = LogReg(in_shape=(1, 8, 8), num_classes=3)
    x = torch.rand(4, 1, 8, 8)
    linear = model[-1]
    torch.testing.assert_close(model(x), x.flatten(1) @ linear.weight.T + linear.bias)


@pytest.mark.parametrize("kwargs, field", [
    ({"activation": "swish"}, "activation"), ({"hidden": [0]}, "hidden"), ({"normalize": "yes"}, "normalize"),
])
def test_invalid_options_name_the_field(kwargs, field):
    with pytest.raises(InvalidValue) as info:
        MLP(in_shape=(1, 8, 8), num_classes=10, **kwargs)
    assert info.value.field == field


def test_too_many_pooling_blocks_for_small_images():
    with pytest.raises(InvalidValue, match="too many"):
        CNN(in_shape=(1, 8, 8), num_classes=10, channels=[4, 4, 4, 4])


# ------------------------------------------------------------------------------- activations

POINTS = [-3.0, -0.5, 0.0, 0.7, 2.5]
FORMULAS = {  # written out from their definitions, in Python floats
    "relu": lambda t: max(t, 0.0),
    "leaky_relu": lambda t: t if t > 0 else 0.1 * t,
    "sigmoid": lambda t: 1 / (1 + math.exp(-t)),
    "tanh": lambda t: (math.exp(t) - math.exp(-t)) / (math.exp(t) + math.exp(-t)),
    "softplus": lambda t: math.log(1 + math.exp(t)),
    "elu": lambda t: t if t > 0 else math.exp(t) - 1,
    "abs": lambda t: -t if t < 0 else t,
}


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_each_activation_matches_its_formula(name):
    assert set(FORMULAS) == set(ACTIVATIONS)
    values = make_activation(name)(torch.tensor(POINTS, dtype=torch.float64))
    torch.testing.assert_close(values, torch.tensor([FORMULAS[name](t) for t in POINTS], dtype=torch.float64))


@pytest.mark.parametrize("beta", [0.5, 1.0, 4.0, 20.0])
def test_softplus_sharpness_is_beta(beta):
    values = make_activation("softplus", softplus_beta=beta)(torch.tensor(POINTS, dtype=torch.float64))
    expected = [math.log(1 + math.exp(beta * t)) / beta for t in POINTS]
    # float64; torch's softplus returns t itself where beta t > 20 (its threshold), off by
    # log1p(exp(-20)) / beta <= 4.1e-9 at beta 0.5: below atol 1e-8
    torch.testing.assert_close(values, torch.tensor(expected, dtype=torch.float64), rtol=1e-7, atol=1e-8)
    mlp = MLP(in_shape=(4,), num_classes=2, hidden=[3], activation="softplus", softplus_beta=beta)
    assert [m.beta for m in mlp.modules() if isinstance(m, torch.nn.Softplus)] == [beta]


def test_softplus_beta_bounds_the_curvature_the_certificate_uses():
    """max |softplus''| = beta / 4 (at 0), measured by finite differences, is certify's constant."""
    for beta in (0.5, 3.0):
        act = MLP(in_shape=(1,), num_classes=2, hidden=[1], activation="softplus", softplus_beta=beta)[3]
        t = torch.linspace(-5, 5, 20001, dtype=torch.float64)
        h = t[1] - t[0]
        second = (act(t[2:]) - 2 * act(t[1:-1]) + act(t[:-2])) / h**2
        # float64 central difference, h = 5e-4: truncation h^2 |f''''| / 12 ~1e-7 relative, rounding
        # 4 eps64 |f| / h^2 ~1e-9; rel 1e-4 is loose
        assert second.max().item() == pytest.approx(beta / 4, rel=1e-4)
        assert smooth_activation(act).lipschitz == pytest.approx(beta / 4)


# --------------------------------------------------------------------- dropout and batch norm


def test_dropout_is_active_in_train_mode_and_off_in_eval():
    torch.manual_seed(0)
    model = MLP(in_shape=(20,), num_classes=3, hidden=[400], dropout=0.25, normalize=False)
    first, last = model[1], model[-1]
    x = torch.rand(8, 20)
    hidden = torch.relu(x @ first.weight.T + first.bias)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), hidden @ last.weight.T + last.bias)  # eval: no dropout
        model.train()
        seen = {}
        model[3].register_forward_hook(lambda module, args, out: seen.update(out=out))
        a, b = model(x), model(x)
    assert not torch.equal(a, b)
    kept = seen["out"] != 0
    torch.testing.assert_close(seen["out"][kept], hidden[kept] / 0.75)  # inverted dropout: scaled by 1 / (1 - p)
    dropped = 1 - kept[hidden > 0].float().mean().item()
    assert 0.2 < dropped < 0.3


@pytest.mark.parametrize("cls", [MLP, CNN])
def test_batch_norm_uses_batch_statistics_in_train_mode_and_running_ones_in_eval(cls):
    torch.manual_seed(0)
    model = cls(in_shape=(1, 8, 8), num_classes=4, batch_norm=True, normalize=False)
    norms = [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))]
    assert len(norms) == (2 if cls is MLP else 3)
    first_norm = norms[0]
    seen = {}
    first_norm.register_forward_hook(lambda module, args, out: seen.update(inp=args[0], out=out))
    x = torch.rand(64, 1, 8, 8) * 3 + 1
    model.train()
    with torch.no_grad():
        model(x)
    dims = [0] if seen["inp"].dim() == 2 else [0, 2, 3]
    mean, var = seen["inp"].mean(dim=dims), seen["inp"].var(dim=dims, unbiased=False)
    # train mode: the batch's own statistics (gamma = 1, beta = 0 at initialisation)
    # float32 mean of normalised values of order 1 over the batch (~1e-6 after summation)
    torch.testing.assert_close(seen["out"].mean(dim=dims), torch.zeros_like(mean), atol=1e-5, rtol=0)
    # running statistics moved from (0, 1) by momentum 0.1 towards the batch's (unbiased variance)
    n = seen["inp"].numel() / seen["inp"].shape[1]
    torch.testing.assert_close(first_norm.running_mean, 0.1 * mean)
    torch.testing.assert_close(first_norm.running_var, 0.9 + 0.1 * var * n / (n - 1))
    model.eval()
    with torch.no_grad():
        single = model(x[:1])
        batch = model(x)
    torch.testing.assert_close(single, batch[:1])  # eval: a sample does not depend on its batch
    expected = (seen["inp"] - _channel(first_norm.running_mean, seen["inp"])) / \
        _channel(first_norm.running_var + first_norm.eps, seen["inp"]).sqrt()
    # float32: the kernel multiplies by rsqrt(var + eps), the hand formula divides by sqrt; a few ulps
    # (1.2e-7 relative) of values up to ~10
    torch.testing.assert_close(seen["out"], expected, rtol=1e-5, atol=1e-5)


def _channel(stat, like):
    return stat.view(1, -1, *([1] * (like.dim() - 2)))


@pytest.mark.parametrize(("cls", "kwargs", "field"), [
    (MLP, {"activation": "abs", "softplus_beta": 0}, "softplus_beta"),
    (MLP, {"activation": "softplus", "softplus_beta": -1.0}, "softplus_beta"),
    (CNN, {"activation": "softplus", "softplus_beta": "sharp"}, "softplus_beta"),
    (MLP, {"batch_norm": "yes"}, "batch_norm"),
    (CNN, {"batch_norm": 1}, "batch_norm"),
    (MLP, {"dropout": 1.0}, "dropout"),
    (CNN, {"dropout": -0.1}, "dropout"),
    (MLP, {"dropout": True}, "dropout"),
    (CNN, {"activation": "gelu"}, "activation"),
])
def test_bad_new_keys_name_the_field(cls, kwargs, field):
    with pytest.raises(InvalidValue) as info:
        cls(in_shape=(1, 8, 8), num_classes=10, **kwargs)
    assert info.value.field == field


# ---------------------------------------------------------------------- binary logistic regression


def test_binary_logreg_has_one_logit_and_its_cross_entropy_is_the_logistic_loss():
    torch.manual_seed(0)
    model = LogReg(in_shape=(1, 8, 8), num_classes=2, binary="auto")
    assert model.binary and model.state_dict()["1.weight"].shape == (1, 64)
    x, y = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 1, 0, 1, 0])
    logits = model(x)
    z = (x.flatten(1) @ model[1].weight.T + model[1].bias).squeeze(1)
    torch.testing.assert_close(logits, torch.stack([torch.zeros(6), z], dim=1))
    s = [1 if label == 1 else -1 for label in y.tolist()]
    logistic = sum(math.log(1 + math.exp(-si * zi)) for si, zi in zip(s, z.tolist())) / 6
    # float32 log-sum-exp over 6 samples (1.2e-7 relative per operation) against float64 math
    assert torch.nn.functional.cross_entropy(logits, y).item() == pytest.approx(logistic, rel=1e-6)
    assert torch.equal(logits.argmax(1), (z > 0).long())


@pytest.mark.parametrize(("binary", "classes", "logits"), [
    ("auto", 2, 1), ("auto", 3, 3), (False, 2, 2), (True, 2, 1)])
def test_binary_option_chooses_the_number_of_weight_vectors(binary, classes, logits):
    model = LogReg(in_shape=(5,), num_classes=classes, binary=binary)
    rows = [p for name, p in model.named_parameters() if name.endswith("weight")][0].shape[0]
    assert rows == logits and model(torch.rand(3, 5)).shape == (3, classes)


@pytest.mark.parametrize(("binary", "classes"), [("maybe", 2), (1, 2), (True, 3)])
def test_bad_binary_names_the_field(binary, classes):
    with pytest.raises(InvalidValue) as info:
        LogReg(in_shape=(5,), num_classes=classes, binary=binary)
    assert info.value.field == "binary"


@pytest.fixture(scope="module")
def binary_pair(digits):
    """A one-logit LogReg trained on digits 3 vs 8, its two-logit twin W = [[0], [w]], b = [0, b],
    and the test images of those digits."""
    keep, keep_t = torch.isin(digits.y_train, torch.tensor([3, 8])), torch.isin(digits.y_test, torch.tensor([3, 8]))
    x, y = digits.x_train[keep], (digits.y_train[keep] == 8).long()
    torch.manual_seed(0)
    one = LogReg(in_shape=(1, 8, 8), num_classes=2, binary=True)
    optimizer = torch.optim.Adam(one.parameters(), lr=0.05)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(one(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    two = LogReg(in_shape=(1, 8, 8), num_classes=2, binary=False)
    with torch.no_grad():
        two[1].weight.copy_(torch.cat([torch.zeros(1, 64), one[1].weight]))
        two[1].bias.copy_(torch.cat([torch.zeros(1), one[1].bias]))
    return one.eval(), two.eval(), digits.x_test[keep_t], (digits.y_test[keep_t] == 8).long()


@pytest.mark.parametrize("norm", [math.inf, 2.0, 1.0])
def test_one_logit_and_two_logit_twins_have_the_same_exact_radii(binary_pair, norm):
    one, two, x, y = binary_pair
    torch.testing.assert_close(one(x), two(x))
    radii = certified_radii(one, x, y, norm)
    # float32 read-off: certify reads W and b by float32 autograd (1.2e-7 relative per entry), of
    # a model with one logit against one with two; radii are float64 from those entries
    torch.testing.assert_close(radii, certified_radii(two, x, y, norm), rtol=1e-6, atol=1e-9)
    w, b = one[1].weight.detach().double()[0], one[1].bias.detach().double()[0]
    z = x.flatten(1).double() @ w + b
    right = (z > 0) == (y == 1)
    assert right.float().mean() > 0.9
    expected = torch.where(right, z.abs() / torch.linalg.vector_norm(w, ord={math.inf: 1, 2.0: 2, 1.0: math.inf}[norm]),
                           0.0)
    torch.testing.assert_close(radii, expected, rtol=1e-6, atol=1e-9)  # the same float32 read-off


@pytest.mark.parametrize("norm", [math.inf, 2.0])
def test_one_logit_and_two_logit_twins_meet_the_same_exact_attack(binary_pair, norm):
    one, two, x, y = binary_pair
    a, b = LinearExact(norm=norm)(one, x, y), LinearExact(norm=norm)(two, x, y)
    assert torch.equal(a.success, b.success) and a.success.float().mean() > 0.9
    # float32 points in [0, 1] (ulp <= 1.2e-7) computed from two float32 read-offs of the same map
    torch.testing.assert_close(a.x_adv, b.x_adv, rtol=0, atol=1e-6)
    torch.testing.assert_close(a.norms, b.norms, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------- certification


def folded(model):
    """The one-hidden-layer ``[Normalize, Flatten, Linear, BatchNorm1d, act, Dropout, Linear]`` with
    its eval-mode batch norm folded into the Linear by hand and the dropout removed."""
    normalize, first, norm, act, last = model[0], model[2], model[3], model[4], model[6]
    scale = norm.weight / (norm.running_var + norm.eps).sqrt()
    twin = torch.nn.Sequential(copy.deepcopy(normalize), torch.nn.Flatten(), torch.nn.Linear(64, first.out_features),
                               copy.deepcopy(act), copy.deepcopy(last))
    with torch.no_grad():
        twin[2].weight.copy_(first.weight * scale[:, None])
        twin[2].bias.copy_(norm.bias - norm.running_mean * scale)
    return twin.eval()


@pytest.mark.parametrize("norm", [2.0, math.inf])
def test_batch_norm_and_dropout_are_certified_as_in_eval_mode(digits, norm):
    torch.manual_seed(0)
    model = MLP((1, 8, 8), 10, hidden=[24], activation="tanh", batch_norm=True, dropout=0.3)
    model.fit_normalization(digits.x_train)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for index in torch.randperm(len(digits.x_train)).split(64):
        loss = torch.nn.functional.cross_entropy(model(digits.x_train[index]), digits.y_train[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert model.training and supports(model, norm, (1, 8, 8)) and model.training  # mode restored
    x, y = digits.x_test[:120], digits.y_test[:120]
    twin = folded(model)
    model.eval()
    # The fold is float32 (W * scale, a bias from running statistics, each rounded at 1.2e-7),
    # carried through 64- and 24-term sums to the logits; measured at most 4.8e-7 (logits up to
    # 3.8), so 1e-4 is loose.
    torch.testing.assert_close(twin(x), model(x), rtol=1e-4, atol=1e-4)
    radii = certified_radii(model, x, y, norm)
    assert (radii > 0).float().mean() > 0.5
    # Radii of two models that differ by that rounding (float64 from two float32 read-offs):
    # measured at most 2.2e-6 relative, 1.1e-7 absolute; rtol 1e-3 is loose, not derived.
    torch.testing.assert_close(radii, certified_radii(twin, x, y, norm), rtol=1e-3, atol=1e-6)


def test_abs_and_resnet_are_refused_by_certify_with_the_key_to_change():
    with pytest.raises(InvalidValue) as info:
        check_certifiable(MLP((1, 8, 8), 10, hidden=[8], activation="abs"), 2, (1, 8, 8))
    assert info.value.field == "activation" and "jumps" in info.value.message
    with pytest.raises(InvalidValue) as info:
        check_certifiable(PreActResNet18((1, 8, 8), 10, width=2), 2, (1, 8, 8))
    assert info.value.field == "_target_"


def test_cross_lipschitz_refuses_batch_norm_but_trains_with_dropout():
    with pytest.raises(InvalidValue, match="batch_norm=false"):
        CrossLipschitz().check_model(MLP((1, 8, 8), 10, hidden=[8], batch_norm=True), (1, 8, 8))
    model = MLP((1, 8, 8), 10, hidden=[8, 8], dropout=0.5)
    CrossLipschitz().check_model(model, (1, 8, 8))
    CrossLipschitz().loss(model, torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])).backward()


# ------------------------------------------------------------------------------------- resnet


def test_preact_resnet18_maps_cifar_images_to_ten_logits_with_11_2m_parameters():
    torch.manual_seed(0)
    model = PreActResNet18(in_shape=(3, 32, 32), num_classes=10)
    with torch.no_grad():
        assert model.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    # Independent count: torchvision's (post-activation, ImageNet) ResNet-18 with 10 outputs, minus
    # its differences: a 7x7 stem (3x3 here), a batch norm after the stem (none here), batch norms
    # after each block's convolutions (before them here: in_planes instead of planes in the first
    # block of stages 2-4), batch-normed projection shortcuts (plain here), no final batch norm.
    reference = sum(p.numel() for p in torchvision.models.resnet18(num_classes=10).parameters())
    expected = reference - 3 * 64 * (49 - 9) - 2 * 64 - (128 + 256 + 512) - 2 * (128 + 256 + 512) + 2 * 512
    assert sum(p.numel() for p in model.parameters()) == expected == 11_172_170
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["conv1.weight"] == (64, 3, 3, 3) and shapes["layer2.0.shortcut.0.weight"] == (128, 64, 1, 1)
    assert shapes["layer4.1.conv2.weight"] == (512, 512, 3, 3) and shapes["linear.weight"] == (10, 512)
    assert "layer1.0.shortcut.0.weight" not in shapes and shapes["bn.weight"] == (512,)


def test_preact_block_adds_the_shortcut_after_pre_activation():
    """With identity shortcut: out = x + conv2(relu(bn2(conv1(relu(bn1(x)))))), written out by hand."""
    from advrun.models import PreActBlock

    torch.manual_seed(0)
    block = PreActBlock(4, 4).eval()
    for norm in (block.bn1, block.bn2):
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
    x = torch.randn(3, 4, 5, 5)

    def bn(norm, t):
        return (t - _channel(norm.running_mean, t)) / _channel(norm.running_var + norm.eps, t).sqrt() \
            * _channel(norm.weight, t) + _channel(norm.bias, t)

    conv = torch.nn.functional.conv2d
    expected = x + conv(torch.relu(bn(block.bn2, conv(torch.relu(bn(block.bn1, x)), block.conv1.weight, padding=1))),
                        block.conv2.weight, padding=1)
    with torch.no_grad():
        # float32: the same convolutions, batch norm by kernel against by hand (rsqrt against
        # division); a few ulps (1.2e-7 relative) through 36-term sums of values of order 1
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


class ReferencePreActResNet18(torch.nn.Module):
    """The CIFAR PreActResNet-18 as the adversarial-training literature's code writes it (Kuang Liu's
    pytorch-cifar, with the final batch norm + ReLU of Rice et al. 2020), for comparison."""

    class Block(torch.nn.Module):
        def __init__(self, in_planes, planes, stride=1):
            super().__init__()
            self.bn1, self.bn2 = torch.nn.BatchNorm2d(in_planes), torch.nn.BatchNorm2d(planes)
            self.conv1 = torch.nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
            self.conv2 = torch.nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
            if stride != 1 or in_planes != planes:
                self.shortcut = torch.nn.Sequential(torch.nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

        def forward(self, x):
            out = torch.relu(self.bn1(x))
            shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
            return self.conv2(torch.relu(self.bn2(self.conv1(out)))) + shortcut

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        planes = [64, 128, 256, 512]
        for i, (p_in, p, stride) in enumerate(zip([64] + planes[:-1], planes, [1, 2, 2, 2]), start=1):
            setattr(self, f"layer{i}", torch.nn.Sequential(self.Block(p_in, p, stride), self.Block(p, p)))
        self.bn, self.linear = torch.nn.BatchNorm2d(512), torch.nn.Linear(512, 10)

    def forward(self, x):
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        out = torch.nn.functional.avg_pool2d(torch.relu(self.bn(out)), 4)
        return self.linear(out.flatten(1))


def test_preact_resnet18_loads_the_reference_weights_and_computes_the_same_function():
    torch.manual_seed(0)
    reference = ReferencePreActResNet18()
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):  # non-trivial statistics
                module.running_mean.uniform_(-0.5, 0.5), module.running_var.uniform_(0.5, 2)
                module.weight.uniform_(0.5, 1.5), module.bias.uniform_(-0.5, 0.5)
    model = PreActResNet18(in_shape=(3, 32, 32), num_classes=10, normalize=False)
    model.load_state_dict(reference.state_dict())  # strict: the same names and shapes
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        # float32 through 18 layers of convolutions with sums of up to 4608 terms, in another
        # association (shortcut order, fused batch norm): ~1e-5 relative accumulates
        torch.testing.assert_close(model.eval()(x), reference.eval()(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("kwargs", "field"), [({"in_shape": (64,)}, "in_shape"), ({"width": 0}, "width"),
                                               ({"normalize": "no"}, "normalize")])
def test_resnet_bad_options_name_the_field(kwargs, field):
    with pytest.raises(InvalidValue) as info:
        PreActResNet18(**{"in_shape": (3, 32, 32), "num_classes": 10, **kwargs})
    assert info.value.field == field


# ------------------------------------------------------------------------------------ end to end


def test_mlp_with_abs_batch_norm_and_dropout_runs_end_to_end(make_cfg, tmp_path):
    cfg = make_cfg("model=mlp", "model.activation=abs", "model.batch_norm=true", "model.dropout=0.1",
                   "optimizer.lr=0.01", *TINY, "attack.steps=2", "eval.epsilons=[0,0.05]")
    metrics = experiment.run(cfg, tmp_path)
    assert metrics["clean_accuracy"] > 0.5  # trained: well above chance (0.1)
    assert "certified_accuracy" not in metrics  # abs is not certifiable: auto skips it
    run = experiment.load_run(tmp_path)
    assert any(isinstance(m, Abs) for m in run.model.modules()) and not run.model.training


def test_binary_logreg_runs_end_to_end_with_exact_attack_and_certificate(make_cfg, tmp_path):
    cfg = make_cfg("model=logreg", "dataset.classes=[0,1]", "attack=linear_exact", "attack.norm=2",
                   "optimizer.lr=0.05", *[o for o in TINY if o != "eval.certify=false"], "eval.epsilons=[0,0.5,1]")
    metrics = experiment.run(cfg, tmp_path)
    assert metrics["clean_accuracy"] > 0.9
    weights = torch.load(tmp_path / "model.pt", weights_only=True)
    assert weights["1.weight"].shape == (1, 64)
    curve = pd.read_csv(tmp_path / "curve.csv")
    exact = curve[curve["attack"] == "linear_exact"].set_index("eps")["robust_accuracy"]
    certified = curve[curve["attack"] == "certified-hein"].set_index("eps")["robust_accuracy"]
    # a proven lower bound never exceeds the exact attack; both are k / N on the same N, read back
    # from CSV, so 1e-12 only absorbs the decimal round trip (~1e-16)
    assert (certified <= exact + 1e-12).all()
    run = experiment.load_run(tmp_path)
    assert run.model.binary and run.model(torch.rand(2, 1, 8, 8)).shape == (2, 2)


def test_a_last_batch_of_one_sample_joins_the_one_before_it_with_batch_norm(make_cfg, tmp_path):
    # 225 training samples in batches of 32: the eighth batch would hold one sample, which batch
    # norm cannot normalise in train mode; it joins the seventh batch instead (without batch norm
    # the batches stay as they are).
    assert batch_starts(225, 32, MLP(in_shape=(4,), num_classes=2, batch_norm=True))[-1] == 192
    assert batch_starts(225, 32, MLP(in_shape=(4,), num_classes=2))[-1] == 224
    metrics = experiment.run(make_cfg(*TINY, "dataset.n_train=225", "model.batch_norm=true", "attack=none"),
                             tmp_path / "run")
    assert metrics["n_train"] == 225 and metrics["clean_accuracy"] > 0.3
