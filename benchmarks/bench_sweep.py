"""Benchmark a sweep: 3 attacks x 4 budgets on digits (12 jobs, one model), with and without the
model cache, the time spent training reported apart from the time spent attacking.

Writes benchmarks/results_sweep.md. Run with `make bench`.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench_runner import wait_until_idle

HERE = Path(__file__).resolve().parent
SWEEP = ["attack=fgsm,pgd,apgd", "attack.eps=0.05,0.1,0.15,0.2", "eval.epsilons=[0.1]", "eval.audit=false",
         "device=cpu"]


def run_sweep(cache: bool) -> dict:
    """Run the sweep in a fresh folder; wall time and the per-job training and evaluation seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        load = wait_until_idle()
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "advrun", "-m", *SWEEP, f"cache.enabled={str(cache).lower()}",
                        f"cache.dir={tmp}/cache", f"hydra.sweep.dir={tmp}/sweep"],
                       check=True, capture_output=True, cwd=tmp)
        wall = time.perf_counter() - start
        jobs = [json.loads(p.read_text()) for p in Path(tmp, "sweep").glob("*/metrics.json")]
    return {
        "wall": wall, "load": load, "jobs": len(jobs),
        "trained": sum(job["training"]["trained"] for job in jobs),
        "train": sum(job["timings"]["train_s"] for job in jobs),
        "eval": sum(job["timings"]["eval_s"] for job in jobs),
        "setup": sum(job["timings"]["setup_s"] for job in jobs),
    }


def main() -> None:
    cached, uncached = run_sweep(cache=True), run_sweep(cache=False)
    lines = [
        "# Sweep benchmark",
        "",
        f"`advrun -m {' '.join(SWEEP)}`: 12 jobs (3 attacks x 4 headline budgets) of the default digits MLP,",
        "basic launcher (one job after another). Seconds summed over the jobs, from each job's `metrics.json`",
        "timings; wall time includes Python start-up and Hydra.",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, Python {platform.python_version()}.",
        "",
        "| model cache | jobs | models trained | training s | attacking s | setup s | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in (("on (default)", cached), ("off", uncached)):
        lines.append(f"| {name} | {r['jobs']} | {r['trained']} | {r['train']:.1f} | {r['eval']:.1f} | "
                     f"{r['setup']:.1f} | {r['wall']:.1f} |")
    lines += ["", f"With the cache the sweep takes {cached['wall'] / uncached['wall']:.2f}x the wall time of the "
              f"uncached sweep; training time falls from {uncached['train']:.1f} s to {cached['train']:.1f} s. "
              f"1-minute load average before the runs: {cached['load']:.2f} and {uncached['load']:.2f}.", ""]
    (HERE / "results_sweep.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
