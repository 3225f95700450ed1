"""Output folders: advrun writes only into a folder that is new, empty, or a run folder of its own.

A folder is advrun's when it holds the marker :data:`MARKER`, written by the run that claimed the
folder (its process id, host and start time). The run that uses a folder holds an exclusive lock
on :data:`LOCK` (a ``filelock`` lock, released by the operating system when the process ends,
also when it is killed) for as long as it runs. :func:`claim_folder` decides:

============================================  =================================================
the folder                                    outcome
============================================  =================================================
does not exist, or is empty                   created and claimed (marker written)
holds anything without the marker             refused, nothing written: *foreign* files (hidden
(hidden files and empty folders count)        ones too) are never overwritten
is locked by a running advrun process         refused: in use
advrun's, finished (``metrics.json``)         refused: a finished run is never overwritten
advrun's, unfinished, the same config         resumed (a single run named on the command line)
advrun's, unfinished, another config          refused, naming the keys that differ
a file, a broken symbolic link, an empty      refused
value, a path starting with ``~``
============================================  =================================================

A folder is judged by what it holds, so a symbolic link to a folder is judged by its target, and
``.``, ``..`` or the repository root are refused as soon as they hold a file. Sweep folders and
the default dated folders are only taken new or empty: a dated folder already taken (two runs
started in the same microsecond) moves on to ``<folder>-1`` (``-2``, ...).

Refusals raise :class:`~advrun.errors.AdvrunError` naming the key (``hydra.run.dir`` or
``hydra.sweep.dir``); the command line turns them into one line and exit status 2.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

from filelock import FileLock, Timeout

from advrun import io
from advrun.errors import AdvrunError
from advrun.runfolder import RunFolder, SweepFolder

#: Written into a folder by the run that claims it: the folder is advrun's.
MARKER = ".advrun-claim"
#: Locked by the process that uses the folder, for as long as it runs.
LOCK = ".advrun-lock"
#: The files a claim itself writes: a folder holding only these is as good as empty.
OWN = frozenset({MARKER, LOCK})
#: How many names of foreign files a refusal quotes.
SHOWN = 4

#: ``resume(folder)`` says why the advrun folder ``folder`` cannot be resumed, or None when it can.
Resume = Callable[[Path], "str | None"]


@dataclass
class Claim:
    """A folder this process holds: its lock is released by :meth:`release` (or when the process ends)."""

    folder: Path
    lock: FileLock
    resumed: bool

    def release(self) -> None:
        self.lock.release()


class _Taken(Exception):
    """The folder is not this run's to write into; the message says why."""


def claim_folder(value: object, key: str, *, named: bool, resume: Resume | None = None) -> Claim:
    """Claim the output folder ``value`` (the value of ``key``) for this run (module docstring).

    ``named``: the folder was given on the command line (refused when taken); otherwise a taken
    folder moves on to ``-1``, ``-2``, .... ``resume`` (single runs named on the command line)
    decides whether an unfinished run of advrun's in the folder is resumed.
    """
    folder = _folder(value, key)
    try:
        if named:
            return _take(folder, resume)
        n = 0
        while True:
            candidate = Path(f"{folder}-{n}") if n else folder
            try:
                return _take(candidate, None)
            except _Taken:
                n += 1
    except _Taken as e:
        raise AdvrunError(key, f"{e}; choose another output folder") from None
    except OSError as e:  # a parent that is a file, a read-only file system, a full disk
        raise AdvrunError(key, f"cannot create the output folder {folder} ({e.strerror or e})") from None


def _folder(value: object, key: str) -> Path:
    text = "" if value is None else str(value)
    if not text.strip():
        raise AdvrunError(key, "is empty; name a folder, or leave the key out for a new dated folder under outputs/")
    if text.split("/", 1)[0].startswith("~"):
        raise AdvrunError(key, f"{text} starts with ~, which advrun does not expand; write the path out "
                               f"(for example $HOME/...)")
    return Path(text)


def _take(folder: Path, resume: Resume | None) -> Claim:
    """Claim ``folder``, or raise :class:`_Taken`; a refused folder is left as it was."""
    try:
        return _take_unchecked(folder, resume)
    except _Taken as e:
        if folder == Path(".") or ".." in folder.parts:  # say which folder that is
            raise _Taken(str(e).replace(str(folder), f"{folder} ({folder.resolve()})", 1)) from None
        raise


def _take_unchecked(folder: Path, resume: Resume | None) -> Claim:
    if folder.is_symlink() and not folder.exists():
        raise _Taken(f"{folder} is a symbolic link to {os.readlink(folder)}, which does not exist")
    if folder.exists() and not folder.is_dir():
        raise _Taken(f"{folder} is a file, not a folder")
    _refuse_foreign(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / LOCK)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise _Taken(f"{folder} is in use by a run that is still running{_owner(folder)}") from None
    try:
        _refuse_foreign(folder)  # again, now that no other advrun process can claim it
        marker = folder / MARKER
        if not marker.exists():
            _write_marker(marker, {})
            return Claim(folder, lock, resumed=False)
        problem = "already holds a run" if resume is None else resume(folder)
        if problem is not None:
            raise _Taken(f"{folder} {problem}")
        _write_marker(marker, _read_marker(marker), resumed=True)
        return Claim(folder, lock, resumed=True)
    except BaseException:
        lock.release()
        raise


def _refuse_foreign(folder: Path) -> None:
    """Raise :class:`_Taken` when ``folder`` holds anything but advrun's own files without its marker."""
    if not folder.is_dir():
        return
    names = sorted(os.listdir(folder))
    foreign = [name for name in names if name not in OWN]
    if foreign and MARKER not in names:
        if RunFolder(folder).is_run() or SweepFolder(folder).file(SweepFolder.MULTIRUN).is_file():
            raise _Taken(f"{folder} holds a run or sweep of an advrun older than its folder markers "
                         f"({MARKER}), which it never overwrites")
        shown = ", ".join(foreign[:SHOWN]) + (f" and {len(foreign) - SHOWN} more" if len(foreign) > SHOWN else "")
        raise _Taken(f"{folder} holds files advrun did not write ({shown}), which it never overwrites")


def _read_marker(marker: Path) -> dict:
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_marker(marker: Path, previous: dict, resumed: bool = False) -> None:
    """The marker names this process; a resumed run keeps the first start time and adds its own."""
    now = datetime.now().isoformat()
    data = {"pid": os.getpid(), "host": socket.gethostname(), "started": previous.get("started", now)}
    if resumed:
        data["resumed"] = [*previous.get("resumed", []), now]
        io.write_text(marker, json.dumps(data) + "\n")
        return
    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(data) + "\n")


def _owner(folder: Path) -> str:
    data = _read_marker(folder / MARKER)
    if "pid" not in data:
        return ""
    return f" (process {data['pid']} on {data.get('host', '?')}, started {data.get('started', '?')})"
