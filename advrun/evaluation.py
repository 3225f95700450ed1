"""Clean and robust accuracy, attack success rates and perturbation norms over a budget grid.

Three numbers, three denominators:

* clean accuracy: correctly classified clean inputs / all N evaluated samples;
* robust accuracy: samples classified correctly both clean and under attack / all N;
* success rate: samples whose goal the attack reached / initially correct samples (for a
  targeted attack: initially correct samples whose label is not already the target).

For untargeted attacks ``robust_accuracy = clean_accuracy * (1 - success_rate)`` exactly.
Each of the three has its 95% Clopper-Pearson interval (:mod:`advrun.stats`) beside it in the
curve (``*_low``, ``*_high``), computed from the counts of the row.

The kind of the attack (:mod:`advrun.attacks.base`) says how a curve is measured: bounded
attacks run once per budget; a minimum-norm attack runs once, and at budget eps a sample
counts as fooled when the attack succeeded with a perturbation of norm <= eps; attacks
outside the Lp threat model (rotations, patches) run once and give one row with ``eps`` NaN.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import torch
from torch import nn

from advrun.attacks.base import NORM_QUANTILES, Attack, AttackResult, Bounds
from advrun.attacks.norms import norm_name
from advrun.console import progress_bar
from advrun.stats import clopper_pearson
from advrun.training import predict

#: The proportions of a curve row with an interval: their count and its denominator.
PROPORTIONS = {
    "clean_accuracy": ("n_correct", "n_samples"),
    "robust_accuracy": ("n_robust", "n_samples"),
    "success_rate": ("n_success", "n_eligible"),
}
CURVE_COLUMNS = [
    "attack", "norm", "target", "eps", "n_samples", "n_correct", "n_robust", "n_eligible", "n_success",
    *[column for name in PROPORTIONS for column in (name, f"{name}_low", f"{name}_high")],
    "mean_norm", "median_norm", "time_s", *NORM_QUANTILES,
]


def intervals(row: dict) -> dict[str, float]:
    """The 95% Clopper-Pearson interval (``<name>_low``, ``<name>_high``) of every proportion of
    :data:`PROPORTIONS` whose count and denominator the curve row ``row`` holds."""
    bounds = {}
    for name, (count, total) in PROPORTIONS.items():
        if row.get(count) is not None and row.get(total) is not None:
            bounds[f"{name}_low"], bounds[f"{name}_high"] = clopper_pearson(row[count], row[total])
    return bounds


#: The per-sample results (``samples.csv``): one row per evaluated sample and attack run.
SAMPLE_COLUMNS = [
    "index", "attack", "norm", "eps", "label", "target", "clean_prediction", "adversarial_prediction",
    "clean_correct", "eligible", "success", "robust", "perturbation_norm", "fooled_by",
]


@dataclass
class Evaluation:
    """The curve (one row per budget, see ``CURVE_COLUMNS``); for a minimum-norm attack, one row
    per sample with its minimal norm (``samples``: label, clean correctness, success, norm); and
    the per-sample results of every attack run (``per_sample``, see :func:`per_sample_rows`)."""

    curve: pd.DataFrame
    samples: pd.DataFrame | None = None
    per_sample: pd.DataFrame | None = None


def _joined(parts: list[AttackResult], name: str) -> torch.Tensor | None:
    """The optional field ``name`` of the results of every batch, concatenated (None: the attack gives none)."""
    return None if getattr(parts[0], name) is None else torch.cat([getattr(p, name) for p in parts])


def _attack_all(attack: Attack, model, x, y, bounds, batch_size, advance) -> AttackResult:
    parts = []
    for i in range(0, len(x), batch_size):
        parts.append(attack(model, x[i : i + batch_size], y[i : i + batch_size], bounds=bounds))
        advance()
    return AttackResult(
        x_adv=torch.cat([p.x_adv for p in parts]),
        success=torch.cat([p.success for p in parts]),
        norms=torch.cat([p.norms for p in parts]),
        predictions=torch.cat([p.predictions for p in parts]),
        targets=_joined(parts, "targets"),
        fooled_by=_joined(parts, "fooled_by"),
        clean_predictions=_joined(parts, "clean_predictions"),
    )


def _row(attack: Attack, eps: float, y, clean_correct, result: AttackResult, seconds: float) -> dict:
    within = attack.within_budget(result.norms, eps)
    fooled = clean_correct & (result.predictions != y) & within
    eligible = clean_correct if result.targets is None else clean_correct & (result.targets != y)
    success = eligible & result.success & within
    n, n_correct, n_eligible, n_success = len(y), int(clean_correct.sum()), int(eligible.sum()), int(success.sum())
    n_robust = n_correct - int(fooled.sum())
    norms = result.norms[success].double()
    row = {
        "attack": attack.name,
        "norm": norm_name(attack.norm),
        "target": None if attack.target is None else str(attack.target),
        "eps": float(eps),
        "n_samples": n,
        "n_correct": n_correct,
        "n_robust": n_robust,
        "n_eligible": n_eligible,
        "n_success": n_success,
        "clean_accuracy": n_correct / n,
        "robust_accuracy": n_robust / n,
        "success_rate": n_success / n_eligible if n_eligible else math.nan,
        "mean_norm": norms.mean().item() if n_success else math.nan,
        "median_norm": norms.quantile(0.5).item() if n_success else math.nan,
        "time_s": seconds,
    }
    return row | intervals(row) | attack.curve_fields(result, eligible)


def _samples(attack: Attack, y, clean_correct, result: AttackResult) -> pd.DataFrame | None:
    """The per-sample table the kind of attack keeps (``norms.csv``), or None."""
    columns = attack.sample_columns(result)
    if not columns:
        return None
    columns = {"label": y, "clean_correct": clean_correct, **columns}
    return pd.DataFrame({name: values.cpu().numpy() for name, values in columns.items()})


def per_sample_rows(attack: Attack, budgets: Sequence[float], y: torch.Tensor,
                    clean_predictions: torch.Tensor, result: AttackResult) -> pd.DataFrame:
    """One row per sample (``SAMPLE_COLUMNS``) for one run of ``attack`` that gives the curve's rows at ``budgets``.

    A run at one budget (a bounded attack, or one outside the Lp threat model with ``eps`` NaN)
    gives rows at that budget: ``success`` is the goal reached within it, as :func:`_row` counts.
    A minimum-norm attack's single run gives rows with ``eps`` NaN: ``success`` is the goal reached
    at all and ``perturbation_norm`` the minimal norm (inf where it failed), so the sample counts
    at budget eps when it succeeded with ``attack.within_budget(norm, eps)``. ``eligible``: the
    samples whose successes the success rate counts; ``robust``: correct both clean and under the
    attack (within the row's budget; for a minimum-norm attack, at any budget).
    """
    clean_correct = clean_predictions == y
    eligible = clean_correct if result.targets is None else clean_correct & (result.targets != y)
    eps = attack.sample_budget(budgets)
    if eps is None:  # minimal norms, judged at no budget
        eps = math.nan
        within = torch.ones_like(result.success)
        norms = torch.where(result.success, result.norms, torch.inf)
    else:
        within = attack.within_budget(result.norms, eps)
        norms = result.norms
    fooled = clean_correct & (result.predictions != y) & within
    members, fooled_by = attack.member_labels, result.fooled_by
    if members is not None and fooled_by is not None:
        fooled_by = [members[i] if i >= 0 else "" for i in fooled_by.tolist()]
    else:
        fooled_by = ""
    columns = {
        "index": torch.arange(len(y)), "attack": attack.name, "norm": norm_name(attack.norm), "eps": eps, "label": y,
        "target": result.targets if result.targets is not None else None,
        "clean_prediction": clean_predictions, "adversarial_prediction": result.predictions,
        "clean_correct": clean_correct, "eligible": eligible, "success": result.success & within,
        "robust": clean_correct & ~fooled, "perturbation_norm": norms, "fooled_by": fooled_by,
    }
    return pd.DataFrame({name: value.cpu().numpy() if isinstance(value, torch.Tensor) else value
                         for name, value in columns.items()}, columns=SAMPLE_COLUMNS, index=range(len(y)))


def robustness_curve(
    model: nn.Module,
    attack: Attack,
    x: torch.Tensor,
    y: torch.Tensor,
    epsilons: Sequence[float],
    *,
    bounds: Bounds,
    batch_size: int,
) -> Evaluation:
    """Evaluate ``attack`` on ``(x, y)`` at every budget in ``epsilons``: the curve, and the
    per-sample results of every run (:func:`per_sample_rows`; ``index`` is the position in ``x``).

    ``mean_norm`` and ``median_norm`` summarise the perturbations of the successful
    adversarial examples at that budget (NaN when there are none); minimum-norm attacks
    add the quantiles ``norm_q*`` of all their successful minimal norms; other columns an
    attack adds (``curve_fields``: an ensemble's ``robust_after_*``) follow ``CURVE_COLUMNS``.
    """
    clean_predictions = predict(model, x, batch_size)
    clean_correct = clean_predictions.eq(y)
    runs = attack.curve_runs(epsilons)
    rows, per_sample = [], []
    samples = None
    with progress_bar() as bar:
        task = bar.add_task(f"attack {attack.label}", total=len(runs) * math.ceil(len(x) / batch_size))
        for run, budgets in runs:
            start = time.perf_counter()
            result = _attack_all(run, model, x, y, bounds, batch_size, lambda: bar.advance(task))
            seconds = time.perf_counter() - start
            # the attack as run: a bounded attack's copy at its budget, whose curve fields may depend on it
            rows += [_row(run, eps, y, clean_correct, result, seconds) for eps in budgets]
            samples = _samples(attack, y, clean_correct, result)
            per_sample.append(per_sample_rows(attack, budgets, y, clean_predictions, result))
    extra = [column for column in dict.fromkeys(k for row in rows for k in row) if column not in CURVE_COLUMNS]
    return Evaluation(pd.DataFrame(rows, columns=CURVE_COLUMNS + extra), samples,
                      pd.concat(per_sample, ignore_index=True))
