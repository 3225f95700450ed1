"""The linear-region attack (attack=region, Croce & Hein 2018) against DeepFool, C&W and FMN:
minimal perturbations of ReLU MLPs trained on digits, on the same test images. Writes
benchmarks/results_region.md. Not part of `make test` or `make bench` (minutes on 2 cores):
run `python benchmarks/bench_region.py` (`--images`, `--linf-images` to shorten it).

Models: advrun's MLP (relu, normalisation layer) trained on the digits training set with Adam
(lr 0.003, batches of 64, 15 epochs): hidden [128, 128] with seed 0, and hidden [64, 64, 64]
with seed 1; advrun's CNN (3x3 convolutions of 16 and 32 channels, each with relu and 2x2 max
pooling, a dense layer of 128, relu) trained the same way with seed 0 (L2 only). Per norm, the attacks run on the first N test images; the table gives each
attack's success rate (fooled / correctly classified), the median norm of its successes, and,
on the samples that every attack of the table fools, the median norm, the quantiles (10%, 50%,
90%) of the per-sample ratio of region's norm to the attack's and the share of samples where
region's is smaller.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from advrun import attacks as A  # noqa: E402
from advrun.data import load_dataset  # noqa: E402
from advrun.models import CNN, MLP  # noqa: E402

MODELS = {"MLP [128, 128], seed 0": ([128, 128], 0), "MLP [64, 64, 64], seed 1": ([64, 64, 64], 1),
          "CNN (channels [16, 32], dense 128), seed 0": (None, 0)}


def train(data, hidden: list[int] | None, seed: int) -> MLP | CNN:
    torch.manual_seed(seed)
    if hidden is None:
        model = CNN(in_shape=(1, 8, 8), num_classes=10)
    else:
        model = MLP(in_shape=(1, 8, 8), num_classes=10, hidden=hidden, activation="relu")
    model.fit_normalization(data.x_train)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.003)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(15):
        for index in torch.randperm(len(data.x_train), generator=generator).split(64):
            loss = torch.nn.functional.cross_entropy(model(data.x_train[index]), data.y_train[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def attacks(norm: str) -> dict[str, A.Attack]:
    if norm == "2":
        return {
            "region (defaults: 6 rounds x 5 regions)": A.RegionAttack(norm=2),
            "DeepFool (50 steps, overshoot 0.02, refined)": A.DeepFool(norm=2),
            "C&W (9 x 1000 Adam steps)": A.CW(norm=2),
            "FMN (1000 steps)": A.FMN(norm=2, steps=1000),
        }
    return {
        "region (defaults: 6 rounds x 5 regions)": A.RegionAttack(norm="inf"),
        "DeepFool (50 steps, overshoot 0.02, refined)": A.DeepFool(norm="inf"),
        "FMN (1000 steps)": A.FMN(norm="inf", steps=1000),
    }


def measure(model, x, y, norm: str) -> list[str]:
    with torch.no_grad():
        correct = model(x).argmax(dim=1) == y
    results, seconds = {}, {}
    for label, attack in attacks(norm).items():
        torch.manual_seed(0)
        start = time.perf_counter()
        results[label] = attack(model, x, y)
        seconds[label] = time.perf_counter() - start
        print(f"  L{norm} {label}: {seconds[label]:.1f} s", flush=True)
    common = correct.clone()
    for result in results.values():
        common &= result.success
    reference = next(iter(results))
    region = results[reference].norms[common].double()
    lines = []
    for label, result in results.items():
        fooled = result.success & correct
        norms = result.norms[common].double()
        ratio = ", ".join(f"{q:.4f}" for q in (region / norms).quantile(torch.tensor([0.1, 0.5, 0.9],
                                                                                   dtype=torch.float64)).tolist())
        smaller = f"{100 * (region < norms * (1 - 1e-6)).float().mean().item():.0f}%"
        if label == reference:
            ratio = smaller = "-"
        lines.append(f"| {label} | {int(fooled.sum())} / {int(correct.sum())} | "
                     f"{result.norms[fooled].double().median().item():.4f} | {int(common.sum())} | "
                     f"{norms.median().item():.4f} | {ratio} | {smaller} | {seconds[label]:.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=450, help="test images for L2 (digits has 450)")
    parser.add_argument("--linf-images", type=int, default=100, help="test images for Linf")
    parser.add_argument("--out", type=Path, default=HERE / "results_region.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset({"name": "digits", "test_fraction": 0.25, "split_seed": 0})
    header = ("| attack | fooled / correct | median norm of its successes | samples all fool | median norm there | "
              "region / attack per sample there: q10, median, q90 | region smaller | seconds |\n|---|---|---|---|---|---|---|---|")
    out = ["# Linear-region attack (attack=region) against DeepFool, C&W and FMN", "",
           f"{__doc__.split(chr(10) + chr(10))[1]}", "",
           f"Machine: {platform.machine()}, torch {torch.__version__}, 1 thread, shared (1-minute load average "
           f"{os.getloadavg()[0]:.1f} at the start: the seconds are inflated accordingly). Command: "
           f"`python benchmarks/bench_region.py --images {args.images} --linf-images {args.linf_images}`.", ""]
    for name, (hidden, seed) in MODELS.items():
        model = train(data, hidden, seed)
        with torch.no_grad():
            accuracy = (model(data.x_test).argmax(dim=1) == data.y_test).float().mean().item()
        print(f"{name}: test accuracy {accuracy:.4f}", flush=True)
        out += [f"## {name} (test accuracy {100 * accuracy:.1f}%)", ""]
        for norm, n in (("2", args.images), ("inf", 0 if hidden is None else args.linf_images)):
            if n == 0:
                continue
            x, y = data.x_test[:n], data.y_test[:n]
            out += [f"L{norm}, first {len(x)} test images:", "", header, *measure(model, x, y, norm), ""]
            args.out.write_text("\n".join(out) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
