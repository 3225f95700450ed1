"""The training loop: minibatch steps on the defense's loss, one log line per epoch.

After each epoch the loop calls the defense's ``end_of_epoch(model, epoch)`` when it has one;
``"stop"`` ends training there (the defense leaves the model it wants kept, e.g. the weights
of an earlier epoch), and that epoch's row describes the model returned."""

from __future__ import annotations

import logging
import math
import time

import pandas as pd
import torch
from torch import nn

from advrun.console import progress_bar

log = logging.getLogger(__name__)


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
) -> pd.DataFrame:
    """Train ``model`` in place; return one row per epoch (mean loss, train and test accuracy)."""
    end_of_epoch = getattr(defense, "end_of_epoch", None)
    rows = []
    n = len(x_train)
    steps = math.ceil(n / batch_size)
    with progress_bar() as bar:
        task = bar.add_task("training", total=epochs * steps)
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            model.train()
            order = torch.randperm(n, generator=generator).to(x_train.device)
            total, count = 0.0, 0
            for i in range(0, n, batch_size):
                index = order[i : i + batch_size]
                loss = defense.loss(model, x_train[index], y_train[index])
                if not torch.isfinite(loss):
                    raise NonFiniteLoss(f"training loss became {loss.item()} in epoch {epoch}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(index)
                count += len(index)
                bar.advance(task)
            stop = end_of_epoch is not None and end_of_epoch(model, epoch) == "stop"
            row = {
                "epoch": epoch,
                "loss": total / count,
                "train_accuracy": accuracy(model, x_train, y_train),
                "test_accuracy": accuracy(model, x_test, y_test),
                "time_s": time.perf_counter() - start,
            }
            rows.append(row)
            bar.update(task, description=f"training (epoch {epoch}/{epochs}, loss {row['loss']:.4f})")
            log.info(
                "epoch %d/%d  loss %.4f  train acc %.2f%%  test acc %.2f%%",
                epoch, epochs, row["loss"], 100 * row["train_accuracy"], 100 * row["test_accuracy"],
            )
            if stop:
                log.info("training stopped after epoch %d of %d at the defense's request", epoch, epochs)
                break
    model.eval()
    return pd.DataFrame(rows)
