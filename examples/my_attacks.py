"""An attack of one's own: a random start in the Linf ball, then one gradient-sign step
(Tramer et al. 2018's R+FGSM), following advrun's attack contract."""

import math
from dataclasses import dataclass

import torch

from advrun.attacks import BoundedAttack


@dataclass
class RandomStartFGSM(BoundedAttack):
    name = "rfgsm"
    norms = (math.inf,)
    alpha: float = 0.5  # share of eps spent on the random start

    def perturb(self, model, x, goal, bounds):
        low, high = bounds
        start = (x + self.alpha * self.eps * torch.empty_like(x).uniform_(-1, 1)).clamp(low, high).detach()
        start.requires_grad_(True)
        (grad,) = torch.autograd.grad(goal.loss(model(start)).sum(), start)  # the input gradient only
        step = start.detach() + (1 - self.alpha) * self.eps * grad.sign()
        return torch.min(torch.max(step, x - self.eps), x + self.eps).clamp(low, high)  # in the ball and the bounds
