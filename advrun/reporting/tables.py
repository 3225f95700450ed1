"""The console summary of a run."""

from __future__ import annotations

import math

import pandas as pd
from rich.table import Table

from advrun.stats import METHOD, bracketed, clopper_pearson


def _pct(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}%"


def _num(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


def _pct_ci(row: dict, name: str) -> str:
    """A rate of a curve row with its interval in brackets below it (where the row has one), so that
    the table fits an 80-column terminal."""
    value = row.get(name)
    text = _pct(value)
    return text if text == "-" else text + bracketed(row.get(f"{name}_low"), row.get(f"{name}_high")).replace(" [", "\n[")


def clean_summary(clean_accuracy: float, n_samples: int) -> str:
    """``clean accuracy 93.33% [84.1, 98.2] of 60 samples`` (the interval from the count it implies)."""
    interval = bracketed(*clopper_pearson(round(clean_accuracy * n_samples), n_samples)) if n_samples else ""
    return f"clean accuracy {_pct(clean_accuracy)}{interval} of {n_samples} samples"


def summary_table(curve: pd.DataFrame, clean_accuracy: float, n_samples: int, title: str) -> Table:
    """Robust accuracy, success rate (each with its 95% interval) and perturbation norms per
    (attack, epsilon), denominators and the interval's method stated."""
    table = Table(title=title, caption=(
        f"{clean_summary(clean_accuracy, n_samples)}. Robust accuracy: correct under attack / all {n_samples}. "
        f"Success rate: fooled / initially correct. In brackets: the {METHOD}, in %. "
        "Median norm: of the successful perturbations."
    ))
    for column in ("attack", "eps", "robust acc", "success rate", "median norm", "time"):
        table.add_column(column, justify="left" if column == "attack" else "right",
                         min_width=len("[100.0, 100.0]") if column in ("robust acc", "success rate") else None)
    for row in curve.to_dict("records"):
        table.add_row(
            f"{row['attack']} ({row['norm']})", f"{row['eps']:g}", _pct_ci(row, "robust_accuracy"),
            _pct_ci(row, "success_rate"), _num(row["median_norm"]), f"{row['time_s']:.2f}s",
        )
    return table
