"""Fast gradient sign method (Goodfellow, Shlens & Szegedy 2015, eq. 3)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from advrun.attacks.base import BoundedAttack, Bounds, Goal
from advrun.attacks.objectives import OBJECTIVES


@dataclass
class FGSM(BoundedAttack):
    """One step of size ``eps`` along the sign of the loss gradient:
    ``x_adv = clip(x + eps * sign(grad_x L(f(x), y)))``, an Linf attack (targeted: descend
    the loss of the target). ``L`` is ``loss`` (:mod:`advrun.attacks.objectives`)."""

    name = "fgsm"
    norms = (math.inf,)
    gradient_based = True
    losses = OBJECTIVES

    loss: str = "ce"

    def perturb(self, model: nn.Module, x: torch.Tensor, goal: Goal, bounds: Bounds) -> torch.Tensor:
        grad, _, _ = self.gradient(model, x, lambda logits: self.objective(goal, logits))
        return (x + self.eps * grad.sign()).clamp(*bounds)
