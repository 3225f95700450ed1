"""The report of one run, ``report.md`` and ``report.html``, built from the files of its folder alone.

Because it reads only what the run wrote (``.hydra/config.yaml``, ``metrics.json``, ``curve.csv``,
``training.csv``, ``audit.json``, ``error.txt``, the PNG figures), any run folder can be reported
again later, elsewhere or after an interruption (``advrun-report PATH``). A failed run gets a
report that says so and shows the error; a folder with neither ``metrics.json`` nor ``error.txt``
is reported as incomplete (still running, or interrupted).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd

from advrun import io
from advrun.errors import AdvrunError
from advrun.reporting.render import figure, render, table
from advrun.runfolder import FAILED, OK, Metrics, RunFolder, is_certified
from advrun.stats import bracketed

log = logging.getLogger(__name__)

#: Known figures in report order, with what they show; any other PNG of the folder follows them.
FIGURES = {
    "robustness_curve": "Robust accuracy against the budget epsilon for every attack of the run (% of all evaluated "
                        "samples); clean accuracy dashed; certified accuracy, a proven lower bound, dashed black "
                        "where the model can be certified.",
    "norm_distribution": "Minimal perturbation norms of the minimum-norm attack: histogram, and the share of the "
                         "initially correct samples fooled within each budget.",
    "adversarial_gallery": "The first evaluation samples: original (true label; the model's clean label and "
                           "confidence), the perturbation amplified by the factor stated (grey = unchanged), and the "
                           "adversarial input with the model's label and confidence (red: wrong).",
    "linear_model": "The affine model's weight pattern per class (red positive, blue negative) and the optimal "
                    "perturbation of the first evaluation samples at the budget stated.",
    "decision_regions": "Decision regions of the model (background), training points, and evaluation points "
                        "(circles) moved by the attack to their adversarial points (crosses).",
    "training_curve": "Training loss (the defense's objective) and accuracy per epoch; robust accuracy per epoch "
                      "where the defense measured it.",
    "patch": "The adversarial patch the attack trained.",
    "universal_perturbation": "The universal perturbation fitted at each budget of the curve (one for all inputs), "
                              "budgets increasing from left to right, each scaled to its largest magnitude (red "
                              "positive, blue negative, white 0; colour images: grey 0).",
}


#: Columns of a universal perturbation's curve, with their headings.
FOOLING_RATES = {"fooling_rate": "fooling rate", "train_fooling_rate": "train fooling rate"}


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def pct(value: Any) -> str:
    """``12.34%`` for a fraction, ``-`` where there is none."""
    return "-" if _missing(value) else f"{100 * float(value):.2f}%"


def pct_ci(value: Any, bounds: tuple[float, float] | None) -> str:
    """``73.20% [70.4, 75.9]``: a fraction and its interval (:func:`advrun.stats.bracketed`); the
    fraction alone where there is no interval."""
    return pct(value) + (bracketed(*bounds) if bounds is not None and not _missing(value) else "")


def num(value: Any) -> str:
    """A number in 4 significant digits, ``-`` where there is none."""
    if _missing(value):
        return "-"
    return f"{value:.4g}" if isinstance(value, (int, float)) else str(value)


def _target(config: dict, group: str) -> str:
    node = config.get(group)
    if not isinstance(node, dict):
        return "?"
    target = node.get("_target_")
    return "none" if target is None else str(target).rsplit(".", 1)[-1]


def run_title(path: Path, config: dict) -> str:
    dataset = config.get("dataset", {}).get("name", "?") if isinstance(config.get("dataset"), dict) else "?"
    return (f"advrun: {dataset} / {_target(config, 'model')} / attack {_target(config, 'attack')} / "
            f"defense {_target(config, 'defense')}")


def ood_rows(record: dict) -> list[tuple[str, str]]:
    """``(what, figures)`` per kind of image of a ``metrics.json`` ``ood`` record (:mod:`advrun.ood`)."""
    rows = []
    for kind, what in (("uniform", "uniform noise"),
                       ("optimised", f"noise after {record.get('steps')} confidence-raising gradient steps")):
        figures = record.get(kind)
        if isinstance(figures, dict):
            rows.append((f"top-class confidence on {record.get('n')} images of {what}",
                         f"mean {pct(figures.get('mean_confidence'))}, max {pct(figures.get('max_confidence'))}, "
                         f"{pct(figures.get('confident_share'))} at or above {pct(record.get('threshold'))}"))
    return rows


def _headline(metrics: Metrics) -> dict:
    n = metrics.n_eval
    def value(name: str) -> str:
        return pct_ci(getattr(metrics, name), metrics.interval(name))

    def counted(name: str, what: str) -> str:
        counts = metrics.count(name)
        return what if counts is None else f"{what} ({counts[0]} / {counts[1]})"

    rows = [["clean accuracy", value("clean_accuracy"),
             counted("clean_accuracy", f"correct clean predictions / all {n} samples")]]
    if metrics.attack:
        budget = "" if metrics.eps is None else f" at eps {num(metrics.eps)}"
        label = f"{metrics.attack} ({metrics.norm}){budget}"
        rows += [
            [f"robust accuracy, {label}", value("robust_accuracy"),
             counted("robust_accuracy", f"correct both clean and under attack / all {n} samples")],
            [f"success rate, {label}", value("success_rate"),
             counted("success_rate", "fooled / initially correct samples")],
        ]
        if metrics.certified_accuracy is not None:
            method = metrics.certified_method or "closed form"
            subject = ("the smoothed classifier's, not the model's" if method == "smoothing"
                       else "a lower bound on robust accuracy")
            rows.append([f"certified accuracy{budget}, {method}", value("certified_accuracy"),
                         counted("certified_accuracy", f"proven robust / all {n} samples ({subject})")])
    if metrics.ood is not None:
        rows += [[what, figures, "noise images, not test samples"] for what, figures in ood_rows(metrics.ood)]
    rows.append(["samples", f"{metrics.n_train} training, {metrics.n_test} test, {n} evaluated", ""])
    return table(["result", "value", "denominator"], rows)


def with_times(curve: pd.DataFrame, metrics: Metrics | None) -> pd.DataFrame:
    """``curve`` with its ``time_s`` column, from the metrics' ``timings.curve`` where the CSV has none."""
    times = metrics.timings.get("curve") if metrics is not None and isinstance(metrics.timings, dict) else None
    if "time_s" in curve.columns or not isinstance(times, list) or not times:
        return curve
    keys = ["attack", "norm", "eps"]
    timed = pd.DataFrame.from_records(times)
    if not set(keys + ["time_s"]) <= set(timed.columns):
        return curve
    timed["eps"] = pd.to_numeric(timed["eps"], errors="coerce")  # null (no budget) -> NaN, as in the CSV
    curve = curve.assign(eps=pd.to_numeric(curve["eps"], errors="coerce"))
    return curve.merge(timed[keys + ["time_s"]].drop_duplicates(keys), on=keys, how="left")


def _bounds(record: dict, name: str) -> tuple[float, float] | None:
    """The interval of ``name`` in a curve row, None in a ``curve.csv`` written before intervals."""
    low, high = record.get(f"{name}_low"), record.get(f"{name}_high")
    return None if _missing(low) or _missing(high) else (float(low), float(high))


def curve_table(curve: pd.DataFrame) -> dict:
    """``curve.csv`` as a table: one row per (attack, epsilon), counts beside the rates."""
    quantiles = [c for c in curve.columns if c.startswith("norm_q") and curve[c].notna().any()]
    members = [c for c in curve.columns if c.startswith("robust_after_") and curve[c].notna().any()]
    fooling = [c for c in FOOLING_RATES if c in curve.columns and curve[c].notna().any()]
    targeted = "target" in curve.columns and curve["target"].notna().any()
    columns = (["attack", "norm"] + (["target"] if targeted else []) + ["eps", "robust accuracy", "success rate",
               "correct", "eligible", "fooled", "mean norm", "median norm"] + quantiles
               + [FOOLING_RATES[c] for c in fooling]
               + [f"robust after {c.removeprefix('robust_after_')}" for c in members] + ["time"])
    rows = []
    for record in curve.to_dict("records"):
        certified = is_certified(record.get("attack"))
        row = [str(record.get("attack")), str(record.get("norm"))]
        if targeted:
            row.append("-" if _missing(record.get("target")) else str(record["target"]))
        row += [num(record.get("eps")), pct_ci(record.get("robust_accuracy"), _bounds(record, "robust_accuracy")),
                pct_ci(record.get("success_rate"), _bounds(record, "success_rate")),
                num(record.get("n_correct")) if not certified else "-",
                num(record.get("n_eligible")) if not certified else "-",
                num(record.get("n_success")) if not certified else "-",
                num(record.get("mean_norm")), num(record.get("median_norm"))]
        row += [num(record.get(q)) for q in quantiles]
        row += [pct(record.get(c)) for c in fooling]
        row += [pct(record.get(c)) for c in members]
        row.append("-" if _missing(record.get("time_s")) else f"{record['time_s']:.2f}s")
        rows.append(row)
    caption = "correct: initially correct samples; eligible: the success rate's denominator; fooled: its numerator."
    if curve["attack"].map(is_certified).any():
        caption += (" Certified rows (certified-<method>, docs/certification.md): robust accuracy is the share of all "
                    "samples proven robust at eps (a lower bound on robust accuracy; certified-smoothing: of the "
                    "smoothed classifier, not of the model); their median norm is the median proven radius where "
                    "the method gives radii.")
    if quantiles:
        caption += " norm_qN: quantiles of all minimal norms the attack found."
    if fooling:
        caption += (" Fooling rate (Moosavi-Dezfooli et al. 2017): the share of all evaluated samples whose predicted "
                    "label changes under the universal perturbation, whatever their true label; train: the same on "
                    "the training images it was fitted on.")
    if members:
        caption += " Robust after a member: robust accuracy once the ensemble's members up to that one have run."
    return table(columns, rows, caption=caption)


def audit_table(checks: list) -> dict:
    """``audit.json`` (a list of ``{name, status, reason, advice}``): ``table``, warnings highlighted, and
    ``counts`` of the checks that passed, warned and did not apply (``pass``, ``warn``, ``n/a``)."""
    rows, kinds = [], []
    for check in checks:
        if not isinstance(check, dict):
            continue
        status = str(check.get("status", "?"))
        rows.append([str(check.get("name", "?")), status, str(check.get("reason", "")), str(check.get("advice") or "")])
        kinds.append({"warn": "warn", "pass": "pass"}.get(status))
    counts = {s: sum(1 for r in rows if r[1] == s) for s in ("pass", "warn", "n/a")}
    return {"table": table(["check", "status", "reason", "advice"], rows, kinds), "counts": counts}


def _environment(metrics: Metrics) -> dict:
    rows = [["device", str(metrics.device)], ["seed", str(metrics.seed)],
            ["git commit", str(metrics.git_commit or "- (not run from a checkout)")],
            ["deterministic algorithms", str(metrics.deterministic)]]
    if isinstance(metrics.training, dict) and metrics.training:
        rows.append(["model", ", ".join(f"{k}: {v}" for k, v in metrics.training.items())])
    for name, version in (metrics.versions or {}).items():
        rows.append([name, str(version or "-")])
    for name, seconds in (metrics.timings or {}).items():
        if isinstance(seconds, (int, float)):  # per-row times of the curve are in its table
            rows.append([f"time: {name.removesuffix('_s')}", f"{seconds:.2f}s"])
    return table(["", "value"], rows)


def _training_table(history: pd.DataFrame) -> dict:
    columns = [c for c in history.columns if c != "time_s"]
    rows = []
    for record in history.to_dict("records"):
        rows.append([pct(record[c]) if "accuracy" in c else num(record[c]) for c in columns])
    return table([c.replace("_", " ") for c in columns], rows)


def figures(folder: RunFolder) -> list[dict]:
    """The PNG figures of a run folder with their captions, in report order."""
    return [figure(p, FIGURES.get(p.stem, p.stem.replace("_", " ")), folder.path) for p in folder.figures()]


def run_context(path: str | Path) -> dict[str, Any]:
    """What the report of the run folder ``path`` shows (see the module docstring), for ``run.j2``."""
    folder = RunFolder(path)
    status = folder.status()
    metrics = _metrics(folder) if status == OK else None
    curve = folder.curve()
    checks = folder.audit()
    history = folder.history()
    return {
        "title": run_title(folder.path, folder.config()), "folder": str(folder.path.resolve()), "status": status,
        "error": folder.error() if status == FAILED else None,
        "traceback": folder.traceback() if status == FAILED else None,
        "headline": _headline(metrics) if metrics else None,
        "curve": curve_table(with_times(curve, metrics)) if curve is not None and len(curve) else None,
        "audit": audit_table(checks) if checks is not None else None, "figures": figures(folder),
        "training": _training_table(history) if history is not None and len(history) else None,
        "overrides": folder.overrides(), "config": folder.config_text(),
        "environment": _environment(metrics) if metrics else None,
        "files": table(["file", "size"], [[p.name, f"{p.stat().st_size:,} bytes"] for p in folder.files()]),
    }


def _metrics(folder: RunFolder) -> Metrics | None:
    """The run's metrics, None (with a warning) when they cannot be read."""
    try:
        return folder.metrics()
    except AdvrunError as e:
        log.warning("%s", e)
        return None


def write_run_report(path: str | Path) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into the run folder ``path``; return their paths."""
    context = run_context(path)
    markdown, page = RunFolder(path).reports
    io.write_text(markdown, render("run.j2", "md", **context))
    io.write_text(page, render("run.j2", "html", **context))
    return markdown, page
