"""Benchmark certification: time per image and certified accuracy of IBP, CROWN
(:meth:`advrun.bounds.BoundedNetwork.margins` in float64 on :func:`advrun.bounds.float64_copy`)
and exact verification (:mod:`advrun.exact`, mixed-integer programs solved by HiGHS), with PGD's
robust accuracy as the upper end, on two models trained here with advrun's training loop:

* the digits MLP (``model=mlp``: 64-128-128-10, relu) on the first ``--digits-images`` test images;
* the MNIST CNN (``advrun.models.CNN((1, 28, 28), 10)``: two 3x3 convolutions with relu and 2x2
  max pooling, a dense relu layer of 128) trained for one epoch on ../shared/data MNIST (5,000
  images), skipped with a note when that folder is absent; bounds on ``--mnist-images`` test
  images, exact verification on the first ``--mnist-exact`` of them only.

Every certified accuracy counts over all images of its row (misclassified images count as not
certified); exact verification reports its unknowns (time limit reached) apart. Writes
benchmarks/results_certify.md. Run with `make bench`.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from bench_runner import wait_until_idle

from advrun import exact
from advrun.attacks import PGD
from advrun.bounds import BoundedNetwork, float64_copy
from advrun.data import load_dataset
from advrun.defenses import Standard
from advrun.models import CNN, MLP
from advrun.training import train


def trained(model, data, epochs: int, lr: float = 1e-3):
    """``model`` trained by advrun's loop (Adam, batches of 64, seed 0), in eval mode."""
    torch.manual_seed(0)
    model.fit_normalization(data.x_train)
    train(model, Standard(), torch.optim.Adam(model.parameters(), lr=lr), data.x_train, data.y_train,
          data.x_test[:1000], data.y_test[:1000], epochs=epochs, batch_size=64,
          generator=torch.Generator().manual_seed(0))
    return model.eval()


def bound_rows(model, x, y, epsilons) -> list[dict]:
    """IBP and CROWN per budget: certified accuracy and seconds per image (float64, all images at once)."""
    net = BoundedNetwork(float64_copy(model), x.shape[1:])
    x64 = x.double()
    rows = []
    for method in ("ibp", "crown"):
        for eps in epsilons:
            start = time.perf_counter()
            certified = (net.margins(x64, y, eps, math.inf, method=method).best > 0).all(1)
            rows.append({"method": method.upper(), "eps": eps, "images": len(x),
                         "certified": certified.double().mean().item(),
                         "seconds": (time.perf_counter() - start) / len(x)})
    return rows


def exact_rows(model, x, y, epsilons, time_limit: float) -> list[dict]:
    """Exact verification of all budgets together: per budget the share verified and unknown;
    the seconds per image cover all budgets (CROWN's screening included)."""
    start = time.perf_counter()
    result = exact.verification(model, x, y, epsilons, "inf", time_limit=time_limit)
    seconds = (time.perf_counter() - start) / len(x)
    return [{"method": f"exact MILP ({time_limit:g} s per image)", "eps": eps, "images": len(x),
             "certified": (result.verdicts[:, k] == exact.ROBUST).double().mean().item(),
             "unknown": int((result.verdicts[:, k] == exact.UNKNOWN).sum()), "seconds": seconds,
             "slowest": result.seconds.max().item(), "solves": int(result.solves.sum())}
            for k, eps in enumerate(epsilons)]


def pgd_rows(model, x, y, epsilons) -> list[dict]:
    rows = []
    for eps in epsilons:
        start = time.perf_counter()
        fooled = PGD(eps=eps, steps=100, restarts=5)(model, x, y).success
        rows.append({"method": "PGD-100 x 5 restarts (robust accuracy, an upper end)", "eps": eps, "images": len(x),
                     "certified": (~fooled).double().mean().item(), "seconds": (time.perf_counter() - start) / len(x)})
    return rows


def table(title: str, note: str, rows: list[dict]) -> list[str]:
    lines = [f"## {title}", "", note, "",
             "| method | eps (Linf) | images | certified accuracy | unknown | seconds per image | slowest image |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        unknown = row.get("unknown")
        slowest = f"{row['slowest']:.2f} s" if "slowest" in row else ""
        lines.append(f"| {row['method']} | {row['eps']:g} | {row['images']} | {100 * row['certified']:.1f}% | "
                     f"{'' if unknown is None else unknown} | {row['seconds']:.4f} | {slowest} |")
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits-images", type=int, default=50)
    parser.add_argument("--digits-time-limit", type=float, default=5.0)
    parser.add_argument("--mnist-images", type=int, default=50)
    parser.add_argument("--mnist-exact", type=int, default=3)
    parser.add_argument("--mnist-time-limit", type=float, default=60.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = wait_until_idle()
    started = time.perf_counter()
    sections = []

    digits = load_dataset({"name": "digits", "test_fraction": 0.25, "split_seed": 0})
    model = trained(MLP((1, 8, 8), 10), digits, epochs=10)
    x, y = digits.x_test[:args.digits_images], digits.y_test[:args.digits_images]
    clean = (model(x).argmax(1) == y).double().mean().item()
    budgets = [0.02, 0.05, 0.08]
    rows = bound_rows(model, x, y, budgets) + exact_rows(model, x, y, budgets, args.digits_time_limit)
    rows += pgd_rows(model, x, y, budgets)
    sections += table("Digits MLP (64-128-128-10, relu)",
                      f"Trained 10 epochs (Adam 1e-3) on the 1,347 digits training images; clean accuracy "
                      f"{100 * clean:.1f}% on the {len(x)} test images.", sorted(rows, key=lambda r: r["eps"]))

    if (SHARED_DATA / "MNIST" / "raw" / "t10k-images-idx3-ubyte").is_file():
        mnist = load_dataset({"name": "mnist", "root": str(SHARED_DATA), "download": False, "split_seed": 0})
        model = trained(CNN((1, 28, 28), 10), mnist, epochs=1)
        x, y = mnist.x_test[:args.mnist_images], mnist.y_test[:args.mnist_images]
        clean = (model(x).argmax(1) == y).double().mean().item()
        budgets = [0.01, 0.02, 0.05]
        rows = bound_rows(model, x, y, budgets)
        rows += exact_rows(model, x[:args.mnist_exact], y[:args.mnist_exact], budgets, args.mnist_time_limit)
        rows += pgd_rows(model, x, y, budgets)
        sections += table("MNIST CNN (conv 16, pool, conv 32, pool, dense 128; relu)",
                          f"Trained 1 epoch (Adam 1e-3) on the 5,000 MNIST training images of ../shared/data; "
                          f"clean accuracy {100 * clean:.1f}% on the first {len(x)} test images. Exact "
                          f"verification on the first {args.mnist_exact} of them only (its row counts over "
                          f"those).", sorted(rows, key=lambda r: r["eps"]))
    else:
        sections += ["## MNIST CNN", "", f"Skipped: no MNIST in {SHARED_DATA}.", ""]

    load_after = os.getloadavg()[0]
    lines = [
        "# Certification benchmark",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"1 thread; HiGHS through scipy.optimize.milp. 1-minute load average {load:.2f} before and "
        f"{load_after:.2f} after"
        + (" (the machine was shared with other jobs: times are inflated, by up to the load over the cores)."
           if max(load, load_after) > 1.0 else "."),
        f"Whole benchmark: {time.perf_counter() - started:.0f} s.",
        "",
        ("Certified accuracy counts over all images of a row; IBP and CROWN bound all images at once (seconds "
         "per image = total / images); exact verification decides all budgets of an image together (seconds per "
         "image cover all budgets), screening with CROWN first; unknown = the time limit ran out. PGD's robust "
         "accuracy is the upper end that every certificate stays below."),
        "",
        *sections,
    ]
    (HERE / "results_certify.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
