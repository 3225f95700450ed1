"""The run folder and the sweep folder: the only code that knows their file names and the metrics schema.

A run folder holds, when the run finished (written in this order, ``metrics.json`` last):

    .hydra/config.yaml      the composed config (Hydra; written by :func:`advrun.experiment.run` when
                            called from Python), .hydra/overrides.yaml the command line
    model.json, model.pt    the model's shape and classes; its weights (``state_dict``)
    training.csv            one row per epoch
    curve.csv, norms.csv    the robustness curve; minimal norms per sample (minimum-norm attacks)
    samples.csv             the per-sample results: one row per evaluated sample and attack run
    audit.json              the evaluation audit
    <figure>.png / .svg     the figures; <artifact>.png images an attack made (a patch)
    metrics.json            the headline numbers (:class:`Metrics`): its presence marks finished results
    report.md, report.html  the report, built from the files above (``advrun-report`` rebuilds it)

``logs/`` holds the CSV files of ``logger=csv`` (without ``logger.save_dir``), and
``error.txt`` (``traceback.txt`` for a bug) when it failed, ``checkpoint.pt`` while it trains.
Readers (the reports, the sweep summary, ``advrun-report``, :func:`advrun.experiment.load_run`) go
through :class:`RunFolder`; the runner hands it a :class:`RunResult` to write.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import yaml

from advrun import io
from advrun.errors import AdvrunError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

OK, FAILED, INCOMPLETE = "ok", "failed", "incomplete"
#: The status of a job a sweep planned but never started (it has no folder).
NOT_STARTED = "not started"

#: What each accuracy of ``metrics.json`` counts, written into it beside the numbers.
DENOMINATORS = {
    "clean_accuracy": "correct clean predictions / n_eval",
    "robust_accuracy": "samples correct both clean and under attack / n_eval",
    "success_rate": "initially correct samples the attack fooled / initially correct samples",
}
#: How ``metrics.json`` states the intervals of its accuracies (the ``*_ci`` keys), beside them.
INTERVALS = ("95% Clopper-Pearson (exact binomial) confidence interval [low, high] of each proportion over its "
             "denominator, from the counts")
#: Per proportion of ``metrics.json``: its interval's key, and the keys of ``counts`` it is counted from.
PROPORTIONS = {
    "clean_accuracy": ("clean_accuracy_ci", "n_correct", "n_eval"),
    "robust_accuracy": ("robust_accuracy_ci", "n_robust", "n_eval"),
    "success_rate": ("success_rate_ci", "n_success", "n_eligible"),
    "certified_accuracy": ("certified_accuracy_ci", "n_certified", "n_eval"),
}


#: The ``attack`` of a curve's certified rows: ``certified-<method>`` (``certified`` in files of older versions).
CERTIFIED = "certified"


def is_certified(attack: object) -> bool:
    """Whether a curve row with this ``attack`` holds certified accuracy (a proof) rather than an attack's."""
    return isinstance(attack, str) and (attack == CERTIFIED or attack.startswith(f"{CERTIFIED}-"))


@dataclass
class Metrics:
    """The schema of ``metrics.json``: headline results, how the run was made, and its timings.

    The attack's fields (``attack`` to ``curve``) are None for a run without an attack;
    ``eps`` is None for an attack outside the Lp threat model; ``certified_accuracy`` is there
    when the model was certified, by ``certified_method`` (:data:`advrun.certify.METHODS`,
    ``+``-joined for a union; smoothing certifies the smoothed classifier); ``audit`` holds the audit's counts when it ran;
    ``ood`` the top-class confidence on noise images (:mod:`advrun.ood`) when ``eval.ood.n > 0``.

    Each accuracy and success rate has its 95% Clopper-Pearson interval ``<name>_ci`` (``[low,
    high]``), and ``counts`` the numbers of samples it is counted from (``n_correct``,
    ``n_robust``, ``n_eligible``, ``n_success``, ``n_certified``: see :data:`PROPORTIONS`).
    Files written before they existed lack them: they read back as None and ``{}``.
    """

    dataset: str
    n_train: int
    n_test: int
    n_eval: int
    clean_accuracy: float
    test_accuracy: float = math.nan
    final_train_loss: float = math.nan
    attack: str | None = None
    norm: str | None = None
    eps: float | None = None
    robust_accuracy: float | None = None
    success_rate: float | None = None
    certified_accuracy: float | None = None
    certified_method: str | None = None
    clean_accuracy_ci: list[float] | None = None
    robust_accuracy_ci: list[float] | None = None
    success_rate_ci: list[float] | None = None
    certified_accuracy_ci: list[float] | None = None
    counts: dict[str, int] = field(default_factory=dict)
    curve: list[dict[str, Any]] | None = None
    seed: int | None = None
    seeds: dict[str, int] = field(default_factory=dict)
    deterministic: bool = False
    device: str = "cpu"
    versions: dict[str, Any] = field(default_factory=dict)
    git_commit: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    audit: dict[str, Any] | None = None
    ood: dict[str, Any] | None = None
    timings: dict[str, Any] = field(default_factory=dict)

    #: The JSON types each field may have (None for the optional ones) when read back.
    _TYPES: ClassVar[dict[str, tuple]] = {
        **{name: (int,) for name in ("n_train", "n_test", "n_eval")},
        **{name: (int, float, None) for name in ("clean_accuracy", "test_accuracy", "final_train_loss", "eps",
                                                  "robust_accuracy", "success_rate", "certified_accuracy")},
        **{name: (str, None) for name in ("dataset", "attack", "norm", "device", "git_commit", "certified_method")},
        **{name: (dict,) for name in ("seeds", "versions", "training", "timings", "counts")},
        **{interval: (list, None) for interval, _, _ in PROPORTIONS.values()},
        "audit": (dict, None), "ood": (dict, None), "curve": (list, None), "seed": (int, None), "deterministic": (bool,),
    }
    #: Fields left out of ``metrics.json`` while they are None.
    _OPTIONAL: ClassVar[tuple[str, ...]] = ("certified_accuracy", "certified_method", "certified_accuracy_ci", "audit",
                                            "ood")
    #: Fields of the attack, left out together when there is none.
    _ATTACK: ClassVar[tuple[str, ...]] = ("norm", "eps", "robust_accuracy", "success_rate", "robust_accuracy_ci",
                                          "success_rate_ci", "curve")

    def to_json(self) -> dict[str, Any]:
        """The record written as ``metrics.json`` (with the denominators of its accuracies)."""
        record = dataclasses.asdict(self)
        for name in self._OPTIONAL:
            if record[name] is None:
                del record[name]
        if self.attack is None:
            for name in self._ATTACK:
                del record[name]
        record["denominators"] = dict(DENOMINATORS)
        record["intervals"] = INTERVALS
        return record

    @classmethod
    def from_json(cls, record: Any, source: str = "metrics.json") -> "Metrics":
        """The metrics of a record read from ``metrics.json``; keys it does not know are ignored.

        Raises :class:`AdvrunError` naming ``source`` unless ``record`` is an object holding at
        least the keys every run writes."""
        if not isinstance(record, dict):
            raise AdvrunError(source, f"holds a JSON {type(record).__name__}, not advrun's metrics (an object)")
        names = {f.name for f in dataclasses.fields(cls)}
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [name for name in required if name not in record]
        if missing:
            raise AdvrunError(source, f"is not advrun's metrics: {', '.join(missing)} missing")
        wrong = [f"{name} ({type(record[name]).__name__})" for name, kinds in cls._TYPES.items()
                 if name in record and not _is_one_of(record[name], kinds)]
        if wrong:
            raise AdvrunError(source, f"is not advrun's metrics: wrong type of {', '.join(wrong)}")
        return cls(**{k: v for k, v in record.items() if k in names})

    def add_intervals(self) -> None:
        """Set the interval of every proportion whose count ``counts`` holds (:func:`advrun.stats.clopper_pearson`)."""
        from advrun.stats import clopper_pearson

        for name, (interval, _, _) in PROPORTIONS.items():
            counted = self.count(name)
            if counted is not None:
                setattr(self, interval, list(clopper_pearson(*counted)))

    def interval(self, name: str) -> tuple[float, float] | None:
        """The 95% interval of the proportion ``name`` (a key of :data:`PROPORTIONS`), None where
        ``metrics.json`` holds none (no such number, or written before intervals were)."""
        bounds = getattr(self, PROPORTIONS[name][0])
        return (float(bounds[0]), float(bounds[1])) if isinstance(bounds, list) and len(bounds) == 2 else None

    def count(self, name: str) -> tuple[int, int] | None:
        """``(count, denominator)`` of the proportion ``name``, None where ``counts`` lacks it."""
        _, count, total = PROPORTIONS[name]
        denominator = self.n_eval if total == "n_eval" else self.counts.get(total)
        if count not in self.counts or denominator is None:
            return None
        return int(self.counts[count]), int(denominator)

    def headline(self) -> float:
        """The number a sweeper optimises: robust accuracy, or clean accuracy without an attack."""
        return self.clean_accuracy if self.robust_accuracy is None else self.robust_accuracy


def _is_one_of(value: Any, kinds: tuple) -> bool:
    """Whether a JSON value is of one of ``kinds`` (None stands for null; a bool is no number)."""
    if value is None:
        return None in kinds
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, tuple(k for k in kinds if k is not None))


@dataclass
class RunResult:
    """Everything a run produced, as typed fields: what :meth:`RunFolder.write` writes and
    :meth:`RunFolder.read` reads back (``weights``, ``images`` and ``figures`` are written only).
    ``samples``: a minimum-norm attack's minimal norms (``norms.csv``); ``per_sample``: the
    per-sample results of every attack run (``samples.csv``)."""

    metrics: Metrics
    history: pd.DataFrame
    model_info: dict[str, Any] = field(default_factory=dict)
    curve: pd.DataFrame | None = None
    samples: pd.DataFrame | None = None
    per_sample: pd.DataFrame | None = None
    audit: list[dict[str, str]] | None = None
    weights: dict[str, Any] | None = None
    images: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, dict[str, bytes]] = field(default_factory=dict)


class RunFolder:
    """One run's folder (see the module docstring for its files)."""

    CONFIG = ".hydra/config.yaml"
    OVERRIDES = ".hydra/overrides.yaml"
    HYDRA = ".hydra/hydra.yaml"
    METRICS = "metrics.json"
    MODEL = "model.pt"
    MODEL_INFO = "model.json"
    TRAINING = "training.csv"
    CURVE = "curve.csv"
    NORMS = "norms.csv"
    PER_SAMPLE = "samples.csv"
    AUDIT = "audit.json"
    ERROR = "error.txt"
    TRACEBACK = "traceback.txt"
    CHECKPOINT = "checkpoint.pt"
    #: ``logger=csv`` without ``logger.save_dir``: its CSV files (:mod:`advrun.loggers`).
    LOGS = "logs"
    REPORTS = ("report.md", "report.html")
    #: Known figures, in the order reports show them.
    FIGURES = ("robustness_curve", "norm_distribution", "adversarial_gallery", "linear_model", "decision_regions",
               "training_curve", "patch")

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoint(self) -> Path:
        """The resumable training checkpoint of a run trained without the model cache."""
        return self.file(self.CHECKPOINT)

    @property
    def logs(self) -> Path:
        """The folder of ``logger=csv``'s files when ``logger.save_dir`` is null."""
        return self.file(self.LOGS)

    @property
    def weights(self) -> Path:
        return self.file(self.MODEL)

    @property
    def reports(self) -> tuple[Path, Path]:
        """``report.md`` and ``report.html``."""
        return self.file(self.REPORTS[0]), self.file(self.REPORTS[1])

    # --- what the folder is --------------------------------------------------------------
    def is_run(self) -> bool:
        """Whether the folder holds a run's composed config (Hydra's ``.hydra/config.yaml``)."""
        return self.file(self.CONFIG).is_file()

    def finished(self) -> bool:
        return self.file(self.METRICS).is_file()

    def status(self) -> str:
        """``ok`` (``metrics.json``: the results are complete), ``failed`` (``error.txt``, or a
        ``metrics.json`` that is not advrun's) or ``incomplete`` (neither: still running, or interrupted)."""
        if self.finished():
            return FAILED if self.unreadable() else OK
        return FAILED if self.file(self.ERROR).is_file() else INCOMPLETE

    def unreadable(self) -> str | None:
        """Why ``metrics.json`` cannot be read as advrun's metrics, None when it can (or is absent)."""
        try:
            self.metrics()
        except AdvrunError as e:
            return str(e)
        return None

    # --- writing -------------------------------------------------------------------------
    def write_config(self, yaml_text: str) -> None:
        io.write_text(self.file(self.CONFIG), yaml_text)

    def write_model(self, model_info: dict[str, Any], weights: dict[str, Any]) -> None:
        io.write_json(self.file(self.MODEL_INFO), model_info)
        io.save_torch(self.file(self.MODEL), {k: v.detach().cpu() for k, v in weights.items()})

    def write(self, result: RunResult) -> None:
        """Write every result file, ``metrics.json`` last: a folder without it holds no finished run."""
        if result.weights is not None:
            self.write_model(result.model_info, result.weights)
        io.write_csv(self.file(self.TRAINING), result.history)
        for name, image in result.images.items():
            io.save_image(self.file(f"{name}.png"), image)
        if result.curve is not None:
            io.write_csv(self.file(self.CURVE), result.curve.drop(columns="time_s", errors="ignore"))
        if result.samples is not None:
            io.write_csv(self.file(self.NORMS), result.samples)
        if result.per_sample is not None:
            io.write_csv(self.file(self.PER_SAMPLE), result.per_sample)
        if result.audit is not None:
            io.write_json(self.file(self.AUDIT), result.audit)
        for stem, formats in result.figures.items():
            for fmt, data in formats.items():
                io.write_bytes(self.file(f"{stem}.{fmt}"), data)
        io.write_json(self.file(self.METRICS), result.metrics.to_json())

    def write_error(self, message: str, traceback: str | None = None) -> None:
        """Record why the run failed: ``error.txt`` (one line), and ``traceback.txt`` for a bug."""
        io.write_text(self.file(self.ERROR), f"{message}\n")
        if traceback:
            io.write_text(self.file(self.TRACEBACK), traceback)

    # --- reading -------------------------------------------------------------------------
    def metrics(self) -> Metrics | None:
        """The run's metrics, None while it has none; :class:`AdvrunError` naming the file if it is
        not advrun's metrics (not JSON, not an object, keys missing)."""
        file = self.file(self.METRICS)
        if not file.is_file():
            return None
        try:
            record = json.loads(file.read_text())
        except (OSError, ValueError) as e:
            raise AdvrunError(str(file), f"cannot be read as JSON ({e})") from None
        return Metrics.from_json(record, str(file))

    def read(self) -> RunResult:
        """The results as :meth:`write` wrote them (raises :class:`AdvrunError` unless finished)."""
        metrics = self.metrics()
        if metrics is None:
            raise AdvrunError(str(self.path), f"holds no finished run ({self.METRICS} is missing)")
        import pandas as pd

        history = self.table(self.TRAINING)
        return RunResult(metrics=metrics, history=history if history is not None else pd.DataFrame(),
                         model_info=self.json(self.MODEL_INFO) or {}, curve=self.table(self.CURVE),
                         samples=self.table(self.NORMS), per_sample=self.per_sample(), audit=self.audit())

    def json(self, name: str) -> Any:
        """The JSON file ``name`` of the folder; None (with a warning) when it is missing or unreadable."""
        file = self.file(name)
        if not file.is_file():
            return None
        try:
            return json.loads(file.read_text())
        except (OSError, ValueError) as e:
            log.warning("%s cannot be read: %s", file, e)
            return None

    def table(self, name: str) -> pd.DataFrame | None:
        """The CSV file ``name`` of the folder; None when it is missing, empty or truncated."""
        import pandas as pd

        file = self.file(name)
        if not file.is_file():
            return None
        try:
            return pd.read_csv(file)
        except (OSError, ValueError) as e:
            log.warning("%s cannot be read: %s", file, e)
            return None

    def curve(self) -> pd.DataFrame | None:
        return self.table(self.CURVE)

    def per_sample(self) -> pd.DataFrame | None:
        """The per-sample results (``samples.csv``); ``fooled_by`` is ``""`` where no ensemble member is named."""
        table = self.table(self.PER_SAMPLE)
        if table is not None and "fooled_by" in table.columns:
            table["fooled_by"] = table["fooled_by"].astype(object).fillna("").astype(str)
        return table

    def history(self) -> pd.DataFrame | None:
        return self.table(self.TRAINING)

    def audit(self) -> list[dict[str, Any]] | None:
        """The audit's checks (``audit.json``), None when there are none."""
        checks = self.json(self.AUDIT)
        return [c for c in checks if isinstance(c, dict)] if isinstance(checks, list) else None

    def error(self) -> str | None:
        """Why the run failed: ``error.txt``, or why its ``metrics.json`` cannot be read."""
        file = self.file(self.ERROR)
        return file.read_text(errors="replace").strip() if file.is_file() else self.unreadable()

    def traceback(self) -> str | None:
        file = self.file(self.TRACEBACK)
        return file.read_text(errors="replace") if file.is_file() else None

    def config_text(self) -> str:
        file = self.file(self.CONFIG)
        return file.read_text() if file.is_file() else ""

    def config(self) -> dict[str, Any]:
        """The composed config as a dict, interpolations as written (resolving them now could read
        another environment than the run saw); empty when missing or unreadable."""
        text = self.config_text()
        try:
            config = yaml.safe_load(text) if text else {}
        except yaml.YAMLError as e:
            log.warning("%s cannot be read: %s", self.file(self.CONFIG), e)
            return {}
        return config if isinstance(config, dict) else {}

    def overrides(self) -> list[str]:
        """The command-line overrides of the run, or none."""
        file = self.file(self.OVERRIDES)
        try:
            overrides = yaml.safe_load(file.read_text()) if file.is_file() else []
        except (OSError, yaml.YAMLError):
            return []
        return [str(o) for o in overrides] if isinstance(overrides, list) else []

    def job_number(self) -> float:
        """Hydra's ``hydra.job.num`` of a sweep's job; without ``.hydra/hydra.yaml``
        (``hydra.output_subdir=null``) the number its folder name starts with; else infinity."""
        try:
            return float(yaml.safe_load(self.file(self.HYDRA).read_text())["hydra"]["job"]["num"])
        except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
            numbered = re.match(r"(\d+)(_|$)", self.path.name)
            return float(numbered.group(1)) if numbered else math.inf

    def figures(self) -> list[Path]:
        """The PNG figures: the known ones in :data:`FIGURES` order, then any others by name."""
        found = {p.stem: p for p in sorted(self.path.glob("*.png")) if not p.name.startswith(".")}
        order = [s for s in self.FIGURES if s in found] + [s for s in found if s not in self.FIGURES]
        return [found[s] for s in order]

    def files(self) -> list[Path]:
        """The folder's visible files, the reports excepted."""
        return sorted(p for p in self.path.iterdir()
                      if p.is_file() and not p.name.startswith(".") and p.name not in self.REPORTS)


def weights_file(path: str | os.PathLike) -> Path:
    """The file a ``model.checkpoint`` names: the path itself, or ``model.pt`` in a run folder."""
    path = Path(str(path))
    return RunFolder(path).weights if path.is_dir() else path


class SweepFolder:
    """A sweep's root folder: its job folders below it, and the summary written beside them."""

    SUMMARY_CSV = "summary.csv"
    SUMMARY_MD = "summary.md"
    SUMMARY_BY_SEED = "summary_by_seed.csv"
    REPORT = "report.html"
    CURVES = "combined_curves"
    TRANSFER = "transfer_matrix.csv"  # sweep.transfer=true: the transfer matrix (advrun.transfer_matrix)
    MULTIRUN = "multirun.yaml"  # Hydra's record of the sweep: its config and command line

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    def summary_files(self) -> list[Path]:
        """The summary's files, the transfer matrix where the sweep has one."""
        files = [self.file(self.SUMMARY_CSV), self.file(self.SUMMARY_BY_SEED), self.file(self.SUMMARY_MD),
                 self.file(self.REPORT)]
        return files + [self.file(self.TRANSFER)] if self.file(self.TRANSFER).is_file() else files

    def curves_files(self, formats: tuple[str, ...]) -> list[Path]:
        """The combined curves' figure, one file per format."""
        return [self.file(f"{self.CURVES}.{fmt}") for fmt in formats]

    def jobs(self) -> list[RunFolder]:
        """The run folders below the root (whatever they are called), in job-number order (Hydra's
        ``hydra.job.num`` where recorded, then natural order of the folder names)."""
        def natural(text: str) -> list:
            return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]

        jobs = []
        for folder, subfolders, _ in os.walk(self.path):
            here = RunFolder(folder)
            if here.path != self.path and here.is_run():
                jobs.append(here)
                subfolders.clear()  # a run folder holds no other runs
            else:
                subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        return sorted(jobs, key=lambda job: (job.job_number(), natural(job.path.relative_to(self.path).as_posix())))
