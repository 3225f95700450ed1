"""The transfer matrix of a sweep (``sweep.transfer=true``, docs/sweeps.md): how well the adversarial
examples crafted on each job's model fool each other job's model (Papernot et al. 2016).

Entry (i, j) is the robust accuracy of job j's model on the examples that the sweep's attack, at the
headline budget, crafts on job i's model (:func:`advrun.attacks.transfer.transfer_of`), over the
jobs' evaluation samples; the diagonal holds each job's own white-box figure (its ``metrics.json``).
The finished jobs must share the data set, the attack (budget included) and the evaluation samples:
the matrix compares models, not settings. The models run on the CPU, as :func:`load_run` loads them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from advrun.errors import AdvrunError, InvalidValue
from advrun.runfolder import RunFolder

log = logging.getLogger(__name__)

#: The keys the jobs of a transfer matrix must agree on.
SHARED_KEYS = ("dataset", "attack", "eval.n_samples")


@dataclass
class TransferMatrix:
    """``robust``: robust accuracy, one row per surrogate job, one column per target job (job folders
    relative to the sweep root, in job order); crafted by ``attack`` at budget ``eps`` on ``n_eval`` samples."""

    robust: pd.DataFrame
    attack: str
    eps: float | None
    n_eval: int


def requested(root: Path, jobs: list[str]) -> bool:
    """Whether the finished ``jobs`` of the sweep at ``root`` asked for the matrix (``sweep.transfer``)."""
    flags = [(RunFolder(root / job).config().get("sweep") or {}).get("transfer") for job in jobs]
    return bool(flags) and all(flag is True for flag in flags)


def _differing(configs: list) -> str | None:
    """The first of :data:`SHARED_KEYS` in which the configs differ, None when they agree."""
    for key in SHARED_KEYS:
        values = [OmegaConf.to_container(OmegaConf.select(c, key), resolve=False)
                  if OmegaConf.is_config(OmegaConf.select(c, key)) else OmegaConf.select(c, key) for c in configs]
        if any(v != values[0] for v in values[1:]):
            return key
    return None


def transfer_matrix(root: Path, jobs: list[str]) -> TransferMatrix:
    """The matrix of the finished ``jobs`` (folders relative to ``root``); :class:`AdvrunError` under
    ``sweep.transfer`` saying why when it cannot be made."""
    from advrun.attacks.transfer import transfer_of
    from advrun.config import to_container
    from advrun.data import load_dataset
    from advrun.evaluation import robustness_curve
    from advrun.experiment import build_attack, load_run, seed_everything

    if len(jobs) < 2:
        raise AdvrunError("sweep.transfer", "a transfer matrix needs at least two finished jobs")
    runs = [load_run(root / job) for job in jobs]
    if any(run.metrics is None or run.metrics.get("attack") is None for run in runs):
        raise AdvrunError("sweep.transfer", "a transfer matrix needs jobs that ran an attack")
    differing = _differing([run.config for run in runs])
    if differing is not None:
        raise AdvrunError("sweep.transfer", f"the jobs differ in {differing}; a transfer matrix compares the models of "
                                            "jobs that share the data set, the attack and the evaluation samples")
    config = runs[0].config
    data = load_dataset(to_container(config.dataset))
    n = config.eval.n_samples or len(data.x_test)
    x, y = data.x_test[:n], data.y_test[:n]
    robust = pd.DataFrame(index=pd.Index(jobs, name="surrogate"), columns=jobs, dtype=float)
    for i, (surrogate, run) in enumerate(zip(jobs, runs)):
        attack, _ = build_attack(run.config, data, run.model)
        try:
            transfer = transfer_of(attack, run.model).remember()
        except InvalidValue as e:
            raise AdvrunError("sweep.transfer", f"{attack.label} cannot be transferred: {e.message}") from None
        for target, other in zip(jobs, runs):
            if target == surrogate:  # the white-box figure of the job itself
                robust.loc[surrogate, target] = run.metrics["robust_accuracy"]
                continue
            seed_everything(run.config.seed)  # the same targets and starts for every target model
            curve = robustness_curve(other.model, transfer, x, y, [transfer.eps], bounds=data.bounds,
                                     batch_size=config.eval.batch_size).curve
            robust.loc[surrogate, target] = float(transfer.headline_row(curve)["robust_accuracy"])
        log.info("transfer matrix: crafted on %s (%d of %d)", surrogate, i + 1, len(jobs))
    metrics = runs[0].metrics
    return TransferMatrix(robust, attack=transfer.label, eps=metrics.get("eps"), n_eval=len(x))
