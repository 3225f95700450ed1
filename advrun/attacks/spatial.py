"""Worst-case rotations and translations by grid search (Engstrom, Tran, Tsipras, Schmidt &
Madry 2019, "Exploring the landscape of spatial robustness", sec. 3 and 5): every
combination of ``rotations`` angles in ``[-max_rotation, max_rotation]`` degrees and
``translations`` shifts per axis in ``[-max_translation, max_translation]`` (a fraction of
the image side) is tried; a sample counts as fooled if any of them fools the model. The
paper's MNIST grid is 31 angles in [-30, 30] degrees times 5 x 5 shifts in [-3, 3] pixels of 28.

This threat model is not an Lp ball: the report shows the norm of the change, unchecked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from advrun.attacks.base import Bounds, Goal, ThreatModelAttack
from advrun.errors import InvalidValue, Number, require_int

#: Transformed inputs evaluated at once, in input values (grid points x samples x pixels).
_CHUNK_VALUES = 2**20


def rotate_translate(
    x: torch.Tensor, angles: torch.Tensor, shifts: torch.Tensor, fill: float = 0.0
) -> torch.Tensor:
    """Rotate images ``x`` (N x C x H x W) about their centre by ``angles`` (N, degrees,
    counter-clockwise as displayed with row 0 on top, like ``torch.rot90``), then shift them by
    ``shifts`` (N x 2: right, down; in pixels). Bilinear interpolation; pixels that come from
    outside the image take the value ``fill``."""
    n, _, h, w = x.shape
    radians = angles.to(x.dtype) * (math.pi / 180.0)
    cos, sin = torch.cos(radians), torch.sin(radians)
    # affine_grid maps output to input coordinates, normalised to [-1, 1] on each axis
    # (x right, y down); in pixel units the input point of output point q is R (q - shift).
    theta = torch.stack([
        torch.stack([cos, -sin * h / w, -(cos * shifts[:, 0] - sin * shifts[:, 1]) * 2 / w], dim=1),
        torch.stack([sin * w / h, cos, -(sin * shifts[:, 0] + cos * shifts[:, 1]) * 2 / h], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    moved = F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
    identity = ((angles == 0) & (shifts == 0).all(dim=1)).reshape(n, 1, 1, 1)
    return torch.where(identity, x, moved)  # exact, free of interpolation round-off


def _axis(limit: float, count: int) -> torch.Tensor:
    """``count`` evenly spaced values in ``[-limit, limit]`` (just 0 when ``count`` is 1)."""
    if count == 1:
        return torch.zeros(1, dtype=torch.float64)
    return torch.linspace(-limit, limit, count, dtype=torch.float64)


@dataclass
class Spatial(ThreatModelAttack):
    """Grid search over rotations and translations, all samples of the batch at once.

    Grid points are tried from the smallest transformation (the identity, when on the grid)
    to the largest; each sample keeps the first one that reaches the goal (so its reported
    transformation is a small one) and leaves the search; a sample no grid point fools
    keeps the transformation with the highest loss. Uncovered pixels are filled with the
    lower data bound (black).
    """

    name = "spatial"

    max_rotation: float = 30.0
    rotations: int = 31
    max_translation: float = 3.0 / 28.0
    translations: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        for key, limit in (("max_rotation", 180.0), ("max_translation", 1.0)):
            Number(0, limit).check(key, getattr(self, key))
        require_int("rotations", self.rotations, minimum=1)
        require_int("translations", self.translations, minimum=1)

    def check_model(self, model: nn.Module, in_shape: tuple[int, ...]) -> None:
        super().check_model(model, in_shape)
        if len(in_shape) != 3:
            raise InvalidValue(
                "_target_", f"spatial transformations need images (channels, height, width), not inputs of shape {tuple(in_shape)}"
            )

    def grid(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Angles (G, degrees) and shifts (G x 2, pixels) of every grid point, smallest first."""
        angles, dx, dy = torch.meshgrid(
            _axis(self.max_rotation, self.rotations),
            _axis(self.max_translation * width, self.translations),
            _axis(self.max_translation * height, self.translations),
            indexing="ij",
        )
        angles, dx, dy = angles.flatten(), dx.flatten(), dy.flatten()
        size = (
            (angles / max(self.max_rotation, 1e-12)) ** 2
            + (dx / max(self.max_translation * width, 1e-12)) ** 2
            + (dy / max(self.max_translation * height, 1e-12)) ** 2
        )
        order = torch.sort(size, stable=True).indices
        return angles[order], torch.stack([dx, dy], dim=1)[order]

    def perturb(
        self, model: nn.Module, x: torch.Tensor, goal: Goal, bounds: Bounds
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"spatial transformations need a batch of images, got shape {tuple(x.shape)}")
        lo, hi = bounds
        n, c, h, w = x.shape
        angles, shifts = self.grid(h, w)
        angles, shifts = angles.to(x.device, x.dtype), shifts.to(x.device, x.dtype)
        best_x = x.clone()
        best_logits: torch.Tensor | None = None
        best_loss = torch.full((n,), -torch.inf, device=x.device)
        done = torch.zeros(n, dtype=torch.bool, device=x.device)
        start = 0
        with torch.no_grad():
            while start < len(angles) and not done.all():
                active = (~done).nonzero().squeeze(1)
                m = len(active)
                size = max(1, min(len(angles) - start, _CHUNK_VALUES // (m * c * h * w)))
                # Grid-point-major: row j * m + i is sample active[i] under grid point start + j.
                moved = rotate_translate(
                    x[active].repeat(size, 1, 1, 1),
                    angles[start : start + size].repeat_interleave(m),
                    shifts[start : start + size].repeat_interleave(m, dim=0),
                    fill=lo,
                ).clamp(lo, hi)
                logits = model(moved)
                if best_logits is None:
                    best_logits = torch.full((n, logits.shape[1]), torch.nan, device=x.device)
                labels = goal.labels[active].repeat(size)
                chunk_goal = Goal(labels, goal.targeted)
                fooled = chunk_goal.reached(logits).reshape(size, m)
                losses = chunk_goal.loss(logits).reshape(size, m)
                moved = moved.reshape(size, m, c, h, w)
                logits = logits.reshape(size, m, -1)
                found = fooled.any(dim=0)
                pick = torch.where(found, fooled.to(torch.int8).argmax(dim=0), losses.argmax(dim=0))
                pick_loss = losses.gather(0, pick[None]).squeeze(0)
                better = found | (pick_loss > best_loss[active])
                columns = torch.arange(m, device=x.device)
                best_x[active[better]] = moved[pick[better], columns[better]]
                best_logits[active[better]] = logits[pick[better], columns[better]]
                best_loss[active[better]] = pick_loss[better]
                done[active[found]] = True
                start += size
        return best_x, best_logits
