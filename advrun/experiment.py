"""One straight pass in three stages, each handing the next a typed object:

    plan(cfg) -> RunPlan        data, model, defense, attack, budgets, optimizer: built and checked
    execute(plan) -> RunResult  train (or resume, or reuse), attack, certify, audit; no result files
    RunFolder.write(result)     the files (:mod:`advrun.runfolder`), then the report

The runner owns no algorithm: each step is one call into the module that does it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from advrun import audit, cache, certify, losses, schedules
from advrun.attacks.base import Attack
from advrun.attacks.norms import norm_name, parse_norm
from advrun.checkpoints import load_weights
from advrun.contract import accepted, check_classifier
from advrun.config import build, check_optimizer, epsilons_from, resolve_device, to_container, validate_run
from advrun.console import results
from advrun.data import Dataset, load_dataset
from advrun.errors import AdvrunError, ConfigError, InvalidValue, OutputError, keyed, require_positive, shown
from advrun.evaluation import CURVE_COLUMNS, intervals, robustness_curve
from advrun.loggers import Logger, build_logger
from advrun.ood import OutOfDistribution
from advrun.reporting import plots
from advrun.reporting.figures import model_figures
from advrun.reporting.report import ood_rows, write_run_report
from advrun.reporting.tables import clean_summary, summary_table
from advrun.runfolder import Metrics, RunFolder, RunResult, is_certified
from advrun.smoothing import Smoothing
from advrun.stats import METHOD
from advrun.training import HISTORY_COLUMNS, CorruptCheckpoint, NonFiniteLoss, accuracy, batch_starts, train
from advrun.versions import git_commit, versions

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch; return the generator that orders training batches."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def seeds(seed: int) -> dict[str, int]:
    """The seed of every generator a run draws from (recorded in ``metrics.json``)."""
    return {"python": seed, "numpy": seed % 2**32, "torch": seed, "batch_order": seed, "evaluation": seed}


def set_deterministic(on: bool) -> None:
    """``deterministic=true``: PyTorch's deterministic algorithms (and cuBLAS' fixed workspace);
    the value is checked with the run-wide keys (:func:`advrun.config.validate_run`)."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if torch.are_deterministic_algorithms_enabled() != on:  # the call imports torch._dynamo: 3-4 s
        torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.benchmark = False


def model_spec(node: DictConfig) -> DictConfig:
    """The ``model`` node without ``checkpoint``, which is not a constructor argument."""
    spec = node.copy()
    with open_dict(spec):
        spec.pop("checkpoint", None)
    return spec


def build_model(node: DictConfig, data: Dataset) -> nn.Module:
    """The model a ``model`` config names, sized for ``data`` (where its constructor takes
    ``in_shape`` and ``num_classes``), normalisation fitted to its training set (where it has
    ``fit_normalization``), then the weights of ``model.checkpoint`` when one is given."""
    spec = model_spec(node)
    model = build(spec, "model", **accepted(spec.get("_target_"), in_shape=list(data.shape),
                                            num_classes=data.num_classes))
    if not isinstance(model, nn.Module):
        raise ConfigError("model", f"must be a torch.nn.Module mapping inputs to logits; {spec.get('_target_')} "
                                   f"gives a {type(model).__name__}")
    if hasattr(model, "fit_normalization"):
        with keyed("model"):
            model.fit_normalization(data.x_train.cpu())
    if node.get("checkpoint"):
        load_weights(model, node.checkpoint, probe=data.x_test)
    return model


def default_budgets(data: Dataset, norm: float) -> dict[str, Any]:
    """The data set's default headline budget and curve grid for ``norm``."""
    budgets = data.budgets.get(norm_name(norm))
    if not budgets:
        raise ConfigError(
            "eval.epsilons",
            f"dataset {data.name} has no default budgets for the {norm_name(norm)} norm; set attack.eps and eval.epsilons",
        )
    return budgets


def build_attack(cfg: DictConfig, data: Dataset, model: nn.Module) -> tuple[Attack | None, list[float]]:
    """The evaluation attack at its headline budget, and the budgets of the curve.

    ``attack.eps: null`` takes the data set's default budget for the attack's norm, and
    ``eval.epsilons: null`` its default grid; the headline budget is always on the curve.
    """
    node = cfg.attack
    if node.get("_target_") is None:
        return None, []
    try:
        norm = parse_norm(node.get("norm", "inf"))
    except ValueError as e:
        raise ConfigError("attack.norm", str(e)) from None
    eps = node.get("eps")
    if eps is None:
        eps = default_budgets(data, norm)["eps"]
    attack = build(node, "attack", eps=eps, **accepted(node.get("_target_"), data=data))  # data: a transfer's check
    if not isinstance(attack, Attack):
        raise ConfigError("attack._target_", f"{node._target_} gives a {type(attack).__name__}, not an attack: derive "
                                             "from BoundedAttack, MinimumNormAttack or ThreatModelAttack (advrun.attacks)")
    with keyed("attack"):
        attack = attack.with_training_loss(cfg.train.loss)
        attack.check_classes(data.num_classes)
        attack.check_model(model, data.shape)
    grid = cfg.eval.epsilons
    grid = default_budgets(data, norm)["grid"] if grid is None else to_container(grid)
    return attack, epsilons_from(list(grid) + [attack.eps], "eval.epsilons")


@dataclass(frozen=True)
class Certification:
    """How the trained model is certified: ``method`` (:data:`advrun.certify.METHODS`, or a
    ``+``-joined union as ``auto`` chooses), in the attack's ``norm``, with the exact verifier's
    ``time_limit`` (seconds per sample) and the ``smoothing`` settings."""

    method: str
    norm: float
    time_limit: float
    smoothing: Smoothing


def plan_certification(cfg: DictConfig, data: Dataset, model: nn.Module, attack: Attack | None) -> Certification | None:
    """How to certify the trained model, or None (docs/certification.md).

    ``eval.certify: auto`` certifies with the tightest methods that apply to the model without
    running for long (:func:`advrun.certify.choose`), ``true`` requires that one applies (an
    error before training otherwise), a method's name (``ibp``, ``crown``, ``exact``,
    ``smoothing``, ``hein``) requires that method, ``false`` never certifies. The norm is the
    attack's.
    """
    mode = cfg.eval.get("certify", "auto")
    if mode not in ("auto", True, False, *certify.METHODS):
        raise ConfigError("eval.certify", f"must be auto, true, false or a method ({', '.join(certify.METHODS)}), "
                                          f"got {shown(mode)}")
    if mode is False or attack is None or attack.certificate_norm is None:
        if mode not in ("auto", False):
            raise ConfigError("eval.certify", "certification needs an Lp attack (its norm is the budget's norm)")
        return None
    norm = attack.norm
    time_limit = cfg.eval.exact.time_limit
    with keyed("eval.exact"):
        require_positive("time_limit", time_limit)
    with keyed("eval.smoothing"):
        smoothing = Smoothing(**to_container(cfg.eval.smoothing))
    if mode in ("auto", True):
        methods = certify.choose(model, norm, data.shape)
        if not methods and mode is True:
            _check_method(model, "crown", norm, data.shape, "true")
        return Certification("+".join(methods), norm, time_limit, smoothing) if methods else None
    _check_method(model, mode, norm, data.shape, mode)
    return Certification(mode, norm, time_limit, smoothing)


def _check_method(model: nn.Module, method: str, norm: float, in_shape, mode: Any) -> None:
    """:func:`advrun.certify.check_method`, its refusal reported under ``attack.norm`` (the norm is
    the attack's) or ``model``."""
    try:
        certify.check_method(model, method, norm, in_shape)
    except InvalidValue as e:
        key = "attack.norm" if e.field == "norm" else f"model.{e.field}"
        raise ConfigError(key, f"{e.message} (eval.certify={str(mode).lower()})") from None


def certified_curve(plan: "RunPlan", x: torch.Tensor, y: torch.Tensor) -> pd.DataFrame:
    """Rows of the curve for the certified accuracy (a lower bound on robust accuracy, same
    denominator; for smoothing, the smoothed classifier's), ``attack`` ``certified-<method>``."""
    start = time.perf_counter()
    how = plan.certification
    certificate = certify.certify(plan.model, x, y, how.norm, plan.epsilons, how.method, box=plan.data.bounds,
                                  batch_size=plan.cfg.eval.batch_size, time_limit=how.time_limit,
                                  smoothing=how.smoothing, seed=plan.cfg.seed)
    seconds = time.perf_counter() - start
    radii = certificate.radii
    proven = radii[radii > 0] if radii is not None else radii
    median = float(proven.median()) if proven is not None and len(proven) else math.nan
    rows = [{
        "attack": certificate.label, "norm": norm_name(how.norm), "eps": eps, "n_samples": len(x),
        "n_robust": int(certificate.verdicts[:, k].sum()), "robust_accuracy": accuracy,
        "median_norm": median, "time_s": seconds,
    } for k, (eps, accuracy) in enumerate(zip(certificate.epsilons, certificate.accuracy()))]
    if certificate.unknown is not None and certificate.unknown.any():
        log.info("certification (%s): %d of %d samples left unknown at some budget (eval.exact.time_limit %gs "
                 "per sample); they count as not certified", how.method, int(certificate.unknown.any(1).sum()),
                 len(x), how.time_limit)
    return pd.DataFrame([row | intervals(row) for row in rows], columns=CURVE_COLUMNS)


def audit_evaluation(plan: "RunPlan", x: torch.Tensor, y: torch.Tensor, evaluation) -> list[audit.Check]:
    """The evaluation audit (:mod:`advrun.audit`), each warning logged."""
    checks = audit.audit(plan.model, plan.attack, x, y, evaluation.curve, bounds=plan.data.bounds,
                         samples=evaluation.samples, batch_size=plan.cfg.eval.batch_size, seed=plan.cfg.seed)
    for check in checks:
        if check.status == audit.WARN:
            log.warning("audit %s: %s. Try: %s", check.name, check.reason, check.advice)
    return checks


def check_loss(name: Any, data: Dataset, defense: Any) -> None:
    """``train.loss`` must exist, suit the number of classes, and be one the defense can train with."""
    with keyed("train"):
        losses.check_classes(name, data.num_classes)
    supported = getattr(defense, "supported_losses", None)
    if supported is not None and name not in supported:
        raise ConfigError("train.loss", f"defense {type(defense).__name__} trains with {' or '.join(supported)}, "
                                        f"not {name}")


def build_scheduler_from(train_cfg: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """The learning-rate schedule of ``train.schedule`` (:mod:`advrun.schedules`)."""
    with keyed("train"):
        return schedules.build_scheduler(
            optimizer, train_cfg.schedule, steps_per_epoch, train_cfg.epochs,
            step_epochs=train_cfg.step_epochs, gamma=train_cfg.gamma, peak=train_cfg.peak,
        )


def fit(cfg, model, defense, optimizer, scheduler, data, batch_size, generator, device, out,
        on_epoch=None) -> tuple[pd.DataFrame, dict]:
    """Train ``model``, or resume its training, or reuse it from the model cache; return the
    training history and how the model was obtained (recorded in ``metrics.json``). ``on_epoch``
    gets each epoch's row as it is trained (the run's logger).

    With ``cache.enabled`` the resumable checkpoint lives in the cache entry (so the same config
    started again resumes, see :mod:`advrun.cache`), otherwise in the run folder.
    """
    if cfg.train.epochs == 0:
        given = "checkpoint" if cfg.model.get("checkpoint") else "path"  # model=exported: the program's file
        log.info("train.epochs=0: evaluating the weights of model.%s as they are", given)
        return pd.DataFrame(columns=HISTORY_COLUMNS), {"trained": False, "source": str(cfg.model.get(given))}
    entry = spec = None
    if cfg.cache.enabled:
        entry, spec = cache.entry_for(cfg, device)
    checkpoint = entry.checkpoint if entry is not None else RunFolder(out).checkpoint
    with entry.lock() if entry is not None else contextlib.nullcontext():
        if entry is not None and entry.complete():
            try:
                state, history = entry.load()
                model.load_state_dict(state)
            except Exception as e:  # noqa: BLE001 - an unreadable entry is trained again
                log.warning("cache entry %s cannot be read (%s: %s); training again", entry.path, type(e).__name__, e)
            else:
                log.info("reused the trained model of cache entry %s (no training)", entry.path)
                return history, {"trained": False, "source": str(entry.path)}
        resumed = checkpoint.exists()

        def _train() -> pd.DataFrame:
            return train(
                model, defense, optimizer, data.x_train, data.y_train, data.x_test, data.y_test,
                epochs=cfg.train.epochs, batch_size=batch_size, generator=generator, scheduler=scheduler,
                checkpoint=checkpoint, on_epoch=on_epoch,
            )

        try:
            try:
                history = _train()
            except CorruptCheckpoint as e:
                aside = checkpoint.with_name(f"{checkpoint.name}.corrupt")
                os.replace(checkpoint, aside)
                log.warning("%s: not loaded; moved to %s, training from the start", e, aside)
                resumed = False
                history = _train()
        except NonFiniteLoss as e:
            kept = f"the last good checkpoint is kept in {checkpoint}" if checkpoint.exists() else "no epoch completed"
            raise AdvrunError("optimizer.lr", f"{e}; {kept}; try a smaller learning rate") from None
        if entry is not None:
            entry.store(model.state_dict(), history, spec, out)
            log.info("trained model stored in cache entry %s", entry.path)
            checkpoint.unlink(missing_ok=True)
        # without the cache the run folder's checkpoint stays until the results are written
        # (:func:`run`): a run stopped while it attacks resumes without training again
    return history, {"trained": True, "resumed": resumed, "source": str(entry.path) if entry is not None else None}


def _describe(obj: Any) -> str:
    return "none" if obj is None else type(obj).__name__


@dataclass
class RunPlan:
    """Every object the config names, built and validated: nothing trained, evaluated or written yet.

    Every mistake in the config's values is found while the plan is made (:func:`plan`); a
    ``cache.dir`` that cannot be written is found when the cache entry is locked, still before training.
    """

    cfg: DictConfig
    folder: RunFolder
    device: torch.device
    generator: torch.Generator
    data: Dataset
    model: nn.Module
    defense: Any
    attack: Attack | None
    epsilons: list[float]
    certification: Certification | None
    ood: OutOfDistribution
    optimizer: torch.optim.Optimizer
    scheduler: Any
    batch_size: int
    audit: bool
    figures: bool
    started: float
    logger: Logger = field(default_factory=lambda: Logger({}))

    @property
    def title(self) -> str:
        return f"{self.data.name} / {_describe(self.model)} / defense {_describe(self.defense)}"

    def evaluation_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``eval.n_samples`` test samples (all of them by default): a sample's position here
        is its position in the test set ``data.x_test`` (``index`` in ``samples.csv``)."""
        n = self.cfg.eval.n_samples or len(self.data.x_test)
        return self.data.x_test[:n], self.data.y_test[:n]


def plan(cfg: DictConfig, output_dir: str | Path) -> RunPlan:
    """Build and check everything ``cfg`` names (data, model, defense, attack, optimizer, schedule),
    seeded as the run will be; raises :class:`AdvrunError` naming the key of the first mistake."""
    started = time.perf_counter()
    folder = RunFolder(output_dir)
    if folder.finished():
        raise AdvrunError("hydra.run.dir", f"{folder.path} already holds a finished run; choose another output folder")
    validate_run(cfg)
    logger = build_logger(cfg.get("logger"))  # its keys checked, its library imported, before training
    device = resolve_device(cfg.device)
    set_deterministic(cfg.get("deterministic", False))
    generator = seed_everything(cfg.seed)
    data = load_dataset(to_container(cfg.dataset)).to(device)
    model = build_model(cfg.model, data).to(device)
    if cfg.train.epochs and getattr(model, "refuses_training", None):
        raise ConfigError("train.epochs", model.refuses_training)
    check_classifier(model, data.x_train, data.num_classes, trained=cfg.train.epochs > 0)
    check_optimizer(cfg.optimizer)
    defense = build(cfg.defense, "defense", **accepted(cfg.defense.get("_target_"), bounds=data.bounds,
                                                       criterion=cfg.train.loss))
    if not callable(getattr(defense, "loss", None)):
        raise ConfigError("defense", f"{type(defense).__name__} has no loss(model, x, y) method: a defense is a "
                                     "training objective")
    with keyed("defense"):
        if hasattr(defense, "check_model"):
            defense.check_model(model, data.shape)
    check_loss(cfg.train.loss, data, defense)
    attack, epsilons = build_attack(cfg, data, model)
    certification = plan_certification(cfg, data, model, attack)
    with keyed("eval.ood"):  # a config saved before eval.ood existed measures nothing
        ood = OutOfDistribution(**to_container(cfg.eval.get("ood") or {"n": 0}))
    # the optimizer last: PyTorch's first optimizer imports torch._dynamo (seconds), which a
    # mistake found above need not wait for
    optimizer = build(cfg.optimizer, "optimizer", params=model.parameters())
    batch_size = len(data.x_train) if cfg.train.batch_size == "full" else cfg.train.batch_size
    with keyed("train"):
        steps_per_epoch = len(batch_starts(len(data.x_train), batch_size, model))
    scheduler = build_scheduler_from(cfg.train, optimizer, steps_per_epoch)
    return RunPlan(
        cfg=cfg, folder=folder, device=device, generator=generator, data=data, model=model, defense=defense,
        attack=attack, epsilons=epsilons, certification=certification, ood=ood, optimizer=optimizer, scheduler=scheduler,
        batch_size=batch_size, audit=audit.requested(cfg.eval.get("audit", True)),
        figures=cfg.get("report", True),  # report=false: no figures and no report (large sweeps)
        started=started, logger=logger,
    )


@dataclass
class Evaluated:
    """What the evaluation attack found: the curve (with certified rows), the minimal norms per
    sample of a minimum-norm attack, the per-sample results, the audit, and the images the attack made."""

    curve: pd.DataFrame
    samples: pd.DataFrame | None
    per_sample: pd.DataFrame | None
    checks: list[audit.Check] | None
    audit_s: float
    images: dict[str, torch.Tensor]


def evaluate(plan: RunPlan, x: torch.Tensor, y: torch.Tensor) -> Evaluated:
    """Attack the trained model over the budgets of the curve, certify it, audit the evaluation."""
    attack, data = plan.attack, plan.data
    attack.prepare(plan.model, data.x_train, data.y_train, data.bounds)
    evaluation = robustness_curve(plan.model, attack, x, y, plan.epsilons, bounds=data.bounds,
                                  batch_size=plan.cfg.eval.batch_size)
    curve = evaluation.curve
    if plan.certification is not None:
        certified = certified_curve(plan, x, y)
        curve = pd.concat([curve, certified], ignore_index=True)
    start = time.perf_counter()
    checks = audit_evaluation(plan, x, y, evaluation) if plan.audit else None
    return Evaluated(curve, evaluation.samples, evaluation.per_sample, checks, time.perf_counter() - start,
                     attack.artifacts())


def draw_figures(plan: RunPlan, history: pd.DataFrame, evaluated: Evaluated | None, x: torch.Tensor,
                 y: torch.Tensor) -> dict[str, dict[str, bytes]]:
    """The run's figures, rendered (PNG and SVG bytes by file stem)."""
    drawn = {}
    if len(history):
        drawn["training_curve"] = plots.plot_training_curve(history, plan.title)
    if evaluated is not None:
        label = plan.attack.label
        if evaluated.samples is not None:
            drawn["norm_distribution"] = plots.plot_norm_distribution(evaluated.samples, label)
        drawn["robustness_curve"] = plots.plot_robustness_curve(
            evaluated.curve, f"{plan.title}\n{label}, {len(x)} test samples", plan.data.bounds)
    drawn.update(model_figures(plan.model, plan.attack, plan.data, x, y, plan.title))
    return {stem: plots.render(figure) for stem, figure in drawn.items()}


def execute(plan: RunPlan) -> RunResult:
    """Train (or resume, or reuse from the cache), attack, certify and audit as ``plan`` says; the
    results as typed fields. Writes nothing into the run folder but the training checkpoint."""
    cfg, data = plan.cfg, plan.data
    t_data = time.perf_counter()
    log.info("%s: %d training and %d test samples of shape %s, %d classes, device %s", data.name,
             len(data.x_train), len(data.x_test), data.shape, data.num_classes, plan.device)
    history, training = fit(cfg, plan.model, plan.defense, plan.optimizer, plan.scheduler, data, plan.batch_size,
                            plan.generator, plan.device, plan.folder.path, on_epoch=plan.logger.log_epoch)
    seed_everything(cfg.seed)  # the attacks draw the same numbers whether the model was trained, resumed or reused
    t_train = time.perf_counter()
    x, y = plan.evaluation_set()
    clean = accuracy(plan.model, x, y, cfg.eval.batch_size)
    evaluated = evaluate(plan, x, y) if plan.attack is not None else None
    t_ood = time.perf_counter()
    far = (plan.ood.measure(plan.model, data.shape, data.bounds, cfg.seed, cfg.eval.batch_size, plan.device)
           if plan.ood.enabled else None)
    t_eval = time.perf_counter()
    figures = draw_figures(plan, history, evaluated, x, y) if plan.figures else {}
    metrics = run_metrics(plan, history, clean, len(x), evaluated)
    metrics.training = training
    metrics.ood = far
    metrics.timings = {"setup_s": t_data - plan.started, "train_s": t_train - t_data, "eval_s": t_eval - t_train,
                       "total_s": time.perf_counter() - plan.started,
                       "audit_s": evaluated.audit_s if evaluated is not None else 0.0,
                       "ood_s": t_eval - t_ood,
                       "curve": [] if evaluated is None else json.loads(
                           evaluated.curve[["attack", "norm", "eps", "time_s"]].to_json(orient="records"))}
    return RunResult(
        metrics=metrics, history=history, weights=plan.model.state_dict(), figures=figures,
        model_info={"in_shape": list(data.shape), "num_classes": data.num_classes,
                    "class_names": data.class_names, "bounds": list(data.bounds)},
        curve=None if evaluated is None else evaluated.curve,
        samples=None if evaluated is None else evaluated.samples,
        per_sample=None if evaluated is None else evaluated.per_sample,
        audit=None if evaluated is None or evaluated.checks is None else audit.checks_to_records(evaluated.checks),
        images={} if evaluated is None else evaluated.images,
    )


def run_metrics(plan: RunPlan, history: pd.DataFrame, clean: float, n_eval: int,
                evaluated: Evaluated | None) -> Metrics:
    """The headline numbers of ``metrics.json`` (timings and the training's origin are added by the caller)."""
    cfg, data, attack = plan.cfg, plan.data, plan.attack
    metrics = Metrics(
        dataset=data.name, n_train=len(data.x_train), n_test=len(data.x_test), n_eval=n_eval, clean_accuracy=clean,
        test_accuracy=float(history["test_accuracy"].iloc[-1]) if len(history) else math.nan,
        final_train_loss=float(history["loss"].iloc[-1]) if len(history) else math.nan,
        seed=cfg.seed, seeds=seeds(cfg.seed), deterministic=bool(cfg.get("deterministic", False)),
        device=str(plan.device), versions=versions(), git_commit=git_commit(),
        counts={"n_correct": round(clean * n_eval)},
    )
    if evaluated is not None:
        curve = evaluated.curve
        headline = attack.headline_row(curve[curve["attack"] == attack.name])
        certified = curve[curve["attack"].map(is_certified) & (curve["eps"] == attack.eps)]
        if len(certified):
            metrics.certified_method = plan.certification.method
            metrics.certified_accuracy = float(certified["robust_accuracy"].iloc[0])
            metrics.counts["n_certified"] = int(certified["n_robust"].iloc[0])
        metrics.counts.update({count: int(headline[count]) for count in ("n_robust", "n_eligible", "n_success")})
        metrics.attack, metrics.norm = attack.name, norm_name(attack.norm)
        metrics.eps = attack.headline_eps
        metrics.robust_accuracy = float(headline["robust_accuracy"])
        metrics.success_rate = float(headline["success_rate"])
        metrics.curve = json.loads(curve.drop(columns="time_s").to_json(orient="records"))
        if evaluated.checks is not None:
            metrics.audit = audit.summary(evaluated.checks)
    metrics.add_intervals()
    return metrics


def print_summary(plan: RunPlan, result: RunResult) -> None:
    """The summary table (and the audit's) on the console."""
    metrics = result.metrics
    if result.curve is not None:
        results.print(summary_table(result.curve, metrics.clean_accuracy, metrics.n_eval,
                                    f"{plan.title}: {plan.attack.label}"))
        if result.audit is not None:
            results.print(audit.audit_table([audit.Check(**record) for record in result.audit]))
    else:
        results.print(f"{plan.title}: {clean_summary(metrics.clean_accuracy, metrics.n_eval)} (no attack; "
                      f"in brackets the {METHOD}, in %)")
    if metrics.ood is not None:
        results.print("; ".join(f"{what}: {figures}" for what, figures in ood_rows(metrics.ood)))


def run(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any]:
    """Train, attack and evaluate as ``cfg`` says; write the results into ``output_dir``.

    The straight pass: :func:`plan` (everything checked), :func:`execute` (the numbers),
    :meth:`RunFolder.write` (the files, ``metrics.json`` last), then the report, built from the
    files on disk like ``advrun-report``, then the logger's final metrics and artifacts
    (:mod:`advrun.loggers`; it saw each epoch as it was trained). A report or a logger that fails
    (a full disk, a tracking server down) leaves the results as they are: a warning says so (and
    how to rebuild the report). Returns ``metrics.json``'s record.
    """
    planned = plan(cfg, output_dir)
    folder = planned.folder
    if not folder.is_run():  # called from Python rather than by the advrun command
        folder.write_config(OmegaConf.to_yaml(cfg))
    planned.logger.start(cfg, folder)
    try:
        result = execute(planned)
        folder.write(result)
    except BaseException:
        planned.logger.close(failed=True)
        raise
    folder.checkpoint.unlink(missing_ok=True)
    print_summary(planned, result)
    if not planned.figures:
        results.print(f"results in {folder.path} (report=false: no figures or report)")
    else:
        try:
            write_run_report(folder.path)
        except OutputError as e:
            log.warning("the report could not be written: %s. The results are complete; rebuild the report with "
                        "advrun-report %s", e, folder.path)
        else:
            results.print(f"results in {folder.path} (report: {folder.reports[1]})")
    planned.logger.finish(result)  # a logger that fails warns: the results are in the folder already
    planned.logger.close()
    return result.metrics.to_json()


@dataclass
class Run:
    """A finished run reloaded from disk by :func:`load_run`; ``samples``: its per-sample results
    (``samples.csv``, one row per evaluated sample and attack run), None without an attack."""

    path: Path
    model: nn.Module
    config: DictConfig
    metrics: dict[str, Any] | None
    samples: pd.DataFrame | None = None


def load_run(path: str | Path) -> Run:
    """Reload a finished run: its model (eval mode, on the CPU), resolved config, metrics and
    per-sample results.

    The weights load as ``model.checkpoint`` does (:mod:`advrun.checkpoints`): ``weights_only=True``,
    no arbitrary unpickling, shapes and finite values checked.
    """
    folder = RunFolder(path)
    for file in (folder.file(RunFolder.CONFIG), folder.file(RunFolder.MODEL_INFO), folder.weights):
        if not file.is_file():
            raise AdvrunError("path", f"{folder.path} is not a finished advrun run: {file.name} is missing")
    config = OmegaConf.load(folder.file(RunFolder.CONFIG))
    info = folder.json(RunFolder.MODEL_INFO)
    if not isinstance(info, dict) or not {"in_shape", "num_classes"} <= set(info):
        raise AdvrunError("path", f"{folder.file(RunFolder.MODEL_INFO)} is not advrun's model description "
                                  "(in_shape and num_classes)")
    spec = model_spec(config.model)
    model = build(spec, "model", **accepted(spec.get("_target_"), in_shape=info["in_shape"],
                                            num_classes=info["num_classes"]))
    load_weights(model, folder.weights, key="path")
    model.eval()
    metrics = folder.json(RunFolder.METRICS) if folder.metrics() is not None else None  # checked, then as written
    return Run(path=folder.path, model=model, config=config, metrics=metrics, samples=folder.per_sample())


__all__ = ["Run", "RunPlan", "build_attack", "build_model", "execute", "load_run", "plan", "run", "seed_everything"]
