"""One invocation of the ``advrun`` command: what it claimed, the sweep it runs, its sweep bar.

:func:`advrun.cli.main` opens a :class:`Session` for the length of the command
(:func:`open_session`); the Hydra callback (:class:`advrun.sweep.AdvrunCallback`), the progress
bars (:mod:`advrun.console`) and the command's exit status reach it through :func:`current`.
Nothing outlives the ``with`` block: a second command in the same process (the tests call
:func:`advrun.cli.main` many times) starts from a new session.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from rich.progress import Progress

    from advrun.claim import Claim
    from advrun.sweep import SweepOutcome


@dataclass
class Session:
    """The state of one ``advrun`` command while it runs."""

    #: Output folders this process holds (their locks are released when the session ends).
    claims: list[Claim] = field(default_factory=list)
    #: The run folder of a single run, once claimed.
    run_folder: Path | None = None
    #: The sweep this command runs (``advrun -m``), once its folder is claimed.
    sweep: SweepOutcome | None = None
    #: Jobs this process has begun: an exception before the first came from the command line.
    jobs_started: int = 0
    #: The bar over the sweep's jobs while they run in this process; the jobs' bars join it.
    sweep_bar: Progress | None = None

    def start_sweep_bar(self, total: int | None) -> None:
        """Show a bar over the jobs of a sweep run by this process (``total`` None: count unknown)."""
        from advrun import console

        self.stop_sweep_bar()
        self.sweep_bar = console.new_progress(transient=False)
        self.sweep_bar.add_task("sweep", total=total)
        self.sweep_bar.start()

    def advance_sweep_bar(self, description: str) -> None:
        """One more job has ended; ``description`` says how the jobs went so far."""
        if self.sweep_bar is not None:
            self.sweep_bar.update(self.sweep_bar.task_ids[0], advance=1, description=description)

    def stop_sweep_bar(self) -> None:
        if self.sweep_bar is not None:
            self.sweep_bar.stop()
            self.sweep_bar = None

    def release(self) -> None:
        """Stop the bar and give back every folder this session holds."""
        self.stop_sweep_bar()
        self.release_claims()

    def release_claims(self) -> None:
        while self.claims:
            self.claims.pop().release()


_current: ContextVar[Session | None] = ContextVar("advrun_session", default=None)


def current() -> Session | None:
    """The session of the command running in this process, or None (e.g. a job run by another
    process's launcher, or Hydra driven from Python)."""
    return _current.get()


@contextmanager
def open_session() -> Iterator[Session]:
    """A new :class:`Session`, current until the block ends; then released."""
    session = Session()
    token = _current.set(session)
    try:
        yield session
    finally:
        session.release()
        _current.reset(token)
