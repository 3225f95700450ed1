"""Decision regions of a model on 2-D data (e.g. ``dataset=moons``), with the training points and
where the attack moved a few evaluation points."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from matplotlib.colors import ListedColormap
from torch import nn

from advrun.attacks.base import Bounds, eval_mode
from advrun.reporting.plots import plt
from advrun.structure import parameter_like

_COLOURS = plt.get_cmap("tab10").colors


@torch.no_grad()
def decision_grid(model: nn.Module, bounds: Bounds, resolution: int = 200,
                  device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The model's label at the centres of a ``resolution`` x ``resolution`` grid over the box
    ``bounds`` x ``bounds``: ``(xs, ys, labels)``, ``labels[i, j]`` at ``(xs[j], ys[i])``."""
    lo, hi = bounds
    step = (hi - lo) / resolution
    centres = torch.linspace(lo + step / 2, hi - step / 2, resolution)
    grid_y, grid_x = torch.meshgrid(centres, centres, indexing="ij")
    points = torch.stack([grid_x.flatten(), grid_y.flatten()], dim=1).to(device)
    with eval_mode(model):
        labels = torch.cat([model(chunk).argmax(dim=1) for chunk in points.split(20000)])
    return centres.numpy(), centres.numpy(), labels.reshape(resolution, resolution).cpu().numpy()


def plot_decision_regions(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, class_names: Sequence[str],
                          *, bounds: Bounds, x: torch.Tensor | None = None, x_adv: torch.Tensor | None = None,
                          title: str = "", resolution: int = 200):
    """Regions coloured by the model's label, training points coloured by their true label, and,
    when given, evaluation points ``x`` (circles) joined to their adversarial points ``x_adv``
    (crosses, coloured by the model's label there)."""
    device = parameter_like(model).device
    xs, ys, labels = decision_grid(model, bounds, resolution, device)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(6, 5.4))
    light = ListedColormap([tuple(0.72 + 0.28 * c for c in _COLOURS[i % 10]) for i in range(k)])
    ax.imshow(labels, origin="lower", extent=(*bounds, *bounds), cmap=light, vmin=-0.5, vmax=k - 0.5,
              interpolation="nearest", aspect="auto")
    if k > 1:
        ax.contour(xs, ys, labels, levels=np.arange(k - 1) + 0.5, colors="black", linewidths=0.8)
    points, truth = x_train.detach().cpu().numpy(), y_train.detach().cpu().numpy()
    for c in range(k):
        mine = truth == c
        ax.scatter(points[mine, 0], points[mine, 1], s=7, color=_COLOURS[c % 10], alpha=0.6,
                   label=f"training, class {class_names[c]}")
    if x is not None and x_adv is not None:
        start, end = x.detach().cpu().numpy(), x_adv.detach().cpu().numpy()
        with torch.no_grad(), eval_mode(model):
            moved_to = model(x_adv.to(device)).argmax(dim=1).cpu().numpy()
        for a, b in zip(start, end):
            ax.annotate("", xy=b, xytext=a, arrowprops={"arrowstyle": "->", "color": "black", "lw": 0.7})
        ax.scatter(start[:, 0], start[:, 1], s=22, facecolors="none", edgecolors="black", label="evaluation point")
        ax.scatter(end[:, 0], end[:, 1], s=36, marker="X", c=[_COLOURS[int(c) % 10] for c in moved_to],
                   edgecolors="black", linewidths=0.5, label="adversarial point (colour: model's label)")
    ax.set_xlim(*bounds)
    ax.set_ylim(*bounds)
    ax.set_xlabel("feature 1")
    ax.set_ylabel("feature 2")
    ax.legend(fontsize="x-small", loc="lower left", framealpha=0.85)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
