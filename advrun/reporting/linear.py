"""Pictures of an affine classifier on images: its weight pattern and its optimal perturbation.

For logits ``z = W x + b`` the change of the margin ``z_j - z_y`` under a perturbation ``d`` is
``(w_j - w_y) . d``, at most ``eps ||w_j - w_y||_q`` over ``||d||_p <= eps`` (Hoelder, ``q`` the
dual norm of ``p``), reached at ``d = eps * sign(w_j - w_y)`` for Linf: the linear explanation of
adversarial examples of Goodfellow et al. 2015 ("Explaining and harnessing adversarial examples",
Sec. 3, ``eta = eps sign(w)``); ``eps (w_j - w_y) / ||w_j - w_y||_2`` for L2; for L1 all of ``eps``
on the coordinate of largest ``|w_j - w_y|``. The most damaging class ``j`` maximises
``z_j - z_y + eps ||w_j - w_y||_q``. The data bounds are ignored, as in the certificate of
:mod:`advrun.certify`.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from advrun.attacks.base import eval_mode
from advrun.attacks.norms import dual_norm, norm_name
from advrun.errors import InvalidValue
from advrun.reporting.gallery import to_image
from advrun.reporting.plots import plt
from advrun.structure import affine_map, probe_points


def affine_weights(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(W, b)`` (CPU, W: classes x features) if the model's logits are affine in its input,
    checked at the first inputs ``x`` and at :func:`advrun.structure.probe_points`; else None."""
    with eval_mode(model), torch.enable_grad():
        try:
            weight, bias = affine_map(model, probe_points(x.shape[1:], x, first=x[:8]))
        except InvalidValue:
            return None
    return weight.detach().cpu(), bias.detach().cpu()


def optimal_perturbation(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eps: float,
                         norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample the perturbation of norm ``eps`` that raises ``max_j z_j - z_y`` the most (module
    docstring; box ignored), and the class ``j`` it pushes towards. Returns ``(delta, targets)``."""
    flat = x.detach().cpu().flatten(1).to(weight)
    logits = flat @ weight.T + bias
    differences = weight[None, :, :] - weight[y.cpu()][:, None, :]  # (n, classes, features): w_j - w_y
    reach = eps * torch.linalg.vector_norm(differences, ord=dual_norm(norm), dim=2)  # Hoelder
    gain = logits - logits.gather(1, y.cpu()[:, None]) + reach
    gain.scatter_(1, y.cpu()[:, None], -torch.inf)
    targets = gain.argmax(dim=1)
    g = differences[torch.arange(len(x)), targets]
    if norm == math.inf:
        direction = g.sign()
    elif norm == 2.0:
        direction = g / torch.linalg.vector_norm(g, dim=1, keepdim=True).clamp_min(1e-30)
    else:
        direction = torch.zeros_like(g)
        top = g.abs().argmax(dim=1, keepdim=True)
        direction.scatter_(1, top, g.gather(1, top).sign())
    return (eps * direction).reshape(x.shape), targets


def _diverging(ax, image: torch.Tensor, limit: float) -> None:
    """A one-channel map in blue (negative) to red (positive); several channels as colour around grey."""
    if image.shape[0] == 1:
        ax.imshow(image[0].numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    else:
        ax.imshow(to_image(0.5 + image / (2 * limit)), interpolation="nearest")
    ax.set_axis_on()
    ax.set_xticks([])
    ax.set_yticks([])


def _row(part, columns: int) -> list:
    """``columns`` equal panels in a row of the figure, all hidden until drawn into."""
    axes = part.subplots(1, columns, squeeze=False)[0]
    for ax in axes:
        ax.set_axis_off()
    return list(axes)


def plot_linear_model(weight: torch.Tensor, bias: torch.Tensor, shape: Sequence[int], class_names: Sequence[str], *,
                      x: torch.Tensor | None = None, y: torch.Tensor | None = None, eps: float | None = None,
                      norm: float | None = None, title: str = ""):
    """Top: the weight pattern of each class (for two classes the one pattern ``w_1 - w_0`` that
    decides, as for a one-logit model), red positive, blue negative. Bottom (when ``x``, ``y``,
    ``eps`` and ``norm`` are given): the optimal perturbation of each sample at budget ``eps``."""
    shape = tuple(shape)
    if len(class_names) == 2:
        patterns = [(weight[1] - weight[0]).reshape(shape)]
        names = [f"w[{class_names[1]}] - w[{class_names[0]}]"]
    else:
        patterns = [w.reshape(shape) for w in weight]
        names = [f"class {name}" for name in class_names]
    rows = 2 if x is not None and eps else 1
    columns = max(len(patterns), len(x) if rows == 2 else 0)
    fig = plt.figure(figsize=(1.45 * columns + 0.6, 2.1 * rows + 0.4), layout="constrained")
    parts = fig.subfigures(rows, 1, squeeze=False)[:, 0]
    limit = float(max(p.abs().max() for p in patterns)) or 1.0
    axes = _row(parts[0], columns)
    for ax, pattern, name in zip(axes, patterns, names):
        _diverging(ax, pattern, limit)
        ax.set_title(name, fontsize=8)
    parts[0].suptitle(f"{title}\nweight pattern (red positive, blue negative; |w| up to {limit:.3g})".strip(),
                      fontsize=9)
    if rows == 2:
        deltas, targets = optimal_perturbation(weight, bias, x, y, eps, norm)
        axes = _row(parts[1], columns)
        for ax, delta, label, target in zip(axes, deltas, y, targets):
            _diverging(ax, delta.float(), eps)
            ax.set_title(f"{class_names[int(label)]} -> {class_names[int(target)]}", fontsize=8)
        parts[1].suptitle(f"optimal {norm_name(norm)} perturbation at eps {eps:g} (box ignored), "
                          "true class -> class it pushes towards", fontsize=9)
    return fig


__all__ = ["affine_weights", "optimal_perturbation", "plot_linear_model"]
