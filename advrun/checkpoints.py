"""Saved weights a run starts from (``model.checkpoint``): read safely, checked, loaded.

A checkpoint loads with ``torch.load(weights_only=True)`` onto the CPU: no arbitrary
unpickling, ever, and no message that suggests it. Every problem is a :class:`ConfigError`
naming the key: a path that is not a regular file, a file that is not a ``state_dict`` advrun
can read safely, weights that do not fit the model, non-finite weights, and weights whose
logits on the first test inputs are not finite.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advrun.runfolder import weights_file
from advrun.errors import ConfigError

NOT_WEIGHTS = "is not a weights file advrun can read safely (a state_dict saved with torch.save)"
#: Inputs of the first evaluation batch on which loaded weights must give finite logits.
PROBE_SAMPLES = 100


def _file(path: Any, key: str) -> Path:
    """The weights file ``path`` names, which must be a regular file."""
    try:
        file = weights_file(path)
        exists, regular = file.exists(), file.is_file()
    except OSError as e:  # a name too long, a folder that cannot be searched
        raise ConfigError(key, f"{path} cannot be opened ({e.strerror or type(e).__name__})") from None
    if not exists:
        raise ConfigError(key, f"{file} does not exist")
    if not regular:
        raise ConfigError(key, f"{file} is not a regular file (a device, a pipe?); name a weights file "
                               f"or a run folder holding model.pt")
    return file


def read_state(path: Any, key: str = "model.checkpoint") -> dict[str, torch.Tensor]:
    """The ``state_dict`` at ``path`` (a file, or a run folder holding ``model.pt``; an advrun
    training checkpoint gives its model's weights), read with ``weights_only=True``."""
    return _read(_file(path, key), key)


def _read(file: Path, key: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # PyTorch's message advises loading with weights_only=False: never pass that on
        refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if refused:
            raise ConfigError(key, f"{file} holds a pickled {refused.group(1)}, which needs arbitrary unpickling; "
                                   f"advrun refuses it (weights_only=True). Save the model's state_dict "
                                   f"instead") from None
        raise ConfigError(key, f"{file} {NOT_WEIGHTS}") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file: a zip that is not torch's, a short read
        raise ConfigError(key, f"{file} {NOT_WEIGHTS}, or it is damaged ({type(e).__name__} reading it)") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict) and "format" in state:
        state = state["model"]  # an advrun training checkpoint
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(key, f"{file} does not hold a state_dict (a dict of tensors)")
    return state


def _listed(items: list[str]) -> str:
    return f"{', '.join(items[:6])}{', ...' if len(items) > 6 else ''}"


def check_fits(model: nn.Module, state: dict[str, torch.Tensor], file: Any, key: str) -> None:
    """Raise naming the keys and shapes where ``state`` differs from ``model``'s, or the
    tensors that hold NaN or infinite values."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [f"{label}: {_listed(items)}" for label, items in (
            ("missing", missing), ("unexpected", unexpected), ("shape (file vs model)", shapes)) if items]
        raise ConfigError(key, f"{file} does not fit {type(model).__name__}: " + "; ".join(parts))
    broken = [name for name, tensor in state.items()
              if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if broken:
        raise ConfigError(key, f"{file} holds non-finite weights (NaN or infinity) in {_listed(broken)}")


def check_logits(model: nn.Module, x: torch.Tensor, file: Any, key: str) -> None:
    """Raise unless ``model`` (in eval mode) gives finite logits on ``x``."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            finite = torch.isfinite(model(x)).all(dim=1)
    finally:
        model.train(training)
    if not finite.all():
        raise ConfigError(key, f"the weights of {file} give non-finite logits (NaN or infinity) on "
                               f"{int((~finite).sum())} of the first {len(x)} test inputs")


def load_weights(model: nn.Module, path: Any, key: str = "model.checkpoint", probe: torch.Tensor | None = None) -> None:
    """Load the ``state_dict`` at ``path`` into ``model`` (on the CPU; the model moves to the run's
    device afterwards), after the checks of the module docstring; ``probe``: test inputs on
    which the loaded model's logits must be finite."""
    file = _file(path, key)
    state = _read(file, key)
    check_fits(model, state, file, key)
    model.load_state_dict(state)
    if probe is not None:
        check_logits(model, probe[:PROBE_SAMPLES].cpu(), file, key)
