"""What a gradient attack maximises: ``attack.loss``, a per-sample objective of the logits.

Every objective is written for the goal of the attack (:class:`~advrun.attacks.base.Goal`):
untargeted it grows as the true label ``y`` loses, targeted as the target ``t`` wins.

* ``ce``: the cross-entropy ``CE(z, y)``; targeted ``-CE(z, t)``;
* ``margin``: Carlini & Wagner's logit margin (their ``f_6``, sign flipped to be maximised):
  ``max_{j != y} z_j - z_y``; targeted ``z_t - max_{j != t} z_j``; positive exactly when the
  goal is reached;
* ``dlr``: the difference of logits ratio (Croce & Hein 2020, eq. 7); targeted its form
  DLR-T (eq. 8), with the true label ``y`` and the target ``t``;
* ``mse``: the squared error ``||z - e_y||^2`` of the logits against the one-hot label
  (targeted ``-||z - e_t||^2``), the lecture's squared loss;
* ``logistic``: the binary logistic loss ``log(1 + exp(-s (z_1 - z_0)))``, ``s = 2y - 1``
  (targeted: minus that loss for ``t``); two classes only.

``train`` names the run's training loss (``train.loss``): the runner resolves it
(:data:`TRAINING`) before the attack runs, so that the inner and the outer problem of a
model trained with, say, the squared loss use the same ``L``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from advrun.errors import InvalidValue

if TYPE_CHECKING:
    from advrun.attacks.base import Goal

#: The objectives an attack's ``loss`` may name; ``train`` is resolved by the runner.
OBJECTIVES = ("ce", "margin", "dlr", "mse", "logistic", "train")
#: ``train.loss`` -> the objective that is the same loss per sample.
TRAINING = {"cross_entropy": "ce", "mse": "mse", "logistic": "logistic"}


def largest_other_logit(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per sample, ``max_{i != label} z_i``."""
    return logits.scatter(1, labels[:, None], -torch.inf).amax(dim=1)


def dlr_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 7: ``DLR(z, y) = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)``, ``z_pi`` the logits
    sorted in decreasing order (shift- and scale-invariant; needs >= 3 classes)."""
    ranked = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, labels[:, None]).squeeze(1)
    return -(z_y - largest_other_logit(logits, labels)) / (ranked[:, 0] - ranked[:, 2] + 1e-12)


def dlr_targeted_loss(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Eq. 8: ``DLR-T(z, y, t) = -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)`` (needs >= 4 classes)."""
    ranked = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, labels[:, None]).squeeze(1)
    z_t = logits.gather(1, targets[:, None]).squeeze(1)
    return -(z_y - z_t) / (ranked[:, 0] - (ranked[:, 2] + ranked[:, 3]) / 2 + 1e-12)


def _squared_error(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits - F.one_hot(labels, logits.shape[1]).to(logits.dtype)).pow(2).sum(dim=1)


def _logistic(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    sign = 2 * labels.to(logits.dtype) - 1
    return F.softplus(-sign * (logits[:, 1] - logits[:, 0]))


def objective(name: str, goal: "Goal", logits: torch.Tensor) -> torch.Tensor:
    """Per-sample value of the objective ``name`` (see the module docstring) towards ``goal``."""
    if name == "ce":
        return goal.loss(logits)
    if name == "margin":
        return goal.margin(logits)
    if name == "dlr":
        if goal.targeted:
            return dlr_targeted_loss(logits, goal.source, goal.labels)
        return dlr_loss(logits, goal.labels)
    if name in ("mse", "logistic"):
        loss = (_squared_error if name == "mse" else _logistic)(logits, goal.labels)
        return -loss if goal.targeted else loss
    if name == "train":
        raise InvalidValue("loss", "train names the run's training loss, which only a run resolves; "
                                   f"outside a run name the loss: {', '.join(TRAINING.values())}")
    raise InvalidValue("loss", f"unknown loss {name!r}; choose one of {list(OBJECTIVES)}")


def check_classes(name: str, num_classes: int, targeted: bool) -> None:
    """Raise :class:`InvalidValue` when objective ``name`` cannot work with ``num_classes`` classes."""
    if name == "dlr":
        needed = 4 if targeted else 3
        if num_classes < needed:
            form = "DLR-T (eq. 8) uses the 3rd and 4th largest logits" if targeted else \
                "DLR (eq. 7) uses the 3rd largest logit"
            raise InvalidValue("loss", f"{form} and needs >= {needed} classes, not {num_classes}; use loss ce")
    if name == "logistic" and num_classes != 2:
        raise InvalidValue("loss", f"logistic is the binary loss and needs two classes, not {num_classes}")
