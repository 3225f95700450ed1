"""advrun: the experiment runner for adversarial machine learning.

``advrun model=mlp attack=pgd`` trains a model, attacks it over a grid of perturbation
budgets, evaluates it and writes tables and curves; :func:`load_run` brings a finished
run's model and config back into Python.
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("advrun")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"


def load_run(path):
    """Reload a finished run folder: ``Run(path, model, config, metrics)`` (see :mod:`advrun.experiment`)."""
    from advrun.experiment import load_run as _load_run

    return _load_run(path)


__all__ = ["__version__", "load_run"]
