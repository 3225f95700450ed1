"""The pictures of a trained model that a run saves beside its curves, chosen by what applies:

* images (inputs C x H x W) and an attack: the adversarial gallery of the first evaluation samples
  (:mod:`advrun.reporting.gallery`), ``adversarial_gallery.png``;
* images and an affine model (e.g. ``model=logreg``): weight pattern and optimal perturbation
  (:mod:`advrun.reporting.linear`), ``linear_model.png``;
* 2-D inputs (``dataset=moons``): decision regions with training and adversarial points
  (:mod:`advrun.reporting.regions`), ``decision_regions.png``.

The run saves every figure as PNG and SVG. Making them never moves the global random state, so the
numbers a run reports do not depend on which pictures it drew.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from advrun.attacks.base import Attack
from advrun.attacks.norms import norm_name
from advrun.data import Dataset
from advrun.reporting.gallery import attack_gallery, plot_gallery
from advrun.reporting.plots import plt
from advrun.reporting.linear import affine_weights, plot_linear_model
from advrun.reporting.regions import plot_decision_regions

log = logging.getLogger(__name__)

#: Evaluation samples in the gallery and in the linear model's perturbation row.
GALLERY_SAMPLES = 8
#: Evaluation points attacked in the picture of 2-D decision regions.
REGION_SAMPLES = 40


def _linear_budget(attack: Attack | None, data: Dataset) -> float | None:
    """The budget of the optimal-perturbation row: the attack's, or for a minimum-norm attack the
    data set's default for its norm; None without an Lp attack."""
    if attack is None:
        return None
    return attack.illustration_eps(data.budgets.get(norm_name(attack.norm), {}).get("eps"))


def model_figures(model: nn.Module, attack: Attack | None, data: Dataset, x: torch.Tensor,
                  y: torch.Tensor, title: str = "") -> dict[str, plt.Figure]:
    """The pictures that apply to this model and data (module docstring), by file stem; ``x, y``:
    the evaluation samples, of which the first few are shown."""
    drawn = {}
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if len(data.shape) == 3:
            x_few, y_few = x[:GALLERY_SAMPLES], y[:GALLERY_SAMPLES]
            if attack is not None and len(x_few):
                gallery = attack_gallery(model, attack, x_few, y_few, bounds=data.bounds)
                drawn["adversarial_gallery"] = plot_gallery(gallery, data.class_names, bounds=data.bounds, title=(
                    f"{title}\n{attack.label} at {attack.describe_budget()}: the first {len(x_few)} evaluation samples"))
            affine = affine_weights(model, x) if len(x) else None
            if affine is not None:
                eps = _linear_budget(attack, data)
                drawn["linear_model"] = plot_linear_model(
                    *affine, data.shape, data.class_names, x=x_few if eps else None, y=y_few if eps else None,
                    eps=eps, norm=attack.norm if eps else None, title=f"{title}: an affine model")
        elif data.shape == (2,):
            x_few, y_few = x[:REGION_SAMPLES], y[:REGION_SAMPLES]
            x_adv = attack(model, x_few, y_few, bounds=data.bounds).x_adv if attack is not None and len(x_few) else None
            subtitle = (f"\n{attack.label} at {attack.describe_budget()}, {len(x_few)} evaluation points"
                        if x_adv is not None else "")
            drawn["decision_regions"] = plot_decision_regions(
                model, data.x_train, data.y_train, data.class_names, bounds=data.bounds,
                x=x_few if x_adv is not None else None, x_adv=x_adv, title=f"{title}{subtitle}")
    log.debug("model figures: %s", ", ".join(drawn) or "none apply")
    return drawn
