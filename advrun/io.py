"""Atomic file writes: a result file appears under its final name complete, or not at all."""

from __future__ import annotations

import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from advrun.errors import OutputError


def _write_failure(error: BaseException) -> str | None:
    """Why a write failed, if ``error`` (or an exception it arose from) says it did: an OSError
    (disk full, permission, file size limit), or the RuntimeError of torch.save's writer."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError):
            return seen.strerror or str(seen)
        seen = seen.__cause__ or seen.__context__
    if isinstance(error, RuntimeError) and "write failed" in str(error):
        return str(error).strip().splitlines()[0]
    return None


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the same folder; rename it to ``path`` if the block succeeds.

    A write that fails (a full disk, a folder that is not writable) leaves no temporary file and
    nothing under ``path``, and is raised as :class:`~advrun.errors.OutputError` naming ``path``.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        name = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
        name.touch(mode=0o666, exist_ok=False)  # a new file (O_EXCL), its mode from the umask as open() makes it
        tmp = name
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        reason = _write_failure(e)
        if reason is not None:
            raise OutputError(str(path), f"cannot be written ({reason}); free some space or choose "
                                         f"another folder") from e
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, allow_nan=True) + "\n")


def write_csv(path: str | os.PathLike, frame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)  # through a Python file: a failed write raises OSError (with a path: a C++ iostream error)


def save_figure(path: str | os.PathLike, figure) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=Path(path).suffix.lstrip("."), dpi=150, bbox_inches="tight")


def save_image(path: str | os.PathLike, image) -> None:
    """Save a CxHxW (or HxW) tensor with values in [0, 1] as a PNG image."""
    import matplotlib.image

    array = image.detach().cpu().float().clamp(0, 1).numpy()
    if array.ndim == 3:
        array = array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)
    with atomic_path(path) as tmp:
        matplotlib.image.imsave(tmp, array, cmap="gray" if array.ndim == 2 else None, vmin=0, vmax=1, format="png")
