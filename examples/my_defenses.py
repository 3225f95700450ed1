"""A defense of one's own: a training objective, loss(model, x, y) -> scalar."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class NoiseTraining:
    """Cross-entropy on inputs with uniform noise of at most ``noise`` added (kept in [0, 1])."""

    noise: float = 0.1

    def loss(self, model, x, y):
        noisy = (x + self.noise * torch.empty_like(x).uniform_(-1, 1)).clamp(0, 1)
        return F.cross_entropy(model(noisy), y)
