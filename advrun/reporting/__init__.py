"""Tables, figures, run reports and sweep summaries.

``write_run_report(path)`` builds ``report.md`` / ``report.html`` of a run folder and
``write_sweep_report(root)`` the summary of a sweep folder, both from the files on disk
(the ``advrun-report`` command calls them)."""

from advrun.reporting.plots import plot_norm_distribution, plot_robustness_curve, plot_training_curve
from advrun.reporting.report import write_run_report
from advrun.reporting.sweep import write_sweep_report
from advrun.reporting.tables import summary_table

__all__ = ["plot_norm_distribution", "plot_robustness_curve", "plot_training_curve", "summary_table",
           "write_run_report", "write_sweep_report"]
