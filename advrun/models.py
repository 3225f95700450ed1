"""Models. Inputs lie in the data bounds (usually [0, 1]); normalisation is a layer inside.

Each constructor takes the input shape and number of classes (filled in by the runner
from the data set) plus the options of its ``conf/model/*.yaml``.

Batch norm (Ioffe & Szegedy 2015, "Batch normalization", Algorithm 1) sits between each
hidden affine map and its activation, as in the paper (section 3.2; the affine map then drops
its bias, which the norm's shift replaces); dropout (Srivastava et al. 2014, "Dropout", eq. 2
with inverted scaling by ``1 / (1 - p)`` in training) follows the activation of each dense
hidden layer. Training runs in train mode (batch statistics, random masks); attacks,
evaluation and certification run in eval mode, where batch norm is the fixed affine map of
its running statistics and dropout is the identity.

A Gaussian-kernel machine (:class:`KernelMachine`, ``model=kernel``) takes its centres from the
training images in ``fit_normalization``, the hook that fits the normalisation of the others.

Models can also come without code: a file saved by ``torch.export.save`` or ``torch.jit.save``
(:class:`Exported`, ``model=exported``), checked against the data set's shape and classes, or
a torchvision classification architecture by name (:class:`TorchVision`, ``model=torchvision``).
"""

from __future__ import annotations

import math
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from advrun.errors import Choice, InvalidValue, Number, Switch, require_int, require_positive, shown
from advrun.structure import ACTIVATIONS


def make_activation(name: str, softplus_beta: float = 1.0) -> nn.Module:
    """The activation layer called ``name``; an unknown name lists the valid ones.

    ``softplus_beta`` is the sharpness of softplus, ``(1 / beta) log(1 + exp(beta x))`` (torch's
    ``nn.Softplus``; it tends to relu as beta grows); the other activations ignore it."""
    Choice(tuple(sorted(ACTIVATIONS)), "unknown activation").check("activation", name)
    require_positive("softplus_beta", softplus_beta)
    return ACTIVATIONS[name].build(softplus_beta)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, with the statistics stored in the ``state_dict``."""

    def __init__(self, channels: int, image: bool):
        super().__init__()
        shape = (1, channels, 1, 1) if image else (1, channels)
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("std", torch.ones(shape))

    def set_statistics(self, x: torch.Tensor) -> None:
        """Set mean and std per channel from training inputs ``x``."""
        dims = [0, 2, 3] if x.dim() == 4 else [0]
        self.mean.copy_(x.mean(dim=dims).reshape(self.mean.shape))
        self.std.copy_(x.std(dim=dims).clamp_min(1e-3).reshape(self.std.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Sequential):
    """A ``Sequential`` whose first layer may be :class:`Normalize`; outputs are logits."""

    def fit_normalization(self, x_train: torch.Tensor) -> None:
        if isinstance(self[0], Normalize):
            self[0].set_statistics(x_train)


def _check_shape(in_shape: Sequence[int], num_classes: int) -> None:
    if len(in_shape) not in (1, 3):
        raise InvalidValue("in_shape", f"expected (features,) or (channels, height, width), got {tuple(in_shape)}")
    require_int("num_classes", num_classes, minimum=2)


def _normalize_layer(in_shape: Sequence[int], normalize: bool) -> list[nn.Module]:
    Switch().check("normalize", normalize)
    return [Normalize(in_shape[0], image=len(in_shape) == 3)] if normalize else []


def _check_regularisers(batch_norm: bool, dropout: float) -> None:
    Switch().check("batch_norm", batch_norm)
    Number(0, 1, high_open=True, what="a probability in [0, 1)").check("dropout", dropout)


def _widths(field: str, value: object, layers: str, instead: str) -> list:
    """A non-empty list of layer widths, each an integer >= 1 (a network without the layers its
    name promises is another model: ``instead``)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise InvalidValue(field, f"must be a list of layer widths such as [128, 128], got {shown(value)}")
    if not value:
        raise InvalidValue(field, f"must list at least one {layers} width, got []; {instead}")
    for width in value:
        require_int(field, width, minimum=1)
    return list(value)


def _hidden_dense(width_in: int, width: int, activation: nn.Module, batch_norm: bool, dropout: float) -> list[nn.Module]:
    """``Linear [-> BatchNorm1d] -> activation [-> Dropout]``."""
    layers: list[nn.Module] = [nn.Linear(width_in, width, bias=not batch_norm)]
    layers += [nn.BatchNorm1d(width)] if batch_norm else []
    layers.append(activation)
    layers += [nn.Dropout(dropout)] if dropout > 0 else []
    return layers


class BinaryLogits(nn.Module):
    """Maps one logit ``z`` (shape ``[N, 1]``) to the two logits ``(0, z)`` (shape ``[N, 2]``).

    The cross-entropy of ``(0, z)`` is the logistic loss ``log(1 + exp(-s z))`` with ``s = +1``
    for class 1 and ``-1`` for class 0, and ``argmax`` is the sign of ``z`` (class 0 on a tie):
    a binary classifier with one weight vector that every attack and metric reads as two classes."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(z), z], dim=1)


class LogReg(Classifier):
    """Logistic regression, one affine map from pixels to logits.

    Multinomial (softmax) regression ``z = W x + b`` with one row of ``W`` per class; or, with
    ``binary`` (``true``, or ``auto`` with two classes), the binary logistic regression of
    Cox 1958 with ONE weight vector: ``z = w . x + b`` and logits ``(0, z)``
    (:class:`BinaryLogits`), trained by the cross-entropy, which is then the logistic loss. Its
    ``state_dict`` holds a ``(1, d)`` weight, readable as one image; the softmax model with two
    classes is the same family over-parametrised (only ``w_1 - w_0`` matters).
    ``binary: false`` (the constructor's default) always keeps one logit per class.
    """

    def __init__(self, in_shape: Sequence[int], num_classes: int, normalize: bool = False,
                 binary: bool | str = False):
        _check_shape(in_shape, num_classes)
        if not (isinstance(binary, bool) or binary == "auto"):
            raise InvalidValue("binary", f"must be auto, true or false, got {binary!r}")
        if binary is True and num_classes != 2:
            raise InvalidValue("binary", f"one logit needs exactly two classes, got {num_classes}; "
                                         f"use binary=auto or false")
        self.binary = num_classes == 2 and binary in (True, "auto")
        head = [nn.Linear(math.prod(in_shape), 1), BinaryLogits()] if self.binary else \
            [nn.Linear(math.prod(in_shape), num_classes)]
        super().__init__(*_normalize_layer(in_shape, normalize), nn.Flatten(), *head)


class MLP(Classifier):
    """Fully connected network: ``hidden`` layer widths, each followed by ``activation`` (with
    optional batch norm before it and dropout after it, module docstring)."""

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (128, 128),
        activation: str = "relu",
        normalize: bool = True,
        softplus_beta: float = 1.0,
        batch_norm: bool = False,
        dropout: float = 0.0,
    ):
        _check_shape(in_shape, num_classes)
        _check_regularisers(batch_norm, dropout)
        hidden = _widths("hidden", hidden, "hidden layer", "an MLP without hidden layers is the affine model=logreg")
        layers: list[nn.Module] = [*_normalize_layer(in_shape, normalize), nn.Flatten()]
        width_in = math.prod(in_shape)
        for width in hidden:
            layers += _hidden_dense(width_in, width, make_activation(activation, softplus_beta), batch_norm, dropout)
            width_in = width
        layers.append(nn.Linear(width_in, num_classes))
        super().__init__(*layers)


class CNN(Classifier):
    """LeNet-style network: per entry of ``channels`` a 3x3 convolution [+ batch norm] +
    activation + 2x2 max-pool; then one hidden dense layer [+ batch norm] + activation
    [+ dropout] (module docstring)."""

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (16, 32),
        hidden: int = 128,
        activation: str = "relu",
        normalize: bool = True,
        softplus_beta: float = 1.0,
        batch_norm: bool = False,
        dropout: float = 0.0,
    ):
        _check_shape(in_shape, num_classes)
        if len(in_shape) != 3:
            raise InvalidValue("in_shape", f"cnn needs image inputs (channels, height, width), got {tuple(in_shape)}")
        _check_regularisers(batch_norm, dropout)
        channels = _widths("channels", channels, "convolution block",
                           "a network without convolutions is model=mlp")
        require_int("hidden", hidden, minimum=1)
        make_activation(activation, softplus_beta)
        c, h, w = in_shape
        layers: list[nn.Module] = list(_normalize_layer(in_shape, normalize))
        for width in channels:
            if h < 2 or w < 2:
                raise InvalidValue("channels", f"{len(channels)} pooling blocks are too many for {tuple(in_shape)} inputs")
            layers.append(nn.Conv2d(c, width, 3, padding=1, bias=not batch_norm))
            layers += [nn.BatchNorm2d(width)] if batch_norm else []
            layers += [make_activation(activation, softplus_beta), nn.MaxPool2d(2)]
            c, h, w = width, h // 2, w // 2
        layers.append(nn.Flatten())
        layers += _hidden_dense(c * h * w, hidden, make_activation(activation, softplus_beta), batch_norm, dropout)
        layers.append(nn.Linear(hidden, num_classes))
        super().__init__(*layers)


class PreActBlock(nn.Module):
    """The pre-activation residual unit of He et al. 2016 ("Identity mappings in deep residual
    networks", Fig. 1(b) and 4(e)): ``x + conv(relu(bn(conv(relu(bn(x))))))``, two 3x3
    convolutions; where the shape changes the shortcut is a strided 1x1 convolution of the
    activated input. Layer names follow the CIFAR code of Kuang Liu / Rice et al. 2020."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.relu2(self.bn2(out)))
        return out + shortcut


class PreActResNet18(Classifier):
    """PreActResNet-18 for CIFAR-10 (He et al. 2016, "Identity mappings in deep residual
    networks"; the CIFAR variant of the adversarial-training literature, e.g. Rice, Wong &
    Kolter 2020, "Overfitting in adversarially robust deep learning"): a 3x3 stem convolution,
    four stages of two :class:`PreActBlock` each with ``width * (1, 2, 4, 8)`` channels (64,
    128, 256, 512 by default; stride 2 at the start of stages 2-4), a final batch norm + ReLU
    (the paper's extra activation after the last addition), global average pooling and a
    linear layer: about 11.2M parameters at width 64. Meant for a GPU; ``width`` scales it down.

    Layers are named as in the widely used CIFAR code (Kuang Liu's, kept by Rice et al.:
    ``conv1``, ``layer1`` ... ``layer4``, ``bn``, ``linear``) after ``normalize``: with
    ``normalize=False`` a ``state_dict`` of that code loads as is (it normalises outside the model).
    """

    def __init__(self, in_shape: Sequence[int], num_classes: int, width: int = 64, normalize: bool = True):
        _check_shape(in_shape, num_classes)
        if len(in_shape) != 3:
            raise InvalidValue("in_shape", f"resnet needs image inputs (channels, height, width), got {tuple(in_shape)}")
        require_int("width", width, minimum=1)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        if normalize := _normalize_layer(in_shape, normalize):
            layers["normalize"] = normalize[0]
        layers["conv1"] = nn.Conv2d(in_shape[0], width, 3, stride=1, padding=1, bias=False)
        planes_in = width
        for stage, (factor, stride) in enumerate(zip((1, 2, 4, 8), (1, 2, 2, 2)), start=1):
            planes = width * factor
            layers[f"layer{stage}"] = nn.Sequential(PreActBlock(planes_in, planes, stride), PreActBlock(planes, planes))
            planes_in = planes
        layers["bn"] = nn.BatchNorm2d(planes_in)
        layers["relu"] = nn.ReLU()
        layers["pool"] = nn.AdaptiveAvgPool2d(1)
        layers["flatten"] = nn.Flatten()
        layers["linear"] = nn.Linear(planes_in, num_classes)
        super().__init__(layers)


class WongMNIST(Classifier):
    """The MNIST network of Wong, Rice & Kolter 2020 ("Fast is better than free"), whose published
    weights are in ``../shared/reference-models``: two stride-2 4x4 convolutions (16, 32
    channels), a 100-unit dense layer, ReLU; inputs in [0, 1] without normalisation.

    The layer indices match the authors' ``nn.Sequential``, so their ``state_dict`` loads as is.
    """

    def __init__(self, in_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10):
        if tuple(in_shape) != (1, 28, 28) or num_classes != 10:
            raise InvalidValue("in_shape", f"wong_mnist is built for (1, 28, 28) inputs and 10 classes, "
                                           f"got {tuple(in_shape)} and {num_classes}")
        super().__init__(
            nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, 100), nn.ReLU(),
            nn.Linear(100, 10),
        )


class GaussianFeatures(nn.Module):
    """The Gaussian (RBF) kernel of flat inputs with each centre: ``exp(-gamma ||x - c_i||^2)``,
    one feature per row of ``centres`` ``(N, d)``. Centres and ``gamma`` are buffers (in the
    ``state_dict``, not trained), set by :meth:`KernelMachine.fit_normalization`."""

    def __init__(self, features: int, count: int):
        super().__init__()
        self.register_buffer("centres", torch.zeros(count, features))
        self.register_buffer("gamma", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.centres
        squared = (x * x).sum(dim=1, keepdim=True) - 2 * x @ c.T + (c * c).sum(dim=1)
        return torch.exp(-self.gamma * squared.clamp_min(0.0))


class KernelMachine(Classifier):
    """A Gaussian-kernel machine, ``f_k(x) = sum_i alpha_ki exp(-gamma ||x - c_i||^2) + b_k``
    (Hein & Andriushchenko 2017, section 2.1; the form of a kernel SVM's decision function): the
    layers ``Flatten``, :class:`GaussianFeatures`, ``Linear`` (``alpha`` is its weight, ``b`` its
    bias), trained by the run's optimizer and loss, so weight decay acts on ``alpha`` and a
    defense such as cross-Lipschitz regularisation applies as to any model.

    ``centres`` training images, drawn without replacement with the run's seed
    (``torch.initial_seed()``, its own generator: the global random state does not move), are the
    ``c_i``, on the raw inputs (no normalisation layer: distances in the data's own scale, the
    scale of the perturbations). ``gamma: auto`` is ``1 / (d Var(x_train))`` over all pixels of
    the training set (scikit-learn's ``gamma="scale"``). Both are buffers, so a saved model
    reloads with its own centres and ``gamma``. Certified by ``eval.certify=hein``
    (:mod:`advrun.certify`)."""

    def __init__(self, in_shape: Sequence[int], num_classes: int, centres: int = 500, gamma: float | str = "auto"):
        _check_shape(in_shape, num_classes)
        require_int("centres", centres, minimum=1)
        if gamma != "auto":
            require_positive("gamma", gamma, hint=" or auto (1 / (d Var(x_train)))")
        features = math.prod(in_shape)
        super().__init__(nn.Flatten(), GaussianFeatures(features, centres), nn.Linear(centres, num_classes))
        self.gamma_option = gamma
        if gamma != "auto":
            self.kernel.gamma.fill_(float(gamma))

    @property
    def kernel(self) -> GaussianFeatures:
        return self[1]

    @property
    def head(self) -> nn.Linear:
        return self[2]

    def fit_normalization(self, x_train: torch.Tensor) -> None:
        """Draw the centres from the training inputs ``x_train`` (and fit ``gamma: auto``)."""
        count = len(self.kernel.centres)
        if count > len(x_train):
            raise InvalidValue("centres", f"asks for {count} training images as centres; the training set has "
                                          f"{len(x_train)}")
        generator = torch.Generator().manual_seed(torch.initial_seed())
        chosen = torch.randperm(len(x_train), generator=generator)[:count]
        flat = x_train.flatten(1)
        self.kernel.centres.copy_(flat[chosen.to(flat.device)])
        if self.gamma_option == "auto":
            spread = float(flat.double().var()) * flat.shape[1]
            if not spread > 0:
                raise InvalidValue("gamma", "auto needs training inputs that vary (Var(x_train) is 0); give a number")
            self.kernel.gamma.fill_(1.0 / spread)


# ------------------------------------------------------------------ models brought as files or by name


def _first_line(error: BaseException) -> str:
    """The error in one line; for TorchScript's (a stack of frames) its last line, the cause."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if "TorchScript interpreter" in lines[0]:
        return lines[-1]
    return f"{type(error).__name__}: {lines[0]}"


def exported_format(path: Any) -> tuple[Path, str]:
    """The file ``path`` names and its format, ``"exported"`` (``torch.export.save``, a ``.pt2``
    archive) or ``"torchscript"`` (``torch.jit.save``), read from the archive's table of contents
    (both are zip archives): nothing is loaded. Anything else is an error naming ``model.path``."""
    if not isinstance(path, (str, Path)) or not str(path):
        raise InvalidValue("path", f"must name a .pt2 file (torch.export.save) or a TorchScript file "
                                   f"(torch.jit.save), got {shown(path)}")
    file = Path(path).expanduser()
    try:
        if not file.is_file():
            raise InvalidValue("path", f"{file} does not exist" if not file.exists() else f"{file} is not a regular file")
        with zipfile.ZipFile(file) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        detail = "" if isinstance(e, zipfile.BadZipFile) else f" ({e.strerror or type(e).__name__})"
        raise InvalidValue("path", f"{file} cannot be read as an exported program (.pt2, torch.export.save) or a "
                                   f"TorchScript file (torch.jit.save){detail}") from None
    entries = {name.split("/", 1)[-1] for name in names}
    if "archive_format" in entries:
        return file, "exported"
    if "constants.pkl" in entries and any(name.startswith("code/") for name in entries):
        return file, "torchscript"
    if "data.pkl" in entries:
        raise InvalidValue("path", f"{file} was saved with torch.save (a state_dict or a pickled model), not "
                                   f"exported: save it with torch.export.save or torch.jit.save (a state_dict "
                                   f"of one of advrun's models loads with model.checkpoint)")
    raise InvalidValue("path", f"{file} is a zip archive but neither an exported program (.pt2, "
                               f"torch.export.save) nor a TorchScript file (torch.jit.save)")


def _exported_input(program: Any, file: Path, in_shape: Sequence[int]) -> None:
    """An ExportedProgram takes one tensor of shape ``(batch, *in_shape)`` with a free batch size."""
    from torch.export.graph_signature import InputKind

    inputs = [spec.arg.name for spec in program.graph_signature.input_specs if spec.kind == InputKind.USER_INPUT]
    if len(inputs) != 1:
        raise InvalidValue("path", f"{file} takes {len(inputs)} inputs; advrun gives a classifier one batch of inputs")
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == inputs[0])
    value = node.meta.get("val")
    if value is None:
        return  # no recorded shape: the probe in Exported decides
    shape = tuple(value.shape)
    if len(shape) != len(in_shape) + 1 or any(int(a) != b for a, b in zip(shape[1:], in_shape)
                                               if isinstance(a, int)):
        shown_shape = ", ".join(str(a) if isinstance(a, int) else "batch" if i == 0 else "any"
                                for i, a in enumerate(shape))
        raise InvalidValue("path", f"{file} takes inputs of shape ({shown_shape}); the data set's are "
                                   f"(batch, {', '.join(map(str, in_shape))})")
    if isinstance(shape[0], int):
        raise InvalidValue("path", f"{file} was exported for batches of exactly {shape[0]} inputs; export it with a "
                                   f"free batch size: torch.export.export(model, (x,), dynamic_shapes="
                                   f"({{0: torch.export.Dim('batch')}},))")


class Exported(Classifier):
    """A classifier brought as a file (``model=exported model.path=FILE``): a program saved by
    ``torch.export.save`` (``.pt2``), loaded by ``torch.export.load``, or a TorchScript file
    saved by ``torch.jit.save``, loaded by ``torch.jit.load``; neither unpickles Python objects.
    The program maps inputs in the data set's bounds (its own normalisation inside) to logits,
    ``(batch, *in_shape) -> (batch, num_classes)``; both are checked on a probe batch.

    It is evaluated as it is: an ExportedProgram cannot change mode (its batch norm and dropout
    stay as they were exported), so it cannot be trained (``train.epochs`` must be 0). A
    TorchScript module can be trained from its weights (``train.epochs`` >= 1) like advrun's own."""

    def __init__(self, in_shape: Sequence[int], num_classes: int, path: Any = None):
        import warnings

        _check_shape(in_shape, num_classes)
        file, kind = exported_format(path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.* is deprecated (it still loads)
                if kind == "exported":
                    loaded = torch.export.load(str(file))
                    _exported_input(loaded, file, in_shape)
                    program = loaded.module()
                else:
                    program = torch.jit.load(str(file), map_location="cpu")
        except InvalidValue:
            raise
        except Exception as e:  # noqa: BLE001 - a damaged archive, a newer format, an operator torch lacks
            raise InvalidValue("path", f"{file} cannot be loaded ({_first_line(e)})") from None
        super().__init__(program)
        self.kind, self.file = kind, file
        #: Why ``train.epochs`` must be 0 (checked by the runner), or None where the model can be trained.
        self.refuses_training = None if kind == "torchscript" else (
            f"must be 0 with model.path={file}: an exported program (.pt2) is evaluated as it is; it has no "
            f"training mode (its batch norm and dropout stay as exported), so advrun does not train it "
            f"(a TorchScript file can be trained)")
        self._probe(in_shape, num_classes)

    def _probe(self, in_shape: Sequence[int], num_classes: int) -> None:
        was = self.training
        self.eval()
        try:
            with torch.no_grad():
                out = self(torch.zeros(2, *in_shape))
        except Exception as e:  # noqa: BLE001 - whatever the program raises on the data set's shape
            raise InvalidValue("path", f"{self.file} fails on a batch of inputs of the data set's shape "
                                       f"{tuple(in_shape)} ({_first_line(e)})") from None
        finally:
            self.train(was)
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or len(out) != 2:
            got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
            raise InvalidValue("path", f"{self.file} gives {got} for a batch of 2 inputs; advrun needs logits of "
                                       f"shape (batch, classes)")
        if out.shape[1] != num_classes:
            raise InvalidValue("path", f"{self.file} gives {out.shape[1]} logits per input; the data set has "
                                       f"{num_classes} classes")

    def train(self, mode: bool = True) -> "Exported":
        """Modes pass to a TorchScript module; an ExportedProgram's module has none (it raises)."""
        self.training = mode
        if self.kind == "torchscript":
            self[0].train(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self[0](x)


def torchvision_names() -> list[str]:
    """The classification architectures of torchvision (``torchvision.models.list_models``)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


class TorchVision(Classifier):
    """A torchvision classification architecture by name (``model=torchvision model.name=NAME``),
    built by ``torchvision.models.get_model(NAME, weights=None, num_classes=K)``: random
    initialisation, never a download. Layers: [normalize,] channel adapter, the network.

    torchvision's networks take 3-channel images. The adapter: 3 channels pass as they are;
    1 channel (grey) is repeated into 3 (no parameters: the grey image as RGB, the same as
    summing the first convolution's filters over their channels); any other count goes through
    a learned 1x1 convolution to 3 channels. Architectures that need a least input size (most
    downsample 32-fold; the vision transformers want exactly 224x224) are refused at build time
    with that size named. A network whose training-mode output has auxiliary heads (googlenet,
    inception_v3) is read by its main logits."""

    def __init__(self, in_shape: Sequence[int], num_classes: int, name: Any = None, normalize: bool = True):
        _check_shape(in_shape, num_classes)
        names = torchvision_names()
        if name not in names:
            raise InvalidValue("name", f"unknown torchvision classification model {shown(name)}; the valid names: "
                                       f"python -c \"import torchvision; print(torchvision.models.list_models("
                                       f"module=torchvision.models))\" (e.g. resnet18)")
        if len(in_shape) != 3:
            raise InvalidValue("name", f"{name} needs image inputs (channels, height, width), got {tuple(in_shape)}")
        import torchvision

        channels = in_shape[0]
        adapter: nn.Module = nn.Identity() if channels == 3 else \
            ChannelRepeat(3) if channels == 1 else nn.Conv2d(channels, 3, 1)
        try:
            network = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        except Exception as e:  # noqa: BLE001 - an architecture that cannot take these options
            raise InvalidValue("name", f"{name} cannot be built with {num_classes} classes ({_first_line(e)})") from None
        super().__init__(*_normalize_layer(in_shape, normalize), adapter, Logits(network))
        self.eval()
        try:
            with torch.no_grad():
                self(torch.zeros(2, *in_shape))
        except Exception as e:  # noqa: BLE001 - too small an input for the architecture's downsampling
            raise InvalidValue("name", f"{name} does not work on {in_shape[1]}x{in_shape[2]} inputs "
                                       f"({_first_line(e)}); choose another architecture or larger images "
                                       f"(dataset=folder dataset.size=...)") from None
        finally:
            self.train()


class ChannelRepeat(nn.Module):
    """Repeats a one-channel image into ``channels`` identical channels."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(-1, self.channels, -1, -1)


class Logits(nn.Module):
    """A network's logits: the main output of one that also returns auxiliary heads (a named tuple)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x)
        return out if isinstance(out, torch.Tensor) else out[0]
