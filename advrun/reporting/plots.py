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
        if rows["eps"].isna().all():  # not an Lp threat model: one number, drawn as a line
            ax.axhline(100 * rows["robust_accuracy"].iloc[0], color="tab:red", label=f"{attack}")
            continue
        if attack == "certified":  # a proven lower bound, not an attack
            ax.plot(rows["eps"], 100 * rows["robust_accuracy"], marker="s", linestyle="--", color="black",
                    label=f"certified ({norm}), lower bound")
            continue
        ax.plot(rows["eps"], 100 * rows["robust_accuracy"], marker="o", label=f"{attack} ({norm})")
    clean = 100 * curve["clean_accuracy"].iloc[0]
    ax.axhline(clean, color="grey", linestyle="--", linewidth=1, label=f"clean ({clean:.1f}%)")
    norms = sorted(set(curve.loc[curve["eps"].notna(), "norm"]))
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


def plot_norm_distribution(samples: pd.DataFrame, label: str):
    """Minimal perturbation norms of a minimum-norm attack: histogram and cumulative curve.

    ``samples`` has one row per sample with ``clean_correct`` and ``norm`` (inf where the
    attack failed); the cumulative curve is the share of initially correct samples fooled
    within each budget, so it reaches 100% only if the attack always succeeded.
    """
    import numpy as np

    correct = samples[samples["clean_correct"].astype(bool)]
    norms = np.sort(correct["norm"].to_numpy())
    finite = norms[np.isfinite(norms)]
    fig, (ax_hist, ax_cdf) = plt.subplots(1, 2, figsize=(9, 3.6))
    if len(finite):
        ax_hist.hist(finite, bins=min(40, max(5, len(finite) // 5)), color="tab:blue", alpha=0.8)
        ax_cdf.step(finite, 100 * np.arange(1, len(finite) + 1) / max(1, len(norms)), where="post")
    ax_hist.set_xlabel(f"minimal perturbation norm ({label})")
    ax_hist.set_ylabel("samples")
    ax_cdf.set_xlabel(f"budget epsilon ({label})")
    ax_cdf.set_ylabel("fooled within budget (% of correct)")
    ax_cdf.set_ylim(-2, 102)
    for ax in (ax_hist, ax_cdf):
        ax.grid(alpha=0.3)
    failed = len(norms) - len(finite)
    fig.suptitle(f"{label}: {len(finite)} of {len(norms)} initially correct samples fooled"
                 + (f", {failed} not" if failed else ""))
    fig.tight_layout()
    return fig
