"""Output folders: advrun never writes into a folder of someone else's files, resumes an unfinished
run of its own named by hydra.run.dir, and never overwrites a finished one (advrun/claim.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from advrun.claim import LOCK, MARKER, claim_folder
from advrun.errors import AdvrunError
from tests.conftest import TINY, run_inprocess

pytestmark = pytest.mark.usefixtures("one_thread")

NO_ATTACK = [*TINY, "attack=none"]
USER_FILES = {"model.pt": b"my model", "report.html": b"<p>mine</p>", "training.csv": b"epoch\n1\n",
              "curve.csv": b"eps\n0\n", "audit.json": b"[]", "cli.log": b"my log\n"}


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file below ``folder`` (links not followed) with its content and modification time."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            found[str(path.relative_to(folder))] = (os.readlink(path).encode(), 0)
        elif path.is_file():
            found[str(path.relative_to(folder))] = (path.read_bytes(), path.stat().st_mtime_ns)
        else:
            found[str(path.relative_to(folder)) + "/"] = (b"", 0)
    return found


def user_project(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in USER_FILES.items():
        (folder / name).write_bytes(content)
    return folder


def refused(proc, key: str = "hydra.run.dir") -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"advrun: error: {key}: "), proc.stderr
    return lines[0]


def _only_hidden(tmp_path: Path) -> Path:
    folder = tmp_path / "hidden"
    (folder / ".git").mkdir(parents=True)
    (folder / ".git" / "config").write_text("[core]\n")
    (folder / ".DS_Store").write_bytes(b"\0")
    return folder


def _link_to_user_files(tmp_path: Path) -> Path:
    (tmp_path / "link").symlink_to(tmp_path / "project")
    return tmp_path / "link"


def _repository_like(tmp_path: Path) -> Path:
    folder = tmp_path / "repo"
    (folder / ".git").mkdir(parents=True)
    (folder / "pyproject.toml").write_text("[project]\n")
    (folder / "advrun").mkdir()
    return folder


def _empty_subfolder(tmp_path: Path) -> Path:
    (tmp_path / "holder" / "data").mkdir(parents=True)
    return tmp_path / "holder"


def _old_run(tmp_path: Path) -> None:
    """A run folder written by an advrun without folder markers."""
    (tmp_path / "old" / ".hydra").mkdir(parents=True)
    (tmp_path / "old" / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (tmp_path / "old" / "metrics.json").write_text("{}\n")


@pytest.mark.parametrize("value, make, words", [
    ("", None, "is empty"),
    ("{tmp}/old", _old_run, "holds a run or sweep of an advrun older than its folder markers (.advrun-claim)"),
    (".", None, "holds files advrun did not write"),
    ("{tmp}/project/sub/..", None, "holds files advrun did not write"),
    ("{tmp}/project/model.pt", None, "is a file, not a folder"),
    ("{tmp}/project/model.pt/run", None, "cannot create the output folder"),
    ("{tmp}/hidden", _only_hidden, "(.DS_Store, .git)"),
    ("{tmp}/link", _link_to_user_files, "holds files advrun did not write"),
    ("{tmp}/dangling", lambda t: (t / "dangling").symlink_to(t / "nowhere"), "is a symbolic link to"),
    ("{tmp}/repo", _repository_like, "holds files advrun did not write (.git, advrun, pyproject.toml)"),
    ("{tmp}/holder", _empty_subfolder, "(data)"),
    ("'~/runs'", None, "starts with ~, which advrun does not expand"),
])
def test_a_folder_of_someone_elses_files_is_refused_and_left_untouched(tmp_path, value, make, words):
    """The user's project folder is the working directory; nothing in it (or in the folder named)
    changes, and no folder appears."""
    project = user_project(tmp_path / "project")
    (project / "sub").mkdir()
    if make is not None:
        make(tmp_path)
    before = snapshot(tmp_path)
    line = refused(run_inprocess(*NO_ATTACK, f"hydra.run.dir={value.format(tmp=tmp_path)}", cwd=project))
    assert words in line and "Traceback" not in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("value", ["", ".", "{tmp}/project"])
def test_a_sweep_folder_of_someone_elses_files_is_refused(tmp_path, value):
    project = user_project(tmp_path / "project")
    before = snapshot(tmp_path)
    line = refused(run_inprocess("-m", *NO_ATTACK, "seed=0,1", f"hydra.sweep.dir={value.format(tmp=tmp_path)}",
                                 cwd=project), key="hydra.sweep.dir")
    assert "is empty" in line or "holds files advrun did not write" in line
    assert snapshot(tmp_path) == before


def test_an_empty_folder_and_a_link_to_one_are_taken(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    (tmp_path / "target").mkdir()
    for name in ("empty", "link"):
        proc = run_inprocess(*NO_ATTACK, f"hydra.run.dir={tmp_path / name}", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "empty" / "metrics.json").is_file() and (tmp_path / "target" / "metrics.json").is_file()
    assert (tmp_path / "link").is_symlink()


def _unfinished_run(tmp_path: Path, *overrides: str) -> Path:
    """A run folder of advrun's whose run stopped before its results (here: an invalid value found
    after the folder was claimed)."""
    folder = tmp_path / "run"
    proc = run_inprocess(*NO_ATTACK, *overrides, f"hydra.run.dir={folder}", cwd=tmp_path)
    assert proc.returncode == 2 and (folder / MARKER).is_file() and not (folder / "metrics.json").exists()
    return folder


def test_an_unfinished_run_is_resumed_in_its_folder_and_a_finished_one_is_never_overwritten(tmp_path):
    folder = _unfinished_run(tmp_path, f"model.checkpoint={tmp_path / 'missing.pt'}")
    assert (folder / "error.txt").is_file()
    marker = json.loads((folder / MARKER).read_text())
    (folder / ".hydra" / "overrides.yaml").unlink()  # the same command again: overrides rewritten by Hydra

    # the same config but for the key that failed is another config: refused, naming the key
    line = refused(run_inprocess(*NO_ATTACK, f"hydra.run.dir={folder}", cwd=tmp_path))
    assert "holds an unfinished run of another config (it differs in model.checkpoint)" in line
    config = folder / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace(f"checkpoint: {tmp_path / 'missing.pt'}", "checkpoint: null"))

    resumed = run_inprocess(*NO_ATTACK, f"hydra.run.dir={folder}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert (folder / "metrics.json").is_file() and not (folder / "error.txt").exists()
    again = json.loads((folder / MARKER).read_text())
    assert again["started"] == marker["started"] and len(again["resumed"]) == 1

    before = snapshot(folder)
    line = refused(run_inprocess(*NO_ATTACK, f"hydra.run.dir={folder}", cwd=tmp_path))
    assert line.endswith(f"{folder} already holds a finished run, which advrun never overwrites; "
                         "choose another output folder")
    assert snapshot(folder) == before


def test_a_folder_in_use_by_a_running_process_is_refused(tmp_path):
    folder = tmp_path / "run"
    held = claim_folder(str(folder), "hydra.run.dir", named=True)
    try:
        with pytest.raises(AdvrunError, match=r"is in use by a run that is still running \(process \d+ on "):
            claim_folder(str(folder), "hydra.run.dir", named=True, resume=lambda f: None)
    finally:
        held.release()
    again = claim_folder(str(folder), "hydra.run.dir", named=True, resume=lambda f: None)
    assert again.resumed
    again.release()
    assert sorted(p.name for p in folder.iterdir()) == sorted([MARKER, LOCK])


def test_a_default_folder_moves_on_past_anything_already_there(tmp_path):
    user_project(tmp_path / "dated")
    claim = claim_folder(str(tmp_path / "dated"), "hydra.run.dir", named=False)
    claim.release()
    assert claim.folder == tmp_path / "dated-1" and not claim.resumed
    assert sorted(p.name for p in (tmp_path / "dated").iterdir()) == sorted(USER_FILES)


@pytest.mark.parametrize("key, sweep", [("hydra.sweep.subdir", True), ("hydra.output_subdir", True),
                                        ("hydra.output_subdir", False)])
@pytest.mark.parametrize("value", ["''", ".", "..", "../x", "/tmp/x"])
def test_hydra_folders_outside_the_claimed_folder_are_refused(tmp_path, key, sweep, value):
    """Job folders and Hydra's .hydra records stay below the folder advrun claimed."""
    project = user_project(tmp_path / "project")
    before = snapshot(tmp_path)
    args = ["-m", "seed=0,1", f"hydra.sweep.dir={project / 'out'}"] if sweep else [f"hydra.run.dir={project / 'out'}"]
    line = refused(run_inprocess(*args, *NO_ATTACK, f"{key}={value}", cwd=project), key=key)
    assert "must name a folder below " in line
    assert snapshot(tmp_path) == before
