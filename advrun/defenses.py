"""Defenses are training objectives: ``defense.loss(model, x, y) -> scalar``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from advrun.attacks.base import Attack, Bounds
from advrun.errors import InvalidValue


@dataclass
class Standard:
    """Empirical risk minimisation: the mean cross-entropy on clean inputs."""

    bounds: Bounds = (0.0, 1.0)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y)


@dataclass
class Adversarial(Standard):
    """Adversarial training on inputs from ``attack`` (Madry et al. 2018 with PGD), mixed with
    the clean loss as in Goodfellow et al. 2015, eq. 6:
    ``alpha * L(x) + (1 - alpha) * L(x_adv)`` (``alpha = 0``: pure adversarial training).

    The attack runs with the model in eval mode and takes gradients with respect to the
    input only, so crafting the examples leaves no gradient in the parameters.
    """

    attack: Attack | None = None
    alpha: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.attack, Attack):
            raise InvalidValue("attack", f"needs an attack config with a _target_, got {self.attack!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 <= self.alpha <= 1:
            raise InvalidValue("alpha", f"must lie in [0, 1], got {self.alpha!r}")

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = self.attack(model, x, y, bounds=self.bounds).x_adv
        adversarial = F.cross_entropy(model(x_adv), y)
        if self.alpha == 0:
            return adversarial
        return self.alpha * F.cross_entropy(model(x), y) + (1 - self.alpha) * adversarial
