"""One straight pass: config -> data -> model -> train -> evaluate -> tables and files.

The runner owns no algorithm: each step is one call into the module that does it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pickle
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from advrun import audit, cache, certify, io, losses, schedules
from advrun.attacks.base import Attack
from advrun.attacks.norms import norm_name, parse_norm
from advrun.config import build, check_optimizer, epsilons_from, resolve_device, to_container, validate_run
from advrun.console import results
from advrun.data import Dataset, load_dataset
from advrun.errors import AdvrunError, ConfigError, InvalidValue
from advrun.evaluation import CURVE_COLUMNS, robustness_curve
from advrun.models import Classifier
from advrun.reporting import plots
from advrun.reporting.figures import write_model_figures
from advrun.reporting.report import write_run_report
from advrun.reporting.tables import summary_table
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


def set_deterministic(on: Any) -> None:
    """``deterministic=true``: PyTorch's deterministic algorithms (and cuBLAS' fixed workspace)."""
    if not isinstance(on, bool):
        raise ConfigError("deterministic", f"must be true or false, got {on!r}")
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


def load_weights(model: nn.Module, path: Any, key: str = "model.checkpoint") -> None:
    """Load the ``state_dict`` at ``path`` (a file, or a run folder holding ``model.pt``) into ``model``.

    The file loads with ``weights_only=True`` onto the CPU (the model moves to the run's device
    afterwards); a file that needs arbitrary unpickling is refused, and a mismatch names the keys
    that differ.
    """
    file = cache.weights_file(path)
    if not file.is_file():
        raise ConfigError(key, f"{file} does not exist")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ConfigError(key, f"{file} needs arbitrary unpickling, which advrun refuses (weights_only=True): "
                               f"{str(e).splitlines()[0]}. Save the model's state_dict instead") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file
        raise ConfigError(key, f"{file} cannot be read as PyTorch weights ({type(e).__name__}: {e})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict) and "format" in state:
        state = state["model"]  # an advrun training checkpoint
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(key, f"{file} does not hold a state_dict (a dict of tensors)")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [f"{label}: {', '.join(items[:6])}{', ...' if len(items) > 6 else ''}"
                 for label, items in (("missing", missing), ("unexpected", unexpected),
                                      ("shape (file vs model)", shapes)) if items]
        raise ConfigError(key, f"{file} does not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state)


def build_model(node: DictConfig, data: Dataset) -> Classifier:
    """The model a ``model`` config names, sized for ``data``, normalisation fitted to its training
    set, then the weights of ``model.checkpoint`` when one is given."""
    model = build(model_spec(node), "model", in_shape=list(data.shape), num_classes=data.num_classes)
    model.fit_normalization(data.x_train.cpu())
    if node.get("checkpoint"):
        load_weights(model, node.checkpoint)
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
    attack = build(node, "attack", eps=eps)
    try:
        attack.check_classes(data.num_classes)
        attack.check_model(model, data.shape)
    except InvalidValue as e:
        raise ConfigError(f"attack.{e.field}", e.message) from None
    grid = cfg.eval.epsilons
    grid = default_budgets(data, norm)["grid"] if grid is None else to_container(grid)
    return attack, epsilons_from(list(grid) + [attack.eps], "eval.epsilons")


def certification_norm(cfg: DictConfig, data: Dataset, model: nn.Module, attack: Attack | None) -> float | None:
    """The norm in which to certify the trained model, or None.

    ``eval.certify: auto`` certifies where :mod:`advrun.certify` has a guarantee for the model
    (linear models, one-hidden-layer networks with smooth activations), ``true`` requires it
    (an error before training otherwise), ``false`` never certifies. The norm is the attack's.
    """
    mode = cfg.eval.get("certify", "auto")
    if mode not in ("auto", True, False):
        raise ConfigError("eval.certify", f"must be auto, true or false, got {mode!r}")
    if mode is False or attack is None or not attack.lp_bounded:
        if mode is True:
            raise ConfigError("eval.certify", "certification needs an Lp attack (its norm is the budget's norm)")
        return None
    if mode == "auto":
        return attack.norm if certify.supports(model, attack.norm, data.shape) else None
    try:
        certify.check_certifiable(model, attack.norm, data.shape)
    except InvalidValue as e:
        raise ConfigError(f"model.{e.field}", f"{e.message} (eval.certify=true)") from None
    return attack.norm


def certified_curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: float, epsilons) -> pd.DataFrame:
    """Rows of the curve for the certified accuracy (a lower bound on robust accuracy; same denominator)."""
    start = time.perf_counter()
    radii = certify.certified_radii(model, x, y, norm)
    accuracies = certify.certified_accuracy(radii, epsilons)
    seconds = time.perf_counter() - start
    proven = radii[radii > 0]
    return pd.DataFrame([{
        "attack": "certified", "norm": norm_name(norm), "eps": float(eps), "n_samples": len(x),
        "robust_accuracy": accuracy, "median_norm": float(proven.median()) if len(proven) else math.nan,
        "time_s": seconds,
    } for eps, accuracy in zip(epsilons, accuracies)], columns=CURVE_COLUMNS)


def audit_evaluation(cfg: DictConfig, model: nn.Module, attack: Attack, x: torch.Tensor, y: torch.Tensor,
                     evaluation, bounds, out: Path) -> tuple[list[audit.Check], dict[str, Any], float]:
    """The evaluation audit (:mod:`advrun.audit`): ``audit.json`` written, each warning logged;
    returns the checks, their summary for ``metrics.json`` and the seconds it took."""
    start = time.perf_counter()
    checks = audit.audit(model, attack, x, y, evaluation.curve, bounds=bounds, samples=evaluation.samples,
                         batch_size=cfg.eval.batch_size, seed=cfg.seed)
    io.write_json(out / "audit.json", audit.checks_to_records(checks))
    for check in checks:
        if check.status == audit.WARN:
            log.warning("audit %s: %s. Try: %s", check.name, check.reason, check.advice)
    return checks, audit.summary(checks), time.perf_counter() - start


def check_loss(name: Any, data: Dataset, defense: Any) -> None:
    """``train.loss`` must exist, suit the number of classes, and be one the defense can train with."""
    try:
        losses.check_classes(name, data.num_classes)
    except InvalidValue as e:
        raise ConfigError("train.loss", e.message) from None
    supported = getattr(defense, "supported_losses", None)
    if supported is not None and name not in supported:
        raise ConfigError("train.loss", f"defense {type(defense).__name__} trains with {' or '.join(supported)}, "
                                        f"not {name}")


def build_scheduler_from(train_cfg: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """The learning-rate schedule of ``train.schedule`` (:mod:`advrun.schedules`)."""
    try:
        return schedules.build_scheduler(
            optimizer, train_cfg.schedule, steps_per_epoch, train_cfg.epochs,
            step_epochs=train_cfg.step_epochs, gamma=train_cfg.gamma, peak=train_cfg.peak,
        )
    except InvalidValue as e:
        raise ConfigError(f"train.{e.field}", e.message) from None


def fit(cfg, model, defense, optimizer, scheduler, data, batch_size, generator, device, out) -> tuple[pd.DataFrame, dict]:
    """Train ``model``, or resume its training, or reuse it from the model cache; return the
    training history and how the model was obtained (recorded in ``metrics.json``).

    With ``cache.enabled`` the resumable checkpoint lives in the cache entry (so the same config
    started again resumes, see :mod:`advrun.cache`), otherwise in the run folder.
    """
    if cfg.train.epochs == 0:
        log.info("train.epochs=0: evaluating the weights of model.checkpoint as they are")
        return pd.DataFrame(columns=HISTORY_COLUMNS), {"trained": False, "source": str(cfg.model.checkpoint)}
    entry = spec = None
    if cfg.cache.enabled:
        entry, spec = cache.entry_for(cfg, device)
    checkpoint = entry.checkpoint if entry is not None else out / "checkpoint.pt"
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
                checkpoint=checkpoint,
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
    return history, {"trained": True, "resumed": resumed, "source": str(entry.path) if entry is not None else None}


def _describe(obj: Any) -> str:
    return "none" if obj is None else type(obj).__name__


@dataclass
class Run:
    """A finished run reloaded from disk by :func:`load_run`."""

    path: Path
    model: nn.Module
    config: DictConfig
    metrics: dict[str, Any] | None


def run(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any]:
    """Train, attack and evaluate as ``cfg`` says; write the results into ``output_dir``.

    ``metrics.json`` is written last of the results: a folder without it holds no finished run.
    The report (``report.md``, ``report.html``) follows, built from the files on disk.
    """
    t0 = time.perf_counter()
    out = Path(output_dir)
    if (out / "metrics.json").exists():
        raise AdvrunError("hydra.run.dir", f"{out} already holds a finished run; choose another output folder")
    validate_run(cfg)
    device = resolve_device(cfg.device)
    saved_config = out / ".hydra" / "config.yaml"
    if not saved_config.exists():  # called from Python rather than by the advrun command
        io.write_text(saved_config, OmegaConf.to_yaml(cfg))
    set_deterministic(cfg.get("deterministic", False))
    generator = seed_everything(cfg.seed)

    data = load_dataset(to_container(cfg.dataset)).to(device)
    model = build_model(cfg.model, data).to(device)
    check_optimizer(cfg.optimizer)
    defense = build(cfg.defense, "defense", bounds=data.bounds, criterion=cfg.train.loss)
    try:
        defense.check_model(model, data.shape)
    except InvalidValue as e:
        raise ConfigError(f"defense.{e.field}", e.message) from None
    check_loss(cfg.train.loss, data, defense)
    attack, epsilons = build_attack(cfg, data, model)
    certify_norm = certification_norm(cfg, data, model, attack)
    # the optimizer last: PyTorch's first optimizer imports torch._dynamo (seconds), which a
    # mistake found above need not wait for
    optimizer = build(cfg.optimizer, "optimizer", params=model.parameters())
    batch_size = len(data.x_train) if cfg.train.batch_size == "full" else cfg.train.batch_size
    scheduler = build_scheduler_from(cfg.train, optimizer, len(batch_starts(len(data.x_train), batch_size, model)))
    audit_on = audit.requested(cfg.eval.get("audit", True))
    t_data = time.perf_counter()
    title = f"{data.name} / {_describe(model)} / defense {_describe(defense)}"
    log.info(
        "%s: %d training and %d test samples of shape %s, %d classes, device %s",
        data.name, len(data.x_train), len(data.x_test), data.shape, data.num_classes, device,
    )

    history, training = fit(cfg, model, defense, optimizer, scheduler, data, batch_size, generator, device, out)
    seed_everything(cfg.seed)  # the attacks draw the same numbers whether the model was trained, resumed or reused
    t_train = time.perf_counter()
    io.write_json(out / "model.json", {
        "in_shape": list(data.shape), "num_classes": data.num_classes,
        "class_names": data.class_names, "bounds": list(data.bounds),
    })
    io.save_torch(out / "model.pt", {k: v.cpu() for k, v in model.state_dict().items()})
    io.write_csv(out / "training.csv", history)
    figures = cfg.get("report", True)  # report=false: no figures and no report (large sweeps)
    if len(history) and figures:
        plots.save(plots.plot_training_curve(history, title), out / "training_curve")

    n_eval = cfg.eval.n_samples or len(data.x_test)
    x_eval, y_eval = data.x_test[:n_eval], data.y_test[:n_eval]
    clean = accuracy(model, x_eval, y_eval, cfg.eval.batch_size)
    curve = audited = None
    if attack is not None:
        attack.prepare(model, data.x_train, data.y_train, data.bounds)
        for name, image in attack.artifacts().items():
            io.save_image(out / f"{name}.png", image)
        evaluation = robustness_curve(
            model, attack, x_eval, y_eval, epsilons, bounds=data.bounds, batch_size=cfg.eval.batch_size
        )
        curve = evaluation.curve
        if certify_norm is not None:
            curve = pd.concat([curve, certified_curve(model, x_eval, y_eval, certify_norm, epsilons)], ignore_index=True)
        io.write_csv(out / "curve.csv", curve.drop(columns="time_s"))  # timings go to metrics.json's "timings"
        if evaluation.samples is not None:
            io.write_csv(out / "norms.csv", evaluation.samples)
            if figures:
                plots.save(plots.plot_norm_distribution(evaluation.samples, attack.label), out / "norm_distribution")
        if figures:
            plots.save(plots.plot_robustness_curve(curve, f"{title}\n{attack.label}, {len(x_eval)} test samples",
                                                   data.bounds), out / "robustness_curve")
        if audit_on:
            audited = audit_evaluation(cfg, model, attack, x_eval, y_eval, evaluation, data.bounds, out)
    t_eval = time.perf_counter()
    if figures:
        write_model_figures(out, model, attack, data, x_eval, y_eval, title)

    metrics = _metrics(cfg, data, device, history, clean, len(x_eval), attack, curve)
    metrics["training"] = training
    if audited is not None:
        metrics["audit"] = audited[1]
    metrics["timings"] = {
        "setup_s": t_data - t0, "train_s": t_train - t_data, "eval_s": t_eval - t_train,
        "total_s": time.perf_counter() - t0,
        "audit_s": audited[2] if audited is not None else 0.0,
        "curve": [] if curve is None else json.loads(curve[["attack", "norm", "eps", "time_s"]].to_json(orient="records")),
    }
    io.write_json(out / "metrics.json", metrics)
    if curve is not None:
        results.print(summary_table(curve, clean, len(x_eval), f"{title}: {attack.label}"))
        if audited is not None:
            results.print(audit.audit_table(audited[0]))
    else:
        results.print(f"{title}: clean accuracy {100 * clean:.2f}% on {len(x_eval)} test samples (no attack)")
    if figures:
        write_run_report(out)  # after metrics.json: built from the files on disk, like advrun-report
        results.print(f"results in {out} (report: {out / 'report.html'})")
    else:
        results.print(f"results in {out} (report=false: no figures or report)")
    return metrics


def _metrics(cfg, data, device, history, clean, n_eval, attack, curve) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "dataset": data.name,
        "n_train": len(data.x_train),
        "n_test": len(data.x_test),
        "n_eval": n_eval,
        "clean_accuracy": clean,
        "test_accuracy": float(history["test_accuracy"].iloc[-1]) if len(history) else math.nan,
        "final_train_loss": float(history["loss"].iloc[-1]) if len(history) else math.nan,
        "denominators": {
            "clean_accuracy": "correct clean predictions / n_eval",
            "robust_accuracy": "samples correct both clean and under attack / n_eval",
            "success_rate": "initially correct samples the attack fooled / initially correct samples",
        },
        "attack": None,
    }
    if attack is not None:
        # an attack outside the Lp threat model has one row (eps NaN) and no budget
        rows = curve[curve["attack"] == attack.name]
        headline = rows.loc[rows["eps"] == attack.eps].iloc[0] if attack.lp_bounded else rows.iloc[0]
        certified = curve[(curve["attack"] == "certified") & (curve["eps"] == attack.eps)]
        if len(certified):
            metrics["certified_accuracy"] = float(certified["robust_accuracy"].iloc[0])
        metrics.update({
            "attack": attack.name,
            "norm": norm_name(attack.norm),
            "eps": attack.eps if attack.lp_bounded else None,
            "robust_accuracy": float(headline["robust_accuracy"]),
            "success_rate": float(headline["success_rate"]),
            "curve": json.loads(curve.drop(columns="time_s").to_json(orient="records")),
        })
    metrics.update({
        "seed": cfg.seed,
        "seeds": seeds(cfg.seed),
        "deterministic": bool(cfg.get("deterministic", False)),
        "device": str(device),
        "versions": versions(),
        "git_commit": git_commit(),
    })
    return metrics


def load_run(path: str | Path) -> Run:
    """Reload a finished run: its model (eval mode, on the CPU), resolved config and metrics.

    The weights load with ``torch.load(weights_only=True)``: no arbitrary unpickling.
    """
    path = Path(path)
    needed = [path / ".hydra" / "config.yaml", path / "model.json", path / "model.pt"]
    for file in needed:
        if not file.is_file():
            raise AdvrunError("path", f"{path} is not a finished advrun run: {file.name} is missing")
    config = OmegaConf.load(needed[0])
    info = json.loads(needed[1].read_text())
    model = build(model_spec(config.model), "model", in_shape=info["in_shape"], num_classes=info["num_classes"])
    state = torch.load(needed[2], map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    metrics_file = path / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
    return Run(path=path, model=model, config=config, metrics=metrics)


__all__ = ["Run", "build_attack", "build_model", "load_run", "run", "seed_everything"]
