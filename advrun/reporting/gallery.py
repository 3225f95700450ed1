"""The adversarial gallery: original, amplified perturbation and adversarial input of a fixed set of
test images, with the true, clean and adversarial labels and the model's confidence in each.

It is the picture of Szegedy et al. 2014 ("Intriguing properties of neural networks", Fig. 5) and
Goodfellow et al. 2015 ("Explaining and harnessing adversarial examples", Fig. 1): a change too
small to see turns a confident right decision into a confident wrong one. The perturbation
``delta = x_adv - x`` is drawn as ``0.5 + factor * delta`` (mid-grey: unchanged), with one
``factor`` for the whole figure, stated in it (:func:`amplification`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from matplotlib.patches import Rectangle
from torch import nn

from advrun.attacks.base import Attack, Bounds, eval_mode
from advrun.reporting.plots import plt


@dataclass
class Gallery:
    """The attacked samples and what the model says about them (CPU tensors, one row per sample).

    ``clean_confidence`` / ``adversarial_confidence``: softmax probability of the predicted class
    at ``x`` / ``x_adv``; ``targets``: the attack's target classes, or None if untargeted.
    """

    x: torch.Tensor
    x_adv: torch.Tensor
    y: torch.Tensor
    clean_prediction: torch.Tensor
    clean_confidence: torch.Tensor
    adversarial_prediction: torch.Tensor
    adversarial_confidence: torch.Tensor
    targets: torch.Tensor | None = None

    @property
    def delta(self) -> torch.Tensor:
        return self.x_adv - self.x


def attack_gallery(model: nn.Module, attack: Attack, x: torch.Tensor, y: torch.Tensor, *, bounds: Bounds) -> Gallery:
    """Attack ``(x, y)`` with ``attack`` (at its headline budget) and read the model's decisions and
    softmax confidences on the clean and the adversarial inputs from one forward pass each."""
    result = attack(model, x, y, bounds=bounds)
    with torch.no_grad(), eval_mode(model):
        clean = torch.softmax(model(x), dim=1).cpu()
        adversarial = torch.softmax(model(result.x_adv), dim=1).cpu()
    clean_confidence, clean_prediction = clean.max(dim=1)
    adversarial_confidence, adversarial_prediction = adversarial.max(dim=1)
    return Gallery(
        x=x.detach().cpu(), x_adv=result.x_adv.cpu(), y=y.cpu(),
        clean_prediction=clean_prediction, clean_confidence=clean_confidence,
        adversarial_prediction=adversarial_prediction, adversarial_confidence=adversarial_confidence,
        targets=None if result.targets is None else result.targets.cpu(),
    )


def amplification(delta: torch.Tensor, bounds: Bounds = (0.0, 1.0)) -> float:
    """The factor that makes the largest change of ``delta`` (relative to the bounds' range) reach
    half the display range: ``0.5 / max |delta|``, rounded down to two significant digits so that
    ``0.5 + factor * delta`` stays inside [0, 1]; 1 when nothing changed."""
    largest = float(delta.abs().max()) / (bounds[1] - bounds[0]) if delta.numel() else 0.0
    if largest <= 0:
        return 1.0
    raw = 0.5 / largest
    scale = 10 ** (np.floor(np.log10(raw)) - 1)
    return float(np.floor(raw / scale) * scale)


def to_image(x: torch.Tensor, bounds: Bounds = (0.0, 1.0)) -> np.ndarray:
    """A CxHxW tensor in ``bounds`` as an HxW (one channel) or HxWx3 array in [0, 1]."""
    array = ((x.detach().cpu().float() - bounds[0]) / (bounds[1] - bounds[0])).clamp(0, 1).numpy()
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


def perturbation_image(delta: torch.Tensor, factor: float, bounds: Bounds = (0.0, 1.0)) -> np.ndarray:
    """``0.5 + factor * delta`` (delta relative to the bounds' range) as an image in [0, 1]."""
    return to_image(bounds[0] + (bounds[1] - bounds[0]) * 0.5 + factor * delta, bounds)


def _rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image


def plot_gallery(gallery: Gallery, class_names: Sequence[str], title: str = "", bounds: Bounds = (0.0, 1.0),
                 tile_inches: float = 1.3):
    """Three rows (original, amplified perturbation, adversarial input), one column per sample.

    Original: the true label and the model's clean label with its confidence. Adversarial: the
    model's label with its confidence, red where it is wrong, green where the model stays right.
    The tiles are laid out in one image (one axes: cheap to draw and to save as SVG).
    """
    k = len(gallery.x)
    factor = amplification(gallery.delta, bounds)
    rows = [[to_image(v, bounds) for v in gallery.x], [perturbation_image(d, factor, bounds) for d in gallery.delta],
            [to_image(v, bounds) for v in gallery.x_adv]]
    h, w = rows[0][0].shape[:2]
    gap_x, gap_y, band = max(1, round(0.15 * w)), max(1, round(0.1 * h)), max(2, round(0.5 * h))
    tops = [band, band + h + gap_y, band + 2 * h + gap_y + band]
    canvas = np.ones((tops[2] + h, k * w + (k - 1) * gap_x, 3))
    for top, tiles in zip(tops, rows):
        for j, tile in enumerate(tiles):
            canvas[top:top + h, j * (w + gap_x):j * (w + gap_x) + w] = _rgb(tile)
    width, height = tile_inches * canvas.shape[1] / w, tile_inches * canvas.shape[0] / h
    fig = plt.figure(figsize=(width + 1.0, height + 0.4))
    ax = fig.add_axes((0.9 / (width + 1.0), 0.05 / (height + 0.4), width / (width + 1.0), height / (height + 0.4)))
    ax.imshow(canvas, interpolation="nearest", aspect="equal")
    ax.set_axis_off()
    for top in tops:
        for j in range(k):
            ax.add_patch(Rectangle((j * (w + gap_x) - 0.5, top - 0.5), w, h, fill=False, edgecolor="0.6", linewidth=0.6))
    for j in range(k):
        true, clean, adv = (int(gallery.y[j]), int(gallery.clean_prediction[j]), int(gallery.adversarial_prediction[j]))
        centre = j * (w + gap_x) + (w - 1) / 2
        ax.text(centre, tops[0] - 0.7, f"true: {class_names[true]}\nclean: {class_names[clean]} "
                f"({100 * float(gallery.clean_confidence[j]):.0f}%)", ha="center", va="bottom", fontsize=8,
                color="black" if clean == true else "tab:red")
        target = "" if gallery.targets is None else f"\n(target {class_names[int(gallery.targets[j])]})"
        ax.text(centre, tops[2] - 0.7, f"adv: {class_names[adv]} ({100 * float(gallery.adversarial_confidence[j]):.0f}%)"
                f"{target}", ha="center", va="bottom", fontsize=8, color="tab:green" if adv == true else "tab:red")
    for top, label in zip(tops, ("original", f"perturbation\nx {factor:g} (grey = 0)", "adversarial")):
        ax.text(-0.5 - gap_x, top + (h - 1) / 2, label, rotation=90, ha="right", va="center", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return fig
