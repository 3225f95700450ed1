"""The ``advrun`` command: Hydra composes the config, :func:`advrun.experiment.run` runs it.

A mistake in the user's input (an invalid value, a missing data file) ends with one line
naming the key, exit status 2, and no result files that look like success; the run folder
gets an ``error.txt``. Set ``ADVRUN_DEBUG=1`` to see the Python traceback instead.

The folder the command is started from is put first on ``sys.path`` (as ``python -m advrun``
does): a ``_target_`` of one's own imports from a module there without ``PYTHONPATH``.

In a sweep (``advrun -m ...``) a failing job does not stop the others: its folder gets
``error.txt`` (and ``traceback.txt`` for an unexpected exception), one line goes to standard
error, and the launcher goes on. The sweep summary (:mod:`advrun.sweep`) lists the job as
failed, and the command exits with status 1 once every job has ended.

Ctrl-C (SIGINT) ends the command with one line and exit status 130: a run says how to resume
it, a sweep first writes its summary of the jobs that finished, and lists those that did not.
The command's state lives in an :class:`advrun.session.Session` for as long as it runs.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Iterator

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from advrun import session as sessions
from advrun import sweep
from advrun.config import composition_error, config_dir
from advrun.errors import AdvrunError
from advrun.hydra_compat import Abort, failing_override

EXIT_USAGE = 2
EXIT_JOBS_FAILED = 1
#: The status of a command ended by Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


def _debug() -> bool:
    return os.environ.get("ADVRUN_DEBUG", "").lower() not in ("", "0", "false", "no")


@hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")
def _app(cfg: DictConfig) -> float | None:
    from advrun import experiment  # after Hydra has parsed the command line: keeps --help fast
    from advrun.runfolder import Metrics, RunFolder

    session = sessions.current()
    if session is not None:
        session.jobs_started += 1

    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        try:
            metrics = experiment.run(cfg, output_dir)
        except OmegaConfBaseException as e:  # e.g. an interpolation that does not resolve, a key removed with ~
            raise composition_error(e) from e
    except AdvrunError as e:
        if _debug():
            raise
        sweep.record_failure(output_dir, str(e))
        if not in_sweep:
            print(f"advrun: error: {e}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        RunFolder(output_dir).checkpoint.unlink(missing_ok=True)  # a sweep's job folder is never resumed
        print(f"advrun: error in job {output_dir.name}: {e}", file=sys.stderr)
        return None  # the launcher goes on; the Optuna sweeper counts the trial as failed
    except Exception as e:
        message = f"{type(e).__name__}: {e}"
        sweep.record_failure(output_dir, message, traceback.format_exc())
        if in_sweep:
            RunFolder(output_dir).checkpoint.unlink(missing_ok=True)
        if _debug() or not in_sweep:
            raise
        print(f"advrun: job {output_dir.name} failed: {message.splitlines()[0]} "
              f"(traceback in {output_dir / RunFolder.TRACEBACK})", file=sys.stderr)
        return None
    # The returned value is what Hydra sweepers (e.g. Optuna) optimise.
    return Metrics.from_json(metrics).headline()


def main() -> None:
    with importable_from_cwd(), sessions.open_session() as session:
        try:
            _main(session)
        except KeyboardInterrupt:
            if _debug():
                raise
            _interrupted(session)


@contextlib.contextmanager
def importable_from_cwd() -> Iterator[None]:
    """While the command runs, the folder it is started from comes first on ``sys.path`` (as with
    ``python -m advrun`` and ``python script.py``), so that a ``_target_`` of one's own, say
    ``my_nets.MyNet``, imports from ``my_nets.py`` beside the command without ``PYTHONPATH``.
    Only this folder is added."""
    cwd = os.getcwd()
    added = not any(entry in ("", cwd) for entry in sys.path)
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _main(session: sessions.Session) -> None:
    if _debug() or os.environ.get("HYDRA_FULL_ERROR") == "1":
        _app()  # Hydra's own report, with the traceback
    else:
        # Hydra reports its errors (an override that does not parse, an unknown option or key) in
        # several lines, some with a traceback; let them through to report them in advrun's one line.
        os.environ["HYDRA_FULL_ERROR"] = "1"
        try:
            _app()
        except (HydraException, OmegaConfBaseException) as e:
            _usage_error(composition_error(e))
        except Abort as e:  # e.g. an output folder that is not advrun's to write into
            _usage_error(e.error)
        except Exception as e:
            if session.jobs_started:
                raise  # from a run: a bug, shown with its traceback (also in the run folder's traceback.txt)
            # while Hydra applied the command line, e.g. OmegaConf's ValueError for eval.epsilons.x=1
            key = failing_override(e.__traceback__) or "command line"
            _usage_error(AdvrunError(key, f"cannot apply this override ({type(e).__name__}: {e})"))
        finally:
            del os.environ["HYDRA_FULL_ERROR"]
    outcome = session.sweep
    if outcome is None or outcome.ok:
        return
    print(f"advrun: {outcome.problems()}", file=sys.stderr)
    sys.exit(EXIT_JOBS_FAILED)


def _usage_error(error: object) -> None:
    print(f"advrun: error: {error}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def _interrupted(session: sessions.Session) -> None:
    """Ctrl-C: a sweep's summary of what finished, one line, exit status 130."""
    session.stop_sweep_bar()
    if session.sweep is not None:
        try:
            session.sweep.summarise()
        except KeyboardInterrupt:
            session.sweep.error = "interrupted again"
        except Exception:  # noqa: BLE001, S110 - summarise() recorded the error, which the line below gives
            pass
        print(f"advrun: interrupted (Ctrl-C); {session.sweep.problems()}", file=sys.stderr)
    elif session.run_folder is not None:
        folder = str(session.run_folder)
        value = folder if re.fullmatch(r"[\w./\-]+", folder, flags=re.ASCII) else sweep.quoted(folder)
        print(f"advrun: interrupted (Ctrl-C); the run in {folder} did not finish: the same command "
              f"with hydra.run.dir={value} resumes it", file=sys.stderr)
    else:
        print("advrun: interrupted (Ctrl-C)", file=sys.stderr)
    sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
