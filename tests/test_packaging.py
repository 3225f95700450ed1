"""advrun finds its configs from the source tree and from a built wheel."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

pytest.importorskip("hatchling", reason="building the wheel needs hatchling (installed by `make test`)")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(REPO)],
        check=True, capture_output=True, text=True,
    )
    (found,) = dist.glob("advrun-*.whl")
    return found


def test_wheel_ships_the_configs_and_the_report_templates_inside_the_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for name in ("advrun/conf/config.yaml", "advrun/conf/attack/pgd.yaml", "advrun/conf/dataset/digits.yaml",
                 "advrun/conf/hydra/help/advrun.yaml", "advrun/cli.py"):
        assert name in names, name
    templates = REPO / "advrun" / "reporting" / "templates"
    shipped = sorted(p.relative_to(REPO).as_posix() for p in templates.rglob("*") if p.is_file())
    assert len(shipped) >= 8 and not set(shipped) - set(names), set(shipped) - set(names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "advrun = advrun.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_installed_wheel_composes_and_runs(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, text=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = (
        "import advrun, advrun.config as c\n"
        "from hydra import compose, initialize_config_dir\n"
        "print(advrun.__file__); print(c.config_dir())\n"
        "with initialize_config_dir(config_dir=str(c.config_dir()), version_base='1.3'):\n"
        "    cfg = compose(config_name='config', overrides=['attack=fgsm'])\n"
        "print(cfg.attack._target_)\n"
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    proc = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    module_file, conf, target = proc.stdout.split()
    assert Path(module_file).is_relative_to(site) and Path(conf) == site / "advrun" / "conf"
    assert target == "advrun.attacks.FGSM"
    proc = subprocess.run([sys.executable, "-m", "advrun", "--cfg", "job", "model=cnn"], cwd=work, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "advrun.models.CNN" in proc.stdout, proc.stderr
    run = work / "run"  # a run that has not finished: its report comes from the installed templates
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("dataset:\n  name: digits\n")
    proc = subprocess.run([sys.executable, "-m", "advrun.reporting.cli", str(run)], cwd=work, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for name in ("report.md", "report.html"):
        assert "This run has not finished" in (run / name).read_text()
