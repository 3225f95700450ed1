"""Figures: robustness curve (robust accuracy against epsilon), training curves, minimal-norm
distribution, and the combined curves of a sweep. Every figure is saved as PNG and SVG by :func:`save`."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from advrun import io  # noqa: E402
from advrun.runfolder import is_certified  # noqa: E402

_NORM_LABEL = {"linf": r"$L_\infty$", "l2": r"$L_2$", "l1": r"$L_1$"}
#: The formats every figure is saved in.
FORMATS = ("png", "svg")


def render(fig) -> dict[str, bytes]:
    """``fig`` as the bytes of each format of :data:`FORMATS`; the figure is closed."""
    from io import BytesIO

    rendered = {}
    try:
        for fmt in FORMATS:
            buffer = BytesIO()
            fig.savefig(buffer, format=fmt, dpi=150, bbox_inches="tight")
            rendered[fmt] = buffer.getvalue()
    finally:
        plt.close(fig)
    return rendered


def save(fig, stem: str | Path) -> list[Path]:
    """Save ``fig`` as ``<stem>.png`` and ``<stem>.svg`` (atomic writes), close it, return the paths."""
    stem = Path(stem)
    paths = []
    for fmt, data in render(fig).items():
        paths.append(stem.with_name(f"{stem.name}.{fmt}"))
        io.write_bytes(paths[-1], data)
    return paths


def norm_axis_label(norms, bounds=(0.0, 1.0)) -> str:
    """The x label of a curve: the budget, its norm(s) and the input units (the data bounds)."""
    names = ", ".join(_NORM_LABEL.get(n, n) for n in sorted(set(norms)))
    return f"budget epsilon ({names} norm; inputs in [{bounds[0]:g}, {bounds[1]:g}])"


def certified_label(attack: str, norm: str) -> str:
    """The legend of certified rows: the method, and what its number bounds."""
    method = attack.removeprefix("certified").lstrip("-") or "closed form"
    if method == "smoothing":
        return f"certified ({norm}, smoothing): the smoothed classifier"
    return f"certified ({norm}, {method}), lower bound"


def plot_robustness_curve(curve: pd.DataFrame, title: str = "", bounds=(0.0, 1.0)):
    """Robust accuracy (%) against epsilon, one line per attack, clean accuracy dashed."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for (attack, norm), rows in curve.groupby(["attack", "norm"], sort=False):
        rows = rows.sort_values("eps")
        if rows["eps"].isna().all():  # not an Lp threat model: one number, drawn as a line
            ax.axhline(100 * rows["robust_accuracy"].iloc[0], color="tab:red", label=f"{attack}")
            continue
        if is_certified(attack):  # a proof, not an attack
            ax.plot(rows["eps"], 100 * rows["robust_accuracy"], marker="s", linestyle="--", color="black",
                    label=certified_label(attack, norm))
            continue
        ax.plot(rows["eps"], 100 * rows["robust_accuracy"], marker="o", label=f"{attack} ({norm})")
    clean = 100 * curve["clean_accuracy"].iloc[0]
    ax.axhline(clean, color="grey", linestyle="--", linewidth=1, label=f"clean ({clean:.1f}%)")
    ax.set_xlabel(norm_axis_label(curve.loc[curve["eps"].notna(), "norm"], bounds))
    ax.set_ylabel("robust accuracy (% of all samples)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    return fig


def robust_columns(history: pd.DataFrame) -> list[str]:
    """Columns of a training history holding a robust accuracy per epoch (named like ``*robust*``)."""
    return [c for c in history.columns if "robust" in c.lower() and pd.api.types.is_numeric_dtype(history[c])]


def plot_training_curve(history: pd.DataFrame, title: str = ""):
    """Mean training loss and clean train / test accuracy per epoch, and every robust accuracy
    the defense measured (columns named like ``*robust*``), dotted."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.6))
    ax_loss.plot(history["epoch"], history["loss"], marker=".")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss (defense objective)")
    ax_loss.grid(alpha=0.3)
    ax_acc.plot(history["epoch"], 100 * history["train_accuracy"], marker=".", label="train (clean)")
    ax_acc.plot(history["epoch"], 100 * history["test_accuracy"], marker=".", label="test (clean)")
    for column in robust_columns(history):
        rows = history[history[column].notna()]
        ax_acc.plot(rows["epoch"], 100 * rows[column], marker="x", linestyle=":", label=column.replace("_", " "))
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


def plot_combined_curves(curves: list[tuple[str, pd.DataFrame]], title: str = ""):
    """Robust accuracy against epsilon for several runs (a sweep): one line per run, one panel per norm.

    ``curves`` holds ``(label, curve)`` pairs, ``curve`` with the columns of ``curve.csv``; each
    run's attack rows are drawn solid, its certified rows (a lower bound) dashed in the same colour.
    Runs without an Lp curve (no attack, rotations, patches) are left out.
    """
    lines = [(label, c[c["eps"].notna()]) for label, c in curves]
    lines = [(label, c) for label, c in lines if len(c)]
    norms = sorted({n for _, c in lines for n in c["norm"]}) or ["linf"]
    fig, axes = plt.subplots(1, len(norms), figsize=(6.5 * len(norms), 4.5), squeeze=False)
    colours = plt.get_cmap("tab10" if len(lines) <= 10 else "tab20")
    for i, (label, curve) in enumerate(lines):
        colour = colours(i % colours.N)
        for (attack, norm), rows in curve.groupby(["attack", "norm"], sort=False):
            ax = axes[0][norms.index(norm)]
            rows = rows.sort_values("eps")
            certified = is_certified(attack)
            ax.plot(rows["eps"], 100 * rows["robust_accuracy"], color=colour, marker="s" if certified else "o",
                    markersize=3, linestyle="--" if certified else "-",
                    label=f"{label}: {attack}")
    for ax, norm in zip(axes[0], norms):
        ax.set_xlabel(norm_axis_label([norm]))
        ax.set_ylabel("robust accuracy (% of all samples)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no finished run with an Lp curve", ha="center", transform=ax.transAxes)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
