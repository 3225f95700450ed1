"""Training losses of the logits ``z`` (shape ``[n, K]``) and integer labels ``y``: ``train.loss``.

* ``cross_entropy``: ``-log softmax(z)_y``, averaged over the batch;
* ``mse``: the squared error ``||z - e_y||^2`` between the logits and the one-hot target,
  summed over classes and averaged over the batch (the lecture's squared loss);
* ``logistic``: the binary logistic loss ``log(1 + exp(-s m))`` of the margin
  ``m = z_1 - z_0`` with ``s = +1`` for class 1 and ``-1`` for class 0 (two classes only).
  On two logits it equals the cross-entropy; it is spelled out for the lecture's binary
  classifier ``sign(w.x + b)``, whose one logit advrun's binary ``logreg`` returns as ``(0, z)``.

Defenses apply the configured loss to clean and adversarial inputs alike; their inner
maximisations keep their own objectives (the attack's loss, TRADES' KL).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from advrun.errors import InvalidValue

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def squared_error(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``||logits - one_hot(y)||^2``."""
    target = F.one_hot(y, logits.shape[1]).to(logits.dtype)
    return (logits - target).pow(2).sum(dim=1).mean()


def binary_logistic(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean of ``log(1 + exp(-s (z_1 - z_0)))`` with ``s = 2y - 1``; needs exactly two logits."""
    if logits.shape[1] != 2:
        raise InvalidValue("loss", f"logistic is the binary loss and needs two classes, got {logits.shape[1]}")
    sign = 2 * y.to(logits.dtype) - 1
    return F.softplus(-sign * (logits[:, 1] - logits[:, 0])).mean()


LOSSES: dict[str, Loss] = {
    "cross_entropy": F.cross_entropy,
    "mse": squared_error,
    "logistic": binary_logistic,
}


def get_loss(name: str) -> Loss:
    """The loss called ``name``; an unknown name lists the valid ones."""
    if not isinstance(name, str) or name not in LOSSES:
        raise InvalidValue("loss", f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name]


def check_classes(name: str, num_classes: int) -> None:
    """Raise :class:`InvalidValue` when loss ``name`` cannot train ``num_classes`` classes."""
    get_loss(name)
    if name == "logistic" and num_classes != 2:
        raise InvalidValue(
            "loss", f"logistic is the binary loss and needs two classes, the data set has {num_classes} "
                    "(keep two with dataset.classes=[a,b], or use cross_entropy)"
        )
