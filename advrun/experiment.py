"""One straight pass: config -> data -> model -> train -> evaluate -> tables and files.

The runner owns no algorithm: each step is one call into the module that does it.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from advrun import certify, io
from advrun.attacks.base import Attack
from advrun.attacks.norms import norm_name, parse_norm
from advrun.config import build, epsilons_from, resolve_device, to_container, validate_run
from advrun.console import results
from advrun.data import Dataset, load_dataset
from advrun.errors import AdvrunError, ConfigError, InvalidValue
from advrun.evaluation import CURVE_COLUMNS, robustness_curve
from advrun.models import Classifier
from advrun.reporting import plots
from advrun.reporting.tables import summary_table
from advrun.training import NonFiniteLoss, accuracy, train
from advrun.versions import git_commit, versions

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch; return the generator that orders training batches."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def build_model(node: DictConfig, data: Dataset) -> Classifier:
    """The model a ``model`` config names, sized for ``data``, normalisation fitted to its training set."""
    model = build(node, "model", in_shape=list(data.shape), num_classes=data.num_classes)
    model.fit_normalization(data.x_train.cpu())
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

    ``metrics.json`` is written last: a folder without it holds no finished run.
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
    generator = seed_everything(cfg.seed)

    data = load_dataset(to_container(cfg.dataset)).to(device)
    model = build_model(cfg.model, data).to(device)
    optimizer = build(cfg.optimizer, "optimizer", params=model.parameters())
    defense = build(cfg.defense, "defense", bounds=data.bounds)
    try:
        defense.check_model(model, data.shape)
    except InvalidValue as e:
        raise ConfigError(f"defense.{e.field}", e.message) from None
    attack, epsilons = build_attack(cfg, data, model)
    certify_norm = certification_norm(cfg, data, model, attack)
    t_data = time.perf_counter()
    title = f"{data.name} / {_describe(model)} / defense {_describe(defense)}"
    log.info(
        "%s: %d training and %d test samples of shape %s, %d classes, device %s",
        data.name, len(data.x_train), len(data.x_test), data.shape, data.num_classes, device,
    )

    try:
        history = train(
            model, defense, optimizer, data.x_train, data.y_train, data.x_test, data.y_test,
            epochs=cfg.train.epochs, batch_size=cfg.train.batch_size, generator=generator,
        )
    except NonFiniteLoss as e:
        raise AdvrunError("optimizer.lr", f"{e}; try a smaller learning rate") from None
    t_train = time.perf_counter()
    io.write_json(out / "model.json", {
        "in_shape": list(data.shape), "num_classes": data.num_classes,
        "class_names": data.class_names, "bounds": list(data.bounds),
    })
    io.save_torch(out / "model.pt", {k: v.cpu() for k, v in model.state_dict().items()})
    io.write_csv(out / "training.csv", history)
    figure = plots.plot_training_curve(history, title)
    io.save_figure(out / "training_curve.png", figure)
    plots.close(figure)

    n_eval = cfg.eval.n_samples or len(data.x_test)
    x_eval, y_eval = data.x_test[:n_eval], data.y_test[:n_eval]
    clean = accuracy(model, x_eval, y_eval, cfg.eval.batch_size)
    curve = None
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
        io.write_csv(out / "curve.csv", curve)
        if evaluation.samples is not None:
            io.write_csv(out / "norms.csv", evaluation.samples)
            figure = plots.plot_norm_distribution(evaluation.samples, attack.label)
            io.save_figure(out / "norm_distribution.png", figure)
            plots.close(figure)
        figure = plots.plot_robustness_curve(curve, f"{title}\n{attack.label}, {len(x_eval)} test samples")
        io.save_figure(out / "robustness_curve.png", figure)
        plots.close(figure)
    t_eval = time.perf_counter()

    metrics = _metrics(cfg, data, device, history, clean, len(x_eval), attack, curve)
    metrics["timings"] = {
        "setup_s": t_data - t0, "train_s": t_train - t_data, "eval_s": t_eval - t_train,
        "total_s": time.perf_counter() - t0,
    }
    io.write_json(out / "metrics.json", metrics)
    if curve is not None:
        results.print(summary_table(curve, clean, len(x_eval), f"{title}: {attack.label}"))
    else:
        results.print(f"{title}: clean accuracy {100 * clean:.2f}% on {len(x_eval)} test samples (no attack)")
    results.print(f"results in {out}")
    return metrics


def _metrics(cfg, data, device, history, clean, n_eval, attack, curve) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "dataset": data.name,
        "n_train": len(data.x_train),
        "n_test": len(data.x_test),
        "n_eval": n_eval,
        "clean_accuracy": clean,
        "test_accuracy": float(history["test_accuracy"].iloc[-1]),
        "final_train_loss": float(history["loss"].iloc[-1]),
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
            "curve": json.loads(curve.to_json(orient="records")),
        })
    metrics.update({
        "seed": cfg.seed,
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
    model = build(config.model, "model", in_shape=info["in_shape"], num_classes=info["num_classes"])
    state = torch.load(needed[2], map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    metrics_file = path / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
    return Run(path=path, model=model, config=config, metrics=metrics)


__all__ = ["Run", "build_attack", "build_model", "load_run", "run", "seed_everything"]
