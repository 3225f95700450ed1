"""Fast gradient sign method (Goodfellow, Shlens & Szegedy 2015, eq. 3)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from advrun.attacks.base import BoundedAttack, Bounds, Goal, input_gradient


@dataclass
class FGSM(BoundedAttack):
    """One step of size ``eps`` along the sign of the loss gradient:
    ``x_adv = clip(x + eps * sign(grad_x L(f(x), y)))``, an Linf attack (targeted: descend
    the loss of the target)."""

    name = "fgsm"
    norms = (math.inf,)

    def perturb(self, model: nn.Module, x: torch.Tensor, goal: Goal, bounds: Bounds) -> torch.Tensor:
        grad, _ = input_gradient(lambda z: goal.loss(model(z)), x)
        return (x + self.eps * grad.sign()).clamp(*bounds)
