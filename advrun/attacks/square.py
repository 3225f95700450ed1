"""Square Attack (Andriushchenko, Croce, Flammarion & Hein 2020, "Square Attack: a
query-efficient black-box adversarial attack via random search"): random search over
square-shaped updates that uses only the model's scores (no gradients). Linf: Algorithm 1
with the sampling of Algorithm 2 and the vertical-stripe initialisation; L2: Algorithm 3."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from advrun.attacks.base import BoundedAttack, Bounds, Goal
from advrun.attacks.norms import lp_norm, project
from advrun.errors import Choice, Number, require_int

LOSSES = ("margin", "ce")
#: Iterations (of a 10,000-query run) after which the square fraction p halves (Sect. 3 / App.).
HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(p_init: float, iteration: int, n_queries: int) -> float:
    """The fraction ``p`` of the image a square covers at ``iteration``: ``p_init`` halved at
    each point of :data:`HALVINGS`, rescaled from 10,000 queries to ``n_queries``."""
    scaled = int(iteration * 10000 / n_queries)
    return p_init / 2 ** sum(scaled > t for t in HALVINGS)


def image_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``(channels, height, width)`` the attack sees: vectors are ``1 x 1 x d`` images, a
    ``H x W`` input has one channel, leading dimensions of larger shapes are channels."""
    if len(shape) == 1:
        return 1, 1, shape[0]
    if len(shape) == 2:
        return 1, shape[0], shape[1]
    return math.prod(shape[:-2]), shape[-2], shape[-1]


def random_squares(n: int, side: int, height: int, width: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample, a ``side x side`` square at a uniform position: its bool mask ``n x 1 x H x W``
    and the row and column of its top-left corner."""
    top = torch.randint(0, height - side + 1, (n,), device=device)
    left = torch.randint(0, width - side + 1, (n,), device=device)
    rows, cols = torch.arange(height, device=device), torch.arange(width, device=device)
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + side)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + side)
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None], top, left


def bump(height: int, width: int) -> torch.Tensor:
    """Eq. 3: ``eta_{r,s} = sum_{k=0}^{M(r,s)} 1 / (n + 1 - k)^2``, concentric rectangles
    around the centre: a cell at Chebyshev distance ``d`` from it holds ``sum_{j=d}^{n} 1/(j+1)^2``."""
    n = max(height // 2, width // 2)
    tail = (1.0 / torch.arange(1, n + 2, dtype=torch.float64) ** 2).flip(0).cumsum(0).flip(0)
    rows = (torch.arange(height) - height // 2).abs()
    cols = (torch.arange(width) - width // 2).abs()
    return tail[torch.maximum(rows[:, None], cols[None, :])]


def l2_window(side: int) -> torch.Tensor:
    """The unit-norm L2 update of a ``side x side`` window: a bump on the top half and a
    negative bump on the bottom half (Sect. 3.2), so that its pixels sum to about zero."""
    top = bump(side // 2, side)
    window = torch.cat([top, -bump(side - side // 2, side)])
    return window / window.norm()


@dataclass
class Square(BoundedAttack):
    """Square Attack in the Linf or L2 norm: score-based, never differentiates the model.

    Starting from the initialisation below, each iteration proposes a change inside one
    random ``h x h`` square per sample (``h = round(sqrt(p * H * W))``, ``p`` from
    :func:`square_fraction`, at least 1 for Linf and an odd number >= 3 for L2, at most the
    image side) and keeps it when it lowers the loss: the margin ``z_y - max_{i != y} z_i``
    (targeted: ``max_{i != t} z_i - z_t``) or, with ``loss: ce``, the cross-entropy of the
    label (targeted: of the target). One query per sample at the start and one per
    iteration, ``n_queries`` in all; a sample stops as soon as it reaches the goal.

    * Linf: start at ``x +- eps`` in vertical stripes (one random sign per channel and
      column); a proposal sets the square to ``x + eps * s`` with one random sign ``s`` per
      channel (a proposal that would change nothing is given the opposite signs).
    * L2 (Algorithm 3): start from a grid of tiles holding :func:`l2_window` with random signs,
      scaled to norm ``eps``; a proposal picks two squares ``W1``, ``W2``, empties ``W2`` and
      moves its mass, the budget left unused and the old content of ``W1`` into ``W1``,
      per channel ``nu_W1 = eps_avail * normalise(+-eta + nu_W1 / ||nu_W1||)`` with
      ``eps_avail^2 = ||nu_{W1 u W2}||^2 + (eps^2 - ||nu||^2) / c``.

    Every point is clipped to the data bounds. Inputs of any shape work: a vector of ``d``
    features is a ``1 x 1 x d`` image, so the squares are single features. Squares are drawn
    per sample (the reference code draws one position per batch); ``p_init = 0.8`` is
    AutoAttack's setting for both norms (the paper's ImageNet runs use 0.05 for Linf, 0.1 for
    L2; on 8x8 digits the result hardly depends on it).
    """

    name = "square"
    norms: ClassVar[tuple[float, ...]] = (math.inf, 2.0)

    n_queries: int = 5000
    p_init: float = 0.8
    loss: str = "margin"

    def __post_init__(self) -> None:
        super().__post_init__()
        require_int("n_queries", self.n_queries, minimum=1)
        Number(0, 1, low_open=True, what="a fraction in (0, 1]").check("p_init", self.p_init)
        Choice(tuple(LOSSES), "unknown loss").check("loss", self.loss)

    def _objective(self, logits: torch.Tensor, goal: Goal) -> torch.Tensor:
        """Per-sample loss to minimise."""
        if self.loss == "ce":
            return -goal.loss(logits)
        return -goal.margin(logits)  # z_y - max_{j != y} z_j (targeted: max_{j != t} z_j - z_t)

    def _side(self, iteration: int, height: int, width: int) -> int:
        p = square_fraction(self.p_init, iteration, self.n_queries)
        side = max(round(math.sqrt(p * height * width)), 1)
        if self.norm == 2.0:
            side = max(side + (side % 2 == 0), 3)
        return min(side, height, width)

    def perturb(self, model: nn.Module, x: torch.Tensor, goal: Goal, bounds: Bounds) -> tuple[torch.Tensor, torch.Tensor]:
        c, h, w = image_shape(tuple(x.shape[1:]))

        def query(z: torch.Tensor, goal: Goal) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            logits = model(z.reshape((len(z),) + x.shape[1:]))
            return self._objective(logits, goal), goal.reached(logits), logits

        with torch.no_grad():
            clean = x.reshape(len(x), c, h, w)
            best = self._start(clean, bounds)
            loss, reached, logits = query(best, goal)
            out, out_logits = best.clone(), logits.clone()
            rows = (~reached).nonzero().squeeze(1)
            clean, best, loss, logits, goal = clean[rows], best[rows], loss[rows], logits[rows], goal.subset(rows)
            for iteration in range(self.n_queries - 1):
                if len(rows) == 0:
                    break
                proposal = self._propose(clean, best, self._side(iteration, h, w), bounds)
                new_loss, reached, new_logits = query(proposal, goal)
                accept = reached | (new_loss < loss)
                best = torch.where(accept.view(-1, 1, 1, 1), proposal, best)
                loss = torch.where(accept, new_loss, loss)
                logits = torch.where(accept[:, None], new_logits, logits)
                if reached.any():  # a fooled sample stops with this point
                    out[rows[reached]], out_logits[rows[reached]] = proposal[reached], new_logits[reached]
                    keep = ~reached
                    rows, clean, best, loss, logits = rows[keep], clean[keep], best[keep], loss[keep], logits[keep]
                    goal = goal.subset(keep)
            out[rows], out_logits[rows] = best, logits
        return out.reshape(x.shape), out_logits

    def _start(self, x: torch.Tensor, bounds: Bounds) -> torch.Tensor:
        n, c, h, w = x.shape
        if self.norm == math.inf:
            stripes = torch.randint(0, 2, (n, c, 1, w), device=x.device).to(x.dtype) * 2 - 1
            return (x + self.eps * stripes).clamp(*bounds)
        tile = max(min(h, w) // 5, 1)
        grid_h, grid_w = -(-h // tile), -(-w // tile)
        signs = torch.randint(0, 2, (n, c, grid_h, grid_w), device=x.device).to(x.dtype) * 2 - 1
        signs = signs.repeat_interleave(tile, dim=2).repeat_interleave(tile, dim=3)[:, :, :h, :w]
        pattern = l2_window(tile).to(x).repeat(grid_h, grid_w)[:h, :w]
        delta = signs * pattern
        delta = delta * (self.eps / lp_norm(delta, 2.0).clamp_min(1e-12)).view(-1, 1, 1, 1)
        return (x + delta).clamp(*bounds)

    def _propose(self, x: torch.Tensor, best: torch.Tensor, side: int, bounds: Bounds) -> torch.Tensor:
        if self.norm == math.inf:
            return self._propose_linf(x, best, side, bounds)
        return self._propose_l2(x, best, side, bounds)

    def _propose_linf(self, x: torch.Tensor, best: torch.Tensor, side: int, bounds: Bounds) -> torch.Tensor:
        n, c, h, w = x.shape
        window = random_squares(n, side, h, w, x.device)[0]
        signs = torch.randint(0, 2, (n, c, 1, 1), device=x.device).to(x.dtype) * 2 - 1
        proposal = torch.where(window, (x + self.eps * signs).clamp(*bounds), best)
        unchanged = (proposal == best).flatten(1).all(dim=1)
        if unchanged.any():
            flipped = torch.where(window, (x - self.eps * signs).clamp(*bounds), best)
            proposal = torch.where(unchanged.view(-1, 1, 1, 1), flipped, proposal)
        return proposal

    def _propose_l2(self, x: torch.Tensor, best: torch.Tensor, side: int, bounds: Bounds) -> torch.Tensor:
        n, c, h, w = x.shape
        nu = best - x
        first, top, left = random_squares(n, side, h, w, x.device)
        second = random_squares(n, side, h, w, x.device)[0]
        # The update pattern placed in each sample's first square, randomly transposed.
        eta = l2_window(side).to(x)
        eta = torch.where(torch.rand(n, 1, 1, device=x.device) < 0.5, eta, eta.T)
        rows = (torch.arange(h, device=x.device) - top[:, None]).clamp(0, side - 1)
        cols = (torch.arange(w, device=x.device) - left[:, None]).clamp(0, side - 1)
        placed = eta[torch.arange(n, device=x.device)[:, None, None], rows[:, :, None], cols[:, None, :]]
        placed = placed[:, None] * first
        signs = torch.randint(0, 2, (n, c, 1, 1), device=x.device).to(x.dtype) * 2 - 1

        def channel_norm(t: torch.Tensor) -> torch.Tensor:
            return t.pow(2).sum(dim=(2, 3), keepdim=True).sqrt()

        unused = (self.eps**2 - lp_norm(nu, 2.0) ** 2).clamp_min(0.0).view(-1, 1, 1, 1)
        old = nu * first
        moved = signs * placed + old / channel_norm(old).clamp_min(1e-12)
        available = (channel_norm(nu * (first | second)) ** 2 + unused / c).sqrt()
        new = moved / channel_norm(moved).clamp_min(1e-12) * available
        nu = torch.where(first, new, torch.where(second, torch.zeros_like(nu), nu))
        return (x + project(nu, self.eps, 2.0)).clamp(*bounds)
