"""Results that cannot be written: a full disk (simulated with a file size limit, which the kernel
enforces like a full disk: the write fails part way), an output folder that cannot be created.
Each ends in one error line naming the file or key, exit status 2, and no file under a final name
that is not complete."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from advrun import io
from advrun.errors import OutputError
from tests.conftest import FAST, run_inprocess



def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    io.write_json(target, {"clean_accuracy": 0.9})
    with pytest.raises(OutputError) as info:
        with io.atomic_path(target) as tmp:
            tmp.write_text('{"clean_accu')
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert info.value.key == str(target) and "No space left on device" in info.value.message
    assert json.loads(target.read_text()) == {"clean_accuracy": 0.9}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


@pytest.mark.skipif(os.name != "posix", reason="file modes and the umask are POSIX")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_a_written_file_has_the_mode_of_a_plain_open_and_the_umask_is_left_alone(tmp_path, monkeypatch, umask):
    def no_umask(mask):
        raise AssertionError("the process umask was changed")

    previous = os.umask(umask)
    try:
        (tmp_path / "plain.json").write_text("{}")
        monkeypatch.setattr(os, "umask", no_umask)
        io.write_json(tmp_path / "atomic.json", {})
        io.write_json(tmp_path / "plain.json", {})  # replacing a file
    finally:
        monkeypatch.undo()
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"plain.json": 0o666 & ~umask, "atomic.json": 0o666 & ~umask}


def test_torch_save_failing_part_way_is_an_output_error(tmp_path, monkeypatch):
    def full_disk(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing "
                           "file data/0: file write failed")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OutputError, match="file write failed"):
        io.save_torch(tmp_path / "model.pt", {"w": torch.zeros(3)})
    assert list(tmp_path.iterdir()) == []


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _complete(path: Path) -> bool:
    """Whether a result file reads back whole."""
    if path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix == ".pt":
        torch.load(path, weights_only=True)
    elif path.suffix == ".csv":
        assert path.read_text().endswith("\n")
    return True


@pytest.mark.parametrize("limit", [20_000, 60_000])  # fails in the training checkpoint or the model file
def test_disk_full_during_a_run_is_one_error_line_and_no_partial_results(tmp_path, limit):
    out, cache = tmp_path / "run", tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k not in ("ADVRUN_DEBUG", "HYDRA_FULL_ERROR")}
    proc = subprocess.run(
        [sys.executable, "-m", "advrun", *FAST, "model.hidden=[64,64]", f"hydra.run.dir={out}", f"cache.dir={cache}"],
        cwd=tmp_path, env={**env, "COLUMNS": "120"}, capture_output=True, text=True, timeout=300,
        preexec_fn=_limit_file_size(limit),
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("advrun: error")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "cannot be written (File too large)" in errors[0]
    named = Path(errors[0].removeprefix("advrun: error: ").split(": cannot be written")[0])
    assert tmp_path in named.parents and not named.exists()
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not [p for p in written if p.name.endswith(".tmp")]
    assert not (out / "metrics.json").exists()
    assert all(_complete(p) for p in written if p.suffix in (".json", ".pt", ".csv"))


def test_an_output_folder_that_cannot_be_created_is_one_error_line(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the output folder's parent should be\n")
    proc = run_inprocess(*FAST, f"hydra.run.dir={blocker / 'run'}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("advrun: error: hydra.run.dir: cannot create"), proc.stderr
    assert blocker.read_text().startswith("a file where")


def test_a_report_that_cannot_be_written_leaves_complete_results_and_says_how_to_rebuild_it(tmp_path, monkeypatch):
    # The disk fills up while report.html is written, the last file of a run.
    original = io.atomic_path

    @contextlib.contextmanager
    def full_disk_for_the_report(path):
        with original(path) as tmp:
            if Path(path).name == "report.html":
                tmp.write_text("<html><body>half a rep")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            yield tmp

    monkeypatch.setattr(io, "atomic_path", full_disk_for_the_report)
    out = tmp_path / "run"
    proc = run_inprocess(*FAST, "report=true", f"hydra.run.dir={out}", "cache.enabled=false")
    assert proc.returncode == 0, proc.stderr
    assert "advrun: error" not in proc.stderr and "Traceback" not in proc.stderr
    logged = (out / "cli.log").read_text()  # the console wraps long lines; the log keeps them whole
    assert "report.html: cannot be written (No space left on device)" in logged, logged[-2000:]
    assert "The results are complete; rebuild the report with advrun-report" in logged
    assert not (out / "report.html").exists() and not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert all(_complete(p) for p in out.iterdir() if p.suffix in (".json", ".pt", ".csv"))
    from advrun.reporting.cli import main as advrun_report
    from advrun.reporting.sweep import job_record
    from advrun.runfolder import OK, RunFolder

    assert RunFolder(out).status() == OK and job_record(out, tmp_path)["status"] == OK
    monkeypatch.setattr(io, "atomic_path", original)
    assert advrun_report([str(out)]) == 0
    assert "<html" in (out / "report.html").read_text()
