"""``advrun-report PATH``: (re)build the report of a run folder or the summary of a sweep folder
from the files on disk, so that a run or sweep made earlier, elsewhere, or interrupted can still
be reported. Exit status 0 when the report was written, 2 when PATH is neither, 130 on Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from advrun.errors import AdvrunError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="advrun-report",
        description="Rebuild report.md and report.html of an advrun run folder, or summary.csv, summary.md, "
                    "combined_curves.png/.svg and report.html of a sweep folder (advrun -m), from its files.",
    )
    parser.add_argument("path", type=Path, help="a run folder (holding .hydra/config.yaml) or a sweep folder "
                                                "(job folders below it)")
    parser.add_argument("--keep-job-reports", action="store_true",
                        help="sweeps: rebuild only the job reports that are missing (default: rebuild all)")
    return parser


def report(path: Path, rebuild_jobs: bool = True) -> list[Path]:
    """Write the report of ``path`` (a run or a sweep folder); return the files written.

    Raises :class:`AdvrunError` (key ``path``) when ``path`` is neither, or naming a run's
    ``metrics.json`` that is not advrun's metrics (not JSON, not an object)."""
    from advrun.reporting.report import write_run_report
    from advrun.reporting.sweep import write_sweep_report
    from advrun.runfolder import RunFolder, SweepFolder

    if not path.is_dir():
        raise AdvrunError("path", f"{path} is not a folder")
    if RunFolder(path).is_run():
        RunFolder(path).metrics()  # a metrics.json that is not advrun's: one line naming it, and no report
        return list(write_run_report(path))
    sweep = SweepFolder(path)
    if not sweep.jobs():
        raise AdvrunError("path", f"{path} is neither a run folder (no {RunFolder.CONFIG} in it) nor a sweep folder "
                                  "(no run folders below it)")
    frame = write_sweep_report(path, rebuild_jobs=rebuild_jobs)
    _print_summary(frame)
    return sweep.summary_files()


def _print_summary(frame) -> None:
    from rich.table import Table

    from advrun.console import results
    from advrun.reporting.sweep import rate
    from advrun.stats import METHOD

    table = Table(title=f"{len(frame)} jobs", caption=f"In brackets: the {METHOD}, in %.")
    for column in ("job", "status", "clean acc", "robust acc", "error"):
        table.add_column(column)
    for record in frame.to_dict("records"):
        style = {"failed": "red", "incomplete": "yellow"}.get(record["status"])
        table.add_row(str(record["job"]), str(record["status"]), rate(record, "clean_accuracy"),
                      rate(record, "robust_accuracy"), str(record.get("error") or "").split("\n")[0][:80],
                      style=style)
    results.print(table)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="advrun-report: %(levelname)s: %(message)s")
    try:
        written = report(args.path, rebuild_jobs=not args.keep_job_reports)
    except AdvrunError as e:
        print(f"advrun-report: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # files are written whole or not at all: running it again completes the report
        print(f"advrun-report: interrupted (Ctrl-C); run it again to complete the report of {args.path}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    for file in written:
        print(file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
