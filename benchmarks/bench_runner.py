"""Benchmark the runner: the default experiment's wall time and PGD evaluation throughput.

Writes benchmarks/results_runner.md. Run with `make bench`. Target: the default
experiment (`advrun`, digits / MLP / PGD) in at most 20 s wall on a 2-core machine.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPEATS = 3


def wait_until_idle(limit: float = 0.5, timeout: float = 60.0) -> float:
    """Wait (up to ``timeout`` s) for the 1-minute load average to drop below ``limit``; return it."""
    start = time.time()
    while os.getloadavg()[0] > limit and time.time() - start < timeout:
        time.sleep(2)
    return os.getloadavg()[0]


def time_default_run() -> tuple[list[float], float]:
    times = []
    load = wait_until_idle()
    for _ in range(REPEATS):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "advrun", f"hydra.run.dir={tmp}/run"], check=True,
                           capture_output=True, cwd=tmp)
            times.append(time.perf_counter() - start)
    return times, load


def time_pgd_evaluation() -> tuple[list[float], int, float]:
    """Train the default model once, then time PGD-40 (Linf, eps 0.1) on the whole digits test set."""
    from hydra import compose, initialize_config_dir

    from advrun import experiment
    from advrun.attacks import PGD
    from advrun.config import config_dir, to_container
    from advrun.data import load_dataset
    from advrun.evaluation import robustness_curve

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["device=cpu", "attack=none"])
    with tempfile.TemporaryDirectory() as tmp:
        experiment.run(cfg, Path(tmp) / "run")
        model = experiment.load_run(Path(tmp) / "run").model
    data = load_dataset(to_container(cfg.dataset))
    attack = PGD(eps=0.1, steps=40)
    load = wait_until_idle()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        robustness_curve(model, attack, data.x_test, data.y_test, [0.1], bounds=data.bounds, batch_size=500).curve
        times.append(time.perf_counter() - start)
    return times, len(data.x_test), load


def main() -> None:
    run_times, run_load = time_default_run()
    pgd_times, n, pgd_load = time_pgd_evaluation()
    run_median = statistics.median(run_times)
    pgd_median = statistics.median(pgd_times)
    lines = [
        "# Runner benchmark",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads. Medians of {REPEATS} runs in one session.",
        "",
        "| measurement | median | all runs | load before |",
        "|---|---|---|---|",
        f"| default experiment (`advrun`, wall incl. start-up) | {run_median:.2f} s (target <= 20 s: "
        f"{'met' if run_median <= 20 else 'MISSED'}) | {', '.join(f'{t:.2f}' for t in run_times)} | {run_load:.2f} |",
        f"| PGD-40 Linf evaluation, MLP on {n} digits test images | {pgd_median:.3f} s = {n / pgd_median:,.0f} images/s "
        f"| {', '.join(f'{t:.3f}' for t in pgd_times)} | {pgd_load:.2f} |",
        "",
    ]
    (HERE / "results_runner.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
