"""The console: one rich Console shared by logging and progress bars, one for results."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

#: Logs and progress bars (standard error).
console = Console(stderr=True)
#: Results: the summary table (standard output).
results = Console()


def progress_bar(transient: bool = False) -> Progress:
    """A progress bar on the shared console: description, bar, count, elapsed and remaining time."""
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
