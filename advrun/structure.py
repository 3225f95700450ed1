"""What a model is made of, read in one place for certification (:mod:`advrun.certify`), the
closed-form defenses (:mod:`advrun.defenses`), the exact linear attack
(:mod:`advrun.attacks.linear_exact`) and the figures of an affine model (:mod:`advrun.reporting.linear`).

* **Activations**: :data:`ACTIVATIONS`, the one table of the activation layers a model is built
  with (:func:`advrun.models.make_activation` builds from it), each with what certification needs
  of it: :class:`SmoothActivation`, the derivative ``sigma'``, its exact range over an interval
  and its Lipschitz constant, for the activations whose derivative does not jump.
* **Layers**: :func:`layer_sequence`, the layers a model applies one after the other, each of a
  kind (linear, convolution, activation, flatten, the normalisation layer, batch norm, dropout,
  pooling; ``block`` for a residual unit or any module whose insides it does not read), the input
  of any layer-by-layer certificate; :func:`split_at_activations` cuts that sequence at its
  activation layers, and :func:`one_hidden_layer` recognises ``[normalize] [flatten] linear,
  activation, linear``, whose input gradients have a closed form; :func:`has_batch_norm` (batch
  norm in train mode couples the samples of a batch).
* **Affine parts**: :func:`affine_map` reads ``(W, b)`` of ``model(x) = W x.flatten() + b`` off
  the model by autograd at :func:`probe_points` and checks that the model is affine there;
  :func:`affine_parameters` writes them as differentiable functions of the parameters (for
  training); :func:`logit_jacobian` is the input gradient of every logit.

The dual norm, which turns these weights into distances, lives with the other norms:
:func:`advrun.attacks.norms.dual_norm`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from advrun.attacks.base import eval_mode
from advrun.errors import InvalidValue

Range = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


# ----------------------------------------------------------------------------------- activations


class Abs(nn.Module):
    """``|x|``, elementwise (not differentiable at 0; torch takes the subgradient 0 there)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs()


@dataclass(frozen=True)
class SmoothActivation:
    """What the certificate needs of ``sigma``: ``derivative(t)``; ``derivative_range(lo, hi)``, the
    exact ``(min, max)`` of ``sigma'`` over ``[lo, hi]``; ``lipschitz``, the Lipschitz constant of
    ``sigma'`` away from ``jump``, the total size of its jumps (torch's softplus switches to the
    identity above ``threshold``, a jump of ``1 - sigmoid(threshold)``, about 2e-9)."""

    module: nn.Module
    derivative: Callable[[torch.Tensor], torch.Tensor]
    derivative_range: Range
    lipschitz: float
    jump: float = 0.0


def _peaked_at_zero(derivative: Callable[[torch.Tensor], torch.Tensor]) -> Range:
    """Range of a ``sigma'`` that increases up to 0 and decreases after (tanh, sigmoid)."""
    return lambda lo, hi: (torch.minimum(derivative(lo), derivative(hi)),
                           derivative(torch.minimum(hi, lo.clamp_min(0.0))))


def _increasing(derivative: Callable[[torch.Tensor], torch.Tensor]) -> Range:
    """Range of a non-decreasing ``sigma'`` (softplus, elu)."""
    return lambda lo, hi: (derivative(lo), derivative(hi))


def _tanh(module: nn.Module) -> SmoothActivation:
    slope = lambda t: 1 - torch.tanh(t) ** 2
    return SmoothActivation(module, slope, _peaked_at_zero(slope), 4 / (3 * math.sqrt(3)))


def _sigmoid(module: nn.Module) -> SmoothActivation:
    slope = lambda t: torch.sigmoid(t) * torch.sigmoid(-t)
    return SmoothActivation(module, slope, _peaked_at_zero(slope), 1 / (6 * math.sqrt(3)))


def _softplus(module: nn.Softplus) -> SmoothActivation:
    beta, threshold = float(module.beta), float(module.threshold)
    slope = lambda t: torch.where(beta * t > threshold, 1.0, torch.sigmoid(beta * t))
    return SmoothActivation(module, slope, _increasing(slope), beta / 4, jump=1 - 1 / (1 + math.exp(-threshold)))


def _elu(module: nn.ELU) -> SmoothActivation | None:
    """Smooth only with ``alpha = 1``: otherwise ``sigma'`` jumps from ``alpha`` to 1 at 0."""
    if float(module.alpha) != 1.0:
        return None
    slope = lambda t: torch.where(t > 0, 1.0, torch.exp(t.clamp_max(0.0)))
    return SmoothActivation(module, slope, _increasing(slope), 1.0)


def _jumps(module: nn.Module) -> None:
    """For the activations whose derivative jumps (relu, leaky relu, abs)."""
    return None


@dataclass(frozen=True)
class Activation:
    """An activation a model can be built with: its ``name`` in configs, its ``layer`` type,
    ``build(softplus_beta)`` (only softplus reads the sharpness), and ``smooth(layer)``, the
    :class:`SmoothActivation` of a built layer, or None where ``sigma'`` jumps."""

    name: str
    layer: type[nn.Module]
    build: Callable[[float], nn.Module]
    smooth: Callable[[nn.Module], SmoothActivation | None] = _jumps


#: The activations by name (softplus of sharpness ``beta``: ``(1 / beta) log(1 + exp(beta t))``).
ACTIVATIONS = {activation.name: activation for activation in (
    Activation("relu", nn.ReLU, lambda beta: nn.ReLU()),
    Activation("leaky_relu", nn.LeakyReLU, lambda beta: nn.LeakyReLU(0.1)),
    Activation("tanh", nn.Tanh, lambda beta: nn.Tanh(), _tanh),
    Activation("sigmoid", nn.Sigmoid, lambda beta: nn.Sigmoid(), _sigmoid),
    Activation("softplus", nn.Softplus, lambda beta: nn.Softplus(beta=beta), _softplus),
    Activation("elu", nn.ELU, lambda beta: nn.ELU(), _elu),
    Activation("abs", Abs, lambda beta: Abs()),
)}
#: The layer types of the activations; all act elementwise.
ACTIVATION_LAYERS = tuple(activation.layer for activation in ACTIVATIONS.values())


def activation_of(layer: nn.Module) -> Activation | None:
    """The entry of :data:`ACTIVATIONS` that ``layer`` is an instance of, None for any other layer."""
    return next((activation for activation in ACTIVATIONS.values() if isinstance(layer, activation.layer)), None)


# ----------------------------------------------------------------------------------------- layers

#: Batch norm layers: in train mode they normalise by the statistics of the batch, coupling its samples.
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
#: Layer kinds by torch layer type, in the order they are tried (advrun's own layers: :func:`layer_kind`).
_TORCH_KINDS: tuple[tuple[type[nn.Module] | tuple[type[nn.Module], ...], str], ...] = (
    (nn.Linear, "linear"),
    (nn.Conv2d, "conv"),
    (ACTIVATION_LAYERS, "activation"),
    (nn.Flatten, "flatten"),
    (BATCH_NORMS, "batch_norm"),
    (nn.Dropout, "dropout"),
    ((nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d), "pool"),
)


@dataclass(frozen=True)
class Layer:
    """One step of a feed-forward model: its ``name`` in ``model.named_modules()``, its ``kind``
    (:func:`layer_kind`) and the ``module`` itself."""

    name: str
    kind: str
    module: nn.Module


def layer_kind(module: nn.Module) -> str:
    """``normalize`` (:class:`advrun.models.Normalize`, ``(x - mean) / std`` per channel),
    ``binary_logits`` (one logit ``z`` to ``(0, z)``), ``linear``, ``conv``, ``activation``,
    ``flatten``, ``batch_norm`` (an affine map of its running statistics in eval mode),
    ``dropout`` (the identity in eval mode), ``pool``; ``block`` for anything else."""
    from advrun.models import BinaryLogits, Normalize  # not at the top: models imports ACTIVATIONS from here

    kinds = ((Normalize, "normalize"), (BinaryLogits, "binary_logits"), *_TORCH_KINDS)
    return next((kind for types, kind in kinds if isinstance(module, types)), "block")


def layer_sequence(model: nn.Module) -> list[Layer]:
    """The layers ``model`` applies one after the other, nested ``Sequential`` containers unrolled;
    any other module (a residual unit, a custom module) is one layer of kind ``block``, whose
    insides are not read. A certificate that goes layer by layer refuses a ``block``."""

    def unroll(module: nn.Module, name: str):
        if not isinstance(module, nn.Sequential):
            yield Layer(name, layer_kind(module), module)
            return
        # every entry, as Sequential.forward applies them: named_children() would skip a module that
        # appears twice (one ReLU object used after two layers), and the certificate would then be
        # of another network
        for child_name, child in module._modules.items():
            if child is not None:
                yield from unroll(child, f"{name}.{child_name}" if name else child_name)

    return list(unroll(model, ""))


def has_batch_norm(model: nn.Module) -> bool:
    """Whether any module of ``model``, blocks included, is a batch norm layer."""
    return any(isinstance(module, BATCH_NORMS) for module in model.modules())


@dataclass(frozen=True)
class ActivationSplit:
    """A model's :func:`layer_sequence` cut at its activation layers: ``pieces[i]`` holds the
    layers between activation ``i - 1`` and activation ``i`` (one piece more than activations);
    ``nested`` counts the activation layers inside blocks, where no cut is made."""

    pieces: list[list[Layer]]
    activations: list[Layer]
    nested: int


def split_at_activations(model: nn.Module) -> ActivationSplit:
    """The :class:`ActivationSplit` of ``model``."""
    pieces: list[list[Layer]] = [[]]
    activations: list[Layer] = []
    nested = 0
    for layer in layer_sequence(model):
        if layer.kind == "activation":
            activations.append(layer)
            pieces.append([])
            continue
        pieces[-1].append(layer)
        if layer.kind == "block":
            nested += sum(isinstance(module, ACTIVATION_LAYERS) for module in layer.module.modules())
    return ActivationSplit(pieces, activations, nested)


def as_module(layers: Sequence[Layer]) -> nn.Sequential:
    """The layers as one module that applies them in order."""
    return nn.Sequential(*(layer.module for layer in layers))


class DenseOneHiddenLayer(NamedTuple):
    """``last(activation(first(flatten(normalize(x)))))``; ``normalize`` may be None."""

    normalize: nn.Module | None
    first: nn.Linear
    activation: nn.Module
    last: nn.Linear


#: The layers :func:`one_hidden_layer` accepts before the activation.
_BEFORE_THE_HIDDEN_LAYER = (["linear"], ["flatten", "linear"], ["normalize", "linear"],
                            ["normalize", "flatten", "linear"])


def one_hidden_layer(model: nn.Module) -> DenseOneHiddenLayer | None:
    """The parts of a model whose layers are ``[normalize], [flatten], linear, activation,
    linear`` (``model=mlp model.hidden=[h]``, no batch norm or dropout), else None."""
    split = split_at_activations(model)
    if split.nested or len(split.activations) != 1:
        return None
    before, after = split.pieces
    kinds = [layer.kind for layer in before]
    if kinds not in _BEFORE_THE_HIDDEN_LAYER or [layer.kind for layer in after] != ["linear"]:
        return None
    normalize = before[0].module if kinds[0] == "normalize" else None
    return DenseOneHiddenLayer(normalize, before[-1].module, split.activations[0].module, after[0].module)


# ----------------------------------------------------------------------------------- affine parts


def parameter_like(model: nn.Module) -> torch.Tensor:
    """A tensor of the dtype and device of the model's parameters (float32 on the CPU without any)."""
    parameter = next(model.parameters(), None)
    return parameter.detach() if parameter is not None else torch.zeros(())


def probe_points(in_shape: Sequence[int], like: torch.Tensor, first: torch.Tensor | None = None) -> torch.Tensor:
    """The inputs at which a model is read: ``first`` (when given) and five fixed points of shape
    ``in_shape``, three uniform in [0, 1] and two standard normal, with the dtype and device of
    ``like``. The fixed points come from their own generator: reading a model never moves the
    global random state, and reads it at the same points every time."""
    generator = torch.Generator().manual_seed(0)
    fixed = torch.cat([torch.rand((3, *in_shape), generator=generator),
                       torch.randn((2, *in_shape), generator=generator)]).to(like)
    return fixed if first is None else torch.cat([first.detach().to(like), fixed])


def logit_jacobian(model: nn.Module, x: torch.Tensor, create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits at ``x`` and their input gradients ``(n, classes, features)``, one backward pass
    per class (``create_graph``: differentiable in the parameters, for a training loss). Assumes
    samples do not interact (no batch norm in train mode)."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    rows = [torch.autograd.grad(logits[:, k].sum(), x, retain_graph=True, create_graph=create_graph)[0].flatten(1)
            for k in range(logits.shape[1])]
    return logits, torch.stack(rows, dim=1)


def affine_map(model: nn.Module, probes: torch.Tensor, rtol: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, b)`` with ``model(x) = W x.flatten() + b``, read off the Jacobian (autograd) at
    ``probes[0]``; raise :class:`InvalidValue` (field ``_target_``) unless the model is affine at
    every probe. A binary ``logreg`` (one logit ``z``, logits ``(0, z)``) reads as ``W = [[0], [w]]``,
    the two-logit model with ``w_1 - w_0 = w``. Call it in eval mode (batch norm and dropout are
    affine only there)."""
    logits, jacobians = logit_jacobian(model, probes)
    logits = logits.detach()
    weight = jacobians[0]
    bias = logits[0] - weight @ probes[0].detach().flatten()
    predicted = probes.detach().flatten(1) @ weight.T + bias
    jacobian_gap = (jacobians - weight).abs().max().item()
    value_gap = (predicted - logits).abs().max().item()
    if jacobian_gap > rtol * weight.abs().max().item() + 1e-6 or value_gap > rtol * (logits.abs().max().item() + 1):
        raise InvalidValue("_target_", f"{type(model).__name__}'s logits are not an affine function of the input "
                                       f"(its Jacobian changes by {jacobian_gap:.3g} between inputs)")
    return weight, bias


def check_affine(model: nn.Module, in_shape: Sequence[int]) -> None:
    """Raise :class:`InvalidValue` (field ``_target_``) unless ``model`` in eval mode (no batch
    statistics, no dropout) is affine in its inputs of shape ``in_shape`` (:func:`affine_map`)."""
    with eval_mode(model), torch.enable_grad():
        affine_map(model, probe_points(in_shape, parameter_like(model)))


def affine_parameters(model: nn.Module, in_shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, b)`` of an affine model ``model(x) = W x.flatten() + b``, as differentiable functions
    of its parameters: ``b = model(0)`` and column ``i`` of ``W`` is ``model(e_i) - b``.
    Meaningful only for affine models (see :func:`check_affine`)."""
    d = math.prod(in_shape)
    inputs = torch.cat([torch.zeros(1, d), torch.eye(d)]).to(parameter_like(model)).reshape(d + 1, *in_shape)
    out = model(inputs)
    return (out[1:] - out[0]).T, out[0]
