"""Certified training: defenses whose loss is an upper bound on the worst-case loss over the
ball, computed by :mod:`advrun.bounds`, so that the trained network's bounds certify.

* :class:`IBP` (Gowal et al. 2018, "On the effectiveness of interval bound propagation for
  training verifiably robust models", eq. 12): ``kappa L(z(x), y) + (1 - kappa) L(z_worst, y)``
  with the worst-case logits ``z_worst_j = -m_j`` read off IBP's lower bounds ``m_j`` on the
  margins ``z_y - z_j`` over the ball (``z_worst_y = 0``). For cross-entropy, a non-increasing
  function of every margin, ``L(z_worst, y)`` bounds ``L(z(x'), y)`` above at every ``x'`` of
  the ball.
* :class:`CrownIBP` (Zhang et al. 2020, "Towards stable and efficient training of verifiably
  robust neural networks", eq. 8): the same loss on the margin bounds
  ``beta m_CROWN-IBP + (1 - beta) m_IBP`` (a mix of two lower bounds is one).

**Schedules.** Both papers start from clean training and grow the radius slowly; here, over
the epochs of the training loop: ``warmup_epochs`` of clean training (radius 0, ``kappa = 1``),
then ``ramp_epochs`` over which the radius grows linearly from 0 to ``train_eps_scale * eps``,
``kappa`` falls linearly from 1 to its final value and ``beta`` (CROWN-IBP) from 1 to 0; after
the ramp all three stay at their final values. The position in the schedule advances by one
step per call of ``loss`` with the model in train mode (one call per training step in
:func:`advrun.training.train`), in fractions of an epoch: step ``s`` of epoch ``e + 1`` (both
counted from 0) sits at ``e + s / steps_per_epoch``. The steps per epoch are counted during the
first epoch (the loop reports each epoch's end through ``end_of_epoch``), which the schedule
therefore spends entirely at position 0: ``warmup_epochs`` must be at least 1 unless
``steps_per_epoch`` is given. The counters are part of ``state_dict``, so that a resumed
training goes on where it stopped.

**Model modes.** The bounds are those of the network in eval mode, the network that is
evaluated and certified (:class:`~advrun.bounds.BoundedNetwork` reads dropout as the identity);
they are computed in eval mode, the clean loss in the caller's mode (train mode in the training
loop, dropout on). Batch norm is refused (:meth:`IBP.check_model`): in train mode it normalises
with the batch's statistics, which the eval-mode bounds do not describe, and its running
statistics trail the weights during training, so the bounds would be of another network than
the one trained.

**Cost.** IBP costs about two forward passes more than standard training; CROWN-IBP adds one
backward bounding pass whose coefficients number ``classes x widest layer`` per sample (ten
times a forward pass's activations on MNIST), skipped once ``beta`` has reached 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from advrun.attacks.base import eval_mode
from advrun.attacks.norms import norm_field
from advrun.bounds import BoundedNetwork
from advrun.defenses import Standard
from advrun.errors import InvalidValue, Number, require_int, require_non_negative, require_positive
from advrun.structure import has_batch_norm


@dataclass(frozen=True)
class Schedule:
    """The schedule's values at one position: the radius trained against, the weight of the
    clean loss and (CROWN-IBP) the weight of the CROWN-IBP bound."""

    eps: float
    kappa: float
    beta: float


@dataclass
class IBP(Standard):
    """Interval bound propagation training (Gowal et al. 2018, eq. 12; module docstring):
    ``kappa L(z(x), y) + (1 - kappa) L(z_worst, y)`` with ``z_worst`` from IBP's margin bounds over
    the ball of radius ``eps_t`` (norm ``norm``: inf or 2) inside the data bounds. ``eps_t`` ramps
    from 0 to ``train_eps_scale * eps`` and ``kappa`` from 1 to ``kappa`` over ``ramp_epochs``
    after ``warmup_epochs`` of clean training (the paper: 2,000 clean steps, a ramp of 10,000,
    final kappa 0.5)."""

    eps: float = 0.1
    norm: float | str = "inf"
    kappa: float = 0.5
    warmup_epochs: int = 1
    ramp_epochs: int = 10
    train_eps_scale: float = 1.0
    steps_per_epoch: int | None = None
    #: Completed epochs and steps into the current one (the schedule's position; see state_dict).
    epochs_done: int = field(default=0, init=False, repr=False, compare=False)
    step: int = field(default=0, init=False, repr=False, compare=False)
    bounded: BoundedNetwork | None = field(default=None, init=False, repr=False, compare=False)
    #: The worst case of cross-entropy (and of the logistic loss) over the margins' bounds is the loss of z_worst.
    supported_losses = ("cross_entropy", "logistic")
    method = "ibp"
    name = "ibp"

    def __post_init__(self) -> None:
        require_non_negative("eps", self.eps)
        self.norm = norm_field(self.norm, (math.inf, 2.0), self.name)
        Number(0, 1).check("kappa", self.kappa)
        require_int("warmup_epochs", self.warmup_epochs, minimum=0)
        require_int("ramp_epochs", self.ramp_epochs, minimum=0)
        require_positive("train_eps_scale", self.train_eps_scale)
        if self.steps_per_epoch is not None:
            require_int("steps_per_epoch", self.steps_per_epoch, minimum=1)
        elif self.warmup_epochs < 1:
            raise InvalidValue("warmup_epochs", "must be at least 1: the schedule counts the steps of an epoch during "
                                                "the first one, which it spends at radius 0 (both papers start with "
                                                "clean training)")

    # ------------------------------------------------------------------------------ schedule

    def ramp(self, position: float) -> float:
        """How far along the ramp the schedule is at ``position`` (in epochs): 0 before it, 1 after."""
        if position < self.warmup_epochs:
            return 0.0
        if self.ramp_epochs == 0:
            return 1.0
        return min(1.0, (position - self.warmup_epochs) / self.ramp_epochs)

    def schedule(self, position: float | None = None) -> Schedule:
        """The schedule's values at ``position`` (in epochs; None: the current step's)."""
        r = self.ramp(self.position() if position is None else position)
        return Schedule(eps=r * self.train_eps_scale * self.eps, kappa=1 - r * (1 - self.kappa), beta=1 - r)

    def position(self) -> float:
        """The current step's position in epochs (module docstring)."""
        if self.steps_per_epoch is None:
            return float(self.epochs_done)
        return self.epochs_done + self.step / self.steps_per_epoch

    def end_of_epoch(self, model: nn.Module, epoch: int) -> str | None:
        """Count the epoch (``epoch`` epochs are done); the first one gives the steps per epoch."""
        if self.step:
            self.steps_per_epoch = self.step
        self.epochs_done, self.step = epoch, 0
        return None

    def state_dict(self) -> dict:
        """The schedule's position, for training checkpoints."""
        return {"epochs_done": self.epochs_done, "step": self.step, "steps_per_epoch": self.steps_per_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epochs_done, self.step, self.steps_per_epoch = state["epochs_done"], state["step"], state["steps_per_epoch"]

    # ---------------------------------------------------------------------------------- loss

    def check_model(self, model: nn.Module, in_shape: Sequence[int]) -> None:
        if has_batch_norm(model):
            raise InvalidValue("_target_", f"{self.name} bounds the network in eval mode, which batch norm in train "
                                           "mode is not (it normalises with the batch's statistics); use "
                                           "model.batch_norm=false")
        try:
            self.bounded = BoundedNetwork(model, in_shape)
        except InvalidValue as e:
            raise InvalidValue("_target_", f"{self.name} cannot bound {type(model).__name__}: {e.message}") from None

    def network(self, model: nn.Module, x: torch.Tensor) -> BoundedNetwork:
        """The bounded view of ``model`` (built once per model)."""
        if self.bounded is None or self.bounded.model is not model:
            self.check_model(model, x.shape[1:])
        return self.bounded

    def margin_bounds(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, at: Schedule) -> torch.Tensor:
        """Lower bounds on ``z_y - z_j`` over the ball of radius ``at.eps`` (``+inf`` at ``j = y``),
        differentiable in the parameters, the model in eval mode."""
        with eval_mode(model):
            return self.network(model, x).margins(x, y, at.eps, self.norm, self.bounds, self.method,
                                                  differentiable=True).ibp

    def worst_case_logits(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                          at: Schedule | None = None) -> torch.Tensor:
        """``-m_j`` per sample and class, 0 at ``j = y`` (``m``: :meth:`margin_bounds`)."""
        margins = self.margin_bounds(model, x, y, self.schedule() if at is None else at)
        own = torch.nn.functional.one_hot(y, margins.shape[1]).bool()
        return -margins.masked_fill(own, 0.0)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        at = self.schedule()
        if model.training:
            self.step += 1
        clean = self.criterion_loss(model(x), y)
        if at.kappa == 1:
            return clean
        return at.kappa * clean + (1 - at.kappa) * self.criterion_loss(self.worst_case_logits(model, x, y, at), y)


@dataclass
class CrownIBP(IBP):
    """CROWN-IBP training (Zhang et al. 2020, eq. 8; module docstring): the loss of :class:`IBP` on
    the margin bounds ``beta m_CROWN-IBP + (1 - beta) m_IBP``, ``beta`` falling from 1 to 0 over the
    ramp (the paper's default) and ``kappa`` from 1 to ``kappa`` (their MNIST setting: 0)."""

    kappa: float = 0.0
    method = "crown-ibp"
    name = "crown_ibp"

    def margin_bounds(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, at: Schedule) -> torch.Tensor:
        with eval_mode(model):
            network = self.network(model, x)
            if at.beta == 0:  # the CROWN pass would be weighted 0
                return network.margins(x, y, at.eps, self.norm, self.bounds, "ibp", differentiable=True).ibp
            bounds = network.margins(x, y, at.eps, self.norm, self.bounds, self.method, differentiable=True)
        if bounds.crown is None:  # no nonlinear layer: IBP's bound is CROWN's
            return bounds.ibp
        own = torch.nn.functional.one_hot(y, bounds.ibp.shape[1]).bool()  # +inf there: mixed, 0 * inf is NaN
        mixed = at.beta * bounds.crown.masked_fill(own, 0.0) + (1 - at.beta) * bounds.ibp.masked_fill(own, 0.0)
        return mixed.masked_fill(own, math.inf)
