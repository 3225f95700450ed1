"""advrun's attacks against torchattacks, ART and foolbox: same model, same images, same settings,
measured in one run. Writes benchmarks/results.md (single attacks) and benchmarks/results_autoattack.md
(FAB and AutoAttack's standard ensemble against torchattacks'); `--part` runs one of them. Run with
`make bench`.

Model: the published MNIST model of Wong et al. 2020 (../shared/reference-models, fgsm.pth);
data: the first N images of the MNIST test set in ../shared/data. Each configuration is timed
REPEATS times after one warm-up call, each time after the machine is idle; the table reports the
median images per second, the robust accuracy (Lp-bounded attacks) or the median perturbation
norm of successful samples (minimum-norm attacks), and the speed ratio to advrun.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))

from advrun import attacks as A  # noqa: E402
from advrun.data import load_dataset  # noqa: E402
from advrun.models import WongMNIST  # noqa: E402

Run = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, y) -> x_adv


@dataclass
class Entry:
    attack: str
    library: str
    settings: str
    run: Run
    norm: float  # norm for reporting perturbation sizes
    bounded: bool  # report robust accuracy (True) or the median norm of successes (False)
    iterations: int | None = None  # gradient iterations per image, for the time per iteration
    max_images: int | None = None  # slow peers run on the first max_images images only


def wait_until_idle(limit: float = 0.6, timeout: float = 120.0) -> float:
    """Wait for the 1-minute load average to fall below ``limit`` (at most ``timeout`` s)."""
    start = time.time()
    while os.getloadavg()[0] > limit and time.time() - start < timeout:
        time.sleep(3)
    return os.getloadavg()[0]


def matmul_gflops(n: int = 1024, repeats: int = 20) -> float:
    """This machine's float32 matmul throughput (GFLOP/s), the ceiling for PGD's share."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def forward_flops(model: torch.nn.Module, shape: tuple[int, ...]) -> float:
    """FLOPs of one forward pass for one input (convolutions and linear layers; 2 per MAC)."""
    total = 0.0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += 2 * k * output[0].numel()
        elif isinstance(module, torch.nn.Linear):
            total += 2 * module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    for h in handles:
        h.remove()
    return total


def advrun_entry(attack: A.Attack, model) -> Run:
    return lambda x, y: attack(model, x, y).x_adv


def entries(model, n_classes: int = 10) -> list[Entry]:
    eps, steps, alpha = 0.3, 40, 0.01
    found: list[Entry] = [
        Entry("FGSM", "advrun", f"Linf eps {eps}", advrun_entry(A.FGSM(eps=eps), model), math.inf, True),
        Entry("PGD", "advrun", f"Linf eps {eps}, {steps} x {alpha}, random start",
              advrun_entry(A.PGD(eps=eps, steps=steps, step_size=alpha), model), math.inf, True),
        Entry("PGD (last iterate)", "advrun", f"Linf eps {eps}, {steps} x {alpha}, random start, keep_best=false",
              advrun_entry(A.PGD(eps=eps, steps=steps, step_size=alpha, keep_best=False), model), math.inf, True),
    ]
    try:
        import torchattacks as ta

        found += [
            Entry("FGSM", "torchattacks", f"Linf eps {eps}", ta.FGSM(model, eps=eps), math.inf, True),
            Entry("PGD", "torchattacks", f"Linf eps {eps}, {steps} x {alpha}, random start",
                  ta.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True), math.inf, True),
        ]
    except ImportError:
        pass
    try:
        from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescentPyTorch
        from art.estimators.classification import PyTorchClassifier

        classifier = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28),
                                       nb_classes=n_classes, clip_values=(0.0, 1.0))

        def art(attack) -> Run:
            return lambda x, y: torch.from_numpy(attack.generate(x.numpy(), y=y.numpy()))

        found += [
            Entry("FGSM", "ART", f"Linf eps {eps}", art(FastGradientMethod(classifier, norm=np.inf, eps=eps,
                                                                          batch_size=1000)), math.inf, True),
            Entry("PGD", "ART", f"Linf eps {eps}, {steps} x {alpha}, random start",
                  art(ProjectedGradientDescentPyTorch(classifier, norm=np.inf, eps=eps, eps_step=alpha, max_iter=steps,
                                                      num_random_init=1, batch_size=1000, verbose=False)),
                  math.inf, True),
        ]
    except ImportError:
        pass
    try:
        import foolbox as fb

        fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0))

        def foolbox(attack, epsilon) -> Run:
            return lambda x, y: attack(fmodel, x, y, epsilons=epsilon)[1]

        found += [
            Entry("FGSM", "foolbox", f"Linf eps {eps}", foolbox(fb.attacks.FGSM(), eps), math.inf, True),
            Entry("PGD", "foolbox", f"Linf eps {eps}, {steps} x {alpha}, random start",
                  foolbox(fb.attacks.LinfPGD(abs_stepsize=alpha, steps=steps, random_start=True), eps), math.inf, True),
        ]
    except ImportError:
        pass
    found += suite_entries(model)
    return found


def suite_entries(model) -> list[Entry]:
    """DeepFool, C&W, APGD and Square with matching settings in each library."""
    eps = 0.3
    cw_steps, cw_rounds = 100, 5
    found = [
        Entry("DeepFool", "advrun", "L2, 50 steps, overshoot 0.02, 10 candidates",
              advrun_entry(A.DeepFool(steps=50, overshoot=0.02, candidates=10), model), 2.0, False),
        Entry("C&W", "advrun", f"L2, {cw_rounds} rounds of binary search x {cw_steps} Adam steps, no early abort",
              advrun_entry(A.CW(binary_steps=cw_rounds, steps=cw_steps, abort_early=False), model), 2.0, False,
              iterations=cw_rounds * cw_steps),
        Entry("APGD-CE", "advrun", f"Linf eps {eps}, 100 iterations", advrun_entry(A.APGD(eps=eps, n_iter=100), model),
              math.inf, True),
        Entry("Square", "advrun", f"Linf eps {eps}, 1000 queries",
              advrun_entry(A.Square(eps=eps, n_queries=1000), model), math.inf, True),
    ]
    try:
        import torchattacks as ta

        found += [
            Entry("DeepFool", "torchattacks", "L2, 50 steps, overshoot 0.02 (all classes)",
                  ta.DeepFool(model, steps=50, overshoot=0.02), 2.0, False, max_images=200),
            Entry("C&W", "torchattacks", f"L2, fixed c = 1, {cw_steps} Adam steps (no binary search)",
                  ta.CW(model, c=1, kappa=0, steps=cw_steps, lr=0.01), 2.0, False, iterations=cw_steps),
            Entry("APGD-CE", "torchattacks", f"Linf eps {eps}, 100 iterations",
                  ta.APGD(model, norm="Linf", eps=eps, steps=100, n_restarts=1, loss="ce"), math.inf, True),
            Entry("Square", "torchattacks", f"Linf eps {eps}, 1000 queries",
                  ta.Square(model, norm="Linf", eps=eps, n_queries=1000), math.inf, True),
        ]
    except ImportError:
        pass
    try:
        import foolbox as fb

        fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0))

        def minimum_norm(attack) -> Run:
            return lambda x, y: attack(fmodel, x, y, epsilons=None)[0]

        found += [
            Entry("DeepFool", "foolbox", "L2, 50 steps, overshoot 0.02, 10 candidates",
                  minimum_norm(fb.attacks.L2DeepFoolAttack(steps=50, candidates=10, overshoot=0.02)), 2.0, False),
            Entry("C&W", "foolbox", f"L2, {cw_rounds} rounds of binary search x {cw_steps} Adam steps, no early abort",
                  minimum_norm(fb.attacks.L2CarliniWagnerAttack(binary_search_steps=cw_rounds, steps=cw_steps,
                                                                 abort_early=False)),
                  2.0, False, iterations=cw_rounds * cw_steps, max_images=200),
        ]
    except ImportError:
        pass
    return found


def autoattack_entries(model, n_classes: int = 10) -> list[Entry]:
    """FAB (minimum norm, Linf, untargeted, 100 iterations) and AutoAttack's standard ensemble
    (APGD-CE, APGD-T, FAB-T, Square 5,000 queries) at eps 0.3, advrun against torchattacks. The
    ensembles take minutes per 100 images on a CPU: they run on the first 200 images. advrun's
    members run AutoAttack's 100 iterations; torchattacks' AutoAttack leaves its APGD, APGD-T
    and FAB at their default of 10, so a second torchattacks row builds the same members with 100
    (equal work)."""
    eps = 0.3
    found = [
        Entry("FAB", "advrun", "Linf, 100 iterations, 1 run (bisection on each success)",
              advrun_entry(A.FAB(n_iter=100), model), math.inf, False, iterations=100),
        Entry("AutoAttack standard", "advrun", f"Linf eps {eps}: APGD-CE, APGD-T, FAB-T (100 iterations each, "
              "as AutoAttack), Square 5000",
              advrun_entry(A.Ensemble(eps=eps), model), math.inf, True, max_images=200),
    ]
    try:
        import torchattacks as ta

        found += [
            # torchattacks keeps only perturbations within its eps: 1.0 (the whole box) keeps them all
            Entry("FAB", "torchattacks", "Linf, 100 iterations, 1 run",
                  ta.FAB(model, norm="Linf", eps=1.0, steps=100, n_restarts=1, n_classes=n_classes, seed=0),
                  math.inf, False, iterations=100),
            # torchattacks' AutoAttack builds APGD, APGD-T and FAB with their default steps=10
            Entry("AutoAttack standard", "torchattacks", f"Linf eps {eps}: APGD-CE, APGD-T, FAB-T (10 iterations "
                  "each, torchattacks' default), Square 5000",
                  ta.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=n_classes, seed=0),
                  math.inf, True, max_images=200),
            # equal work: the members of torchattacks' standard AutoAttack built as it builds them, with
            # AutoAttack's 100 iterations (advrun's) instead of torchattacks' default 10
            Entry("AutoAttack standard", "torchattacks", f"Linf eps {eps}: APGD-CE, APGD-T, FAB-T (100 iterations "
                  "each, as advrun), Square 5000",
                  ta.MultiAttack([
                      ta.APGD(model, norm="Linf", eps=eps, steps=100, n_restarts=1, loss="ce", seed=0),
                      ta.APGDT(model, norm="Linf", eps=eps, steps=100, n_restarts=1, n_classes=n_classes, seed=0),
                      ta.FAB(model, norm="Linf", eps=eps, steps=100, n_restarts=1, multi_targeted=True,
                             n_classes=n_classes, seed=0),
                      ta.Square(model, norm="Linf", eps=eps, n_queries=5000, n_restarts=1, seed=0),
                  ]),
                  math.inf, True, max_images=200),
        ]
    except ImportError:
        pass
    return found


def measure(entry: Entry, model, x, y, repeats: int) -> dict:
    """Median time to adversarial examples AND their verdict: advrun's result includes the
    model's decision on its outputs; for the peers one forward pass over their outputs is
    added to the timed call, since robust accuracy needs it in every library."""
    if entry.max_images:
        x, y = x[: entry.max_images], y[: entry.max_images]

    def call():
        x_adv = entry.run(x, y).detach()
        with torch.no_grad():
            predictions = model(x_adv).argmax(1) if entry.library != "advrun" else None
        return x_adv, predictions

    load = wait_until_idle()
    start = time.perf_counter()
    call()  # warm-up on the full batch (memory, kernel selection), then timed calls back to back
    if time.perf_counter() - start > 20:  # slow configurations: one timed call is enough
        repeats = 1
    times, x_adv = [], None
    for i in range(repeats):
        torch.manual_seed(0)
        start = time.perf_counter()
        x_adv, _ = call()
        times.append(time.perf_counter() - start)
    with torch.no_grad():
        predictions = model(x_adv).argmax(1)
        clean = model(x).argmax(1) == y
    fooled = clean & (predictions != y)
    norms = (x_adv - x).flatten(1).norm(p=entry.norm, dim=1)[fooled]
    median = statistics.median(times)
    return {
        "n": len(x),
        "images_per_s": len(x) / median,
        "seconds": median,
        "robust_accuracy": float((clean & ~fooled).float().mean()),
        "success_rate": float(fooled.sum() / clean.sum()),
        "median_norm": float(norms.median()) if len(norms) else math.nan,
        "ms_per_iteration": 1000 * median / entry.iterations if entry.iterations else None,
        "load": load,
    }


def measure_all(found: list[Entry], model, x, y, repeats: int) -> list[tuple[Entry, dict]]:
    results = []
    for entry in found:
        print(f"{entry.attack:>20} {entry.library:>12} ...", end=" ", flush=True)
        result = measure(entry, model, x, y, repeats)
        results.append((entry, result))
        print(f"{result['images_per_s']:.0f} images/s, robust acc {100 * result['robust_accuracy']:.2f}%")
    return results


def table(title: str, results: list[tuple[Entry, dict]], n: int, repeats: int) -> list[str]:
    """The results as a Markdown page: how they were measured, then one row per entry."""
    lines = [
        f"# {title}",
        "",
        f"Same model (Wong et al. 2020 `fgsm.pth`, MNIST), same MNIST test images (the first {n}, fewer where "
        "a row says so), same settings, one run. "
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads). "
        f"Medians of {repeats} timed calls made back to back after a full-size warm-up call "
        "(one call where the warm-up took over 20 s), each configuration started on an idle machine "
        "(1-minute load average below 0.6). Times cover the "
        "adversarial examples and the model's decision on them (advrun returns it; for the peers one "
        "forward pass is added). Speed: images/s relative to advrun's entry for the same attack. Success "
        "rate: fooled / initially correct. Minimum-norm attacks (DeepFool, C&W, FAB) are compared by success "
        "rate and median norm (L2; FAB: Linf); C&W also per gradient iteration (the batch's time divided by the "
        "number of Adam steps).",
        "",
        "| attack | library | settings | images | images/s | speed relative to advrun | robust accuracy | "
        "success rate | median norm of successes | ms per iteration (batch) | load before |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entry, result in results:
        ours = next((r for e, r in results if e.attack == entry.attack and e.library == "advrun"), None)
        ratio = result["images_per_s"] / ours["images_per_s"] if ours else math.nan
        robust = f"{100 * result['robust_accuracy']:.2f}%" if entry.bounded else "-"
        per_iteration = f"{result['ms_per_iteration']:.2f}" if result["ms_per_iteration"] else "-"
        lines.append(
            f"| {entry.attack} | {entry.library} | {entry.settings} | {result['n']} | {result['images_per_s']:,.0f} | "
            f"{ratio:.2f} | {robust} | {100 * result['success_rate']:.1f}% | {result['median_norm']:.4f} | "
            f"{per_iteration} | {result['load']:.2f} |"
        )
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1000, help="MNIST test images (default 1000)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--part", choices=("all", "attacks", "autoattack"), default="all",
                        help="attacks: results.md; autoattack: results_autoattack.md; all: both (default)")
    args = parser.parse_args()
    weights = SHARED / "reference-models" / "mnist-fast-adversarial" / "fgsm.pth"
    if not weights.is_file() or not (SHARED / "data" / "MNIST").is_dir():
        print(f"skipped: the attack benchmark needs {weights} and {SHARED / 'data'}")
        return
    torch.manual_seed(0)
    model = WongMNIST()
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    data = load_dataset({"name": "mnist", "root": str(SHARED / "data"), "download": False})
    x, y = data.x_test[: args.n], data.y_test[: args.n]

    if args.part in ("all", "attacks"):
        results = measure_all(entries(model), model, x, y, args.repeats)
        peak = matmul_gflops()
        pgd = next(r for e, r in results if e.attack == "PGD" and e.library == "advrun")
        # one PGD step = one forward + one backward to the input (about the same FLOPs again)
        pgd_gflops = len(x) * 40 * 2 * forward_flops(model, (1, 28, 28)) / pgd["seconds"] / 1e9
        lines = table("Attack benchmark: advrun against torchattacks, ART and foolbox", results, len(x), args.repeats)
        lines += [
            f"Machine float32 matmul throughput (1024x1024): {peak:.1f} GFLOP/s. advrun PGD achieves about "
            f"{pgd_gflops:.1f} GFLOP/s on this model ({100 * pgd_gflops / peak:.1f}% of it; the model is tiny, "
            "so most time goes to small convolutions and framework overhead).",
            "",
        ]
        (HERE / "results.md").write_text("\n".join(lines))
        print("\n".join(lines))
    if args.part in ("all", "autoattack"):
        results = measure_all(autoattack_entries(model), model, x, y, args.repeats)
        lines = table("FAB and AutoAttack: advrun against torchattacks", results, len(x), args.repeats)
        (HERE / "results_autoattack.md").write_text("\n".join(lines))
        print("\n".join(lines))


if __name__ == "__main__":
    main()
