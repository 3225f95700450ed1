"""The console summary of a run."""

from __future__ import annotations

import math

import pandas as pd
from rich.table import Table


def _pct(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}%"


def _num(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


def summary_table(curve: pd.DataFrame, clean_accuracy: float, n_samples: int, title: str) -> Table:
    """Robust accuracy, success rate and perturbation norms per (attack, epsilon), denominators stated."""
    table = Table(title=title, caption=(
        f"clean accuracy {_pct(clean_accuracy)} of {n_samples} samples. Robust accuracy: correct "
        f"under attack / all {n_samples}. Success rate: fooled / initially correct. "
        "Norms: of successful perturbations."
    ))
    for column in ("attack", "eps", "robust acc", "success rate", "mean norm", "median norm", "time"):
        table.add_column(column, justify="left" if column == "attack" else "right")
    for row in curve.itertuples():
        table.add_row(
            f"{row.attack} ({row.norm})", f"{row.eps:g}", _pct(row.robust_accuracy), _pct(row.success_rate),
            _num(row.mean_norm), _num(row.median_norm), f"{row.time_s:.2f}s",
        )
    return table
