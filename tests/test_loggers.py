"""The logger group: each logger reads back with its own library's client; a missing extra, an
unknown key and a logger failing at the end."""

from __future__ import annotations

import csv
import sys
import warnings

import pytest

from advrun import experiment
from advrun.errors import ConfigError
from advrun.loggers import build_logger
from advrun.runfolder import RunFolder

from .conftest import FAST, run_inprocess

pytestmark = pytest.mark.usefixtures("one_thread")

RUN = [*FAST, "cache.enabled=false"]


def _run(make_cfg, tmp_path, *overrides):
    cfg = make_cfg(*RUN, *overrides)
    folder = tmp_path / "out" / "day" / "run"
    metrics = experiment.run(cfg, folder)
    return RunFolder(folder), metrics


def test_csv_logger_writes_epochs_and_final_metrics_in_the_run_folder(make_cfg, tmp_path):
    folder, metrics = _run(make_cfg, tmp_path, "logger=csv")
    with (folder.logs / "epochs.csv").open() as f:
        epochs = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in epochs] == [1, 2]
    assert float(epochs[-1]["test_accuracy"]) == pytest.approx(metrics["test_accuracy"])
    with (folder.logs / "final.csv").open() as f:
        (final,) = list(csv.DictReader(f))
    assert float(final["robust_accuracy"]) == pytest.approx(metrics["robust_accuracy"])
    assert float(final["clean_accuracy"]) == pytest.approx(metrics["clean_accuracy"])


def test_csv_logger_save_dir_holds_one_folder_per_run(make_cfg, tmp_path):
    folder, _ = _run(make_cfg, tmp_path, "logger=csv", f"logger.save_dir={tmp_path / 'csv'}")
    assert (tmp_path / "csv" / "day" / "run" / "epochs.csv").is_file()
    assert not folder.logs.exists()


def test_tensorboard_scalars_read_back(make_cfg, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, metrics = _run(make_cfg, tmp_path, "logger=tensorboard", f"logger.save_dir={tmp_path / 'tb'}")
    events = EventAccumulator(str(tmp_path / "tb" / "day" / "run"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"epoch/train_loss", "epoch/train_accuracy", "epoch/test_accuracy", "final/robust_accuracy"} <= set(tags)
    assert [e.step for e in events.Scalars("epoch/test_accuracy")] == [1, 2]
    assert events.Scalars("final/clean_accuracy")[0].value == pytest.approx(metrics["clean_accuracy"])


def test_mlflow_run_holds_params_metrics_and_artifacts(make_cfg, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # the default store is relative to the working folder
    folder, metrics = _run(make_cfg, tmp_path, "logger=mlflow", "report=true")
    assert (tmp_path / "outputs" / "mlflow.db").is_file() and not (tmp_path / "mlruns").exists()
    client = MlflowClient(tracking_uri="sqlite:///outputs/mlflow.db")
    experiment_ = client.get_experiment_by_name("advrun")
    (run,) = client.search_runs([experiment_.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "day/run"
    assert run.data.params["attack.steps"] == "2" and run.data.params["train.epochs"] == "2"
    assert run.data.params["dataset.name"] == "digits"
    assert run.data.metrics["robust_accuracy"] == pytest.approx(metrics["robust_accuracy"])
    assert run.data.metrics["success_rate"] == pytest.approx(metrics["success_rate"])
    history = client.get_metric_history(run.info.run_id, "test_accuracy")
    assert [m.step for m in history] == [1, 2]
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 2
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {RunFolder.CURVE, RunFolder.METRICS, *RunFolder.REPORTS} <= artifacts
    assert run.data.tags["run_folder"] == str(folder.path.resolve())


def test_mlflow_sweep_jobs_are_tagged_with_the_sweep_folder(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    sweep = tmp_path / "sweep"
    result = run_inprocess("-m", *RUN, "logger=mlflow", "seed=0,1", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    experiment_ = client.get_experiment_by_name("advrun")
    runs = client.search_runs([experiment_.experiment_id], filter_string=f"tags.sweep = '{sweep.resolve()}'")
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]


def test_missing_extra_ends_in_one_line_before_training(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    result = run_inprocess(*RUN, "logger=mlflow", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "advrun: error: logger: mlflow is not installed; pip install 'advrun[mlflow]'"
    assert RunFolder(tmp_path / "run").history() is None  # nothing trained


def test_missing_tensorboard_names_its_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ConfigError, match=r"^logger: tensorboard is not installed; pip install 'advrun\[tensorboard\]'$"):
        build_logger({"name": "tensorboard", "save_dir": "tb"})


@pytest.mark.parametrize(("node", "key"), [
    ({"name": "csv", "savedir": "x"}, "logger.savedir"),
    ({"name": "mlflow", "tracking_uri": "", "experiment_name": "a"}, "logger.tracking_uri"),
    ({"name": "wandb"}, "logger.name"),
])
def test_logger_keys_are_checked(node, key):
    with pytest.raises(ConfigError) as info:
        build_logger(node)
    assert info.value.key == key


def test_unknown_logger_key_on_the_command_line_is_one_line(tmp_path):
    result = run_inprocess(*RUN, "logger=csv", "+logger.dir=x", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("advrun: error: logger.dir: is not a key of the csv logger; its keys: name, save_dir")
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_logger_failing_at_the_end_leaves_a_finished_run(make_cfg, tmp_path, monkeypatch, caplog):
    from advrun import loggers

    def broken(self, metrics):
        raise OSError("disk full")

    monkeypatch.setattr(loggers.CsvLogger, "_final", broken)
    folder, metrics = _run(make_cfg, tmp_path, "logger=csv")
    assert folder.status() == "ok" and folder.metrics().robust_accuracy == metrics["robust_accuracy"]
    assert "logger csv failed and stops logging" in caplog.text and "disk full" in caplog.text
