"""Runs and sweeps that survive failure: output folders claimed once, readable job folders, the sweep summary.

:class:`AdvrunCallback` is the Hydra callback of ``conf/config.yaml`` (``hydra.callbacks.advrun``). It
runs in the launching process for every launcher (basic, joblib, submitit, Ray) and sweeper (Optuna):

- ``on_run_start`` / ``on_multirun_start``: the run or sweep folder is *claimed* before anything is
  written into it (:mod:`advrun.claim`): advrun writes only into a new or empty folder, or resumes
  an unfinished run of its own named by ``hydra.run.dir``; a folder of someone else's files is
  refused. Two runs started at the same moment never share a folder: with the default dated
  folder the later one moves on to ``<folder>-1`` (``-2``, ...).
- ``on_multirun_start`` also starts a progress bar over the jobs (:meth:`advrun.session.Session.start_sweep_bar`)
  when they run in this process (the basic launcher, also under the Optuna sweeper), advanced by
  ``on_job_end`` with the count of jobs ok and failed. The joblib, submitit and Ray launchers run
  their jobs in other processes: no bar; the summary reports the jobs at the end.
- ``on_multirun_end``: :func:`advrun.reporting.sweep.write_sweep_report` summarises the job folders
  (ok / failed / incomplete / not started) from what they hold on disk, so it sees jobs that ran
  in other processes or on other machines alike; :func:`advrun.cli.main` then exits with status 1
  when a job did not finish (the session's :class:`SweepOutcome`).

The callback reaches the command's :class:`advrun.session.Session` (or keeps its own where Hydra
runs without the command). A failing job records its error in its own folder
(:func:`record_failure`) and returns, so that the launcher goes on with the other jobs. Job
folders are named by :func:`job_dir_name`, registered as the OmegaConf resolver ``advrun_job_dir``
used by ``hydra.sweep.subdir``.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Quote, QuotedString
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from advrun import session as sessions
from advrun.claim import MARKER, Claim, claim_folder
from advrun.errors import AdvrunError
from advrun.hydra_compat import Abort
from advrun.runfolder import FAILED, INCOMPLETE, NOT_STARTED

log = logging.getLogger(__name__)

__all__ = ["MARKER", "AdvrunCallback", "SweepOutcome", "count_jobs", "job_dir_name", "planned_jobs", "record_failure"]

#: Characters kept in job folder names; anything else (``/``, spaces, quotes, ``:``, ...) becomes ``_``.
_UNSAFE = re.compile(r"[^A-Za-z0-9._,=+\-\[\]@%]")
#: Longest overrides part of a job folder name (a path component holds at most 255 bytes).
MAX_NAME = 150

#: Job statuses that are not a success, in the order the command's last line names them.
PROBLEMS = (FAILED, INCOMPLETE, NOT_STARTED)


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


def record_failure(folder: str | os.PathLike, message: str, traceback: str | None = None) -> None:
    """Write ``error.txt`` (the one-line message) and, for a bug rather than bad input, ``traceback.txt``."""
    from advrun.runfolder import RunFolder

    try:
        RunFolder(folder).write_error(message, traceback)
    except AdvrunError as e:  # e.g. the disk that made the run fail is full: the message still reaches the console
        log.warning("the error could not be recorded in %s: %s", folder, e)


def quoted(text: str) -> str:
    """``text`` as a quoted string of Hydra's override grammar (read back by Hydra as ``text``)."""
    return QuotedString(text=text, quote=Quote.single).with_quotes()


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
    overrides = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    node = config.hydra.job.config.override_dirname
    exclude = list(node.exclude_keys)
    exclude += sorted({o.key_or_group for o in overrides if not o.is_sweep_override()} - set(exclude))
    if len(exclude) > len(node.exclude_keys):
        listed = ",".join(quoted(key) for key in exclude)
        _set_hydra_key(config, "hydra.job.config.override_dirname.exclude_keys", exclude, f"[{listed}]")


@dataclass
class SweepOutcome:
    """What :class:`AdvrunCallback` saw of one sweep: its folder, the status of every job, or why no summary."""

    root: Path
    jobs: dict[str, str] = field(default_factory=dict)  # job folder (relative to root) -> ok / failed / ...
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
                 for status in PROBLEMS if (jobs := self.with_status(status))]
        if not parts:
            return f"all {len(self.jobs)} jobs finished; sweep summary in {self.root}"
        return (f"{' and '.join(parts)} of {len(self.jobs)} jobs (a failed job's folder holds its error.txt); "
                f"sweep summary in {self.root}")

    def summarise(self) -> None:
        """Write the sweep summary of :attr:`root` and record every job's status (or the error)."""
        try:
            from advrun.reporting.sweep import write_sweep_report

            frame = write_sweep_report(self.root)
        except Exception as e:  # noqa: BLE001 - the sweep's exit status must say the summary is missing
            self.error = f"{type(e).__name__}: {e}"
            raise
        self.jobs = dict(zip(frame["job"].astype(str), frame["status"].astype(str)))


def _runs_jobs_here(config: DictConfig) -> bool:
    """Whether the launcher runs the jobs in this process (Hydra's basic launcher)."""
    return str(OmegaConf.select(config, "hydra.launcher._target_", default="")).endswith("BasicLauncher")


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """Every job's overrides, in job-number order, as Hydra's basic sweeper expands the command
    line: the product of the values of each sweep override (``a=1,2 b=x,y``: 4 jobs); a key given
    twice takes its last values, in the place of its first. Raises Hydra's exception where the
    expansion needs more (e.g. ``glob()`` needs the config loader)."""
    choices: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                raise ValueError(f"{key}: an interval sweep has no fixed list of jobs")
            choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
    return [list(job) for job in itertools.product(*choices.values())]


def planned_jobs(config: DictConfig) -> list[list[str] | None] | None:
    """The jobs the sweep of ``config`` will run, in job-number order: each job's overrides as
    Hydra's basic sweeper expands them (its ``params`` first, then the command line), or, for a
    sweeper that samples its jobs (Optuna's ``n_trials``), None for each trial; None when the
    jobs cannot be told in advance."""
    sweeper = config.hydra.sweeper
    if str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        params = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
        try:
            return expand_sweep([*params, *config.hydra.overrides.task])
        except Exception:  # noqa: BLE001 - e.g. glob() needs Hydra's config loader: the jobs stay unknown
            return None
    trials = sweeper.get("n_trials")
    return [None] * trials if isinstance(trials, int) and not isinstance(trials, bool) else None


def planned_job_names(config: DictConfig) -> list[tuple[int, str, list[str]]]:
    """``(number, folder name, overrides)`` of every job :func:`planned_jobs` knows of, named as
    ``hydra.sweep.subdir`` names them (:func:`job_dir_name`); none when the jobs are unknown."""
    exclude = set(OmegaConf.select(config, "hydra.job.config.override_dirname.exclude_keys", default=None) or [])
    named = []
    for num, overrides in enumerate(planned_jobs(config) or []):
        overrides = overrides or []
        kept = sorted(o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in exclude)
        named.append((num, job_dir_name(num, ",".join(kept)), overrides))
    return named


def count_jobs(config: DictConfig) -> int | None:
    """How many jobs the sweep of ``config`` will run (:func:`planned_jobs`), or None."""
    jobs = planned_jobs(config)
    return None if jobs is None else len(jobs)


def _given_on_command_line(config: DictConfig, key: str) -> bool:
    return any(str(o).split("=", 1)[0].lstrip("+~") == key for o in config.hydra.overrides.hydra)


def _differing_keys(saved: Path, config: DictConfig) -> list[str]:
    """The keys in which the run config saved at ``saved`` differs from ``config`` (without ``hydra``)."""
    if not saved.is_file():
        return []
    try:
        before = OmegaConf.to_container(OmegaConf.load(saved), resolve=False)
    except Exception:  # noqa: BLE001 - an unreadable saved config: the run cannot be shown to be the same
        return [str(saved)]
    now = OmegaConf.to_container(config, resolve=False)
    now.pop("hydra", None)
    flat_before, flat_now = _flat(before), _flat(now)
    return sorted(k for k in flat_before.keys() | flat_now.keys() if flat_before.get(k, ...) != flat_now.get(k, ...))


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        return {k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


def _resume_check(config: DictConfig):
    """Whether an unfinished run of advrun's in a folder can be resumed by the run of ``config``."""
    def why_not(folder: Path) -> str | None:
        from advrun.runfolder import RunFolder

        run = RunFolder(folder)
        if run.finished():
            return "already holds a finished run, which advrun never overwrites"
        differing = _differing_keys(run.file(RunFolder.CONFIG), config)
        if differing:
            shown = ", ".join(differing[:4]) + (", ..." if len(differing) > 4 else "")
            return (f"holds an unfinished run of another config (it differs in {shown}); to resume it, "
                    f"run the command that started it")
        return None

    return why_not


def _check_below(config: DictConfig, key: str, folder: str) -> None:
    """``key`` (``hydra.sweep.subdir``, ``hydra.output_subdir``) must name a folder below ``folder``
    (the key that names it): not empty, ``.``, absolute or climbing out with ``..``, which would let
    Hydra write the jobs or its records into other folders. ``hydra.output_subdir: null`` (no
    ``.hydra`` records) is allowed."""
    node, _, name = key.rpartition(".")
    raw = OmegaConf.to_container(OmegaConf.select(config, node), resolve=False).get(name)
    if raw is None and name == "output_subdir":
        return
    parts = Path(str(raw or "")).parts
    if not parts or Path(str(raw)).is_absolute() or ".." in parts or all(part == "." for part in parts):
        raise Abort(AdvrunError(key, f"must name a folder below {folder}, got {'' if raw is None else str(raw)!r}"))


class AdvrunCallback(Callback):
    """Claims output folders, and writes the sweep summary at the end of every sweep (see the module)."""

    def __init__(self) -> None:
        self._own = sessions.Session()  # where Hydra runs without the advrun command's session

    def _session(self) -> sessions.Session:
        return sessions.current() or self._own

    def _claim(self, config: DictConfig, key: str, resume: bool) -> Claim:
        named = _given_on_command_line(config, key)
        try:
            claim = claim_folder(OmegaConf.select(config, key), key, named=named,
                                 resume=_resume_check(config) if resume and named else None)
        except AdvrunError as e:
            raise Abort(e) from None
        self._session().claims.append(claim)
        if str(claim.folder) != str(OmegaConf.select(config, key)):
            # launchers recompose each job's config from the overrides, in this process or another
            log.debug("%s was taken by another run; using %s", OmegaConf.select(config, key), claim.folder)
            _set_hydra_key(config, key, str(claim.folder), quoted(str(claim.folder)))
        return claim

    def _release(self) -> None:
        self._session().release_claims()

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_below(config, "hydra.output_subdir", "hydra.run.dir")
        claim = self._claim(config, "hydra.run.dir", resume=True)
        if claim.resumed:  # an earlier attempt's error is not this attempt's
            from advrun.runfolder import RunFolder

            for name in (RunFolder.ERROR, RunFolder.TRACEBACK):
                (claim.folder / name).unlink(missing_ok=True)
        self._session().run_folder = claim.folder

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._release()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_below(config, "hydra.sweep.subdir", "hydra.sweep.dir")
        _check_below(config, "hydra.output_subdir", "each job's folder")
        session = self._session()
        session.sweep = SweepOutcome(root=self._claim(config, "hydra.sweep.dir", resume=False).folder)
        _name_jobs_by_swept_keys(config)
        if _runs_jobs_here(config):
            session.start_sweep_bar(count_jobs(config))

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        session = self._session()
        if session.sweep is None or session.sweep_bar is None:
            return  # a job run by another process's launcher
        from advrun.runfolder import RunFolder

        folder = RunFolder(str(config.hydra.runtime.output_dir))
        session.sweep.jobs[folder.path.name] = folder.status()
        ended = list(session.sweep.jobs.values())
        session.advance_sweep_bar(f"sweep: {ended.count('ok')} ok, {ended.count('failed')} failed")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        session = self._session()
        session.stop_sweep_bar()
        root = Path(str(config.hydra.sweep.dir))
        if session.sweep is None or session.sweep.root != root:
            session.sweep = SweepOutcome(root=root)
        try:
            session.sweep.summarise()
        finally:
            self._release()
