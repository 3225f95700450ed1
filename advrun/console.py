"""The console: one rich Console shared by logging and progress bars, one for results."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from advrun.session import current

#: Logs and progress bars (standard error).
console = Console(stderr=True)
#: Results: the summary table (standard output).
results = Console()


class _Nested:
    """The tasks a run's :func:`progress_bar` adds to the sweep's live bar, removed again when the
    run's ``with`` block ends (rich shows one live display per console at a time)."""

    def __init__(self, progress: Progress):
        self._progress, self._tasks = progress, []

    def add_task(self, *args: Any, **kwargs: Any) -> TaskID:
        task = self._progress.add_task(*args, **kwargs)
        self._tasks.append(task)
        return task

    def __getattr__(self, name: str) -> Any:
        return getattr(self._progress, name)

    def __enter__(self) -> "_Nested":
        return self

    def __exit__(self, *exc: Any) -> None:
        for task in self._tasks:
            self._progress.remove_task(task)


def progress_bar(transient: bool = False) -> Progress | _Nested:
    """A progress bar on the shared console: description, bar, count, elapsed and remaining time.
    Inside a sweep (:meth:`advrun.session.Session.start_sweep_bar`) its tasks are drawn under the
    sweep's bar."""
    session = current()
    if session is not None and session.sweep_bar is not None:
        return _Nested(session.sweep_bar)
    return new_progress(transient)


def new_progress(transient: bool) -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
    )


def log_handler():
    """The console handler of ``conf/hydra/job_logging/advrun.yaml``: log lines above the progress bars."""
    from rich.logging import RichHandler

    return RichHandler(console=console, show_time=False, show_path=False, markup=False)
