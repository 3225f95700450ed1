"""Tables, plots and summaries of a run."""

from advrun.reporting.plots import plot_norm_distribution, plot_robustness_curve, plot_training_curve
from advrun.reporting.tables import summary_table

__all__ = ["plot_norm_distribution", "plot_robustness_curve", "plot_training_curve", "summary_table"]
