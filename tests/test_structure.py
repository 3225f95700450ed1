"""Reading a model's structure (advrun.structure): the layer sequence of every model in the menu,
the activation table against finite differences, affine maps against hand-built affine models,
and probe points."""

import math

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from advrun.config import config_dir
from advrun.errors import InvalidValue
from advrun.models import MLP, LogReg, Normalize, make_activation
from advrun.structure import (
    ACTIVATION_LAYERS, ACTIVATIONS, Abs, activation_of, affine_map, affine_parameters, check_affine, has_batch_norm,
    layer_sequence, logit_jacobian, one_hidden_layer, parameter_like, probe_points, split_at_activations,
)
from tests.conftest import groups

pytestmark = pytest.mark.usefixtures("one_thread")

# Comparisons without stated tolerances use the defaults, a few ulps: torch.testing.assert_close
# (float32 rtol 1.3e-6, atol 1e-5; float64 rtol 1e-7, atol 1e-7) and pytest.approx (rel 1e-6).
# They compare one float computation with the same one in another order or another formula.

MNIST = (1, 28, 28)
#: The layer kinds of each model of conf/model with its defaults (resnet: two blocks per stage).
MENU = {
    "cnn": ["normalize", "conv", "activation", "pool", "conv", "activation", "pool", "flatten", "linear",
            "activation", "linear"],
    "logreg": ["flatten", "linear"],
    "mlp": ["normalize", "flatten", "linear", "activation", "linear", "activation", "linear"],
    "resnet": ["normalize", "conv", *["block"] * 8, "batch_norm", "activation", "pool", "flatten", "linear"],
    "wong_mnist": ["conv", "activation", "conv", "activation", "flatten", "linear", "activation", "linear"],
    "exported": ["block"],  # a program brought as a file is one opaque block
    "torchvision": ["normalize", "block", "block"],  # grey images repeated into 3 channels, then the network
    "kernel": ["flatten", "block", "linear"],  # the Gaussian features are one block (certified by hein, not by layers)
}


def menu_model(name: str, **options) -> nn.Module:
    """The model ``conf/model/<name>.yaml`` builds for MNIST-shaped inputs and ten classes
    (``exported``: a TorchScript file of a small dense network)."""
    import tempfile
    import warnings

    node = OmegaConf.load(config_dir() / "model" / f"{name}.yaml")
    if name == "exported" and "path" not in options:
        with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still supported
            path = f"{folder}/net.ts"
            torch.jit.save(torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(784, 10))), path)
            return instantiate(node, in_shape=list(MNIST), num_classes=10, path=path)
    return instantiate(node, in_shape=list(MNIST), num_classes=10, **options)


def kinds(model: nn.Module) -> list[str]:
    return [layer.kind for layer in layer_sequence(model)]


# ---------------------------------------------------------------------------------------- layers


def test_every_model_of_the_menu_has_an_expected_layer_sequence():
    assert sorted(MENU) == groups()["model"]  # a new model in the menu says what it is made of


@pytest.mark.parametrize("name", sorted(MENU))
def test_layer_sequence_of_each_model_in_the_menu(name):
    model = menu_model(name, **({"width": 2} if name == "resnet" else {})).eval()
    layers = layer_sequence(model)
    assert [layer.kind for layer in layers] == MENU[name]
    for layer in layers:  # each is the model's own module, under its own name
        assert model.get_submodule(layer.name) is layer.module
    with torch.no_grad():  # applied one after the other, the layers (blocks included) are the model
        x = torch.rand(2, *MNIST)
        out = x
        for layer in layers:
            out = layer.module(out)
        torch.testing.assert_close(out, model(x))


def test_regularisers_binary_logits_and_nested_containers_are_read():
    mlp = MLP(MNIST, 10, hidden=[8], activation="tanh", batch_norm=True, dropout=0.5)
    assert kinds(mlp) == ["normalize", "flatten", "linear", "batch_norm", "activation", "dropout", "linear"]
    assert kinds(LogReg(MNIST, 2, binary=True)) == ["flatten", "linear", "binary_logits"]
    nested = nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(4, 3), nn.Tanh()), nn.Linear(3, 2))
    assert [(layer.name, layer.kind) for layer in layer_sequence(nested)] == [
        ("0", "flatten"), ("1.0", "linear"), ("1.1", "activation"), ("2", "linear")]
    assert kinds(nn.Linear(4, 2)) == ["linear"] and kinds(nn.Softmax(dim=1)) == ["block"]
    shared = nn.ReLU()  # one module applied twice by Sequential.forward: read twice
    assert kinds(nn.Sequential(nn.Linear(4, 4), shared, nn.Linear(4, 4), shared)) == [
        "linear", "activation", "linear", "activation"]


def test_batch_norm_is_found_also_inside_blocks():
    assert has_batch_norm(MLP(MNIST, 10, hidden=[8], batch_norm=True))
    assert has_batch_norm(menu_model("cnn", batch_norm=True)) and has_batch_norm(menu_model("resnet", width=2))
    assert not any(has_batch_norm(menu_model(name)) for name in ("cnn", "logreg", "mlp", "wong_mnist"))


def test_split_at_activations_counts_the_activations_inside_blocks():
    split = split_at_activations(menu_model("resnet", width=2))
    assert len(split.activations) == 1 and split.nested == 16  # two ReLUs in each of the eight blocks
    split = split_at_activations(menu_model("mlp"))
    assert split.nested == 0 and [len(piece) for piece in split.pieces] == [3, 1, 1]


def test_one_hidden_layer_recognises_only_linear_activation_linear():
    model = MLP(MNIST, 10, hidden=[8], activation="softplus")
    parts = one_hidden_layer(model)
    assert parts == (model[0], model[2], model[3], model[4])
    plain = nn.Sequential(nn.Linear(4, 3), nn.ELU(), nn.Linear(3, 2))
    assert one_hidden_layer(plain) == (None, plain[0], plain[1], plain[2])
    for other in (MLP(MNIST, 10, hidden=[8, 8]), MLP(MNIST, 10, hidden=[8], batch_norm=True),
                  MLP(MNIST, 10, hidden=[8], dropout=0.5), nn.Sequential(nn.Flatten(), nn.Linear(784, 10)),
                  LogReg(MNIST, 10),
                  menu_model("cnn"), menu_model("wong_mnist"), menu_model("resnet", width=2)):
        assert one_hidden_layer(other) is None, type(other).__name__


# ----------------------------------------------------------------------------------- activations


def test_the_activation_table_builds_and_recognises_each_layer():
    for name, activation in ACTIVATIONS.items():
        layer = make_activation(name, softplus_beta=2.0)
        assert isinstance(layer, activation.layer) and activation_of(layer) is activation
    assert activation_of(nn.Softmax(dim=1)) is None and activation_of(nn.Linear(2, 2)) is None
    assert Abs in ACTIVATION_LAYERS and make_activation("softplus", 2.0).beta == 2.0


@pytest.mark.parametrize(("layer", "largest_curvature"), [
    (nn.Tanh(), 4 / (3 * math.sqrt(3))), (nn.Sigmoid(), 1 / (6 * math.sqrt(3))), (nn.Softplus(), 1 / 4),
    (nn.Softplus(beta=3.0), 3 / 4), (nn.ELU(), 1.0),
])
def test_the_lipschitz_constant_of_each_smooth_derivative_is_its_largest_curvature(layer, largest_curvature):
    """max |sigma''| by central differences on a fine grid (float64) is the table's constant."""
    smooth = activation_of(layer).smooth(layer)
    assert smooth.lipschitz == pytest.approx(largest_curvature)
    t = torch.linspace(-6, 6, 120001, dtype=torch.float64)
    h = (t[1] - t[0]).item()
    second = (layer(t[2:]) - 2 * layer(t[1:-1]) + layer(t[:-2])) / h**2
    # Mostly the grid, not float error: ELU's largest curvature sits at its kink t -> 0-, which the
    # stencil reaches only to ~h = 1e-4 relative; float64 rounding is 4 eps64 |sigma| / h^2 ~1e-7.
    assert second.abs().max().item() == pytest.approx(largest_curvature, rel=1e-3)


@pytest.mark.parametrize("layer", [nn.ReLU(), nn.LeakyReLU(0.1), Abs(), nn.ELU(alpha=0.5)])
def test_activations_whose_derivative_jumps_have_no_smooth_description(layer):
    assert activation_of(layer).smooth(layer) is None


# ---------------------------------------------------------------------------------- affine parts


def test_probe_points_are_fixed_and_leave_the_global_random_state_alone():
    like = torch.zeros((), dtype=torch.float64)
    state = torch.get_rng_state()
    first = probe_points((3, 4), like)
    assert torch.equal(torch.get_rng_state(), state)
    assert first.shape == (5, 3, 4) and first.dtype == torch.float64
    torch.rand(10)  # moving the global state does not move the probes
    assert torch.equal(probe_points((3, 4), like), first)
    x = torch.rand(2, 3, 4)
    with_x = probe_points((3, 4), like, first=x)
    assert torch.equal(with_x[:2], x.double()) and torch.equal(with_x[2:], first)
    assert (first[:3] >= 0).all() and (first[:3] <= 1).all() and (first[3:] < 0).any()


def hand_built_affine(generator: torch.Generator) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A normalisation layer, flatten and linear layer with known ``W, b``: the model is
    ``W ((x - mean) / std) + b``, i.e. ``(W / std) x + (b - (W / std) mean)``."""
    normalize = Normalize(2, image=True)
    normalize.mean.copy_(torch.tensor([0.3, 0.6]).view(1, 2, 1, 1))
    normalize.std.copy_(torch.tensor([0.5, 2.0]).view(1, 2, 1, 1))
    linear = nn.Linear(2 * 3 * 3, 4)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(4, 18, generator=generator))
        linear.bias.copy_(torch.randn(4, generator=generator))
    scale = normalize.std.expand(1, 2, 3, 3).flatten()
    shift = normalize.mean.expand(1, 2, 3, 3).flatten()
    weight = linear.weight.detach() / scale
    return nn.Sequential(normalize, nn.Flatten(), linear), weight, linear.bias.detach() - weight @ shift


def test_affine_map_reads_a_hand_built_affine_model():
    model, weight, bias = hand_built_affine(torch.Generator().manual_seed(3))
    found_weight, found_bias = affine_map(model, probe_points((2, 3, 3), weight))
    torch.testing.assert_close(found_weight, weight)  # float32 rounding of one division (default tolerance)
    torch.testing.assert_close(found_bias, bias)
    differentiable = affine_parameters(model, (2, 3, 3))  # the same map, as functions of the parameters
    torch.testing.assert_close(differentiable[0], weight)
    torch.testing.assert_close(differentiable[1], bias)
    check_affine(model, (2, 3, 3))


def test_a_binary_logistic_regression_reads_as_the_two_logit_model():
    model = LogReg((6,), 2, binary=True)
    weight, bias = affine_map(model, probe_points((6,), parameter_like(model)))
    linear = model[1]
    torch.testing.assert_close(weight, torch.stack([torch.zeros(6), linear.weight[0].detach()]))
    torch.testing.assert_close(bias, torch.stack([torch.zeros(()), linear.bias[0].detach()]))


@pytest.mark.parametrize("activation", ["relu", "tanh", "abs"])
def test_affine_map_refuses_a_network_with_an_activation(activation):
    model = MLP((6,), 3, hidden=[16], activation=activation)
    with pytest.raises(InvalidValue, match="not an affine function of the input") as info:
        check_affine(model, (6,))
    assert info.value.field == "_target_"


def test_batch_norm_and_dropout_are_affine_in_eval_mode_only():
    model = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 3)).train()
    check_affine(model, (6,))  # read in eval mode, whatever mode the model is in
    assert model.training
    with pytest.raises(InvalidValue):  # in train mode: batch statistics and random masks
        affine_map(model, probe_points((6,), parameter_like(model)))


def test_logit_jacobian_is_the_jacobian_of_the_logits():
    model = MLP((5,), 3, hidden=[7], activation="tanh")
    x = torch.rand(4, 5)
    logits, jacobian = logit_jacobian(model, x)
    torch.testing.assert_close(logits, model(x))
    for i in range(len(x)):
        expected = torch.autograd.functional.jacobian(model, x[i : i + 1])[0, :, 0]
        torch.testing.assert_close(jacobian[i], expected)


def test_parameter_like_takes_the_models_dtype():
    assert parameter_like(nn.Linear(2, 2).double()).dtype == torch.float64
    assert parameter_like(nn.Flatten()).dtype == torch.float32
