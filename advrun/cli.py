"""The ``advrun`` command: Hydra composes the config, :func:`advrun.experiment.run` runs it.

A mistake in the user's input (an invalid value, a missing data file) ends with one line
naming the key, exit status 2, and no result files that look like success; the run folder
gets an ``error.txt``. Set ``ADVRUN_DEBUG=1`` to see the Python traceback instead.

In a sweep (``advrun -m ...``) a failing job does not stop the others: its folder gets
``error.txt`` (and ``traceback.txt`` for an unexpected exception), one line goes to standard
error, and the launcher goes on. The sweep summary (:mod:`advrun.sweep`) lists the job as
failed, and the command exits with status 1 once every job has ended.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from types import TracebackType

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from advrun import console, sweep
from advrun.config import composition_error, config_dir
from advrun.errors import AdvrunError

EXIT_USAGE = 2
EXIT_JOBS_FAILED = 1


def _debug() -> bool:
    return os.environ.get("ADVRUN_DEBUG", "").lower() not in ("", "0", "false", "no")


_jobs_started = 0  # jobs this process has begun: an exception before the first came from the command line


def _failing_override(tb: TracebackType | None) -> str | None:
    """The key of the override Hydra was applying when ``tb`` was raised, if it was."""
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "_apply_overrides_to_config":
            return getattr(tb.tb_frame.f_locals.get("override"), "key_or_group", None)
        tb = tb.tb_next
    return None


@hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")
def _app(cfg: DictConfig) -> float | None:
    from advrun import experiment  # after Hydra has parsed the command line: keeps --help fast

    global _jobs_started
    _jobs_started += 1

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
        print(f"advrun: error in job {output_dir.name}: {e}", file=sys.stderr)
        return None  # the launcher goes on; the Optuna sweeper counts the trial as failed
    except Exception as e:
        message = f"{type(e).__name__}: {e}"
        sweep.record_failure(output_dir, message, traceback.format_exc())
        if _debug() or not in_sweep:
            raise
        print(f"advrun: job {output_dir.name} failed: {message.splitlines()[0]} "
              f"(traceback in {output_dir / 'traceback.txt'})", file=sys.stderr)
        return None
    # The returned value is what Hydra sweepers (e.g. Optuna) optimise.
    return metrics.get("robust_accuracy", metrics["clean_accuracy"])


def main() -> None:
    sweep.forget_sweeps()
    try:
        _main()
    finally:
        console.stop_sweep_bar()  # a sweep that ended by an exception leaves no live display behind


def _main() -> None:
    if _debug() or os.environ.get("HYDRA_FULL_ERROR") == "1":
        _app()  # Hydra's own report, with the traceback
    else:
        # Hydra reports its errors (an override that does not parse, an unknown option or key) in
        # several lines, some with a traceback; let them through to report them in advrun's one line.
        os.environ["HYDRA_FULL_ERROR"] = "1"
        started = _jobs_started
        try:
            _app()
        except (HydraException, OmegaConfBaseException) as e:
            print(f"advrun: error: {composition_error(e)}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        except Exception as e:
            if _jobs_started != started:
                raise  # from a run: a bug, shown with its traceback (also in the run folder's traceback.txt)
            # while Hydra applied the command line, e.g. OmegaConf's ValueError for eval.epsilons.x=1
            key = _failing_override(e.__traceback__) or "command line"
            print(f"advrun: error: {key}: cannot apply this override ({type(e).__name__}: {e})", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        finally:
            del os.environ["HYDRA_FULL_ERROR"]
    outcome = sweep.last_sweep()
    if outcome is None or outcome.ok:
        return
    print(f"advrun: {outcome.problems()}", file=sys.stderr)
    sys.exit(EXIT_JOBS_FAILED)


if __name__ == "__main__":
    main()
