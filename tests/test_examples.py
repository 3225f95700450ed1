"""examples/: a project of one's own (model, attack, defense, data set, config folder) run end to
end from the command line, as its README says, from a copy of the folder."""

import shutil

import pandas as pd

from tests.conftest import REPO, run_cli

EXAMPLES = REPO / "examples"
#: Small and quick: two epochs, the first 50 test samples, no audit or report.
QUICK = ["train.epochs=2", "eval.n_samples=50", "eval.audit=false", "report=false", "device=cpu"]


def test_the_sweep_compares_the_students_attack_with_pgd(tmp_path):
    project = tmp_path / "project"
    shutil.copytree(EXAMPLES, project, ignore=shutil.ignore_patterns("__pycache__", "outputs"))
    sweep = project / "sweep"
    proc = run_cli("-m", "hydra.searchpath=[file://conf]", "+experiment=compare", "attack=rfgsm,pgd", *QUICK,
                   f"hydra.sweep.dir={sweep}", cwd=project, env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    summary = pd.read_csv(sweep / "summary.csv")
    assert len(summary) == 2 and set(summary["status"]) == {"ok"}, summary
    runs = {name: pd.read_csv(next(sweep.glob(f"*_attack={name}")) / "curve.csv") for name in ("rfgsm", "pgd")}
    at = {name: curve.loc[curve["eps"] == 0.1, "robust_accuracy"].item() for name, curve in runs.items()}
    assert at["pgd"] <= at["rfgsm"], at  # one random step is no stronger than 40 steps of PGD
    assert "TinyNet" in proc.stdout and "NoiseTraining" in proc.stdout


def test_a_data_set_of_ones_own_runs_and_its_mistakes_name_the_key(tmp_path):
    """examples/my_data.py's bars() as dataset=bars; a function returning arrays advrun cannot use
    ends in one line naming dataset._target_ before any training."""
    project = tmp_path / "project"
    shutil.copytree(EXAMPLES, project, ignore=shutil.ignore_patterns("__pycache__", "outputs"))
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    run = tmp_path / "run"
    proc = run_cli("hydra.searchpath=[file://conf]", "dataset=bars", "model=tiny_net", "attack=rfgsm", *QUICK,
                   f"hydra.run.dir={run}", cwd=project, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (run / "metrics.json").is_file() and "bars" in (run / "metrics.json").read_text()
    (project / "my_data.py").write_text((project / "my_data.py").read_text() + (
        "\n\ndef broken(**_):\n    import numpy as np\n    x = np.zeros((10, 4))\n"
        "    return x, np.zeros(9, dtype=int), x, np.zeros(10, dtype=int)\n"))
    proc = run_cli("hydra.searchpath=[file://conf]", "dataset=bars", "dataset._target_=my_data.broken", *QUICK,
                   f"hydra.run.dir={tmp_path / 'broken'}", cwd=project, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("advrun: error: dataset._target_: my_data.broken: y_train "
                                                           "must hold one integer label per row"), proc.stderr
