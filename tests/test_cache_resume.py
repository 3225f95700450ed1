"""Model cache, resumable training, determinism and non-finite losses."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys

import pandas as pd
import pytest
import torch

from advrun import cache, experiment
from advrun.defenses import Standard
from advrun.errors import AdvrunError

from tests.conftest import REPO, TINY, run_cli, run_inprocess

pytestmark = pytest.mark.usefixtures("one_thread")

RUN = [*TINY, "attack=fgsm", "model.hidden=[32]"]


def numbers(metrics: dict) -> dict:
    """metrics.json without what legitimately differs between runs: wall-clock timings and how
    the model was obtained."""
    return {k: v for k, v in metrics.items() if k not in ("timings", "training")}


def entry(cfg) -> cache.Entry:
    return cache.entry_for(cfg, torch.device("cpu"))[0]


def test_a_second_run_reuses_the_model_and_gives_the_same_results(make_cfg, tmp_path):
    cfg = make_cfg(*RUN)
    first = experiment.run(cfg, tmp_path / "a")
    second = experiment.run(cfg, tmp_path / "b")
    assert first["training"] == {"trained": True, "resumed": False, "source": str(entry(cfg).path)}
    assert second["training"] == {"trained": False, "source": str(entry(cfg).path)}
    assert numbers(first) == numbers(second)
    assert (tmp_path / "a" / "curve.csv").read_bytes() == (tmp_path / "b" / "curve.csv").read_bytes()
    assert (tmp_path / "a" / "training.csv").read_text().splitlines()[0] == \
        (tmp_path / "b" / "training.csv").read_text().splitlines()[0]
    assert not entry(cfg).checkpoint.exists()  # the resumable checkpoint goes once the model is stored


def test_attack_and_evaluation_keys_share_the_model_and_training_keys_do_not(make_cfg, tmp_path):
    experiment.run(make_cfg(*RUN), tmp_path / "base")
    reuse = [["attack=pgd", "attack.steps=2"], ["eval.epsilons=[0.05]"], ["eval.n_samples=20"]]
    for i, overrides in enumerate(reuse):
        assert experiment.run(make_cfg(*RUN, *overrides), tmp_path / f"r{i}")["training"]["trained"] is False
    retrain = [["seed=1"], ["optimizer.lr=0.002"], ["train.epochs=3"], ["dataset.n_train=200"],
               ["defense=trades", "defense.steps=1"]]
    for i, overrides in enumerate(retrain):
        assert experiment.run(make_cfg(*RUN, *overrides), tmp_path / f"t{i}")["training"]["trained"] is True, overrides


def test_the_key_changes_with_the_code_version(make_cfg, monkeypatch):
    cfg = make_cfg(*RUN)
    before = entry(cfg).key
    monkeypatch.setattr(cache, "code_version", lambda: "another-version")
    assert entry(cfg).key != before


def test_cache_can_be_turned_off(make_cfg, tmp_path):
    cfg = make_cfg(*RUN, "cache.enabled=false", f"cache.dir={tmp_path / 'cache'}")
    for name in "ab":
        assert experiment.run(cfg, tmp_path / name)["training"] == {"trained": True, "resumed": False, "source": None}
    assert not (tmp_path / "cache").exists()


def test_parallel_jobs_racing_for_one_key_train_once(tmp_path):
    args = [*RUN, "train.epochs=8", f"cache.dir={tmp_path / 'cache'}"]
    jobs = [subprocess.Popen([sys.executable, "-m", "advrun", *args, f"hydra.run.dir={tmp_path / str(i)}"],
                             cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for i in range(2)]
    for job in jobs:
        _, err = job.communicate(timeout=300)
        assert job.returncode == 0, err
    metrics = [json.loads((tmp_path / str(i) / "metrics.json").read_text()) for i in range(2)]
    assert sorted(m["training"]["trained"] for m in metrics) == [False, True]
    assert numbers(metrics[0]) == numbers(metrics[1])
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 1


def _interrupt_after(monkeypatch, epoch: int) -> None:
    """Make training stop with KeyboardInterrupt (what SIGINT raises) after ``epoch`` epochs."""
    original = Standard.end_of_epoch

    def end_of_epoch(self, model, current):
        if current == epoch:
            raise KeyboardInterrupt
        return original(self, model, current)

    monkeypatch.setattr(Standard, "end_of_epoch", end_of_epoch)


@pytest.mark.parametrize("cached", [True, False])
def test_an_interrupted_run_resumes_and_ends_as_if_never_interrupted(make_cfg, tmp_path, monkeypatch, cached):
    overrides = [*RUN, "train.epochs=5", "train.schedule=cosine", "model.dropout=0.2", f"cache.enabled={cached}"]
    reference = experiment.run(make_cfg(*overrides, f"cache.dir={tmp_path / 'reference-cache'}"), tmp_path / "ref")

    cfg = make_cfg(*overrides, f"cache.dir={tmp_path / 'cache'}")
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 3)
        with pytest.raises(KeyboardInterrupt):
            experiment.run(cfg, tmp_path / "run")
    checkpoint = entry(cfg).checkpoint if cached else tmp_path / "run" / "checkpoint.pt"
    assert checkpoint.is_file() and not (tmp_path / "run" / "metrics.json").exists()

    resumed = experiment.run(cfg, tmp_path / ("again" if cached else "run"))  # same config; same folder without cache
    assert resumed["training"]["trained"] and resumed["training"]["resumed"]
    assert numbers(resumed) == numbers(reference)
    out = tmp_path / ("again" if cached else "run")
    assert (out / "curve.csv").read_bytes() == (tmp_path / "ref" / "curve.csv").read_bytes()
    assert not checkpoint.exists()


def test_a_run_stopped_while_it_attacks_resumes_without_training_again(make_cfg, tmp_path, monkeypatch):
    cfg = make_cfg(*RUN, "train.epochs=3", "cache.enabled=false")
    reference = experiment.run(cfg, tmp_path / "ref")
    with monkeypatch.context() as patch:
        def interrupted(*args, **kwargs):
            raise KeyboardInterrupt

        patch.setattr(experiment, "robustness_curve", interrupted)
        with pytest.raises(KeyboardInterrupt):
            experiment.run(cfg, tmp_path / "run")
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 3

    epochs_trained = []
    monkeypatch.setattr(Standard, "end_of_epoch", lambda self, model, epoch: epochs_trained.append(epoch))
    resumed = experiment.run(cfg, tmp_path / "run")
    assert epochs_trained == [] and resumed["training"]["resumed"]
    assert numbers(resumed) == numbers(reference) and not checkpoint.exists()


#: A run whose training (300 short epochs) lasts long enough to be stopped at a known epoch.
#: About 10 s on an idle 2-core machine; many times that on a busy one, hence the generous time
#: limit of its runs (a limit against hanging, not a speed requirement).
KILLED_TIMEOUT = 1200
KILLED = ["device=cpu", "attack=fgsm", "dataset.n_train=300", "train.epochs=300", "model.hidden=[32]",
          "eval.n_samples=50", "eval.audit=false", "eval.certify=false", "report=false"]


def start(*args: str, cwd, env: dict) -> subprocess.Popen:
    full_env = {k: v for k, v in os.environ.items() if k not in ("ADVRUN_DEBUG", "HYDRA_FULL_ERROR")}
    return subprocess.Popen([sys.executable, "-m", "advrun", *args], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**full_env, "PYTHONUNBUFFERED": "1", **env})


def stop_after_epoch(job: subprocess.Popen, epoch: int, sig: int, times: int = 1) -> str:
    """Send ``sig`` to ``job`` once its log has reported the end of ``epoch`` ``times`` times; its
    standard error."""
    seen, lines = 0, []
    for line in job.stderr:
        lines.append(line)
        if f"epoch {epoch}/" in line:
            seen += 1
            if seen == times:
                job.send_signal(sig)
                break
    rest = job.communicate(timeout=KILLED_TIMEOUT)[1]
    assert seen == times, "".join(lines) + rest
    return "".join(lines) + rest


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """metrics.json and curve.csv of the run that is interrupted below, run without interruption."""
    root = tmp_path_factory.mktemp("uninterrupted")
    proc = run_cli(*KILLED, "cache.enabled=false", "hydra.run.dir=run", cwd=root, timeout=KILLED_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    return json.loads((root / "run" / "metrics.json").read_text()), (root / "run" / "curve.csv").read_bytes()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
@pytest.mark.parametrize("cached", [True, False], ids=["cache", "no-cache"])
def test_a_run_stopped_at_an_epoch_resumes_there_with_the_same_command(tmp_path, uninterrupted, sig, cached):
    """A real process stopped after epoch 5 of 300 (SIGKILL, or SIGINT as Ctrl-C sends it), then the
    same command again: training goes on after the epoch the checkpoint holds, in the same run
    folder, and the results equal those of a run that was never stopped."""
    args = [*KILLED, f"cache.enabled={cached}", "hydra.run.dir=run"]
    env = {"ADVRUN_CACHE_DIR": str(tmp_path / "cache")}
    err = stop_after_epoch(start(*args, cwd=tmp_path, env=env), 5, sig)
    folder = tmp_path / "run"
    assert not (folder / "metrics.json").exists()
    checkpoint, = (tmp_path / "cache").glob("*/checkpoint.pt") if cached else [folder / "checkpoint.pt"]
    reached = torch.load(checkpoint, weights_only=True)["epoch"]
    assert 5 <= reached < 300
    if sig == signal.SIGINT:
        lines = err.strip().splitlines()
        assert lines[-1] == (f"advrun: interrupted (Ctrl-C); the run in run did not finish: the same command "
                             f"with hydra.run.dir=run resumes it"), err
        assert "Traceback" not in err

    again = run_cli(*args, cwd=tmp_path, env=env, timeout=KILLED_TIMEOUT)
    assert again.returncode == 0, again.stderr
    assert f"resuming training after epoch {reached} of 300" in again.stderr
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["training"]["resumed"] is True
    assert numbers(metrics) == numbers(uninterrupted[0])
    assert (folder / "curve.csv").read_bytes() == uninterrupted[1]
    assert not checkpoint.exists()
    assert len((folder / "training.csv").read_text().splitlines()) == 1 + 300


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_checkpoint_is_reported_and_not_loaded(make_cfg, tmp_path, monkeypatch, caplog, damage):
    cfg = make_cfg(*RUN, "train.epochs=4")
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            experiment.run(cfg, tmp_path / "first")
    checkpoint = entry(cfg).checkpoint
    content = checkpoint.read_bytes()
    checkpoint.write_bytes(b"not a checkpoint" if damage == "garbage" else content[: len(content) // 2])
    metrics = experiment.run(cfg, tmp_path / "second")
    assert metrics["training"]["trained"] and not metrics["training"]["resumed"]
    assert "cannot be read" in caplog.text and "training from the start" in caplog.text
    assert checkpoint.with_name("checkpoint.pt.corrupt").is_file()  # kept for inspection, never loaded
    reference = experiment.run(make_cfg(*RUN, "train.epochs=4", "cache.enabled=false"), tmp_path / "reference")
    assert numbers(metrics) == numbers(reference)


def test_a_cached_model_that_needs_unpickling_is_not_loaded(make_cfg, tmp_path, caplog):
    cfg = make_cfg(*RUN)
    experiment.run(cfg, tmp_path / "a")
    torch.save(torch.nn.Linear(2, 2), entry(cfg).path / "model.pt")  # a pickled module in place of the weights
    metrics = experiment.run(cfg, tmp_path / "b")
    assert metrics["training"]["trained"] is True
    assert "cannot be read" in caplog.text


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(make_cfg, tmp_path, monkeypatch):
    cfg = make_cfg(*RUN, "train.epochs=4")
    steps_per_epoch = 240 // 32 + 1
    calls = {"n": 0}
    original = Standard.loss

    def loss(self, model, x, y):
        calls["n"] += 1
        value = original(self, model, x, y)
        return value * float("nan") if calls["n"] > 2 * steps_per_epoch else value

    monkeypatch.setattr(Standard, "loss", loss)
    with pytest.raises(AdvrunError, match="training loss became nan in epoch 3; the last good checkpoint is kept") as e:
        experiment.run(cfg, tmp_path)
    assert e.value.key == "optimizer.lr"
    state = torch.load(entry(cfg).checkpoint, weights_only=True)
    assert state["epoch"] == 2
    assert not (tmp_path / "metrics.json").exists()


def test_a_nan_loss_from_the_command_line_is_one_clear_error(tmp_path):
    result = run_inprocess(*TINY, "attack=none", "optimizer=sgd", "optimizer.lr=1e30", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 2
    assert "advrun: error: optimizer.lr: training loss became" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.numerics
def test_identical_runs_write_identical_results(make_cfg, tmp_path):
    """Determinism, as the README promises it for one machine: the same config and seed (seed 0
    included) give the same numbers in metrics.json (all but timings and how the model was
    obtained), the same training.csv but for its time_s column, and curve.csv and model.pt byte
    for byte, with the cache off so that both runs train."""
    for seed in (0, 3):
        cfg = make_cfg(*RUN, "attack=pgd", "attack.steps=3", f"seed={seed}", "cache.enabled=false",
                       "deterministic=true", "model.dropout=0.1")
        a, b = (experiment.run(cfg, tmp_path / f"{seed}{d}") for d in "ab")
        assert numbers(a) == numbers(b)
        assert (tmp_path / f"{seed}a" / "curve.csv").read_bytes() == (tmp_path / f"{seed}b" / "curve.csv").read_bytes()
        assert (tmp_path / f"{seed}a" / "model.pt").read_bytes() == (tmp_path / f"{seed}b" / "model.pt").read_bytes()
        history = [pd.read_csv(tmp_path / f"{seed}{d}" / "training.csv").drop(columns="time_s") for d in "ab"]
        pd.testing.assert_frame_equal(*history, check_exact=True)
    assert numbers(a)["seeds"]["torch"] == 3
    torch.use_deterministic_algorithms(False)


def test_the_readme_documents_the_cache():
    readme = (REPO / "README.md").read_text()
    assert "cache.enabled=false" in readme and "ADVRUN_CACHE_DIR" in readme


def _truncate_history(path):
    lines = (path / "training.csv").read_text().splitlines(keepends=True)
    (path / "training.csv").write_text("".join(lines[:6]))  # the header and 5 of the rows


def _flip_a_byte(path):
    content = bytearray((path / "model.pt").read_bytes())
    content[len(content) // 2] ^= 0xFF
    (path / "model.pt").write_bytes(bytes(content))


@pytest.mark.parametrize("damage, reason", [
    (_truncate_history, "training.csv has .* bytes, the manifest records"),
    (lambda p: (p / "training.csv").unlink(), "training.csv is missing"),
    (lambda p: (p / "model.pt").unlink(), "model.pt is missing"),
    (_flip_a_byte, r"model.pt differs from the file stored \(SHA-256\)"),
    (lambda p: (p / "entry.json").unlink(), "entry.json is missing"),
    (lambda p: (p / "entry.json").write_text("{"), "entry.json holds no manifest"),
])
def test_a_cache_entry_that_is_not_whole_is_not_used(make_cfg, tmp_path, caplog, damage, reason):
    """Truncated (5 of 8 epochs), missing or changed files: the log says why, the model is trained
    again, and the run reports the numbers of the full training."""
    cfg = make_cfg(*RUN, "train.epochs=8")
    first = experiment.run(cfg, tmp_path / "a")
    damage(entry(cfg).path)
    second = experiment.run(cfg, tmp_path / "b")
    assert second["training"]["trained"] is True
    assert re.search(f"cache entry {re.escape(str(entry(cfg).path))} cannot be read \\(EntryNotWhole: {reason}",
                     caplog.text), caplog.text
    assert numbers(second) == numbers(first)
    entry(cfg).check_whole()  # stored whole again
    assert experiment.run(cfg, tmp_path / "c")["training"]["trained"] is False


def test_the_cache_lock_is_a_filelock_held_while_training(make_cfg, tmp_path):
    from filelock import FileLock, Timeout

    cfg = make_cfg(*RUN)
    held = entry(cfg)
    with held.lock():
        with pytest.raises(Timeout):
            FileLock(held.root / f"{held.key}.lock").acquire(timeout=0)
    FileLock(held.root / f"{held.key}.lock").acquire(timeout=0)


def _read_only_file_system(monkeypatch, root):
    real_open, real_mkdir = os.open, os.mkdir

    def refuse(path, *args, **kwargs):
        if str(path).startswith(str(root)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return (real_open if refuse.name == "open" else real_mkdir)(path, *args, **kwargs)

    def guarded(name):
        def call(path, *args, **kwargs):
            refuse.name = name
            return refuse(path, *args, **kwargs)
        return call

    monkeypatch.setattr(os, "open", guarded("open"))
    monkeypatch.setattr(os, "mkdir", guarded("mkdir"))


@pytest.mark.parametrize("where", ["under a file", "a file", "read-only"])
def test_a_cache_dir_that_cannot_be_written_is_one_line_naming_it(tmp_path, monkeypatch, where):
    (tmp_path / "file").write_text("a file\n")
    cache_dir = {"under a file": tmp_path / "file" / "cache", "a file": tmp_path / "file",
                 "read-only": tmp_path / "ro"}[where]
    if where == "read-only":  # simulated: the process cannot mount one (the kernel answers EROFS alike)
        (tmp_path / "ro").mkdir()
        _read_only_file_system(monkeypatch, tmp_path / "ro")
    proc = run_inprocess(*RUN, f"cache.dir={cache_dir}", "hydra.run.dir=run", cwd=tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("advrun")]  # after the log's INFO lines
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"advrun: error: cache.dir: cannot create or write the cache folder {cache_dir} (")
    assert not (tmp_path / "run" / "metrics.json").exists()
    assert (tmp_path / "file").read_text() == "a file\n"
