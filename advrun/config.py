"""Config helpers: where the configs live, building objects from config nodes with errors
that name the offending key, and validation of the run-wide keys."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from advrun.errors import ConfigError, InvalidValue

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda", "mps")


def config_dir() -> Path:
    """The folder holding ``config.yaml`` and the config groups.

    Inside a built wheel the configs ship as ``advrun/conf``; in a source checkout (and an
    editable install) they are ``conf/`` at the repository root.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"advrun's configs are missing: no config.yaml in {here / 'conf'} or {here.parent / 'conf'}")


def to_container(node: Any) -> Any:
    """A plain (resolved) Python copy of a config node; other values pass through."""
    if isinstance(node, DictConfig) or OmegaConf.is_list(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def build(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(node, **kwargs)``, with constructor errors reported as
    :class:`ConfigError` naming the key (``attack.steps``, ``defense.attack.eps``, ...)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        found = re.search(r"full_key: (\S+)", str(e))
        # Hydra names list items without a dot ("attack.attacks1"): write them as "attack.attacks.1"
        where = re.sub(r"(?<=[A-Za-z_])(\d+)(?=\.|$)", r".\1", found.group(1)) if found else key
        if isinstance(cause, InvalidValue):
            raise ConfigError(f"{where}.{cause.field}", cause.message) from None
        if isinstance(cause, (ValueError, TypeError)):
            raise ConfigError(where, str(cause)) from None
        raise ConfigError(where, str(e).splitlines()[0]) from None


def _int(cfg: DictConfig, key: str, minimum: int, allow_none: bool = False) -> int | None:
    value = OmegaConf.select(cfg, key)
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        extra = " or null" if allow_none else ""
        raise ConfigError(key, f"must be an integer >= {minimum}{extra}, got {value!r}")
    return value


def epsilons_from(value: Any, key: str) -> list[float]:
    """Validate a budget list: non-empty, finite numbers >= 0; returned sorted without duplicates."""
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(key, f"must be a non-empty list of budgets, got {value!r}")
    for eps in value:
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
            raise ConfigError(key, f"budgets must be finite numbers >= 0, got {eps!r}")
    return sorted({float(e) for e in value})


def validate_run(cfg: DictConfig) -> None:
    """Check the run-wide keys (seed, device, train.*, eval.*) before any work starts."""
    _int(cfg, "seed", 0)
    _int(cfg, "train.epochs", 0)
    if cfg.train.epochs == 0 and not OmegaConf.select(cfg, "model.checkpoint"):
        raise ConfigError("train.epochs", "must be >= 1 (0, evaluating saved weights as they are, needs model.checkpoint)")
    if cfg.train.batch_size != "full":
        try:
            _int(cfg, "train.batch_size", 1)
        except ConfigError:
            raise ConfigError("train.batch_size", f"must be an integer >= 1 or full, got {cfg.train.batch_size!r}") from None
    for key in ("cache.enabled", "deterministic"):
        if not isinstance(OmegaConf.select(cfg, key), bool):
            raise ConfigError(key, f"must be true or false, got {OmegaConf.select(cfg, key)!r}")
    if cfg.cache.enabled and (not isinstance(cfg.cache.dir, str) or not cfg.cache.dir):
        raise ConfigError("cache.dir", f"must be a folder path, got {cfg.cache.dir!r}")
    _int(cfg, "eval.n_samples", 1, allow_none=True)
    _int(cfg, "eval.batch_size", 1)
    if cfg.eval.epsilons is not None:
        epsilons_from(to_container(cfg.eval.epsilons), "eval.epsilons")
    resolve_device(cfg.device)


def resolve_device(name: Any) -> "torch.device":
    """``auto`` picks CUDA, then MPS, then the CPU; an unavailable device is an error."""
    import torch

    if not isinstance(name, str) or name.split(":")[0] not in DEVICES:
        raise ConfigError("device", f"unknown device {name!r}; choose one of {list(DEVICES)} (or cuda:N)")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", f"{name} requested but CUDA is not available on this machine; use device=cpu or auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device", "mps requested but not available on this machine; use device=cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise ConfigError("device", str(e)) from None
