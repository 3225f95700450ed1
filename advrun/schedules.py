"""Learning-rate schedules (``train.schedule``), as a factor of ``optimizer.lr`` per optimizer step.

With ``j`` the step (0, 1, ...), ``E`` the steps per epoch and ``T`` the steps of the whole run:

* ``constant``: ``1``;
* ``step``: ``gamma ** floor(j / (step_epochs E))``, the rate multiplied by ``gamma`` every
  ``step_epochs`` epochs;
* ``cosine``: ``(1 + cos(pi j / T)) / 2`` (Loshchilov & Hutter 2017, without restarts);
* ``cyclic``: one triangle, linear from 0 up to 1 over the first ``peak`` share of the steps
  and back down to 0 at the end (Smith 2017; the schedule of Wong et al. 2020's fast
  adversarial training; as in their code, step ``j`` takes the value at ``j + 1``);
* ``inverse``: ``1 / (j + 1)``, the lecture's decreasing step ``s_j = 1 / (c (j + 1))`` with
  ``c = 1 / optimizer.lr``: the steps sum to infinity while their squares do not, as the
  convergence of stochastic gradient descent requires.

The schedule is a :class:`torch.optim.lr_scheduler.LambdaLR`, stepped after every optimizer
step, so its state (the step count) is saved and restored with training checkpoints.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from advrun.errors import Choice, Number, require_int, require_positive

SCHEDULES = ("constant", "step", "cosine", "cyclic", "inverse")


def lr_factor(
    name: str, steps_per_epoch: int, total_steps: int, *, step_epochs: int = 10, gamma: float = 0.1, peak: float = 0.4
) -> Callable[[int], float]:
    """The factor of the base learning rate at step ``j`` for schedule ``name``."""
    Choice(tuple(SCHEDULES), "unknown schedule").check("schedule", name)
    if name == "constant":
        return lambda j: 1.0
    if name == "step":
        require_int("step_epochs", step_epochs, minimum=1)
        require_positive("gamma", gamma)
        return lambda j: gamma ** (j // (step_epochs * steps_per_epoch))
    if name == "cosine":
        return lambda j: 0.5 * (1 + math.cos(math.pi * min(j, total_steps) / total_steps))
    if name == "cyclic":
        Number(0, 1, low_open=True, high_open=True, what="a number strictly between 0 and 1").check("peak", peak)
        top = peak * total_steps

        def triangle(j: int) -> float:
            return j / top if j < top else max(0.0, (total_steps - j) / (total_steps - top))

        return lambda j: triangle(j + 1)
    return lambda j: 1.0 / (j + 1)


def build_scheduler(
    optimizer: torch.optim.Optimizer, name: str, steps_per_epoch: int, epochs: int, **options
) -> torch.optim.lr_scheduler.LambdaLR:
    """The :class:`LambdaLR` of schedule ``name`` for ``epochs`` epochs of ``steps_per_epoch`` steps."""
    factor = lr_factor(name, steps_per_epoch, max(1, steps_per_epoch * epochs), **options)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
