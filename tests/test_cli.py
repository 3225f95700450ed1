"""The ``advrun`` command end to end, through subprocesses as a user runs it."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

import advrun
from advrun.data import load_dataset
from tests.conftest import FAST, TINY, groups, run_cli, run_inprocess

SETTINGS_ONLY = [*TINY, "eval.epsilons=[0,0.1]"]  # for runs that must stop before any attack


def test_single_run_writes_every_output_and_reloads(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(*FAST, "eval.audit=true", "report=true", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "robust acc" in proc.stdout and "clean accuracy" in proc.stdout
    for name in ("metrics.json", "curve.csv", "training.csv", "robustness_curve.png", "training_curve.png", "audit.json", "report.html",
                 "model.pt", "model.json", ".hydra/config.yaml"):
        assert (out / name).is_file(), name
    assert not (out / "error.txt").exists()

    run = advrun.load_run(out)
    assert not run.model.training and run.config.dataset.name == "digits"
    data = load_dataset({**run.config.dataset, "budgets": None})
    n = run.metrics["n_eval"]
    with torch.no_grad():
        correct = (run.model(data.x_test[:n]).argmax(1) == data.y_test[:n]).sum().item()
    assert correct / n == pytest.approx(run.metrics["clean_accuracy"])


def test_console_script_and_help(tmp_path):
    script = Path(sys.executable).parent / "advrun"
    assert script.is_file() or shutil.which("advrun")
    proc = run_cli("--help", cwd=tmp_path)
    assert proc.returncode == 0
    section = proc.stdout.split("== Config groups")[1].split("==")[1]  # the lines "group: a, b, c"
    listed = {line.split(":")[0]: set(line.split(":", 1)[1].replace(",", " ").split())
              for line in section.splitlines() if ":" in line}
    for group, options in groups().items():
        assert listed[group] == set(options), group
    assert "Examples:" in proc.stdout


def test_cfg_job_prints_the_composed_config(tmp_path):
    proc = run_cli("--cfg", "job", "model=cnn", "attack.steps=7", cwd=tmp_path)
    assert proc.returncode == 0
    assert "_target_: advrun.models.CNN" in proc.stdout and "steps: 7" in proc.stdout
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("overrides, key", [
    (["attack.eps=-0.5"], "attack.eps"),
    (["train.epochs=0"], "train.epochs"),
    (["train.batch_size=0"], "train.batch_size"),
    (["attack.norm=7"], "attack.norm"),
    (["dataset=mnist", "dataset.root=NOWHERE", "dataset.download=false"], "dataset.root"),
    (["attack=linear_exact"], "attack._target_"),  # exact for affine models only; the default is an MLP
    (["attack=fgsm", "+attack.steps=3"], "attack.steps"),  # a key FGSM does not take
    (["defense=none", "+defense.weight=0.1"], "defense.weight"),
    (["attack.eps=${nope}"], "attack.eps"),  # an interpolation that does not resolve, found before training
])
def test_invalid_input_is_one_line_exit_2_no_results(tmp_path, overrides, key):
    out = tmp_path / "run"
    proc = run_inprocess(*SETTINGS_ONLY, *overrides, f"hydra.run.dir={out}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"advrun: error: {key}:")
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (out / "metrics.json").exists() and not (out / "curve.csv").exists()
    assert (out / "error.txt").read_text().startswith(key)


def test_invalid_input_from_the_console_script_exits_2(tmp_path):
    # the tests above call advrun.cli.main in this process; this one runs the installed command
    proc = run_cli(*SETTINGS_ONLY, "attack.eps=-0.5", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "advrun: error: attack.eps: must be a number >= 0, got -0.5"]


def test_debug_switch_shows_the_traceback(tmp_path):
    proc = run_cli(*FAST, "attack.eps=-0.5", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
                   env={"ADVRUN_DEBUG": "1", "HYDRA_FULL_ERROR": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr


@pytest.mark.parametrize("overrides, key, words", [
    (["model=transformer"], "model", "available options in 'model': cnn, exported, kernel, logreg, mlp"),
    (["+experiment=nope"], "experiment", "madry_mnist"),
    (["attack=fgsm", "attack.steps=3"], "attack.steps", "not a key of attack; its keys: eps, norm, target"),
    (["train.epochs=[1,"], "train.epochs", "cannot parse"),
    (["attack.eps"], "attack.eps", "cannot parse"),
    (["~attack"], "attack", "missing from the config (removed with ~attack?)"),
    (["-m", "attack.eps=0.1,0.2", "model=nope"], "model", "available options"),
])
def test_command_line_mistakes_hydra_finds_are_one_line_too(tmp_path, overrides, key, words):
    proc = run_inprocess(*overrides, f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"advrun: error: {key}: "), proc.stderr
    assert words in lines[0] and "Traceback" not in proc.stderr + proc.stdout
    assert not any((tmp_path / name / "metrics.json").exists() for name in ("run", "sweep"))


def _jobs(sweep: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]


def test_multirun_over_budgets(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_inprocess("-m", *FAST, "attack.eps=0.05,0.2", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr
    jobs = _jobs(sweep)
    assert sorted(job["eps"] for job in jobs) == [0.05, 0.2]


def test_multirun_over_two_options_of_a_group(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_inprocess("-m", *FAST, "model=logreg,mlp", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr
    targets = sorted(config.read_text().split("_target_: advrun.models.")[1].split()[0]
                     for config in sweep.glob("*/.hydra/config.yaml"))
    assert targets == ["LogReg", "MLP"] and len(_jobs(sweep)) == 2
