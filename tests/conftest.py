"""Shared fixtures: composing configs with Hydra's compose API, tiny run settings, shared data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from advrun.config import config_dir

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"
REFERENCE_MODELS = SHARED / "reference-models"

#: Overrides that make any run take a second or two.
TINY = [
    "dataset.n_train=240",
    "dataset.n_test=60",
    "train.epochs=2",
    "train.batch_size=32",
    "eval.batch_size=25",
    "device=cpu",
]


def groups() -> dict[str, list[str]]:
    """Every option of every config group, read from conf/."""
    root = config_dir()
    return {
        group: sorted(p.stem for p in (root / group).glob("*.yaml"))
        for group in ("dataset", "model", "optimizer", "attack", "defense")
    }


@pytest.fixture
def make_cfg():
    """``make_cfg(*overrides)`` composes the advrun config as the CLI would."""

    def _compose(*overrides: str):
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))

    return _compose


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "MNIST" / "raw" / "t10k-images-idx3-ubyte").is_file():
        pytest.skip(f"real MNIST not available: {SHARED_DATA} is absent (it sits beside the checkout)")
    return SHARED_DATA


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python -m advrun ARGS`` in ``cwd`` and capture its output."""
    inherited = {k: v for k, v in os.environ.items() if k not in ("ADVRUN_DEBUG", "HYDRA_FULL_ERROR")}
    full_env = {**inherited, "PYTHONUNBUFFERED": "1", "COLUMNS": "120", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "advrun", *args], cwd=cwd, env=full_env, capture_output=True, text=True,
        timeout=timeout,
    )


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
