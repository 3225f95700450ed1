"""Fast gradient method in the L2 norm: one step along the loss gradient.

Two forms, chosen by ``normalize``:

* ``normalize: true`` (Goodfellow et al.'s fast gradient method in the L2 norm, as in
  Miyato et al. 2016 and Kurakin et al. 2017): ``x + eps * grad / ||grad||_2``, the
  steepest-ascent step of L2 length ``eps``;
* ``normalize: false``, the fast gradient value method (Rozsa, Rudd & Boult 2016,
  "Adversarial diversity and hard positive generation", sec. 3): ``x + eps * grad``, the
  raw gradient values scaled by ``eps``.

The raw step ``eps * grad`` has L2 length ``eps * ||grad||_2``, which is not bounded by
``eps`` in general. To keep every output inside the L2 ball of radius ``eps`` that the
runner checks and reports, the raw step is shortened to length ``eps`` where
``||grad||_2 > 1`` (the L2 projection of the step). Where ``||grad||_2 <= 1`` the result is
exactly Rozsa et al.'s ``x + eps * grad``; elsewhere it coincides with the normalised form.
Both forms are then clipped to the data bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from advrun.attacks.base import BoundedAttack, Bounds, Goal
from advrun.attacks.objectives import OBJECTIVES
from advrun.attacks.norms import project, steepest_direction
from advrun.errors import Switch


@dataclass
class FGM(BoundedAttack):
    """One gradient step in the L2 norm (targeted: descend the loss of the target).

    ``normalize: true``: ``clip(x + eps * g / ||g||_2)``; ``normalize: false``:
    ``clip(x + P_eps(eps * g))`` with ``P_eps`` the projection onto the L2 ball of radius
    ``eps`` (the fast gradient value method, bounded; see the module docstring), where
    ``g`` the gradient of ``loss`` (:mod:`advrun.attacks.objectives`).
    """

    name = "fgm"
    norms = (2.0,)
    gradient_based = True
    losses = OBJECTIVES

    norm: float | str = 2.0
    normalize: bool = True
    loss: str = "ce"

    def __post_init__(self) -> None:
        super().__post_init__()
        Switch().check("normalize", self.normalize)

    def perturb(self, model: nn.Module, x: torch.Tensor, goal: Goal, bounds: Bounds) -> torch.Tensor:
        grad, _, _ = self.gradient(model, x, lambda logits: self.objective(goal, logits))
        if self.normalize:
            step = self.eps * steepest_direction(grad, 2.0)
        else:
            step = project(self.eps * grad, self.eps, 2.0)
        return (x + step).clamp(*bounds)
