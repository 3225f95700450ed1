"""The Carlini-Wagner L2 attack (Carlini & Wagner 2017, "Towards Evaluating the Robustness of
Neural Networks": the objective with f_6 and the tanh change of variables of Section V, the
L2 attack of Section VI-A with Adam and the binary search over the constant c)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from advrun.attacks.base import Bounds, Goal, MinimumNormAttack
from advrun.errors import Switch, require_int, require_non_negative, require_positive


class ConstantSearch:
    """Per-sample search for the smallest constant ``c`` whose optimum reaches the goal
    (Carlini & Wagner's binary search): multiply ``c`` by 10 until a success brackets it,
    then bisect between the largest failing and the smallest succeeding constant."""

    def __init__(self, initial: float, n: int, device: torch.device):
        self.const = torch.full((n,), float(initial), device=device)
        self.lower = torch.zeros(n, device=device)
        self.upper = torch.full((n,), math.inf, device=device)

    def update(self, succeeded: torch.Tensor) -> None:
        self.upper = torch.where(succeeded, torch.minimum(self.upper, self.const), self.upper)
        self.lower = torch.where(succeeded, self.lower, torch.maximum(self.lower, self.const))
        bracketed = torch.isfinite(self.upper)
        self.const = torch.where(bracketed, (self.lower + self.upper) / 2, self.const * 10)


def to_tanh_space(x: torch.Tensor, bounds: Bounds) -> torch.Tensor:
    lo, hi = bounds
    unit = ((x - lo) / (hi - lo) * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6)
    return torch.atanh(unit)


def from_tanh_space(w: torch.Tensor, bounds: Bounds) -> torch.Tensor:
    lo, hi = bounds
    return lo + (hi - lo) * (torch.tanh(w) + 1) / 2


@dataclass
class CW(MinimumNormAttack):
    """Carlini-Wagner L2: for each constant ``c`` minimise, with Adam over ``w``,

        ``||x' - x||_2^2 + c * max(-margin(x'), -kappa)``,   ``x' = lo + (hi - lo) (tanh(w) + 1) / 2``

    (eq. f_6; the margin is ``max_{j != y} Z_j - Z_y`` untargeted, ``Z_t - max_{j != t} Z_j``
    targeted). The change of variables keeps ``x'`` inside the bounds. Each of
    ``binary_steps`` rounds restarts from ``x`` with fresh Adam state and runs up to ``steps``
    steps (stopped early, as in the authors' code, when the total objective has not
    fallen by 0.01% over a tenth of the steps); ``c`` starts at ``initial_const`` and is
    searched per sample (:class:`ConstantSearch`). Per sample the smallest perturbation
    whose margin is ``>= kappa`` over all rounds and steps is returned, and ``x`` itself
    where none was found.
    """

    name = "cw"
    norms = (2.0,)
    gradient_based = True

    norm: float | str = 2.0
    kappa: float = 0.0
    initial_const: float = 1e-3
    binary_steps: int = 9
    steps: int = 1000
    lr: float = 0.01
    abort_early: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        require_non_negative("kappa", self.kappa)
        require_positive("initial_const", self.initial_const)
        require_int("binary_steps", self.binary_steps, minimum=1)
        require_int("steps", self.steps, minimum=1)
        require_positive("lr", self.lr)
        Switch().check("abort_early", self.abort_early)

    def perturb(self, model: nn.Module, x: torch.Tensor, goal: Goal, bounds: Bounds) -> torch.Tensor:
        best = x.clone()
        with torch.no_grad():
            logits = model(x)
        done = goal.reached(logits) & (goal.margin(logits) >= self.kappa)
        active = (~done).nonzero().squeeze(1)
        if len(active) == 0:
            return best
        xa, goal_a = x[active], goal.subset(active)
        best_dist = torch.full((len(active),), math.inf, device=x.device)
        search = ConstantSearch(self.initial_const, len(active), x.device)
        w_start = to_tanh_space(xa, bounds)
        check_every = max(1, self.steps // 10)
        for _ in range(self.binary_steps):
            w = w_start.clone().requires_grad_(True)
            optimizer = torch.optim.Adam([w], lr=self.lr)
            succeeded = torch.zeros(len(active), dtype=torch.bool, device=x.device)
            previous = math.inf
            for step in range(self.steps):
                x_adv = from_tanh_space(w, bounds)
                dist = (x_adv - xa).flatten(1).pow(2).sum(dim=1)
                # f(x') of eq. 6 (margin form), its mean over eot_samples passes (one by default).
                outputs = [model(x_adv) for _ in range(self.eot_samples)]
                penalty = torch.stack([(-goal_a.margin(z)).clamp_min(-self.kappa) for z in outputs]).mean(dim=0)
                loss = dist + search.const * penalty
                (w.grad,) = torch.autograd.grad(loss.sum(), w)
                logits = torch.stack(outputs).mean(dim=0).detach()
                margin = goal_a.margin(logits)
                with torch.no_grad():
                    ok = goal_a.reached(logits) & (margin >= self.kappa)
                    better = ok & (dist < best_dist)
                    best_dist = torch.where(better, dist, best_dist)
                    best[active[better]] = x_adv[better].clamp(*bounds)
                    succeeded |= ok
                optimizer.step()
                if self.abort_early and step % check_every == 0:
                    total = loss.sum().item()
                    if total > previous - 1e-4 * abs(previous):
                        break
                    previous = total
            search.update(succeeded)
        return best
