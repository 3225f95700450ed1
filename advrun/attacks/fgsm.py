"""Fast gradient sign method (Goodfellow, Shlens & Szegedy 2015, eq. 3)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from advrun.attacks.base import Attack, Bounds, cross_entropy, input_gradient
from advrun.errors import InvalidValue


@dataclass
class FGSM(Attack):
    """One step of size ``eps`` along the sign of the loss gradient:
    ``x_adv = clip(x + eps * sign(grad_x L(f(x), y)))``, an Linf attack."""

    name = "fgsm"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.norm != math.inf:
            raise InvalidValue("norm", "fgsm is an Linf attack (norm: inf); use pgd with norm 2 for L2 budgets")

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, bounds: Bounds) -> torch.Tensor:
        loss = cross_entropy(model)
        grad, _ = input_gradient(lambda z: loss(z, y), x)
        return (x + self.eps * grad.sign()).clamp(*bounds)
