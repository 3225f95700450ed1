"""Loggers: a run's metrics sent to the tools people already use, beside the run folder.

The ``logger`` config group chooses one (docs/loggers.md):

- ``none`` (the default): nothing beyond the run folder, which is always written;
- ``csv``: ``epochs.csv`` (one row per epoch) and ``final.csv`` (the final metrics) in
  ``<logger.save_dir>/<run name>/``, or in the run folder's ``logs/`` when ``save_dir`` is null;
- ``tensorboard``: event files in ``<logger.save_dir>/<run name>/`` (``advrun[tensorboard]``);
- ``mlflow``: one MLflow run per advrun run in the experiment ``logger.experiment_name`` of the
  store ``logger.tracking_uri`` (``advrun[mlflow]``): the config as parameters (flattened keys),
  the per-epoch and final metrics, and the curve, the training history, ``metrics.json`` and the
  report as artifacts. A sweep's jobs carry the tag ``sweep`` (the sweep folder).

The run name is the last two parts of the run folder's path: ``<date>/<time>`` for a run,
``<sweep time>/<job folder>`` for a sweep's job.

:func:`build_logger` checks the ``logger.*`` keys and imports the library while the run is
planned, so that a misspelt key or a missing extra ends the run before training. The training
loop hands each epoch's row to :meth:`Logger.log_epoch`; :meth:`Logger.finish` gets the results
once the run folder is written. A logger that fails logs a warning and stops logging: the run
folder holds the results either way.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from advrun.errors import ConfigError, shown
from advrun.runfolder import Metrics, RunFolder, RunResult

log = logging.getLogger(__name__)

#: Per logger, its keys besides ``name``.
KEYS = {
    "none": (),
    "csv": ("save_dir",),
    "tensorboard": ("save_dir",),
    "mlflow": ("tracking_uri", "experiment_name", "artifact_dir"),
}
#: The per-epoch metrics, by their column of the training history.
EPOCH_METRICS = {"loss": "train_loss", "lr": "lr", "train_accuracy": "train_accuracy",
                 "test_accuracy": "test_accuracy"}
#: The final metrics, fields of :class:`advrun.runfolder.Metrics` (those that are None or NaN are left out).
#: (The last epoch's test accuracy and loss are the per-epoch metrics' last values.)
FINAL_METRICS = ("clean_accuracy", "robust_accuracy", "success_rate", "certified_accuracy", "eps")
#: The files of the run folder an MLflow run gets as artifacts (those that exist).
ARTIFACTS = (RunFolder.CURVE, RunFolder.TRAINING, RunFolder.METRICS, *RunFolder.REPORTS)
#: The files of the csv logger.
EPOCHS_CSV, FINAL_CSV = "epochs.csv", "final.csv"


class Logger:
    """``logger=none``, and what every logger does: the epochs it has logged, failures turned into
    one warning (the logger then stays silent)."""

    name = "none"

    def __init__(self, node: dict[str, Any]):
        self.node = node
        self.logged: set[int] = set()
        self.failed = False
        self.folder: RunFolder | None = None
        self.cfg: DictConfig | None = None

    def start(self, cfg: DictConfig, folder: RunFolder) -> None:
        """The run's config and folder (nothing is written until the first epoch or the end)."""
        self.cfg, self.folder = cfg, folder

    def log_epoch(self, row: dict[str, Any]) -> None:
        """One row of the training history (:data:`advrun.training.HISTORY_COLUMNS`), as it is produced."""
        epoch = int(row["epoch"])
        if epoch not in self.logged and self._safely(self._epoch, row):
            self.logged.add(epoch)

    def finish(self, result: RunResult) -> None:
        """The epochs not logged yet (a model reused from the cache, a resumed run), then the final
        metrics and files, the run folder being written."""
        for row in result.history.to_dict("records"):
            self.log_epoch(row)
        if self._safely(self._final, result.metrics):
            log.debug("logger %s: run logged", self.name)

    def close(self, failed: bool = False) -> None:
        """End the logger's run (``failed``: the advrun run did not finish)."""
        self._safely(self._close, failed)

    @property
    def run_name(self) -> str:
        return "/".join(self.folder.path.resolve().parts[-2:])

    def _safely(self, step, *args) -> bool:
        if self.failed:
            return False
        try:
            step(*args)
        except Exception as e:  # noqa: BLE001 - a logger never makes a run fail
            self.failed = True
            log.warning("logger %s failed and stops logging (the run folder %s holds the results): %s: %s",
                        self.name, self.folder.path if self.folder else "", type(e).__name__, e)
            return False
        return True

    def _epoch(self, row: dict[str, Any]) -> None:
        pass

    def _final(self, metrics: Metrics) -> None:
        pass

    def _close(self, failed: bool) -> None:
        pass

    def final_metrics(self, metrics: Metrics) -> dict[str, float]:
        values = {name: getattr(metrics, name) for name in FINAL_METRICS}
        return {name: float(v) for name, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)}

    def params(self) -> dict[str, str]:
        """The config, resolved, without ``hydra``, as flattened keys (``attack.eps``) and texts."""
        config = OmegaConf.to_container(self.cfg, resolve=True)
        config.pop("hydra", None)
        return {key: str(value) for key, value in _flat(config).items()}


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        return {k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


class CsvLogger(Logger):
    name = "csv"

    @property
    def directory(self) -> Path:
        save_dir = self.node.get("save_dir")
        return self.folder.logs if save_dir is None else Path(save_dir) / self.run_name

    def _epoch(self, row: dict[str, Any]) -> None:
        file = self.directory / EPOCHS_CSV
        file.parent.mkdir(parents=True, exist_ok=True)
        new = not file.is_file()
        with file.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["epoch", *EPOCH_METRICS.values()])
            if new:
                writer.writeheader()
            writer.writerow({"epoch": int(row["epoch"]), **{name: row[column] for column, name in EPOCH_METRICS.items()}})

    def _final(self, metrics: Metrics) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        record = {"run": str(self.folder.path), "attack": metrics.attack, "norm": metrics.norm,
                  **self.final_metrics(metrics)}
        with (self.directory / FINAL_CSV).open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(record))
            writer.writeheader()
            writer.writerow(record)


class TensorBoardLogger(Logger):
    name = "tensorboard"

    def __init__(self, node: dict[str, Any]):
        super().__init__(node)
        self.writer = None

    def _writer(self):
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(Path(self.node["save_dir"]) / self.run_name))
            self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in self.params().items()))
        return self.writer

    def _epoch(self, row: dict[str, Any]) -> None:
        for column, name in EPOCH_METRICS.items():
            self._writer().add_scalar(f"epoch/{name}", float(row[column]), global_step=int(row["epoch"]))

    def _final(self, metrics: Metrics) -> None:
        step = max(self.logged, default=0)
        for name, value in self.final_metrics(metrics).items():
            self._writer().add_scalar(f"final/{name}", value, global_step=step)
        self._writer().flush()

    def _close(self, failed: bool) -> None:
        if self.writer is not None:
            self.writer.close()


class MlflowLogger(Logger):
    name = "mlflow"
    #: MLflow's longest parameter value (MLflow 2.x: 6000 characters; older servers 500).
    MAX_PARAM = 500

    def __init__(self, node: dict[str, Any]):
        super().__init__(node)
        self.client = self.run_id = None
        self.mlruns_existed = Path("mlruns").exists()

    def _open(self) -> str:
        if self.run_id is not None:
            return self.run_id
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        logging.getLogger("alembic").setLevel(logging.WARNING)  # a new database: a line per migration otherwise
        uri, name = self.node["tracking_uri"], self.node["experiment_name"]
        database = Path(uri[len("sqlite:///"):]).resolve() if uri.startswith("sqlite:///") else None
        if database is not None:  # relative to the working folder now (MLflow keeps one engine per URI text)
            database.parent.mkdir(parents=True, exist_ok=True)  # SQLite creates the file, not its folder
            uri = f"sqlite:///{database}"
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            artifacts = self.node.get("artifact_dir")
            if artifacts is None and database is not None:
                artifacts = database.parent / "mlartifacts"
            location = Path(artifacts).resolve().as_uri() if artifacts is not None else None
            try:
                self.client.create_experiment(name, artifact_location=location)
            except Exception:  # noqa: BLE001 - created meanwhile by another job of the sweep
                pass
            experiment = self.client.get_experiment_by_name(name)
        tags = {"run_folder": str(self.folder.path.resolve())}
        sweep = _sweep_folder()
        if sweep is not None:
            tags["sweep"] = sweep
        run = self.client.create_run(experiment.experiment_id, run_name=self.run_name, tags=tags)
        self.run_id = run.info.run_id
        params = [Param(k, v[:self.MAX_PARAM]) for k, v in self.params().items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per call
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        return self.run_id

    def _epoch(self, row: dict[str, Any]) -> None:
        run_id = self._open()
        for column, name in EPOCH_METRICS.items():
            self.client.log_metric(run_id, name, float(row[column]), step=int(row["epoch"]))

    def _final(self, metrics: Metrics) -> None:
        run_id = self._open()
        step = max(self.logged, default=0)
        for name, value in self.final_metrics(metrics).items():
            self.client.log_metric(run_id, name, value, step=step)
        for name in ARTIFACTS:
            if self.folder.file(name).is_file():
                self.client.log_artifact(run_id, str(self.folder.file(name)))

    def _close(self, failed: bool) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")
        mlruns = Path("mlruns")  # MLflow's SQL store makes an empty ./mlruns wherever it is started
        if not self.mlruns_existed and mlruns.is_dir() and not any(mlruns.iterdir()):
            mlruns.rmdir()


def _sweep_folder() -> str | None:
    """The folder of the sweep this job belongs to, None outside a sweep."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            return str(Path(HydraConfig.get().sweep.dir).resolve())
    except Exception:  # noqa: BLE001 - no Hydra run: no sweep
        pass
    return None


LOGGERS = {"none": Logger, "csv": CsvLogger, "tensorboard": TensorBoardLogger, "mlflow": MlflowLogger}
#: The module each extra provides, imported when the logger is chosen.
REQUIRES = {"tensorboard": ("tensorboard", "torch.utils.tensorboard"), "mlflow": ("mlflow", "mlflow.tracking")}


def build_logger(node: Any) -> Logger:
    """The logger of the ``logger`` config node (None: ``none``); :class:`ConfigError` naming the
    key for an unknown logger or key, a value of the wrong type, or a library not installed."""
    if node is None:
        return Logger({})
    config = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    if not isinstance(config, dict):
        raise ConfigError("logger", f"must be a group of keys (choose logger=none, csv, tensorboard or mlflow), "
                                    f"got {shown(config)}")
    name = config.get("name")
    if name not in LOGGERS:
        raise ConfigError("logger.name", f"unknown logger {shown(name)}; choose one of {', '.join(LOGGERS)}")
    for key in config:
        if key != "name" and key not in KEYS[name]:
            keys = ", ".join(("name", *KEYS[name]))
            raise ConfigError(f"logger.{key}", f"is not a key of the {name} logger; its keys: {keys}")
    for key in KEYS[name]:
        value = config.get(key)
        optional = key in ("save_dir", "artifact_dir") and not (name == "tensorboard" and key == "save_dir")
        if (value is None and not optional) or (value is not None and (not isinstance(value, str) or not value)):
            kind = "a folder path" if key.endswith("dir") else "a non-empty text"
            raise ConfigError(f"logger.{key}", f"must be {kind}{' or null' if optional else ''}, got {shown(value)}")
    for module in REQUIRES.get(name, ()):
        try:
            __import__(module)
        except ImportError as e:
            missing = getattr(e, "name", None)
            why = "is not installed" if missing in (None, name) or missing == module else \
                f"cannot be imported ({e})"
            raise ConfigError("logger", f"{name} {why}; pip install 'advrun[{name}]'") from None
    return LOGGERS[name](config)


__all__ = ["LOGGERS", "Logger", "build_logger"]
