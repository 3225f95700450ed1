"""Box-constrained L-BFGS (Szegedy et al. 2014, "Intriguing properties of neural networks",
Section 4.1: minimise c|r| + loss_f(x + r, l) subject to x + r in the box, with a search over c)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch
import torch.nn.functional as F
from torch import nn

from advrun.attacks.base import Bounds, Goal, MinimumNormAttack
from advrun.attacks.cw import ConstantSearch
from advrun.errors import require_int, require_positive


def goal_cross_entropy(logits: torch.Tensor, goal: Goal) -> torch.Tensor:
    """Per-sample loss that is small once the goal is reached: ``CE(target)`` targeted;
    untargeted ``-log(1 - p_y)``, the cross-entropy of "any class but ``y``"."""
    if goal.targeted:
        return F.cross_entropy(logits, goal.labels, reduction="none")
    others = logits.scatter(1, goal.labels[:, None], -math.inf)
    return logits.logsumexp(dim=1) - others.logsumexp(dim=1)


@dataclass
class LBFGS(MinimumNormAttack):
    """Szegedy et al.'s attack, in L2. For per-sample constants ``c`` it solves

        ``min ||x' - x||_2^2 + c * loss(x')``   subject to ``lo <= x' <= hi``

    with scipy's L-BFGS-B (at most ``steps`` iterations per constant, from ``x``). This is
    the paper's ``c|r| + loss`` with the constant moved onto the loss (the same family of
    problems, ``c -> 1/c``) and the squared norm, which is smooth at ``r = 0``. The loss is
    the cross-entropy of the target; untargeted (``target: null``) it is the cross-entropy
    of "any class but the label", ``-log(1 - p_y)``. The problems of a batch are separable,
    so one L-BFGS-B run optimises the whole flattened batch. ``c`` starts at
    ``initial_const`` and is searched per sample over ``binary_steps`` runs: times 10
    until the optimum reaches the goal, then bisection (the smallest such ``c`` gives the
    smallest perturbation). Every point L-BFGS-B evaluates is checked, and per sample the
    smallest perturbation that reaches the goal is returned (``x`` itself if none does).
    """

    name = "lbfgs"
    norms = (2.0,)
    gradient_based = True

    norm: float | str = 2.0
    initial_const: float = 1e-2
    binary_steps: int = 10
    steps: int = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive("initial_const", self.initial_const)
        require_int("binary_steps", self.binary_steps, minimum=1)
        require_int("steps", self.steps, minimum=1)

    def perturb(self, model: nn.Module, x: torch.Tensor, goal: Goal, bounds: Bounds) -> torch.Tensor:
        best = x.clone()
        with torch.no_grad():
            active = (~goal.reached(model(x))).nonzero().squeeze(1)
        if len(active) == 0:
            return best
        xa, goal_a = x[active], goal.subset(active)
        best_dist = torch.full((len(active),), math.inf, device=x.device)
        succeeded = torch.zeros(len(active), dtype=torch.bool, device=x.device)
        search = ConstantSearch(self.initial_const, len(active), x.device)

        def objective(flat: np.ndarray) -> tuple[float, np.ndarray]:
            """The summed objective and its gradient; every evaluated point is a candidate."""
            x_adv = torch.from_numpy(flat).to(xa).view_as(xa).clamp(*bounds).requires_grad_(True)
            dist = (x_adv - xa).flatten(1).pow(2).sum(dim=1)
            outputs = [model(x_adv) for _ in range(self.eot_samples)]  # one pass unless eot_samples > 1
            loss = dist + search.const * torch.stack([goal_cross_entropy(z, goal_a) for z in outputs]).mean(dim=0)
            (grad,) = torch.autograd.grad(loss.sum(), x_adv)
            logits = torch.stack(outputs).mean(dim=0).detach()
            with torch.no_grad():
                ok = goal_a.reached(logits)
                better = ok & (dist < best_dist)
                best_dist.copy_(torch.where(better, dist, best_dist))
                best[active[better]] = x_adv.detach()[better]
                succeeded.logical_or_(ok)
            return loss.sum().item(), grad.cpu().double().numpy().ravel()

        start = xa.cpu().double().numpy().ravel()
        box = scipy.optimize.Bounds(np.full(start.shape, bounds[0]), np.full(start.shape, bounds[1]))
        for _ in range(self.binary_steps):
            succeeded.fill_(False)
            scipy.optimize.minimize(
                objective, start, jac=True, method="L-BFGS-B", bounds=box, options={"maxiter": self.steps}
            )
            search.update(succeeded)
        return best
