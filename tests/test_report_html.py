"""The HTML reports open in a real browser: headless Chromium renders the tables and the figures.

Chromium is Debian's ``chromium`` package, installed by ``make browser`` (and by .ci/run); the
tests skip with that reason where it is absent. They install nothing.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_reporting import _run

pytestmark = pytest.mark.usefixtures("one_thread")

_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: matplotlib's default first colour (tab:blue), the robustness curve's line: nothing else in a report has it.
_CURVE_BLUE = np.array([31, 119, 180])
#: The background of the tables' header cells (``th`` in the report's style sheet).
_HEADER_GREY = np.array([0xF0, 0xF2, 0xF5])


def _find() -> str | None:
    return next((found for name in _NAMES if (found := shutil.which(name))), None)


@pytest.fixture(scope="session")
def chromium() -> str:
    found = _find()
    if not found:
        pytest.skip(f"headless Chromium is not installed (none of {', '.join(_NAMES)} on PATH): "
                    "`make browser` installs Debian's chromium package")
    return found


def screenshot(chromium: str, page: Path, out: Path, size: tuple[int, int] = (1200, 3000)) -> np.ndarray:
    """A screenshot of ``page`` rendered by headless Chromium (no network, a throw-away profile)."""
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", f"--user-data-dir={out.parent / 'chromium-profile'}",
               f"--window-size={size[0]},{size[1]}", f"--screenshot={out}", page.resolve().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert out.is_file(), f"chromium wrote no screenshot (exit {done.returncode}): {done.stderr[-2000:]}"
    image = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert image.shape[:2] == (size[1], size[0])
    return image


def _pixels_near(image: np.ndarray, colour: np.ndarray, tolerance: int = 12) -> int:
    return int((np.abs(image - colour).max(axis=2) <= tolerance).sum())


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory, one_thread) -> Path:
    return _run(tmp_path_factory.mktemp("html") / "run", "attack.steps=3")


def test_run_report_renders_tables_and_figures_in_chromium(chromium, run_folder, tmp_path):
    image = screenshot(chromium, run_folder / "report.html", tmp_path / "report.png")
    assert image.std() > 20, "the page is blank"
    codes = image[:, :, 0] * 65536 + image[:, :, 1] * 256 + image[:, :, 2]
    assert len(np.unique(codes)) > 500  # anti-aliased text and plots, not a flat error page
    assert _pixels_near(image, _HEADER_GREY, 2) > 2000  # the tables' header rows are drawn
    assert _pixels_near(image, _CURVE_BLUE) > 300  # the embedded robustness curve is drawn
    rows = np.nonzero((np.abs(image - _CURVE_BLUE).max(axis=2) <= 12).any(axis=1))[0]
    assert rows.min() > 300  # below the title and the results table


def test_sweep_report_renders_in_chromium(chromium, run_folder, tmp_path):
    from advrun.reporting.sweep import write_sweep_report

    root = tmp_path / "sweep"
    for job, eps in (("0", "0.1"), ("1", "0.2")):
        shutil.copytree(run_folder, root / job)
        (root / job / ".hydra" / "overrides.yaml").write_text(f"- attack.eps={eps}\n- attack.steps=3\n")
    shutil.copytree(run_folder / ".hydra", root / "2" / ".hydra")
    (root / "2" / ".hydra" / "overrides.yaml").write_text("- attack.eps=-1\n- attack.steps=3\n")
    (root / "2" / "error.txt").write_text("attack.eps: must be a finite number >= 0, got -1\n")
    frame = write_sweep_report(root)
    assert list(frame["status"]) == ["ok", "ok", "failed"]
    image = screenshot(chromium, root / "report.html", tmp_path / "sweep.png", size=(1200, 1600))
    assert _pixels_near(image, np.array([0xF8, 0xD7, 0xDA]), 2) > 1000  # the failed job's row and the notice
    assert _pixels_near(image, _HEADER_GREY, 2) > 500  # the summary table
    assert _pixels_near(image, _CURVE_BLUE) + _pixels_near(image, np.array([255, 127, 14])) > 300  # the curves
