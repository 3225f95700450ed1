"""The model cache: a trained model stored under a key of everything that affects its training.

The key hashes the resolved ``dataset``, ``model``, ``optimizer``, ``train`` and ``defense``
nodes, the ``seed``, the device type, the ``deterministic`` flag, and the code version
(PyTorch's version and a hash of advrun's source files, and of the file defining each
``_target_`` of those nodes that is not advrun's: a model or defense of one's own). Files a user
brings count by their content: ``model.checkpoint``, the program of ``model=exported``
(``model.path``) and the arrays of ``dataset=tensors`` (``dataset.path``) by their SHA-256, the
images of ``dataset=folder`` (``dataset.root``) by their names, sizes and modification times.
Attack and evaluation keys are not part of it: an attack-only sweep trains once.

An entry is a folder ``<cache.dir>/<key>/`` holding ``model.pt`` (the ``state_dict``),
``training.csv`` and, written last, ``entry.json``: the config the key was made from, the run
that trained it, and a manifest of the size and SHA-256 of the other two files. An entry is used
only when it is whole (:meth:`Entry.load` checks the manifest): a file that is missing,
truncated or changed makes it unused, the log says why, and the model is trained again. While a
run trains, the entry folder holds its resumable ``checkpoint.pt`` (see :mod:`advrun.training`),
and the run holds an exclusive lock on ``<key>.lock`` (a ``filelock`` lock): a parallel job with
the same key waits for it, then loads the model instead of training it again. Locks are released
by the operating system when a process dies, so a killed run never leaves a stale lock. A
``cache.dir`` that cannot be created or written is a :class:`~advrun.errors.ConfigError` naming it.
"""

from __future__ import annotations

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
from filelock import FileLock, Timeout
from omegaconf import DictConfig

from advrun import io
from advrun.config import to_container
from advrun.errors import ConfigError
from advrun.runfolder import RunFolder, weights_file

log = logging.getLogger(__name__)

#: Config nodes that decide the trained model.
TRAINING_KEYS = ("dataset", "model", "optimizer", "train", "defense", "seed", "deterministic")
#: The files of an entry that its manifest describes, and the manifest (written last).
STORED = (RunFolder.MODEL, RunFolder.TRAINING)  # the same names as in a run folder
MANIFEST = "entry.json"


class EntryNotWhole(RuntimeError):
    """A cache entry whose files do not match its manifest (or that has none); it is not used."""


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


def folder_digest(root: Path) -> str:
    """SHA-256 of the relative names, sizes and modification times of the files under ``root``."""
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def training_spec(cfg: DictConfig, device: torch.device) -> dict[str, Any]:
    """The plain description of a training that the key hashes."""
    spec = {key: to_container(cfg.get(key)) for key in TRAINING_KEYS}
    weights = spec["model"].get("checkpoint") if isinstance(spec["model"], dict) else None
    if weights:
        spec["model"]["checkpoint"] = {"sha256": file_digest(weights_file(weights))}
    program = spec["model"].get("path") if isinstance(spec["model"], dict) else None
    if program:  # model=exported: the program's file, by its content
        spec["model"]["path"] = {"sha256": file_digest(Path(program).expanduser())}
    data = spec["dataset"] if isinstance(spec["dataset"], dict) else {}
    if data.get("name") == "tensors" and data.get("path"):
        data["path"] = {"sha256": file_digest(Path(data["path"]).expanduser())}
    if data.get("name") == "folder" and data.get("root"):
        data["root"] = {"listing": folder_digest(Path(data["root"]).expanduser())}
    spec["device"] = device.type
    spec["code"] = code_version()
    sources = source_versions(spec)
    if sources:
        spec["sources"] = sources
    return spec


def _targets(node: Any) -> Iterator[str]:
    """Every ``_target_`` in a plain (resolved) config node, at any depth."""
    if isinstance(node, dict):
        if isinstance(node.get("_target_"), str):
            yield node["_target_"]
        for value in node.values():
            yield from _targets(value)
    elif isinstance(node, list):
        for value in node:
            yield from _targets(value)


def source_versions(spec: dict[str, Any]) -> dict[str, str]:
    """Per ``_target_`` of the training nodes that neither advrun nor PyTorch defines (a model,
    defense or training attack of one's own, a class of another package), a hash of the file that
    defines it: a change to that file gives a new key. (A change to a file it imports is not seen.)"""
    import importlib
    import inspect

    package = Path(__file__).resolve().parent
    versions: dict[str, str] = {}
    for target in sorted({t for key in TRAINING_KEYS for t in _targets(spec.get(key))}):
        module_name = target.rpartition(".")[0]
        if not module_name or module_name.split(".")[0] in ("advrun", "torch"):  # in code_version() already
            continue
        try:
            source = inspect.getsourcefile(importlib.import_module(module_name))
        except Exception:  # noqa: BLE001 - not a module (a nested name), or no source file: the name alone keys it
            source = None
        if source and Path(source).is_file() and package not in Path(source).resolve().parents:
            versions[target] = file_digest(source)[:16]
    return versions


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
        return self.path / RunFolder.CHECKPOINT

    def complete(self) -> bool:
        """Whether a trained model was stored here (whole or not: :meth:`load` checks)."""
        return any((self.path / name).exists() for name in (*STORED, MANIFEST))

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the entry's exclusive lock (waiting, with a log line, while another run holds it)."""
        lock = FileLock(self.root / f"{self.key}.lock")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                log.info("another run is training the same model (cache entry %s); waiting for it", self.path)
                lock.acquire()
        except OSError as e:  # a parent that is a file, a read-only file system, no permission
            raise ConfigError("cache.dir", f"cannot create or write the cache folder {self.root} "
                                           f"({e.strerror or e}); choose another cache.dir, or "
                                           "set cache.enabled=false") from None
        try:
            yield
        finally:
            lock.release()

    def check_whole(self) -> None:
        """Raise :class:`EntryNotWhole` unless every stored file matches the manifest."""
        try:
            manifest = json.loads((self.path / MANIFEST).read_text())["files"]
        except FileNotFoundError:
            raise EntryNotWhole(f"{MANIFEST} is missing") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise EntryNotWhole(f"{MANIFEST} holds no manifest ({type(e).__name__}: {e})") from None
        for name in STORED:
            file, recorded = self.path / name, manifest.get(name) if isinstance(manifest, dict) else None
            if not isinstance(recorded, dict):
                raise EntryNotWhole(f"the manifest does not describe {name}")
            if not file.is_file():
                raise EntryNotWhole(f"{name} is missing")
            if file.stat().st_size != recorded.get("bytes"):
                raise EntryNotWhole(f"{name} has {file.stat().st_size} bytes, the manifest records {recorded.get('bytes')}")
            if file_digest(file) != recorded.get("sha256"):
                raise EntryNotWhole(f"{name} differs from the file stored (SHA-256)")

    def load(self) -> tuple[dict[str, torch.Tensor], pd.DataFrame]:
        """The cached ``state_dict`` (``weights_only=True``) and training history of a whole entry;
        :class:`EntryNotWhole` for an entry that is not."""
        self.check_whole()
        state = torch.load(self.path / RunFolder.MODEL, map_location="cpu", weights_only=True)
        return state, pd.read_csv(self.path / RunFolder.TRAINING)

    def store(self, state: dict[str, torch.Tensor], history: pd.DataFrame, spec: dict[str, Any], run: Path) -> None:
        """Write the entry; the manifest last, so that a reader never uses a half-written entry."""
        (self.path / MANIFEST).unlink(missing_ok=True)  # an older entry's manifest does not describe these files
        io.save_torch(self.path / RunFolder.MODEL, {k: v.detach().cpu() for k, v in state.items()})
        io.write_csv(self.path / RunFolder.TRAINING, history)
        files = {name: {"bytes": (self.path / name).stat().st_size, "sha256": file_digest(self.path / name)}
                 for name in STORED}
        io.write_json(self.path / MANIFEST, {"key": self.key, "trained_by": str(run), "epochs": len(history),
                                             "files": files, "spec": spec})


def entry_for(cfg: DictConfig, device: torch.device) -> tuple[Entry, dict[str, Any]]:
    """The cache entry of ``cfg``'s training (under ``cache.dir``) and the spec its key hashes."""
    spec = training_spec(cfg, device)
    return Entry(Path(cfg.cache.dir), training_key(spec)), spec
