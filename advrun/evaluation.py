"""Clean and robust accuracy, attack success rates and perturbation norms over a budget grid.

Three numbers, three denominators:

* clean accuracy: correctly classified clean inputs / all N evaluated samples;
* robust accuracy: samples classified correctly both clean and under attack / all N;
* success rate: initially correct samples the attack turns into errors / initially correct.

So ``robust_accuracy = clean_accuracy * (1 - success_rate)`` exactly.
"""

from __future__ import annotations

import math
import time
from typing import Sequence

import pandas as pd
import torch
from torch import nn

from advrun.attacks.base import Attack, Bounds
from advrun.attacks.norms import norm_name
from advrun.console import progress_bar
from advrun.training import predict

CURVE_COLUMNS = [
    "attack", "norm", "eps", "n_samples", "n_correct", "n_success",
    "clean_accuracy", "robust_accuracy", "success_rate", "mean_norm", "median_norm", "time_s",
]


def robustness_curve(
    model: nn.Module,
    attack: Attack,
    x: torch.Tensor,
    y: torch.Tensor,
    epsilons: Sequence[float],
    *,
    bounds: Bounds,
    batch_size: int,
) -> pd.DataFrame:
    """Attack ``(x, y)`` once per budget in ``epsilons``; one row per budget (see ``CURVE_COLUMNS``).

    ``mean_norm`` and ``median_norm`` summarise the perturbations of the successful
    adversarial examples (NaN when there are none).
    """
    clean_correct = predict(model, x, batch_size).eq(y)
    n = len(x)
    n_correct = int(clean_correct.sum())
    rows = []
    batches = math.ceil(n / batch_size)
    with progress_bar() as bar:
        task = bar.add_task(f"attack {attack.label}", total=len(epsilons) * batches)
        for eps in epsilons:
            start = time.perf_counter()
            budgeted = attack.with_eps(float(eps))
            success, norms = [], []
            for i in range(0, n, batch_size):
                result = budgeted(model, x[i : i + batch_size], y[i : i + batch_size], bounds=bounds)
                success.append(result.success)
                norms.append(result.norms)
                bar.advance(task)
            fooled = torch.cat(success) & clean_correct
            fooled_norms = torch.cat(norms)[fooled].double()
            n_success = int(fooled.sum())
            rows.append({
                "attack": attack.name,
                "norm": norm_name(attack.norm),
                "eps": float(eps),
                "n_samples": n,
                "n_correct": n_correct,
                "n_success": n_success,
                "clean_accuracy": n_correct / n,
                "robust_accuracy": (n_correct - n_success) / n,
                "success_rate": n_success / n_correct if n_correct else math.nan,
                "mean_norm": fooled_norms.mean().item() if n_success else math.nan,
                "median_norm": fooled_norms.quantile(0.5).item() if n_success else math.nan,
                "time_s": time.perf_counter() - start,
            })
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)
