"""Runs and sweeps that survive failure: output folders claimed once, readable job folders, the sweep summary.

:class:`AdvrunCallback` is the Hydra callback of ``conf/config.yaml`` (``hydra.callbacks.advrun``). It
runs in the launching process for every launcher (basic, joblib, submitit, Ray) and sweeper (Optuna):

- ``on_run_start`` / ``on_multirun_start``: the run or sweep folder is *claimed* before anything is
  written into it, by creating the marker file :data:`MARKER` with ``O_CREAT | O_EXCL``, which at
  most one process can do. Two runs started at the same moment therefore never share a folder:
  with the default dated folder the later one moves on to ``<folder>-1`` (``-2``, ...); a folder
  named on the command line that already holds a run is refused with one line naming the key.
- ``on_multirun_start`` also starts a progress bar over the jobs (:func:`advrun.console.start_sweep_bar`)
  when they run in this process (the basic launcher, also under the Optuna sweeper), advanced by
  ``on_job_end`` with the count of jobs ok and failed. The joblib, submitit and Ray launchers run
  their jobs in other processes: no bar; the summary reports the jobs at the end.
- ``on_multirun_end``: :func:`advrun.reporting.sweep.write_sweep_report` summarises the job folders
  (ok / failed / incomplete) from what they hold on disk, so it sees jobs that ran in other
  processes or on other machines alike; :func:`advrun.cli.main` then exits with status 1 when a
  job did not finish (:func:`last_sweep`).

A failing job records its error in its own folder (:func:`record_failure`) and returns, so that the
launcher goes on with the other jobs. Job folders are named by :func:`job_dir_name`, registered as
the OmegaConf resolver ``advrun_job_dir`` used by ``hydra.sweep.subdir``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from advrun import console
from advrun.errors import AdvrunError

log = logging.getLogger(__name__)

#: Created with O_EXCL in a run or sweep folder by the run that owns it.
MARKER = ".advrun-claim"
#: Files that show an older run (from before markers existed) owns a folder.
_OWNED_BY = (MARKER, ".hydra", "multirun.yaml")
#: Characters kept in job folder names; anything else (``/``, spaces, quotes, ``:``, ...) becomes ``_``.
_UNSAFE = re.compile(r"[^A-Za-z0-9._,=+\-\[\]@%]")
#: Longest overrides part of a job folder name (a path component holds at most 255 bytes).
MAX_NAME = 150

EXIT_USAGE = 2


def job_dir_name(num: Any, overrides: Any) -> str:
    """``<job number>_<overrides>``: the folder of one job in a sweep (``hydra.sweep.subdir``).

    ``overrides`` is Hydra's ``hydra.job.override_dirname`` (the job's overrides sorted, ``seed``
    excluded by ``hydra.job.config.override_dirname.exclude_keys``). The job number keeps folders
    apart that differ only in excluded keys; characters that are unsafe in a path become ``_``
    and long names are cut at :data:`MAX_NAME` characters.
    """
    name = _UNSAFE.sub("_", str(overrides or ""))[:MAX_NAME]
    return f"{num}_{name}" if name else str(num)


if not OmegaConf.has_resolver("advrun_job_dir"):
    OmegaConf.register_new_resolver("advrun_job_dir", job_dir_name)


def claim(folder: Path) -> bool:
    """Create ``folder`` and take it for this run; False if another run (running or finished) holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    if any((folder / name).exists() for name in _OWNED_BY):
        return False
    try:
        fd = os.open(folder / MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                            "started": datetime.now().isoformat()}) + "\n")
    return True


def record_failure(folder: str | os.PathLike, message: str, traceback: str | None = None) -> None:
    """Write ``error.txt`` (the one-line message) and, for a bug rather than bad input, ``traceback.txt``."""
    from advrun.runfolder import RunFolder

    try:
        RunFolder(folder).write_error(message, traceback)
    except AdvrunError as e:  # e.g. the disk that made the run fail is full: the message still reaches the console
        log.warning("the error could not be recorded in %s: %s", folder, e)


def _given_on_command_line(config: DictConfig, key: str) -> bool:
    return any(str(o).split("=", 1)[0].lstrip("+~") == key for o in config.hydra.overrides.hydra)


def _claim_output_folder(config: DictConfig, key: str) -> Path:
    """Claim the folder ``config[key]`` names; a default (dated) folder already taken becomes ``-1``, ``-2``, ...

    The new name is written into the config and appended to ``hydra.overrides.hydra``: launchers
    recompose each job's config from those overrides, in this process or another.
    """
    wanted = Path(str(OmegaConf.select(config, key)))
    try:
        if claim(wanted):
            return wanted
    except OSError as e:  # a parent that is a file, a read-only file system, a full disk
        print(f"advrun: error: {key}: cannot create the output folder {wanted} ({e.strerror or e})", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    if _given_on_command_line(config, key):
        print(f"advrun: error: {key}: {wanted} already holds a run; choose another output folder", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    n = 1
    while not claim(Path(f"{wanted}-{n}")):
        n += 1
    folder = Path(f"{wanted}-{n}")
    log.debug("%s was taken by another run; using %s", wanted, folder)
    _set_hydra_key(config, key, str(folder), _quoted(str(folder)))
    return folder


def _quoted(text: str) -> str:
    """``text`` as a quoted string of Hydra's override grammar."""
    # backslashes are escaped only before a quote and at the end: the grammar reads the rest as they are
    text = re.sub(r"(\\*)'", lambda m: 2 * m.group(1) + "\\'", text)
    return "'" + re.sub(r"(\\+)$", lambda m: 2 * m.group(1), text) + "'"


def _set_hydra_key(config: DictConfig, key: str, value: Any, override: str) -> None:
    """Set a ``hydra.`` key of the launching config, and append the override that gives every job the same."""
    with read_write(config), open_dict(config):
        OmegaConf.update(config, key, value, merge=False)
        config.hydra.overrides.hydra.append(f"{key}={override}")


def _name_jobs_by_swept_keys(config: DictConfig) -> None:
    """Leave the overrides every job shares out of the job folder names: ``advrun -m model=logreg,mlp
    train.epochs=5`` names its jobs ``0_model=logreg`` and ``1_model=mlp``.

    The shared overrides stay in each job's ``.hydra/overrides.yaml`` and in ``multirun.yaml``.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    node = config.hydra.job.config.override_dirname
    exclude = list(node.exclude_keys)
    exclude += sorted({o.key_or_group for o in overrides if not o.is_sweep_override()} - set(exclude))
    if len(exclude) > len(node.exclude_keys):
        listed = ",".join(_quoted(key) for key in exclude)
        _set_hydra_key(config, "hydra.job.config.override_dirname.exclude_keys", exclude, f"[{listed}]")


@dataclass
class SweepOutcome:
    """What :class:`AdvrunCallback` saw of one sweep: its folder, the status of every job, or why no summary."""

    root: Path
    jobs: dict[str, str] = field(default_factory=dict)  # job folder (relative to root) -> ok / failed / incomplete
    error: str | None = None

    def with_status(self, status: str) -> list[str]:
        return [job for job, s in self.jobs.items() if s == status]

    @property
    def ok(self) -> bool:
        """True when the summary was written and every job finished."""
        return self.error is None and all(status == "ok" for status in self.jobs.values())

    def problems(self) -> str:
        """One line on what went wrong, for the end of the command's output."""
        if self.error is not None:
            return f"the sweep summary of {self.root} could not be written: {self.error}"
        parts = [f"{len(jobs)} {status} ({', '.join(jobs)})"
                 for status in ("failed", "incomplete") if (jobs := self.with_status(status))]
        return (f"{' and '.join(parts)} of {len(self.jobs)} jobs (a failed job's folder holds its error.txt); "
                f"sweep summary in {self.root}")


_sweeps: list[SweepOutcome] = []


def last_sweep() -> SweepOutcome | None:
    """The outcome of the latest sweep run by this process, or None."""
    return _sweeps[-1] if _sweeps else None


def forget_sweeps() -> None:
    _sweeps.clear()


def _runs_jobs_here(config: DictConfig) -> bool:
    """Whether the launcher runs the jobs in this process (Hydra's basic launcher)."""
    return str(OmegaConf.select(config, "hydra.launcher._target_", default="")).endswith("BasicLauncher")


def count_jobs(config: DictConfig) -> int | None:
    """How many jobs the sweep will run: the product of the swept values, as Hydra's basic sweeper
    expands them (its ``params`` first, then the command line); the trial count of a sweeper
    that has one (Optuna's ``n_trials``); None when it cannot be told in advance."""
    sweeper = config.hydra.sweeper
    if str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        params = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
        try:
            overrides = OverridesParser.create().parse_overrides([*params, *config.hydra.overrides.task])
            return sum(len(batch) for batch in BasicSweeper.split_arguments(overrides, None))
        except Exception:  # noqa: BLE001 - e.g. glob() needs Hydra's config loader: the count stays unknown
            return None
    trials = sweeper.get("n_trials")
    return trials if isinstance(trials, int) else None


class AdvrunCallback(Callback):
    """Claims output folders, and writes the sweep summary at the end of every sweep (see the module)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _claim_output_folder(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _sweeps.append(SweepOutcome(root=_claim_output_folder(config, "hydra.sweep.dir")))
        _name_jobs_by_swept_keys(config)
        if _runs_jobs_here(config):
            console.start_sweep_bar(count_jobs(config))

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        outcome = last_sweep()
        if outcome is None or not console.sweep_bar_running():
            return  # a job run by another process's launcher
        from advrun.runfolder import RunFolder

        folder = RunFolder(str(config.hydra.runtime.output_dir))
        outcome.jobs[folder.path.name] = folder.status()
        ended = list(outcome.jobs.values())
        console.advance_sweep_bar(f"sweep: {ended.count('ok')} ok, {ended.count('failed')} failed")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        console.stop_sweep_bar()
        outcome = last_sweep()
        root = Path(str(config.hydra.sweep.dir))
        if outcome is None or outcome.root != root:
            outcome = SweepOutcome(root=root)
            _sweeps.append(outcome)
        try:
            from advrun.reporting.sweep import write_sweep_report

            frame = write_sweep_report(root)
        except Exception as e:  # noqa: BLE001 - the sweep's exit status must say the summary is missing
            outcome.error = f"{type(e).__name__}: {e}"
            raise
        outcome.jobs = dict(zip(frame["job"].astype(str), frame["status"].astype(str)))
