"""A model of one's own: any torch.nn.Module that maps inputs in [0, 1] to logits."""

import math

from torch import nn


class TinyNet(nn.Module):
    """One hidden layer. advrun fills in ``in_shape`` and ``num_classes`` from the data set
    because the constructor names them; a model with fixed sizes needs neither."""

    def __init__(self, in_shape, num_classes, hidden=32):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Flatten(), nn.Linear(math.prod(in_shape), hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.layers(x)  # logits: no softmax
