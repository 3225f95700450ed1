"""Basic iterative method, also called I-FGSM (Kurakin, Goodfellow & Bengio 2017,
"Adversarial examples in the physical world", sec. 2.2):

    x_0 = x,   x_{n+1} = Clip_{x,eps}(x_n + alpha * sign(grad_x L(x_n, y)))

with ``Clip_{x,eps}`` the clipping onto the Linf ball of radius ``eps`` around ``x`` and the
data bounds. Targeted with ``target: least_likely`` it is their iterative least-likely
class method (sec. 2.3): descend the loss of the class with the lowest clean logit.

It is PGD in the Linf norm without a random start and with one restart, so the loop is
PGD's; only the step schedule differs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from advrun.attacks.pgd import PGD

#: One intensity level of an 8-bit image whose pixels are scaled to [0, 1].
INTENSITY_LEVEL = 1.0 / 255.0


def kurakin_steps(eps: float) -> int:
    """Kurakin et al.'s number of iterations ``min(eps + 4, 1.25 eps)``, with ``eps`` in
    intensity levels (``eps * 255`` for images in [0, 1]); rounded up, at least 1, so that
    ``steps`` steps of one level always reach the border of the ball."""
    levels = eps / INTENSITY_LEVEL
    return max(1, math.ceil(min(levels + 4.0, 1.25 * levels) - 1e-9))


@dataclass
class BIM(PGD):
    """The basic iterative method in the Linf norm.

    ``step_size`` is the absolute step ``alpha`` (Kurakin et al.: one intensity level,
    1/255); with ``step_size: null`` it is ``step_scale * eps / steps`` (``eps / steps`` by
    default), relative to each budget of the curve. ``steps: null`` takes Kurakin et al.'s
    ``min(eps*255 + 4, 1.25 * eps*255)`` iterations for each budget.

    As in :class:`PGD`, with ``keep_best`` (default) each sample keeps its worst iterate: the
    first one that reaches the goal (it is not attacked further), else the one with the
    highest loss; ``keep_best: false`` returns the last iterate, as Kurakin et al. do.
    """

    name = "bim"
    norms = (math.inf,)

    steps: int | None = None
    step_size: float | None = INTENSITY_LEVEL
    step_scale: float = 1.0
    random_start: bool = field(default=False, init=False)
    restarts: int = field(default=1, init=False)
    l1_sparsity: float = field(default=0.95, init=False, repr=False)  # L1 only; BIM is Linf

    def _check_steps(self) -> None:
        if self.steps is not None:  # null: Kurakin et al.'s count for each budget
            super()._check_steps()

    @property
    def iterations(self) -> int:
        """The number of steps actually taken at this budget."""
        return self.steps if self.steps is not None else kurakin_steps(self.eps)
