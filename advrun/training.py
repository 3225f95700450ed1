"""The training loop: minibatch steps on the defense's loss, one log line per epoch.

After each epoch the loop calls the defense's ``end_of_epoch(model, epoch)`` when it has one;
``"stop"`` ends training there (the defense leaves the model it wants kept, e.g. the weights
of an earlier epoch), and that epoch's row describes the model returned.

With a ``checkpoint`` path the loop saves, atomically after every epoch, everything it needs to
go on: model, optimizer, schedule, the defense's state, the random states (Python, NumPy, PyTorch
and the batch-order generator) and the rows so far. Started again with the same path it continues
after the last saved epoch, and ends with the same model as a run that was never interrupted.
Checkpoints load with ``weights_only=True``; a corrupt or truncated one raises
:class:`CorruptCheckpoint` instead of being loaded."""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from advrun import io
from advrun.errors import InvalidValue
from advrun.console import progress_bar
from advrun.structure import has_batch_norm

log = logging.getLogger(__name__)

#: The columns of the training history (``training.csv``), one row per epoch.
HISTORY_COLUMNS = ["epoch", "loss", "lr", "train_accuracy", "test_accuracy", "time_s"]

#: Bumped when the layout of a checkpoint changes; older checkpoints are then refused.
CHECKPOINT_FORMAT = 1


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Clean accuracy of ``model`` on ``(x, y)``, in eval mode (the mode is restored)."""
    return int(predict(model, x, batch_size).eq(y).sum()) / len(x) if len(x) else math.nan


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The model's labels for ``x``, computed in eval mode in batches."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(x[i : i + batch_size]).argmax(dim=1) for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


class CorruptCheckpoint(RuntimeError):
    """A training checkpoint that cannot be read back (truncated, corrupt or of another format)."""


def random_states(generator: torch.Generator) -> dict:
    """The states of every random generator training draws from (plain types and tensors only)."""
    numpy_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "batch_order": generator.get_state(),
    }


def restore_random_states(states: dict, generator: torch.Generator) -> None:
    """Inverse of :func:`random_states`."""
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    generator.set_state(states["batch_order"])


CHECKPOINT_KEYS = ("format", "epoch", "stopped", "history", "model", "optimizer", "scheduler", "defense", "random")


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint written by :func:`train`; :class:`CorruptCheckpoint` if it cannot be trusted."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, refused type: all mean "do not use"
        raise CorruptCheckpoint(f"{path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(state, dict) or any(key not in state for key in CHECKPOINT_KEYS):
        raise CorruptCheckpoint(f"{path} is not an advrun training checkpoint")
    if state["format"] != CHECKPOINT_FORMAT:
        raise CorruptCheckpoint(f"{path} has checkpoint format {state['format']}, this advrun writes {CHECKPOINT_FORMAT}")
    return state


def batch_starts(n: int, batch_size: int, model: nn.Module) -> list[int]:
    """Where the training batches of an epoch start. With batch norm a last batch of one sample
    (which batch norm cannot normalise in train mode) joins the batch before it; batches of one
    sample only (``batch_size`` 1) raise :class:`InvalidValue`."""
    starts = list(range(0, n, batch_size))
    norm = has_batch_norm(model)
    if norm and min(batch_size, n) < 2:
        raise InvalidValue("batch_size", f"batch norm needs at least two samples per training batch, got "
                                         f"{min(batch_size, n)} (batch_size {batch_size}, {n} training samples)")
    if norm and len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return starts


def train(
    model: nn.Module,
    defense,
    optimizer: torch.optim.Optimizer,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    checkpoint: Path | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> pd.DataFrame:
    """Train ``model`` in place; return one row per epoch (mean loss, learning rate, train and
    test accuracy). ``scheduler`` is stepped after every optimizer step; ``checkpoint`` (a file
    path) makes training resumable, see the module docstring; ``on_epoch`` gets each row as it
    is produced (a logger, :mod:`advrun.loggers`)."""
    state = _TrainingState(model, defense, optimizer, scheduler, generator)
    if checkpoint is not None and Path(checkpoint).exists():
        state.resume(checkpoint, epochs)
    starts = batch_starts(len(x_train), batch_size, model)
    with progress_bar() as bar:
        task = bar.add_task("training", total=epochs * len(starts), completed=state.epoch * len(starts))
        while state.epoch < epochs and not state.stopped:
            start = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            loss = _train_epoch(state, x_train, y_train, starts, advance=lambda: bar.advance(task))
            state.end_epoch()
            state.rows.append({
                "epoch": state.epoch, "loss": loss, "lr": lr, "train_accuracy": accuracy(model, x_train, y_train),
                "test_accuracy": accuracy(model, x_test, y_test), "time_s": time.perf_counter() - start,
            })
            if checkpoint is not None:
                io.save_torch(checkpoint, state.checkpoint())
            row = state.rows[-1]
            if on_epoch is not None:
                on_epoch(row)
            bar.update(task, description=f"training (epoch {state.epoch}/{epochs}, loss {row['loss']:.4f})")
            log.info("epoch %d/%d  loss %.4f  train acc %.2f%%  test acc %.2f%%", state.epoch, epochs, row["loss"],
                     100 * row["train_accuracy"], 100 * row["test_accuracy"])
            if state.stopped:
                log.info("training stopped after epoch %d of %d at the defense's request", state.epoch, epochs)
    model.eval()
    return pd.DataFrame(state.rows, columns=HISTORY_COLUMNS)


class _TrainingState:
    """What a checkpoint saves and a resumed run restores: the model, the optimizer, the schedule,
    the defense's own state, the random streams, the epochs done and their history."""

    def __init__(self, model, defense, optimizer, scheduler, generator):
        self.model, self.defense, self.optimizer, self.scheduler = model, defense, optimizer, scheduler
        self.generator = generator
        self.rows: list[dict] = []
        self.epoch, self.stopped = 0, False

    def resume(self, path: Path, epochs: int) -> None:
        state = load_checkpoint(Path(path))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if hasattr(self.defense, "load_state_dict"):
            self.defense.load_state_dict(state["defense"])
        restore_random_states(state["random"], self.generator)
        self.rows, self.epoch, self.stopped = list(state["history"]), state["epoch"], state["stopped"]
        log.info("resuming training after epoch %d of %d from %s", state["epoch"], epochs, path)

    def end_epoch(self) -> None:
        """Count the epoch just trained; the defense may ask to stop (``end_of_epoch``)."""
        self.epoch += 1
        end_of_epoch = getattr(self.defense, "end_of_epoch", None)
        self.stopped = end_of_epoch is not None and end_of_epoch(self.model, self.epoch) == "stop"

    def checkpoint(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT, "epoch": self.epoch, "stopped": self.stopped, "history": self.rows,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "defense": self.defense.state_dict() if hasattr(self.defense, "state_dict") else {},
            "random": random_states(self.generator),
        }


def _train_epoch(state: _TrainingState, x_train: torch.Tensor, y_train: torch.Tensor, starts: list[int],
                 advance) -> float:
    """One pass over the training set in a random order; the mean training loss."""
    model, optimizer, scheduler = state.model, state.optimizer, state.scheduler
    n = len(x_train)
    model.train()
    order = torch.randperm(n, generator=state.generator).to(x_train.device)
    total, count = 0.0, 0
    for j, i in enumerate(starts):
        index = order[i : starts[j + 1] if j + 1 < len(starts) else n]
        loss = state.defense.loss(model, x_train[index], y_train[index])
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"training loss became {loss.item()} in epoch {state.epoch + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += loss.item() * len(index)
        count += len(index)
        advance()
    return total / count
