"""Momentum iterative FGSM (Dong et al. 2018, "Boosting adversarial attacks with momentum",
Algorithm 1):

    g_{t+1} = mu * g_t + grad_x L(x_t, y) / ||grad_x L(x_t, y)||_1
    x_{t+1} = Clip_{x,eps}(x_t + alpha * sign(g_{t+1})),      g_0 = 0, x_0 = x, alpha = eps / T

and its L2 form (sec. 3.1): ``x_{t+1} = Clip_{x,eps}(x_t + alpha * g_{t+1} / ||g_{t+1}||_2)``,
``Clip`` being the projection onto the eps-ball and the data bounds.

It is PGD without random start whose step direction carries the momentum ``g`` from step to
step, so the loop is PGD's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from advrun.attacks.base import Bounds
from advrun.attacks.norms import lp_norm, steepest_direction
from advrun.attacks.pgd import PGD
from advrun.errors import require_non_negative


@dataclass
class MIFGSM(PGD):
    """MI-FGSM in the Linf (Algorithm 1) or L2 norm.

    ``decay`` is the momentum factor ``mu`` (1.0 in the paper; 0 gives the basic iterative
    method), ``steps`` the number of iterations ``T`` and ``step_size`` the step ``alpha``
    (null: ``step_scale * eps / T`` = ``eps / T``, the paper's choice). With ``keep_best``
    (default), as in :class:`PGD`, each sample keeps its first iterate that reaches the goal
    and is not iterated further, and a sample that never does keeps its iterate with the
    highest loss; ``keep_best: false`` returns the last iterate ``x_T`` of Algorithm 1.
    """

    name = "mifgsm"
    norms = (math.inf, 2.0)

    steps: int = 10
    step_scale: float = 1.0
    random_start: bool = field(default=False, init=False)
    restarts: int = field(default=1, init=False)
    l1_sparsity: float = field(default=0.95, init=False, repr=False)  # L1 only; MI-FGSM is Linf or L2
    decay: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require_non_negative("decay", self.decay)

    def _initial_state(self, x0: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x0)

    def _direction(
        self, grad: torch.Tensor, x_adv: torch.Tensor, bounds: Bounds, momentum: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        l1 = lp_norm(grad, 1.0).clamp_min(1e-12).reshape((-1,) + (1,) * (grad.dim() - 1))
        momentum = self.decay * momentum + grad / l1
        return steepest_direction(momentum, self.norm), momentum
