"""Config helpers: where the configs live, building objects from config nodes with errors
that name the offending key, and validation of the run-wide keys."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.errors import HydraException, InstantiationException, MissingConfigException, OverrideParseException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from advrun.errors import (BUDGET, SEED, Check, ConfigError, InvalidValue, Number, Switch, check_fields, keyed,
                           require_non_negative, require_positive, shown)

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
        unlocated = re.search(r"Error locating target '([^']*)'|Expected a callable target, got '<module '([^']*)'",
                              str(e))
        if unlocated:  # a _target_ that does not import (or names a module): say why, under its key
            from advrun.contract import import_problem  # imports torch: not at the top (advrun --help needs none)

            target = unlocated.group(1) if unlocated.group(1) is not None else unlocated.group(2)
            raise ConfigError(_target_key(node, key, target), import_problem(target) or str(e).splitlines()[0]) \
                from None
        found = re.search(r"full_key: (\S+)", str(e))
        # Hydra names list items without a dot ("attack.attacks1"): write them as "attack.attacks.1"
        where = re.sub(r"(?<=[A-Za-z_])(\d+)(?=\.|$)", r".\1", found.group(1)) if found else key
        if isinstance(cause, InvalidValue):
            with keyed(where):
                raise cause
        if isinstance(cause, TypeError):
            raise _keyword_error(node, key, where, cause, supplied=set(kwargs)) from None
        if isinstance(cause, ValueError):
            raise ConfigError(where, str(cause)) from None
        if isinstance(cause, MemoryError) or "can't allocate memory" in str(cause) \
                or type(cause).__name__ == "OutOfMemoryError":
            raise ConfigError(where, "out of memory while building it: choose smaller sizes") from None
        if cause is not None:
            raise ConfigError(where, f"{type(cause).__name__}: {str(cause).strip().splitlines()[0]}") from None
        raise ConfigError(where, str(e).splitlines()[0]) from None


def _target_key(node: Any, key: str, target: str) -> str:
    """The key of the ``_target_`` whose value is ``target`` in ``node`` (found at ``key``), such
    as ``defense.attack._target_``; ``<key>._target_`` when none is found."""
    def path(inner: Any) -> str | None:
        if isinstance(inner, DictConfig):
            if inner.get("_target_") == target:
                return ""
            children = inner.items_ex(resolve=False)
        elif OmegaConf.is_list(inner):
            children = enumerate(inner)
        else:
            return None
        for name, child in children:
            found = path(child)
            if found is not None:
                return f"{name}.{found}" if found else str(name)
        return None

    found = path(node)
    return f"{key}.{found}._target_" if found else f"{key}._target_"


def composition_error(error: HydraException | OmegaConfBaseException) -> ConfigError:
    """Hydra's and OmegaConf's complaints about the command line (an override that does not
    parse, an option that does not exist, a key the config lacks, an interpolation that does not
    resolve) as one :class:`ConfigError` naming the key, for the one-line report of the CLI."""
    def one_line(text: str) -> str:
        lines = [line.strip() for line in str(text).splitlines() if line.strip()]
        return " ".join(line for line in lines if not line.startswith(("See https://", "full_key:", "object_type=")))

    if isinstance(error, MissingConfigException) and error.missing_cfg_file and error.options is not None:
        group, _, name = error.missing_cfg_file.rpartition("/")
        options = ", ".join(sorted(error.options)) or "none"
        return ConfigError(group or name, f"no option {shown(name)}; available options in {group!r}: {options}")
    if isinstance(error, OverrideParseException):
        return _unparsed(error.override, one_line(error.message))
    cause = error if isinstance(error, OmegaConfBaseException) else error.__cause__
    key = getattr(cause, "full_key", None) if isinstance(cause, OmegaConfBaseException) else None
    if key and isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and "not in struct" in str(cause):
        if cause is error:  # the run looked the key up: removed with ~
            return ConfigError(key, f"missing from the config (removed with ~{key}?); advrun needs it")
        parent = cause.parent_node
        keys = [str(k) for k in parent.keys() if not str(k).startswith("_") and k != "hydra"] \
            if isinstance(parent, DictConfig) else []
        where = key.rpartition(".")[0]
        listed = f"; its keys: {', '.join(keys)}" if keys else ""
        why = "misspelt, or left over from another choice of the group?" if where else "misspelt?"
        return ConfigError(key, f"not a key of {where or 'advrun' + chr(39) + 's config'}{listed} ({why})")
    message = one_line(error)
    if cause is not None and cause is not error:
        message = f"{message} ({one_line(cause)})"
    if not key:  # e.g. "Could not delete from config. 'attack.eps' does not exist."
        quoted = re.search(r"'([A-Za-z_][\w.]*)'", message)
        key = quoted.group(1) if quoted else None
    return ConfigError(key or "command line", message)


def _unparsed(override: str, reason: str) -> ConfigError:
    """An override Hydra's grammar rejects; most often a text value (a path, a name) with
    characters Hydra reads only inside quotes: non-ASCII letters, brackets, ``=``, ``:``."""
    key, _, value = override.partition("=")
    key = key.lstrip("+~") or "command line"
    if "LexerNoViableAlt" in reason:
        reason = "characters Hydra reads only in a quoted value" + (" (non-ASCII)" if not value.isascii() else "")
    hint = f"; quote a text value, the shell's quotes around Hydra's: '{key}=\"{value}\"'" if value and \
        value[0] not in "\"'[{" else ""
    return ConfigError(key, f"cannot parse override {shown(override)}: {reason}{hint}")


def _keyword_error(node: DictConfig, key: str, where: str, error: TypeError, supplied: set[str]) -> ConfigError:
    """A constructor's complaint about its keywords, as an error naming the config key and the
    keys the chosen class does accept (``attack.steps: is not a key of FGSM; its keys: eps, ...``)."""
    found = re.search(r"unexpected keyword argument '(\w+)'", str(error))
    if not found:
        return ConfigError(where, str(error))
    inner = where[len(key) + 1:] if where.startswith(f"{key}.") else ""  # "attacks.0" in "attack.attacks.0"
    target = OmegaConf.select(node, f"{inner}._target_" if inner else "_target_", default=None)
    accepted = ""
    try:
        from hydra.utils import get_class

        parameters = inspect.signature(get_class(target)).parameters
        names = [name for name, p in parameters.items()
                 if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and (inner or name not in supplied)]
        accepted = f"; its keys: {', '.join(names)}" if names else "; it takes no keys"
    except Exception:  # the message stays useful without the list
        pass
    owner = target.rsplit(".", 1)[-1] if target else "this config"
    return ConfigError(f"{where}.{found.group(1)}", f"is not a key of {owner}{accepted} (a key left over from "
                                                    f"another choice of this group, or misspelt?)")


#: The run-wide keys and the values they take, checked by :func:`validate_run`.
RUN_FIELDS: dict[str, Check] = {
    "seed": SEED,
    "train.epochs": Number(0, integer=True),
    "eval.n_samples": Number(1, integer=True, optional=True),
    "eval.batch_size": Number(1, integer=True),
    "cache.enabled": Switch(),
    "deterministic": Switch(),
    "report": Switch(),
    "sweep.transfer": Switch(),
}


def epsilons_from(value: Any, key: str) -> list[float]:
    """Validate a budget list: non-empty, each a budget (:data:`advrun.errors.BUDGET`); returned
    sorted without duplicates."""
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(key, f"must be a non-empty list of budgets, got {shown(value)}")
    for eps in value:
        if not BUDGET.holds(eps):
            raise ConfigError(key, f"budgets must be {BUDGET.description()}, got {shown(eps)}")
    return sorted({float(e) for e in value})


GROUPS = ("dataset", "model", "optimizer", "attack", "defense")
_RATE_KEYS = ("lr",)  # finite and > 0
_NON_NEGATIVE_KEYS = ("momentum", "weight_decay", "eps", "alpha", "dampening", "lr_decay", "initial_accumulator_value")
_SWITCH_KEYS = ("nesterov", "amsgrad", "centered", "maximize", "foreach")
_BETA = Number(0, 1, high_open=True)


def check_optimizer(node: DictConfig) -> None:
    """The optimizer's numbers, checked before PyTorch sees them, so that a bad value is reported
    under its own key (``optimizer.lr``) rather than as PyTorch's message about the group."""
    with keyed("optimizer"):
        for key, value in node.items():
            if key in _RATE_KEYS:
                require_positive(key, value)
            elif key in _NON_NEGATIVE_KEYS:
                require_non_negative(key, value)
            elif key in _SWITCH_KEYS:
                Switch().check(key, value)
            elif key == "betas":
                betas = to_container(value)
                if not (isinstance(betas, list) and len(betas) == 2 and all(map(_BETA.holds, betas))):
                    raise InvalidValue(key, f"must be two numbers in [0, 1), got {shown(betas)}")


def _check_keys(cfg: DictConfig) -> None:
    """Keys config.yaml does not define, at the top level and in train, eval and cache, are
    errors: ``+train.epoch=3`` is a misspelt ``train.epochs``, not a setting to ignore. (The
    keys of the five groups are checked by the classes they build.)"""
    base = OmegaConf.load(config_dir() / "config.yaml")
    known = (set(base) - {"defaults", "hydra"}) | set(GROUPS) | {"logger"}  # logger.*: advrun.loggers
    for key in cfg:
        if key not in known:
            raise ConfigError(str(key), f"is not a key of advrun's config; its keys: {', '.join(sorted(known))}")
    for section in ("train", "eval", "cache", "sweep"):
        node = cfg.get(section)
        if not isinstance(node, DictConfig):
            raise ConfigError(section, f"must be a group of keys ({', '.join(base[section])}), got {shown(node)}")
        for key in node:
            if key not in base[section]:
                raise ConfigError(f"{section}.{key}", f"is not a key of {section}; its keys: {', '.join(base[section])}")


def validate_run(cfg: DictConfig) -> None:
    """Check the run-wide keys (seed, device, train.*, eval.*) before any work starts."""
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # every ${...} and ??? at once, up front
    except OmegaConfBaseException as e:
        raise composition_error(e) from None
    _check_keys(cfg)
    with keyed(""):
        check_fields({key: OmegaConf.select(cfg, key) for key in RUN_FIELDS}, RUN_FIELDS)
    exported = OmegaConf.select(cfg, "model._target_") == "advrun.models.Exported"  # model=exported: weights in model.path
    if cfg.train.epochs == 0 and not OmegaConf.select(cfg, "model.checkpoint") and not exported:
        raise ConfigError("train.epochs", "must be >= 1 (0, evaluating saved weights as they are, needs model.checkpoint "
                                          "or model=exported)")
    if cfg.train.batch_size != "full" and not Number(1, integer=True).holds(cfg.train.batch_size):
        raise ConfigError("train.batch_size", f"must be an integer >= 1 or full, got {shown(cfg.train.batch_size)}")
    if cfg.cache.enabled and (not isinstance(cfg.cache.dir, str) or not cfg.cache.dir):
        raise ConfigError("cache.dir", f"must be a folder path, got {shown(cfg.cache.dir)}")
    if cfg.eval.epsilons is not None:
        epsilons_from(to_container(cfg.eval.epsilons), "eval.epsilons")
    resolve_device(cfg.device)


def resolve_device(name: Any) -> "torch.device":
    """``auto`` picks CUDA, then MPS, then the CPU; an unavailable device is an error."""
    import torch

    if not isinstance(name, str) or name.split(":")[0] not in DEVICES:
        raise ConfigError("device", f"unknown device {shown(name)}; choose one of {list(DEVICES)} (or cuda:N)")
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
