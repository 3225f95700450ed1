"""Adversarial patch (Brown, Mané, Roy, Abadi & Gilmer 2017, "Adversarial patch", sec. 2):
one universal, targeted patch ``p`` trained by expectation over transformations,

    p* = argmax_p  E_{x ~ X, l ~ L, t ~ T} [ log Pr(target | A(p, x, l, t)) ],

where ``A`` pastes the patch, transformed by ``t`` (rotation, scale), at location ``l`` on
image ``x``. The patch is fitted on the training images (:meth:`Patch.prepare`) and then
pasted on the held-out images, at a random location, rotation and scale per image.

The patch is a square (the paper's is round), ``scale`` its area as a fraction of the image
area; rotations are uniform in ``[-max_rotation, max_rotation]`` degrees, areas uniform in
``scale * [1 - scale_jitter, 1 + scale_jitter]`` and locations uniform over the positions
where the whole patch lies inside the image. This threat model is not an Lp ball: the report
shows the norm of the change, unchecked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from advrun.attacks.base import Bounds, Goal, ThreatModelAttack, eval_mode
from advrun.errors import InvalidValue, is_number, require_int, require_positive, shown


def paste(
    x: torch.Tensor, patch: torch.Tensor, centers: torch.Tensor, sides: torch.Tensor, angles: torch.Tensor
) -> torch.Tensor:
    """Paste the square ``patch`` (C x P x P) on each image of ``x`` (N x C x H x W).

    ``centers`` (N x 2: x right, y down) in pixels from the top-left corner of the image,
    ``sides`` (N) the side lengths in pixels and ``angles`` (N) rotations in degrees
    (counter-clockwise as displayed). A pixel belongs to the patch when its centre lies inside
    the rotated square; there it takes the bilinearly resampled patch value, elsewhere it is
    unchanged. Differentiable with respect to ``patch``.
    """
    n, _, h, w = x.shape
    rows = torch.arange(h, device=x.device, dtype=x.dtype) + 0.5
    cols = torch.arange(w, device=x.device, dtype=x.dtype) + 0.5
    rx = cols[None, None, :] - centers[:, 0, None, None]  # N x 1 x W
    ry = rows[None, :, None] - centers[:, 1, None, None]  # N x H x 1
    radians = angles.to(x.dtype) * (math.pi / 180.0)
    cos, sin = torch.cos(radians)[:, None, None], torch.sin(radians)[:, None, None]
    half = (sides.to(x.dtype) / 2)[:, None, None]
    # Patch coordinates in [-1, 1] (grid_sample's convention) of each pixel centre.
    u = (cos * rx - sin * ry) / half
    v = (sin * rx + cos * ry) / half
    inside = ((u.abs() <= 1) & (v.abs() <= 1)).unsqueeze(1)  # N x 1 x H x W
    grid = torch.stack([u, v], dim=-1)  # N x H x W x 2
    sampled = F.grid_sample(
        patch.expand(n, *patch.shape), grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return torch.where(inside, sampled, x)


def _require_number(field_name: str, value: object, valid, what: str) -> None:
    """Raise :class:`InvalidValue` unless ``value`` is a number for which ``valid(value)`` holds."""
    if not is_number(value) or not valid(value):
        raise InvalidValue(field_name, f"must be {what}, got {shown(value)}")


@dataclass
class Patch(ThreatModelAttack):
    """Targeted universal patch (``target``: a class index; default class 0).

    :meth:`prepare` trains the patch with Adam (learning rate ``learning_rate`` times the
    width of the data bounds) for ``train_steps`` steps on random minibatches of
    ``batch_size`` training images whose label is not the target, each pasted at a fresh
    random location, rotation and scale; ``perturb`` pastes it on the images it is given,
    again at random (all randomness from the global seed). ``train_steps: 0`` leaves the
    random initial patch (a baseline).
    """

    name = "patch"

    target: int | str | None = 0
    scale: float = 0.1
    scale_jitter: float = 0.2
    max_rotation: float = 20.0
    train_steps: int = 500
    batch_size: int = 64
    learning_rate: float = 0.05
    #: The trained patch (C x P x P, in the data bounds) and those bounds, set by :meth:`prepare`.
    patch: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)
    patch_bounds: Bounds | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target is None or isinstance(self.target, str):
            raise InvalidValue(
                "target", f"the adversarial patch is universal and targeted: give a class index (e.g. 0), not {self.target!r}"
            )
        _require_number("scale", self.scale, lambda v: 0 < v <= 1, "the patch area as a fraction of the image, in (0, 1]")
        _require_number("scale_jitter", self.scale_jitter, lambda v: 0 <= v < 1, "a number in [0, 1)")
        _require_number("max_rotation", self.max_rotation, lambda v: 0 <= v <= 180, "a number of degrees in [0, 180]")
        require_int("train_steps", self.train_steps, minimum=0)
        require_int("batch_size", self.batch_size, minimum=1)
        require_positive("learning_rate", self.learning_rate)

    def with_eps(self, eps: float) -> "Patch":
        return self  # not an Lp attack; a copy would also lose the trained patch

    def check_model(self, model: nn.Module, in_shape: tuple[int, ...]) -> None:
        super().check_model(model, in_shape)
        if len(in_shape) != 3:
            raise InvalidValue(
                "_target_", f"a patch needs images (channels, height, width), not inputs of shape {tuple(in_shape)}"
            )

    def placements(self, n: int, height: int, width: int, device=None) -> tuple[torch.Tensor, ...]:
        """Random centres (N x 2, pixels), sides (N, pixels) and angles (N, degrees)."""
        area = self.scale * (1 + self.scale_jitter * (2 * torch.rand(n, device=device) - 1))
        sides = (area * height * width).sqrt()
        angles = self.max_rotation * (2 * torch.rand(n, device=device) - 1)
        radians = angles * (math.pi / 180.0)
        half_extent = sides / 2 * (radians.cos().abs() + radians.sin().abs())  # of the rotated square
        centers = []
        for size in (width, height):
            low = torch.minimum(half_extent, torch.full_like(half_extent, size / 2))
            centers.append(low + (size - 2 * low) * torch.rand(n, device=device))
        return torch.stack(centers, dim=1), sides, angles

    def apply(self, x: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
        """``x`` with ``patch`` pasted at a random placement per image."""
        _, _, h, w = x.shape
        return paste(x, patch, *self.placements(len(x), h, w, device=x.device))

    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, bounds: Bounds) -> None:
        if x.dim() != 4:
            raise ValueError(f"a patch needs a batch of images, got training data of shape {tuple(x.shape)}")
        lo, hi = bounds
        c, h, w = x.shape[1:]
        # Patch pixels no larger than image pixels at the largest scale.
        resolution = max(1, math.ceil(math.sqrt(min(1.0, self.scale * (1 + self.scale_jitter)) * h * w)))
        patch = (lo + (hi - lo) * torch.rand(c, resolution, resolution, device=x.device)).requires_grad_(True)
        pool = (y != self.target).nonzero().squeeze(1)  # images of the target class teach nothing
        pool = pool if len(pool) else torch.arange(len(x), device=x.device)
        optimizer = torch.optim.Adam([patch], lr=self.learning_rate * (hi - lo))
        target = torch.full((min(self.batch_size, len(pool)),), int(self.target), device=x.device)
        with eval_mode(model), torch.enable_grad():
            for _ in range(self.train_steps):
                batch = x[pool[torch.randint(len(pool), (len(target),), device=x.device)]]
                loss = F.cross_entropy(model(self.apply(batch, patch)), target)
                (patch.grad,) = torch.autograd.grad(loss, patch)
                optimizer.step()
                with torch.no_grad():
                    patch.clamp_(lo, hi)
        self.patch, self.patch_bounds = patch.detach(), (lo, hi)

    def artifacts(self) -> dict[str, torch.Tensor]:
        if self.patch is None:
            return {}
        lo, hi = self.patch_bounds
        return {"patch": ((self.patch - lo) / (hi - lo)).cpu()}

    def perturb(self, model: nn.Module, x: torch.Tensor, goal: Goal, bounds: Bounds) -> torch.Tensor:
        if self.patch is None:
            raise RuntimeError("Patch.prepare(model, x_train, y_train, bounds) must train the patch before the attack")
        with torch.no_grad():
            return self.apply(x, self.patch.to(x.device)).clamp(*bounds)
