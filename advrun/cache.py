"""The model cache: a trained model stored under a key of everything that affects its training.

The key hashes the resolved ``dataset``, ``model`` (a ``model.checkpoint`` by the content of the
file), ``optimizer``, ``train`` and ``defense`` nodes, the ``seed``, the device type, the
``deterministic`` flag, and the code version (PyTorch's version and a hash of advrun's source
files). Attack and evaluation keys are not part of it: an attack-only sweep trains once.

An entry is a folder ``<cache.dir>/<key>/`` holding ``model.pt`` (the ``state_dict``, written
last: its presence marks a complete entry), ``training.csv`` and ``entry.json`` (the config the
key was made from, and the run that trained it). While a run trains, the entry folder holds its
resumable ``checkpoint.pt`` (see :mod:`advrun.training`), and the run holds an exclusive lock on
``<key>.lock``: a parallel job with the same key waits for it, then loads the model instead of
training it again. Locks are ``flock`` locks, released by the operating system when a process
dies, so a killed run never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import torch
from omegaconf import DictConfig

from advrun import io
from advrun.config import to_container
from advrun.runfolder import weights_file

log = logging.getLogger(__name__)

#: Config nodes that decide the trained model.
TRAINING_KEYS = ("dataset", "model", "optimizer", "train", "defense", "seed", "deterministic")


@functools.lru_cache(maxsize=None)
def code_version() -> str:
    """A hash of advrun's source files and PyTorch's version: any code change gives new keys."""
    digest = hashlib.sha256(torch.__version__.encode())
    package = Path(__file__).resolve().parent
    for source in sorted(package.rglob("*.py")):
        digest.update(str(source.relative_to(package)).encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def training_spec(cfg: DictConfig, device: torch.device) -> dict[str, Any]:
    """The plain description of a training that the key hashes."""
    spec = {key: to_container(cfg.get(key)) for key in TRAINING_KEYS}
    weights = spec["model"].get("checkpoint") if isinstance(spec["model"], dict) else None
    if weights:
        spec["model"]["checkpoint"] = {"sha256": file_digest(weights_file(weights))}
    spec["device"] = device.type
    spec["code"] = code_version()
    return spec


def training_key(spec: dict[str, Any]) -> str:
    """A short, stable hash of :func:`training_spec`."""
    canonical = json.dumps(spec, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


@dataclass
class Entry:
    """One cache entry: ``root / key``."""

    root: Path
    key: str

    @property
    def path(self) -> Path:
        return self.root / self.key

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    def complete(self) -> bool:
        return (self.path / "model.pt").is_file()

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the entry's exclusive lock (waiting, with a log line, while another run holds it)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f"{self.key}.lock", "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("another run is training the same model (cache entry %s); waiting for it", self.path)
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def load(self) -> tuple[dict[str, torch.Tensor], pd.DataFrame]:
        """The cached ``state_dict`` (``weights_only=True``) and training history."""
        state = torch.load(self.path / "model.pt", map_location="cpu", weights_only=True)
        return state, pd.read_csv(self.path / "training.csv")

    def store(self, state: dict[str, torch.Tensor], history: pd.DataFrame, spec: dict[str, Any], run: Path) -> None:
        """Write the entry; ``model.pt`` last, so a reader never sees a half-written entry."""
        io.write_csv(self.path / "training.csv", history)
        io.write_json(self.path / "entry.json", {"key": self.key, "trained_by": str(run), "spec": spec})
        io.save_torch(self.path / "model.pt", {k: v.detach().cpu() for k, v in state.items()})


def entry_for(cfg: DictConfig, device: torch.device) -> tuple[Entry, dict[str, Any]]:
    """The cache entry of ``cfg``'s training (under ``cache.dir``) and the spec its key hashes."""
    spec = training_spec(cfg, device)
    return Entry(Path(cfg.cache.dir), training_key(spec)), spec
