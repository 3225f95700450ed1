"""Figures: robustness curve (robust accuracy against epsilon) and training curves."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

_NORM_LABEL = {"linf": r"$L_\infty$", "l2": r"$L_2$", "l1": r"$L_1$"}


def plot_robustness_curve(curve: pd.DataFrame, title: str = ""):
    """Robust accuracy (%) against epsilon, one line per attack, clean accuracy dashed."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for (attack, norm), rows in curve.groupby(["attack", "norm"], sort=False):
        rows = rows.sort_values("eps")
        ax.plot(rows["eps"], 100 * rows["robust_accuracy"], marker="o", label=f"{attack} ({norm})")
    clean = 100 * curve["clean_accuracy"].iloc[0]
    ax.axhline(clean, color="grey", linestyle="--", linewidth=1, label=f"clean ({clean:.1f}%)")
    norms = sorted(set(curve["norm"]))
    ax.set_xlabel("perturbation budget epsilon (" + ", ".join(_NORM_LABEL.get(n, n) for n in norms) + " norm)")
    ax.set_ylabel("robust accuracy (% of all samples)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    return fig


def plot_training_curve(history: pd.DataFrame, title: str = ""):
    """Mean training loss and clean train / test accuracy per epoch."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.6))
    ax_loss.plot(history["epoch"], history["loss"], marker=".")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss (defense objective)")
    ax_loss.grid(alpha=0.3)
    ax_acc.plot(history["epoch"], 100 * history["train_accuracy"], marker=".", label="train (clean)")
    ax_acc.plot(history["epoch"], 100 * history["test_accuracy"], marker=".", label="test (clean)")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.grid(alpha=0.3)
    ax_acc.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def close(fig) -> None:
    plt.close(fig)
