"""Models. Inputs lie in the data bounds (usually [0, 1]); normalisation is a layer inside.

Each constructor takes the input shape and number of classes (filled in by the runner
from the data set) plus the options of its ``conf/model/*.yaml``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from advrun.errors import InvalidValue, require_int

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
}


def make_activation(name: str) -> nn.Module:
    """The activation layer called ``name``; an unknown name lists the valid ones."""
    if name not in ACTIVATIONS:
        raise InvalidValue("activation", f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


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
    if not isinstance(normalize, bool):
        raise InvalidValue("normalize", f"must be true or false, got {normalize!r}")
    return [Normalize(in_shape[0], image=len(in_shape) == 3)] if normalize else []


class LogReg(Classifier):
    """Multinomial logistic (softmax) regression: one affine map from pixels to logits."""

    def __init__(self, in_shape: Sequence[int], num_classes: int, normalize: bool = False):
        _check_shape(in_shape, num_classes)
        super().__init__(
            *_normalize_layer(in_shape, normalize),
            nn.Flatten(),
            nn.Linear(math.prod(in_shape), num_classes),
        )


class MLP(Classifier):
    """Fully connected network: ``hidden`` layer widths, each followed by ``activation``."""

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (128, 128),
        activation: str = "relu",
        normalize: bool = True,
    ):
        _check_shape(in_shape, num_classes)
        hidden = list(hidden)
        for width in hidden:
            require_int("hidden", width, minimum=1)
        layers: list[nn.Module] = [*_normalize_layer(in_shape, normalize), nn.Flatten()]
        width_in = math.prod(in_shape)
        for width in hidden:
            layers += [nn.Linear(width_in, width), make_activation(activation)]
            width_in = width
        layers.append(nn.Linear(width_in, num_classes))
        super().__init__(*layers)


class CNN(Classifier):
    """LeNet-style network: two 3x3 convolution + 2x2 max-pool blocks, one hidden dense layer."""

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (16, 32),
        hidden: int = 128,
        activation: str = "relu",
        normalize: bool = True,
    ):
        _check_shape(in_shape, num_classes)
        if len(in_shape) != 3:
            raise InvalidValue("in_shape", f"cnn needs image inputs (channels, height, width), got {tuple(in_shape)}")
        channels = list(channels)
        for width in channels:
            require_int("channels", width, minimum=1)
        require_int("hidden", hidden, minimum=1)
        c, h, w = in_shape
        layers: list[nn.Module] = list(_normalize_layer(in_shape, normalize))
        for width in channels:
            if h < 2 or w < 2:
                raise InvalidValue("channels", f"{len(channels)} pooling blocks are too many for {tuple(in_shape)} inputs")
            layers += [nn.Conv2d(c, width, 3, padding=1), make_activation(activation), nn.MaxPool2d(2)]
            c, h, w = width, h // 2, w // 2
        layers += [nn.Flatten(), nn.Linear(c * h * w, hidden), make_activation(activation), nn.Linear(hidden, num_classes)]
        super().__init__(*layers)


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
