"""Sweeps that survive a failing job, with the basic, joblib and submitit launchers and the Optuna
sweeper; readable job folders; output folders that two runs never share."""

import copy
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, read_write

from advrun.config import config_dir
from advrun.sweep import MARKER, MAX_NAME, AdvrunCallback, count_jobs, job_dir_name
from tests.conftest import FAST, TINY, run_cli, run_inprocess

NO_ATTACK = [*TINY, "attack=none"]


def _summary(sweep: Path) -> dict[str, str]:
    frame = pd.read_csv(sweep / "summary.csv", dtype={"job": str})
    return dict(zip(frame["job"], frame["status"]))


def _jobs(sweep: Path) -> list[str]:
    return sorted(p.name for p in sweep.iterdir() if (p / ".hydra").is_dir())


def _check_one_good_one_failed(proc, sweep: Path, good: str, bad: str) -> None:
    """The good job finished, the bad one recorded its error, the summary and the exit status say so."""
    assert proc.returncode == 1, proc.stderr
    assert _jobs(sweep) == sorted([good, bad])
    metrics = json.loads((sweep / good / "metrics.json").read_text())
    assert metrics["eps"] == 0.05 and 0 <= metrics["robust_accuracy"] <= metrics["clean_accuracy"] <= 1
    assert not (sweep / good / "error.txt").exists()
    assert (sweep / bad / "error.txt").read_text().startswith("attack.eps: ")
    assert not (sweep / bad / "metrics.json").exists() and not (sweep / bad / "traceback.txt").exists()
    assert _summary(sweep) == {good: "ok", bad: "failed"}
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("advrun: 1 failed (") and bad in last and "of 2 jobs" in last
    assert "Traceback" not in proc.stderr


def test_job_dir_name_is_readable_and_safe():
    assert job_dir_name(0, "attack.eps=0.1,model=cnn") == "0_attack.eps=0.1,model=cnn"
    assert job_dir_name(3, "") == "3"  # a sweep over seeds only
    assert job_dir_name(2, "dataset.root=/data/my set,x='a:b'") == "2_dataset.root=_data_my_set,x=_a_b_"
    long = job_dir_name(11, "model.hidden=[" + ",".join(["512"] * 200) + "]")
    assert long.startswith("11_model.hidden=[512,") and len(long) == len("11_") + MAX_NAME


@pytest.mark.parametrize("path", ["outputs/2026-11-21/14-00-00-123456-1", "/runs/it's here", "C:\\runs\\", "a\\'b"])
def test_folder_overrides_read_back_by_hydra(path):
    """The override a moved folder is handed to the jobs with parses back to the same path."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from advrun.sweep import quoted

    assert OverridesParser.create().parse_override(f"hydra.sweep.dir={quoted(path)}").value() == path


def test_basic_launcher_one_failing_job_does_not_stop_the_others(tmp_path):
    """seed=0,1 doubles each setting: seed is left out of the names, the job number keeps them apart,
    and the overrides every job shares are left out too."""
    sweep = tmp_path / "sweep"
    proc = run_inprocess("-m", *FAST, "attack.eps=-1,0.05", "seed=0,1", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 1, proc.stderr
    bad, good = ["0_attack.eps=-1", "1_attack.eps=-1"], ["2_attack.eps=0.05", "3_attack.eps=0.05"]
    assert _jobs(sweep) == bad + good
    assert sorted(json.loads((sweep / job / "metrics.json").read_text())["seed"] for job in good) == [0, 1]
    for job in bad:  # the failures came first and did not stop the later jobs
        error = (sweep / job / "error.txt").read_text()
        assert error.startswith("attack.eps: ") and error.endswith("-1\n") and error.count("\n") == 1
        assert f"advrun: error in job {job}: attack.eps: " in proc.stderr
    assert _summary(sweep) == {**dict.fromkeys(bad, "failed"), **dict.fromkeys(good, "ok")}
    assert proc.stderr.strip().splitlines()[-1].startswith("advrun: 2 failed (0_attack.eps=-1, 1_attack.eps=-1) of 4")
    bar = [line for line in proc.stderr.splitlines() if line.startswith("sweep: ")]  # rich draws it once off a terminal
    assert bar and bar[-1].startswith("sweep: 2 ok, 2 failed") and " 4/4 " in bar[-1], proc.stderr
    overrides = yaml.safe_load((sweep / good[1] / ".hydra" / "overrides.yaml").read_text())
    assert "seed=1" in overrides and "train.epochs=2" in overrides  # the name leaves out what the folder records


def test_joblib_launcher_two_workers(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "hydra/launcher=local_parallel", *FAST, "attack.eps=0.05,-1", f"hydra.sweep.dir={sweep}",
                   cwd=tmp_path)
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout
    _check_one_good_one_failed(proc, sweep, "0_attack.eps=0.05", "1_attack.eps=-1")


def test_submitit_local_launcher(tmp_path):
    """Each job runs in its own process started by submitit; its console output goes to submitit's logs."""
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", *FAST,
                   "attack.eps=0.05,-1", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    _check_one_good_one_failed(proc, sweep, "0_attack.eps=0.05", "1_attack.eps=-1")
    logs = "".join(p.read_text() for p in (sweep / ".submitit").glob("*/*_log.err"))
    assert "advrun: error in job 1_attack.eps=-1: attack.eps: " in logs


def test_unexpected_exception_in_a_job_leaves_its_traceback(tmp_path):
    """A bug rather than bad input in one job (here: an exception planted in the runner for seed 1):
    error.txt names it, traceback.txt holds the traceback, the other job finishes. The jobs differ
    only in their seed, so their folders are named by the job number alone."""
    sweep = tmp_path / "sweep"
    code = (
        "import sys\n"
        "import advrun.experiment as experiment\n"
        "from advrun.cli import main\n"
        "real_run = experiment.run\n"
        "def run(cfg, out):\n"
        "    if cfg.seed == 1:\n"
        "        raise RuntimeError('planted failure')\n"
        "    return real_run(cfg, out)\n"
        "experiment.run = run\n"
        "sys.argv = ['advrun', *sys.argv[1:]]\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, "-m", *NO_ATTACK, "seed=0,1",
                           f"hydra.sweep.dir={sweep}"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert _summary(sweep) == {"0": "ok", "1": "failed"}
    assert (sweep / "1" / "error.txt").read_text() == "RuntimeError: planted failure\n"
    trace = (sweep / "1" / "traceback.txt").read_text()
    assert trace.startswith("Traceback (most recent call last):") and 'File "<string>", line 7, in run' in trace
    assert trace.endswith("RuntimeError: planted failure\n")
    assert f"advrun: job 1 failed: RuntimeError: planted failure (traceback in {sweep / '1' / 'traceback.txt'})" \
        in proc.stderr
    assert "Traceback" not in proc.stderr and (sweep / "0" / "metrics.json").is_file()


def test_optuna_preset_maximises_robust_accuracy(tmp_path):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/sweeper=optuna_robust"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and "optimizer.lr" in sweeper.params

    sweep = tmp_path / "sweep"
    proc = run_inprocess("-m", "hydra/sweeper=optuna_robust", "hydra.sweeper.n_trials=3", "hydra.sweeper.params=null",
                         "attack.eps=choice(-1,0.1)", *FAST, f"hydra.sweep.dir={sweep}")
    jobs = _summary(sweep)
    assert len(jobs) == 3 and set(jobs.values()) <= {"ok", "failed"}
    for job, status in jobs.items():  # the sampled budget decides the outcome; a failed trial did not stop the study
        assert status == ("ok" if job.endswith("attack.eps=0.1") else "failed"), job
    assert proc.returncode == (1 if "failed" in jobs.values() else 0), proc.stderr
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    robust = [json.loads((sweep / job / "metrics.json").read_text())["robust_accuracy"]
              for job, status in jobs.items() if status == "ok"]
    assert best["best_value"] == pytest.approx(max(robust)) and best["best_params"] == {"attack.eps": 0.1}


def test_ray_launcher_local_instance(tmp_path):
    """Runs where ``advrun[ray]`` is installed (not part of the test extra: docs/launchers.md)."""
    pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="advrun[ray] is not installed")
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2",
                   "+hydra.launcher.ray.init.include_dashboard=false", *FAST, "attack.eps=0.05,-1",
                   f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    _check_one_good_one_failed(proc, sweep, "0_attack.eps=0.05", "1_attack.eps=-1")


def test_a_default_folder_taken_at_the_same_moment_moves_on(tmp_path, monkeypatch):
    """Two runs whose dated folder names coincide (the same timestamp): the second gets ``-1``."""
    monkeypatch.chdir(tmp_path)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True)
    wanted = str(cfg.hydra.run.dir)
    assert wanted.startswith("outputs/")  # the dated default, relative to the working directory
    runs = [copy.deepcopy(cfg) for _ in range(3)]  # copies keep the resolved timestamp
    for n, run in enumerate(runs):  # the first run takes the folder, the others the next free ones
        AdvrunCallback().on_run_start(run)
        folder = f"{wanted}-{n}" if n else wanted
        assert run.hydra.run.dir == folder and (tmp_path / folder / MARKER).is_file()
        if n:
            assert run.hydra.overrides.hydra[-1] == f"hydra.run.dir='{folder}'"
    assert len(list((tmp_path / wanted).parent.iterdir())) == 3


def test_two_runs_started_together_never_share_a_folder(tmp_path):
    """Started in the same second: two dated folders; a folder named twice is refused the second time."""
    args = [sys.executable, "-m", "advrun", *NO_ATTACK]
    procs = [subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    runs = sorted((tmp_path / "outputs").glob("*/*/metrics.json"))
    assert len(runs) == 2 and runs[0].parent != runs[1].parent

    taken = runs[0].parent
    before = (taken / "metrics.json").stat().st_mtime_ns, (taken / ".hydra" / "config.yaml").read_text()
    proc = run_inprocess(*NO_ATTACK, "seed=5", f"hydra.run.dir={taken}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        (f"advrun: error: hydra.run.dir: {taken} already holds a finished run, which advrun never overwrites; "
         "choose another output folder")]
    assert ((taken / "metrics.json").stat().st_mtime_ns, (taken / ".hydra" / "config.yaml").read_text()) == before
    assert not (taken / "error.txt").exists()


def test_a_sweep_folder_named_twice_is_refused(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / MARKER).write_text("{}\n")
    proc = run_inprocess("-m", *FAST, "attack.eps=0.05,0.1", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"advrun: error: hydra.sweep.dir: {sweep} already holds a run; choose another output folder"]
    assert _jobs(sweep) == []


@pytest.mark.parametrize("choices, task, expected", [
    ([], ["attack.eps=0.05,0.1", "seed=0,1,2"], 6),
    ([], ["seed=0,1,2", "attack.eps=0.05,0.1", "seed=3,4"], 4),  # a key given twice: its last values, as Hydra
    (["+experiment=crosslip_mnist"], ["+experiment=crosslip_mnist", "attack.eps=0.5,1"], 8),  # its 4 params x 2
    (["hydra/sweeper=optuna_robust", "hydra.sweeper.n_trials=7"], [], 7),
    ([], ["model=glob(*)"], None),  # glob needs Hydra's config loader: the bar counts without a total
])
def test_the_sweep_bar_knows_how_many_jobs_come(choices, task, expected):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=choices, return_hydra_config=True)
    with read_write(cfg):
        cfg.hydra.overrides.task = task
    assert count_jobs(cfg) == expected


def test_ctrl_c_in_a_sweep_writes_the_summary_and_lists_the_jobs_not_started(tmp_path):
    """SIGINT (what Ctrl-C sends) in the second of four jobs: one line, exit status 130, and the
    summary lists the finished job, the interrupted one and the two that never started."""
    from tests.test_cache_resume import KILLED, start, stop_after_epoch

    sweep = tmp_path / "sweep"
    job = start("-m", *KILLED, "cache.enabled=false", "seed=0,1,2,3", f"hydra.sweep.dir={sweep}", cwd=tmp_path, env={})
    err = stop_after_epoch(job, 3, signal.SIGINT, times=2)
    assert job.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"advrun: interrupted (Ctrl-C); 1 incomplete (1) and 2 not started (2, 3) of 4 jobs (a failed job's folder "
        f"holds its error.txt); sweep summary in {sweep}")
    assert _summary(sweep) == {"0": "ok", "1": "incomplete", "2": "not started", "3": "not started"}
    assert "4 jobs: 1 finished, 0 failed, 1 incomplete" in (sweep / "summary.md").read_text()
    assert "2 not started" in (sweep / "summary.md").read_text()


def test_jobs_not_started_are_named_as_their_folders_would_be(tmp_path):
    """The names the summary gives jobs that never started are the names Hydra gives their folders."""
    from advrun.reporting.sweep import write_sweep_report
    from advrun.sweep import planned_job_names

    sweep = tmp_path / "sweep"
    proc = run_inprocess("-m", *NO_ATTACK, "model=logreg,mlp", "seed=0,1", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr
    planned = planned_job_names(OmegaConf.load(sweep / "multirun.yaml"))
    assert [name for _, name, _ in planned] == _jobs(sweep) == ["0_model=logreg", "1_model=logreg", "2_model=mlp",
                                                                "3_model=mlp"]
    shutil.rmtree(sweep / "2_model=mlp")  # as if the sweep had stopped before it
    frame = write_sweep_report(sweep)
    assert dict(zip(frame["job"], frame["status"])) == {
        "0_model=logreg": "ok", "1_model=logreg": "ok", "3_model=mlp": "ok", "2_model=mlp": "not started"}
    row = frame[frame["job"] == "2_model=mlp"].iloc[0]
    assert row["override:model"] == "mlp" and row["override:seed"] == "0"
