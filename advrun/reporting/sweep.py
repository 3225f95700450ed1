"""The summary of a sweep (``advrun -m ...``): one row per job, from the job folders on disk.

Jobs are the folders below the sweep root that hold ``.hydra/config.yaml`` (whatever the folders
are called). A job's status is ``ok`` (``metrics.json``), ``failed`` (``error.txt``, whose text is
reported), ``incomplete`` (neither: still running or interrupted) or ``not started`` (a job the
sweep planned, by its ``multirun.yaml``, that has no folder), so a summary can be made of
a sweep that is partial, was interrupted, or was run elsewhere, and a failed job never hides
the others. :func:`write_sweep_report` writes into the root:

* ``summary.csv``: the job, its status and error, its overrides as columns, its metrics (each
  accuracy with its 95% interval, ``<name>_low`` and ``<name>_high``, and the counts behind it);
* ``summary_by_seed.csv``: the finished jobs that differ only in their ``seed``, aggregated
  (:func:`seed_groups`): mean and standard deviation over the seeds, the count of jobs, and the
  95% interval of the pooled proportion;
* ``summary.md``: the same as Markdown tables (overrides common to all jobs stated once);
* ``combined_curves.png`` / ``.svg``: robust accuracy against epsilon, one line per finished job;
* ``transfer_matrix.csv``: with ``sweep.transfer=true``, the transfer matrix between the jobs' models
  (:mod:`advrun.transfer_matrix`): robust accuracy of each target job (columns) on the examples
  crafted on each surrogate job (rows, column ``surrogate``);
* ``report.html``: all of it in one self-contained page, linking each job's own report.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from advrun import io
from advrun.reporting import plots
from advrun.errors import AdvrunError
from advrun.reporting.render import figure, link, render, table
from advrun.reporting.report import num, pct, pct_ci
from advrun.runfolder import FAILED, INCOMPLETE, NOT_STARTED, OK, PROPORTIONS, RunFolder, SweepFolder
from advrun.stats import clopper_pearson

log = logging.getLogger(__name__)

#: Metrics copied from each job's ``metrics.json`` into the summary, in this order.
METRICS = ("dataset", "attack", "norm", "eps", "n_eval", "clean_accuracy", "robust_accuracy", "success_rate",
           "certified_accuracy", "test_accuracy", "seed")
#: Metrics shown in the summary's Markdown and HTML tables (all of them are in ``summary.csv``).
SHOWN = ("attack", "norm", "eps", "clean_accuracy", "robust_accuracy", "success_rate", "certified_accuracy",
         "ood_fooling_confidence", "audit_warnings", "total_s")
#: The summary's columns of ``metrics.json``'s ``ood`` record: mean top-class confidence per kind of noise image.
OOD = {"uniform": "ood_noise_confidence", "optimised": "ood_fooling_confidence"}
#: Columns every summary has, before the overrides.
LEADING = ("job", "status")
#: The numbers aggregated over seeds (:func:`seed_groups`): each one's count and denominator in the summary.
AGGREGATED = {"clean_accuracy": ("n_correct", "n_eval"), "robust_accuracy": ("n_robust", "n_eval"),
              "success_rate": ("n_success", "n_eligible")}
#: The override that :func:`seed_groups` aggregates over.
SEED = "override:seed"


def find_jobs(root: str | Path) -> list[Path]:
    """The run folders below ``root``, in job-number order (:meth:`SweepFolder.jobs`)."""
    return [job.path for job in SweepFolder(root).jobs()]


def parse_override(override: str) -> tuple[str, str]:
    """``("attack.eps", "0.1")`` for ``attack.eps=0.1``; a leading ``+``, ``++`` or ``~`` is dropped."""
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def _first_line(text: str, limit: int = 300) -> str:
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def job_record(job: Path, root: Path) -> dict[str, Any]:
    """One row of the summary: job, status, error, overrides (as columns), metrics."""
    folder = RunFolder(job)
    status = folder.status()
    record: dict[str, Any] = {"job": job.relative_to(root).as_posix(), "status": status, "error": ""}
    overrides = dict(parse_override(o) for o in folder.overrides())
    record.update({f"override:{k}": v for k, v in overrides.items()})
    if status == FAILED:
        record["error"] = folder.error()
    elif status == OK:
        try:
            metrics = folder.metrics()
        except AdvrunError as e:
            record.update(status=FAILED, error=str(e))
            return record
        record.update({m: getattr(metrics, m) for m in METRICS})
        for name in PROPORTIONS:
            bounds = metrics.interval(name)
            if bounds is not None:
                record[f"{name}_low"], record[f"{name}_high"] = bounds
        record.update(metrics.counts)
        if isinstance(metrics.ood, dict):  # mean top-class confidence far from the data (advrun.ood)
            record.update({column: metrics.ood[kind].get("mean_confidence") for kind, column in OOD.items()
                           if isinstance(metrics.ood.get(kind), dict)})
        record["total_s"] = metrics.timings.get("total_s")
        checks = folder.audit()
        if checks is not None:
            record["audit_warnings"] = sum(1 for c in checks if c.get("status") == "warn")
        elif isinstance(metrics.audit, dict) and "warnings" in metrics.audit:
            record["audit_warnings"] = metrics.audit["warnings"]
    return record


def sweep_summary(root: str | Path) -> pd.DataFrame:
    """The summary frame of the sweep at ``root``: one row per job (columns ``job``, ``status``,
    ``error``, one ``override:KEY`` column per overridden key, then the metrics)."""
    root = Path(root)
    jobs = find_jobs(root)
    records = [job_record(job, root) for job in jobs]
    records += not_started(root, {RunFolder(job).job_number() for job in jobs})
    frame = pd.DataFrame.from_records(records)
    if frame.empty:
        return pd.DataFrame(columns=[*LEADING, "error"])
    overrides = [c for c in frame.columns if c.startswith("override:")]
    rest = [c for c in frame.columns if c not in (*LEADING, "error", *overrides)]
    return frame[[*LEADING, *overrides, *rest, "error"]]


def not_started(root: Path, started: set[float]) -> list[dict[str, Any]]:
    """Rows of the jobs the sweep planned (:func:`advrun.sweep.planned_job_names` of its
    ``multirun.yaml``) whose job number has no folder: status ``not started``."""
    from omegaconf import OmegaConf

    from advrun.sweep import planned_job_names

    file = SweepFolder(root).file(SweepFolder.MULTIRUN)
    try:
        planned = planned_job_names(OmegaConf.load(file)) if file.is_file() else []
    except Exception as e:  # noqa: BLE001 - a summary without the jobs not started, and the log says so
        log.warning("%s cannot be read: %s", file, e)
        planned = []
    return [{"job": name, "status": NOT_STARTED, "error": "",
             **{f"override:{k}": v for k, v in map(parse_override, overrides)}}
            for num, name, overrides in planned if num not in started]


def varying_overrides(frame: pd.DataFrame) -> tuple[list[str], dict[str, str]]:
    """The override columns whose value differs between jobs, and the overrides all jobs share."""
    columns = [c for c in frame.columns if c.startswith("override:")]
    varying = [c for c in columns if frame[c].fillna("(unset)").nunique() > 1]
    common = {c.removeprefix("override:"): str(frame[c].iloc[0]) for c in columns if c not in varying}
    return varying, common


def job_label(row: pd.Series, varying: list[str]) -> str:
    parts = [f"{c.removeprefix('override:')}={row[c]}" for c in varying if isinstance(row[c], str)]
    return ", ".join(parts) or str(row["job"])


def rate(record: dict, name: str) -> str:
    """The proportion ``name`` of a summary row with its interval (where the row has one)."""
    low, high = record.get(f"{name}_low"), record.get(f"{name}_high")
    bounds = None if low is None or high is None or pd.isna(low) or pd.isna(high) else (low, high)
    return pct_ci(record.get(name), bounds)


def _cell(column: str, value: Any, record: dict) -> str:
    if column.endswith("accuracy") or column == "success_rate":
        return rate(record, column)
    if column == "total_s":
        return "-" if value is None or pd.isna(value) else f"{value:.1f}s"
    if column in OOD.values():
        return pct(value)
    if column == "error":
        return _first_line(str(value)) if isinstance(value, str) and value else ""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "-"
    return num(value)


def summary_table(frame: pd.DataFrame, root: Path, report: str) -> dict:
    """The summary as a report's table: varying overrides, main metrics, status and error per job;
    the job cell links to the job's ``report`` (``report.md`` or ``report.html``) where it exists."""
    varying, common = varying_overrides(frame)
    if not varying and len(frame) == 1:
        varying = [c for c in frame.columns if c.startswith("override:")]
    metrics = [c for c in SHOWN if c in frame.columns and frame[c].notna().any()]
    columns = ["job", "status", *[c.removeprefix("override:") for c in varying],
               *[c.replace("_", " ") for c in metrics], "error"]
    rows, kinds = [], []
    for record in frame.to_dict("records"):
        job = str(record["job"])
        cell = link(job, quote(f"{job}/{report}")) if (root / job / report).is_file() else job
        rows.append([cell, str(record["status"]), *[str(record[c]) if isinstance(record[c], str) else "-"
                                                    for c in varying],
                     *[_cell(c, record.get(c), record) for c in metrics], _cell("error", record.get("error"), record)])
        kinds.append(str(record["status"]))
    return table(columns, rows, kinds)


def _pooled(jobs: pd.DataFrame, name: str) -> tuple[float, float, float]:
    """The pooled proportion ``name`` of a group of jobs, sum of counts over sum of denominators, and
    its 95% interval with the sampling error of one evaluation set (the mean count of the mean
    denominator: the seeds evaluate the same test samples, so pooling them does not shrink the
    error). The counts of a job written before ``counts`` existed follow from its accuracy and
    ``n_eval`` (not for the success rate, whose denominator it lacks). NaN where a job has none."""
    count, total = AGGREGATED[name]
    denominators = jobs[total] if total in jobs else pd.Series(math.nan, index=jobs.index)
    counts = jobs[count] if count in jobs else pd.Series(math.nan, index=jobs.index)
    if total == "n_eval":
        implied = (pd.to_numeric(jobs[name], errors="coerce") * pd.to_numeric(jobs["n_eval"], errors="coerce")).round()
        counts = pd.to_numeric(counts, errors="coerce").fillna(implied)
    if counts.isna().any() or denominators.isna().any() or denominators.sum() == 0:
        return math.nan, math.nan, math.nan
    low, high = clopper_pearson(counts.mean(), denominators.mean())
    return counts.sum() / denominators.sum(), low, high


def seed_groups(frame: pd.DataFrame) -> pd.DataFrame:
    """The finished jobs of a summary grouped by their overrides but ``seed``: one row per group
    (``group``, numbered from 1 in job order, the overrides, ``n_jobs``, ``seeds``), and for each
    number of :data:`AGGREGATED` its ``_mean`` and ``_std`` (sample standard deviation; NaN for a
    single job) over the jobs, and ``_pooled``, ``_low``, ``_high`` (:func:`_pooled`). A sweep that
    does not vary the seed gives one group of one job per finished job."""
    keys = [c for c in frame.columns if c.startswith("override:") and c != SEED]
    columns = ["group", *keys, "n_jobs", "seeds",
               *[f"{name}_{part}" for name in AGGREGATED for part in ("mean", "std", "pooled", "low", "high")]]
    done = frame[frame["status"] == OK] if "status" in frame else frame.iloc[0:0]
    rows = []
    labels = done[keys].astype(object).where(done[keys].notna(), "(unset)").astype(str).agg(tuple, axis=1) \
        if keys else pd.Series([()] * len(done), index=done.index, dtype=object)
    for number, label in enumerate(dict.fromkeys(labels), start=1):
        jobs = done[[other == label for other in labels]]
        row = {"group": number, **jobs[keys].iloc[0].to_dict(), "n_jobs": len(jobs),
               "seeds": " ".join(str(int(s)) for s in sorted(jobs["seed"].dropna())) if "seed" in jobs else ""}
        for name in AGGREGATED:
            values = jobs[name] if name in jobs else pd.Series(math.nan, index=jobs.index)
            row[f"{name}_mean"], row[f"{name}_std"] = values.mean(), values.std(ddof=1)
            row[f"{name}_pooled"], row[f"{name}_low"], row[f"{name}_high"] = _pooled(jobs, name)
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def differs_from(groups: pd.DataFrame, name: str = "robust_accuracy") -> list[list[int]]:
    """Per group, the groups whose 95% interval of ``name`` does not overlap its own: a difference
    beyond the sampling error of the evaluation set (see :func:`_pooled`)."""
    low, high = groups[f"{name}_low"].tolist(), groups[f"{name}_high"].tolist()
    return [[int(groups["group"].iloc[j]) for j in range(len(groups))
             if j != i and (high[j] < low[i] or low[j] > high[i])] for i in range(len(groups))]


def seed_table(groups: pd.DataFrame, frame: pd.DataFrame) -> dict:
    """The groups of :func:`seed_groups` as a report's table: the overrides that differ between groups,
    per number its mean, standard deviation and pooled interval, and the groups whose robust accuracy
    differs beyond chance."""
    keys = [c for c in groups.columns if c.startswith("override:") and groups[c].fillna("(unset)").nunique() > 1]

    def spread(row: dict, name: str) -> str:
        if pd.isna(row[f"{name}_mean"]):
            return "-"
        std = "" if pd.isna(row[f"{name}_std"]) else f" ± {100 * row[f'{name}_std']:.2f}"
        return f"{100 * row[f'{name}_mean']:.2f}%{std}"

    columns = ["group", *[k.removeprefix("override:") for k in keys], "jobs", "seeds"]
    for name in AGGREGATED:
        label = name.replace("_", " ")
        columns += [f"{label} mean ± std", f"{label} pooled [95% interval]"]
    columns.append("robust accuracy differs from")
    rows = []
    for row, others in zip(groups.to_dict("records"), differs_from(groups)):
        cells = [str(row["group"]), *[str(row[k]) if isinstance(row[k], str) else "-" for k in keys],
                 str(row["n_jobs"]), row["seeds"] or "-"]
        for name in AGGREGATED:
            bounds = None if pd.isna(row[f"{name}_low"]) else (row[f"{name}_low"], row[f"{name}_high"])
            cells += [spread(row, name), pct_ci(row[f"{name}_pooled"], bounds)]
        cells.append(", ".join(map(str, others)) or "-")
        rows.append(cells)
    return table(columns, rows)


def combined_curves(frame: pd.DataFrame, root: Path) -> list[tuple[str, pd.DataFrame]]:
    """``(label, curve)`` of every finished job with a ``curve.csv``, labelled by its varying overrides."""
    varying, _ = varying_overrides(frame)
    curves = []
    for _, row in frame[frame["status"] == OK].iterrows():
        curve = RunFolder(root / str(row["job"])).curve()
        if curve is not None:
            curves.append((job_label(row, varying), curve))
    return curves


def transfer_section(sweep: SweepFolder, frame: pd.DataFrame) -> dict[str, Any] | None:
    """With ``sweep.transfer=true``: the transfer matrix of the finished jobs, written as
    ``transfer_matrix.csv``, and what the report shows of it (its table, or why there is none)."""
    from advrun.transfer_matrix import requested, transfer_matrix

    file = sweep.file(sweep.TRANSFER)
    file.unlink(missing_ok=True)  # never an old matrix beside a new summary
    done = frame[frame["status"] == OK] if len(frame) else frame
    jobs = done["job"].astype(str).tolist() if len(done) else []
    if not requested(sweep.path, jobs):
        return None
    try:
        matrix = transfer_matrix(sweep.path, jobs)
    except AdvrunError as e:
        log.warning("no transfer matrix: %s", e)
        return {"table": None, "note": f"No transfer matrix: {e.message}."}
    io.write_csv(file, matrix.robust.reset_index())
    varying, _ = varying_overrides(frame)
    labels = [job_label(row, varying) for _, row in done.iterrows()]
    rows = [[label, *map(pct, matrix.robust.loc[job])] for job, label in zip(jobs, labels)]
    budget = "" if matrix.eps is None else f" at eps {matrix.eps:g}"
    return {"table": table(["crafted on / evaluated on", *labels], rows),
            "note": f"Robust accuracy of each job's model (columns) on the adversarial examples that {matrix.attack} "
                    f"crafts{budget} on each job's model (rows), over the same {matrix.n_eval} evaluation samples; "
                    "the diagonal holds each job's own white-box figure. A high entry off the diagonal: the "
                    "examples transfer poorly to that model."}


def sweep_context(root: Path, frame: pd.DataFrame, report: str, picture: Path | None,
                  groups: pd.DataFrame | None = None, transfer: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the summary shows, for ``sweep.j2``: job cells link each job's ``report`` (``report.md`` or
    ``report.html``); ``picture`` is the PNG of the combined curves, if any; ``groups`` the jobs
    aggregated over seeds (:func:`seed_groups`), shown where a group holds more than one job."""
    counts = {s.replace(" ", "_"): int((frame["status"] == s).sum())
              for s in (OK, FAILED, INCOMPLETE, NOT_STARTED)}
    _, common = varying_overrides(frame)
    caption = ("Robust accuracy against epsilon, one line per finished job (certified accuracy, a lower bound, "
               "dashed where the job certified its model).")
    return {"title": f"advrun sweep: {root.name}", "folder": str(root.resolve()),
            "counts": {**counts, "total": len(frame)}, "jobs": summary_table(frame, root, report),
            "common": [f"{k}={v}" for k, v in common.items()],
            "seeds": seed_table(groups, frame) if groups is not None and (groups["n_jobs"] > 1).any() else None,
            "figure": figure(picture, caption, root) if picture is not None else None, "transfer": transfer}


def write_sweep_report(root: str | Path, *, rebuild_jobs: bool = False) -> pd.DataFrame:
    """Summarise the sweep at ``root`` (module docstring) and return the summary frame (column
    ``status``: ok, failed or incomplete). Each job gets its own report where it has none (a failed
    or interrupted job), or always with ``rebuild_jobs``."""
    from advrun.reporting.report import write_run_report

    sweep = SweepFolder(root)
    root = sweep.path
    for job in sweep.jobs():
        if rebuild_jobs or not job.reports[1].is_file():
            write_run_report(job.path)
    frame = sweep_summary(root)
    io.write_csv(sweep.file(sweep.SUMMARY_CSV), frame)
    groups = seed_groups(frame)
    io.write_csv(sweep.file(sweep.SUMMARY_BY_SEED), groups)
    transfer = transfer_section(sweep, frame)
    picture = None
    curves = combined_curves(frame, root) if len(frame) else []
    if curves:
        picture = plots.save(plots.plot_combined_curves(curves, f"sweep {root.name}: every finished job"),
                             sweep.file(sweep.CURVES))[0]
    else:  # no finished job with a curve (yet): no figure, not an old one
        for file in sweep.curves_files(plots.FORMATS):
            file.unlink(missing_ok=True)
    markdown, page = RunFolder.REPORTS
    for fmt, file, report in (("md", sweep.SUMMARY_MD, markdown), ("html", sweep.REPORT, page)):
        io.write_text(sweep.file(file), render("sweep.j2", fmt, **sweep_context(root, frame, report, picture, groups, transfer)))
    log.info("sweep summary of %d jobs in %s", len(frame), root)
    return frame
