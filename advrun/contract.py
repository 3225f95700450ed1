"""What advrun asks of the objects a config's ``_target_`` names, its own or the user's.

* **Any callable**: a ``_target_`` is imported as Hydra imports it; :func:`import_problem` says
  in one line why one does not import (no such module, the module fails to import, no such
  name in it). advrun is started with the current folder on ``sys.path`` (:mod:`advrun.cli`),
  so a module beside the command imports as it would with ``python -m advrun``.
* **Keywords the runner fills in** (a model's ``in_shape`` and ``num_classes``, a defense's
  ``bounds`` and ``criterion``) are passed only to a callable that takes them
  (:func:`accepted`): a plain ``torch.nn.Module`` of one's own needs no advrun-specific
  arguments.
* **A model** is any ``torch.nn.Module`` that maps a batch of inputs in the data bounds to a
  batch of logits, one per class: :func:`check_classifier` runs it once on a few training
  inputs before any training and names what breaks the contract (it raises, returns another
  shape or another number of classes, non-finite values, or probabilities instead of logits,
  :func:`looks_like_probabilities`, the test the evaluation audit's ``logits`` check shares).
"""

from __future__ import annotations

import importlib
import inspect
import types
from typing import Any, Callable

import torch
from torch import nn

from advrun.attacks.base import eval_mode
from advrun.errors import ConfigError

#: Row sums within this distance of 1 (and every output in [0, 1]) look like probabilities.
PROBABILITY_TOLERANCE = 1e-3
#: Training inputs the model is run on before training (:func:`check_classifier`).
PROBE_INPUTS = 4


def looks_like_probabilities(out: torch.Tensor) -> bool:
    """Whether the rows of ``out`` (``[n, classes]``, finite) look like probability vectors: every
    value in [0, 1] and every row summing to 1, within :data:`PROBABILITY_TOLERANCE`."""
    return bool(out.min() >= -PROBABILITY_TOLERANCE and out.max() <= 1 + PROBABILITY_TOLERANCE
                and ((out.sum(1) - 1).abs() <= PROBABILITY_TOLERANCE).all())


def import_problem(target: Any) -> str:
    """Why the dotted path ``target`` does not import as a class or function, in one line (empty
    if it does)."""
    if not isinstance(target, str) or not target.strip():
        return f"must be a dotted path such as my_nets.MyNet, got {target!r}"
    parts = target.split(".")
    obj: Any = None
    for end, part in enumerate(parts, start=1):
        name = ".".join(parts[:end])
        if obj is not None and hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        if obj is not None and not isinstance(obj, types.ModuleType):
            return f"cannot import {target}: {'.'.join(parts[:end - 1])} has no {part!r}"
        try:
            obj = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # the module exists but imports one that does not
                return f"cannot import {target}: importing {name} failed (ModuleNotFoundError: {e})"
            if end == 1:
                return (f"cannot import {target}: no module named {name!r}; a module of your own must lie in the "
                        f"folder advrun is started from (or be installed)")
            return f"cannot import {target}: {'.'.join(parts[:end - 1])} has no {part!r}"
        except Exception as e:  # noqa: BLE001 - the module itself is broken: say how
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            return f"cannot import {target}: importing {name} failed ({type(e).__name__}: {first})"
    if not callable(obj):
        return f"{target} is a {type(obj).__name__}, not a class or function"
    return ""


def accepted(target: str | Callable[..., Any] | None, **arguments: Any) -> dict[str, Any]:
    """The ``arguments`` that ``target`` (a class or function, or its dotted path) takes by name:
    all of them for a callable with ``**kwargs`` (or a path that does not import: building it
    reports why), those it names otherwise."""
    if isinstance(target, str) or target is None:
        if import_problem(target):
            return arguments
        from hydra.utils import get_object

        target = get_object(target)
    if inspect.isclass(target) and target.__init__ is nn.Module.__init__:  # takes **kwargs, refuses any
        return {}
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin): pass them all
        return arguments
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return arguments
    names = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {name: value for name, value in arguments.items() if name in names}


def check_classifier(model: nn.Module, x: torch.Tensor, num_classes: int, key: str = "model",
                     trained: bool = True) -> None:
    """Run ``model`` (in eval mode, no gradients) on the first :data:`PROBE_INPUTS` inputs of ``x``
    (training inputs in the data bounds) and raise :class:`ConfigError` naming ``key`` unless it
    returns finite logits of shape ``[n, num_classes]`` that are not probabilities; a model to be
    ``trained`` needs a trainable parameter."""
    name = type(model).__name__
    if not isinstance(model, nn.Module):
        raise ConfigError(key, f"must be a torch.nn.Module mapping inputs to logits, got a {name}")
    x = x[:PROBE_INPUTS]
    shape = tuple(x.shape[1:])
    with eval_mode(model), torch.no_grad():
        try:
            out = model(x)
        except Exception as e:  # noqa: BLE001 - any failure of the user's forward pass is the model's
            why = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ConfigError(key, f"{name} fails on a batch of {len(x)} inputs of shape {shape} (the data set's): "
                                   f"{type(e).__name__}: {why}") from None
    if not isinstance(out, torch.Tensor):
        raise ConfigError(key, f"{name} returns a {type(out).__name__}; a model returns one tensor of logits, "
                               f"shape (batch, classes)")
    wanted = (len(x), num_classes)
    if out.dim() == 2 and out.shape[0] == len(x) and out.shape[1] != num_classes:
        raise ConfigError(key, f"{name} returns {out.shape[1]} logits per input, the data set has {num_classes} "
                               f"classes: give the model num_classes outputs")
    if tuple(out.shape) != wanted:
        raise ConfigError(key, f"{name} maps a batch of shape {tuple(x.shape)} to {tuple(out.shape)}; a model returns "
                               f"logits of shape (batch, classes) = {wanted}")
    if not out.is_floating_point() or not torch.isfinite(out).all():
        raise ConfigError(key, f"{name} returns non-finite or non-float outputs on training inputs; a model "
                               f"returns finite logits")
    if looks_like_probabilities(out):
        raise ConfigError(key, f"{name} returns probabilities (each row in [0, 1], summing to 1), not logits: drop "
                               f"the final softmax (cross-entropy and the attacks take logits)")
    if trained and not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(key, f"{name} has no trainable parameters, and advrun trains the model it attacks "
                               f"(train.epochs)")


__all__ = ["PROBABILITY_TOLERANCE", "accepted", "check_classifier", "import_problem", "looks_like_probabilities"]
