"""The evaluation audit: is the robustness a run reports believable?

Each evaluation is checked against the checklist of Carlini et al. 2019, "On Evaluating
Adversarial Robustness", and the automatic checks of AutoAttack (Croce & Hein 2020, "Reliable
evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks"; the
flags of its ``checks.py``). Every check ends as ``pass``, ``warn`` (with the reason and what to
try) or ``n/a`` (with the reason):

* ``single_step``: the run's iterative attack is at least as strong as one gradient step
  (FGSM in Linf, FGM in L2, one sparse L1 step) at the headline budget (Carlini et al.:
  iterative attacks should perform better than single-step attacks);
* ``monotone``: the success rate does not decrease as the budget grows (Carlini et al.:
  increasing the perturbation budget should increase attack success);
* ``large_budget``: at a budget that reaches the whole input box the attack fools (almost)
  every sample, unless robust accuracy on the curve already falls to chance level; for a
  minimum-norm attack, the unbounded attack reaches (almost) 100% (Carlini et al.: unbounded
  attacks should reach 100% success, accuracy should reach chance level);
* ``more_iterations``: twice the steps (twice the restarts where starts are random) does not
  change the success rate: neither stronger (the attack had not converged) nor weaker
  (Carlini et al.: verify that the attack has converged);
* ``black_box``: a short Square attack (score-based, no gradients) does not fool samples the
  white-box attack missed (Carlini et al.: black-box attacks should not beat white-box
  attacks; AutoAttack's ``check_square_sr``);
* ``gradients``: input gradients of the cross-entropy loss are finite and non-zero on most inputs
  (AutoAttack's ``check_zero_gradients``; Athalye et al. 2018 on shattered gradients);
* ``deterministic``: repeated forward passes in eval mode give the same outputs
  (AutoAttack's ``check_randomized``);
* ``logits``: the model returns logits, not probabilities (AutoAttack's ``check_range_output``):
  cross-entropy of softmax probabilities saturates and hides gradients.

The extra evaluations run on the first ``n_samples`` (100) samples, with their own seed, in a
forked random state (the run's random stream is untouched). Success counts of two attacks on
the same samples are compared with a tolerance of ``max(2, ceil(2% of the samples compared))``
samples (:func:`tolerance`), so that two equally strong attacks with random starts do not
raise a warning.

The kind of the run's attack decides which form each of the first five checks takes, or that it
does not apply (:attr:`advrun.attacks.base.Attack.audit_rules`): a minimum-norm attack is read
off its norms, an attack outside the Lp threat model has no budget to compare at.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pandas as pd
import torch
from rich.table import Table
from rich.text import Text
from torch import nn

from advrun.attacks.apgd import APGD
from advrun.attacks.base import Attack, AttackResult, Bounds, Goal, eval_mode, input_gradient
from advrun.attacks.ensemble import Ensemble
from advrun.attacks.fab import FAB
from advrun.attacks.fgm import FGM
from advrun.attacks.fgsm import FGSM
from advrun.attacks.norms import norm_name
from advrun.attacks.pgd import PGD
from advrun.attacks.square import Square
from advrun.contract import PROBABILITY_TOLERANCE, looks_like_probabilities  # noqa: F401 - the tolerance, as before
from advrun.errors import ConfigError
from advrun.evaluation import _attack_all

log = logging.getLogger(__name__)

PASS, WARN, NA = "pass", "warn", "n/a"
STATUSES = (PASS, WARN, NA)
_LARGE_BUDGET_ADVICE = ("an attack that may move every input anywhere must fool (almost) every sample: a failure "
                        "means a broken attack or masked gradients; try more steps, attack=square or attack=apgd")

#: Share of inputs whose loss gradient may be exactly zero before ``gradients`` warns.
ZERO_GRADIENT_SHARE = 0.05
#: Largest difference between repeated forward passes (outputs scaled to unit L2 norm per
#: sample, AutoAttack's ``check_randomized``) still counted as deterministic.
DETERMINISM_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Check:
    """One audit item: ``status`` is ``"pass"``, ``"warn"`` or ``"n/a"``; ``reason`` says what was
    measured (or why the check does not apply), ``advice`` what to try after a warning."""

    name: str
    status: str
    reason: str
    advice: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")


def tolerance(n: int) -> int:
    """Samples by which two success counts on ``n`` samples may differ without a warning:
    ``max(2, ceil(0.02 n))``."""
    return max(2, math.ceil(0.02 * n))


def requested(value: Any) -> bool:
    """The value of ``eval.audit``: true or false (anything else is a :class:`ConfigError`)."""
    if not isinstance(value, bool):
        raise ConfigError("eval.audit", f"must be true or false, got {value!r}")
    return value


def single_step_attack(attack: Attack) -> Attack:
    """One steepest-ascent step of length ``eps`` in the attack's norm, with its target:
    FGSM (Linf), FGM (L2) or one sparse L1 step (PGD with one step, no random start)."""
    if attack.norm == math.inf:
        return FGSM(eps=attack.eps, target=attack.target)
    if attack.norm == 2.0:
        return FGM(eps=attack.eps, target=attack.target)
    return PGD(eps=attack.eps, norm=1.0, target=attack.target, steps=1, step_size=attack.eps, random_start=False)


def is_single_step(attack: Attack) -> bool:
    return isinstance(attack, (FGSM, FGM)) or (isinstance(attack, PGD) and attack.iterations == 1)


def stronger_attack(attack: Attack) -> Attack | None:
    """The same attack with twice the iterations (and twice the restarts where it starts at
    random), or None where no iteration count is known."""
    if isinstance(attack, Ensemble):
        return dataclasses.replace(attack, attacks=[stronger_attack(m) or m for m in attack.attacks])
    if isinstance(attack, PGD):
        changes: dict[str, Any] = {"steps": 2 * attack.iterations}
        if attack.random_start and any(f.name == "restarts" and f.init for f in dataclasses.fields(attack)):
            changes["restarts"] = 2 * attack.restarts
        return dataclasses.replace(attack, **changes)
    if isinstance(attack, (APGD, FAB)):
        return dataclasses.replace(attack, n_iter=2 * attack.n_iter)
    if isinstance(attack, Square):
        return dataclasses.replace(attack, n_queries=2 * attack.n_queries)
    steps = getattr(attack, "steps", None)
    if isinstance(steps, int) and not isinstance(steps, bool):
        return dataclasses.replace(attack, steps=2 * steps)
    return None


def whole_box_radius(norm: float, bounds: Bounds, dim: int) -> float:
    """The budget within which every point of the box ``bounds^dim`` is reachable from any other."""
    width = bounds[1] - bounds[0]
    return width if norm == math.inf else width * dim ** (1.0 / norm)


@dataclass
class Bench:
    """The audit's samples and model: runs attacks on them with a fixed seed and counts successes.

    A sample is eligible when it is initially correct and, for a targeted attack, not already
    of the target class; ``success(attack, eps)`` marks the eligible samples fooled within ``eps``.
    """

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    bounds: Bounds
    batch_size: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        with eval_mode(self.model), torch.no_grad():
            self.logits = torch.cat([self.model(part) for part in self.x.split(self.batch_size)])
        self.correct = self.logits.argmax(1) == self.y
        self.num_classes = self.logits.shape[1]

    @contextlib.contextmanager
    def seeded(self) -> Iterator[None]:
        """The audit's own random stream; the caller's state is restored afterwards."""
        devices = [self.x.device.index or 0] if self.x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            yield

    def run(self, attack: Attack):
        with self.seeded():
            return _attack_all(attack, self.model, self.x, self.y, self.bounds, self.batch_size, lambda: None)

    def eligible(self, targets: torch.Tensor | None) -> torch.Tensor:
        return self.correct if targets is None else self.correct & (targets != self.y)

    def success(self, attack: Attack, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(fooled within eps, eligible)`` per sample for ``attack`` at budget ``eps``."""
        result = self.run(attack.with_eps(eps))
        eligible = self.eligible(result.targets)
        return eligible & result.success & attack.within_budget(result.norms, eps), eligible


def by_kind(check: Callable[["Audit"], Check]) -> Callable[["Audit"], Check]:
    """Run ``check`` in the form the kind of the run's attack asks for (``Attack.audit_rules``):
    the standard form (the method itself), the method ``_<check>_<form>``, or ``n/a`` with the reason."""

    @functools.wraps(check)
    def in_form(audit: "Audit") -> Check:
        attack = audit.attack
        rule = attack.audit_rules.get(check.__name__, "standard")
        if rule.startswith("n/a: "):
            return Check(check.__name__, NA, rule.removeprefix("n/a: ").format(label=attack.label))
        return check(audit) if rule == "standard" else getattr(audit, f"_{check.__name__}_{rule}")()

    return in_form


class Audit:
    """The checks of one evaluation; results of the run's attack on the bench are computed once."""

    def __init__(self, bench: Bench, attack: Attack, curve: pd.DataFrame, samples: pd.DataFrame | None,
                 square_queries: int):
        self.bench, self.attack, self.samples, self.square_queries = bench, attack, samples, square_queries
        self.rows = curve[curve["attack"] == attack.name].sort_values("eps").reset_index(drop=True)
        self._headline: tuple[torch.Tensor, torch.Tensor] | None = None
        self._fooled_by: torch.Tensor | None = None
        self._run: tuple[Attack, AttackResult] | None = None

    # --- the run's attack on the bench ---------------------------------------------------

    def _eligible_without_targets(self) -> torch.Tensor:
        target = self.attack.target
        fixed = isinstance(target, int) and not isinstance(target, bool)
        return self.bench.correct & (self.bench.y != target) if fixed else self.bench.correct

    def _success(self, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(fooled within eps, eligible)`` of the run's attack on the bench. An attack whose one
        run serves every budget (``with_eps`` returns it as is: a minimum-norm attack) is read off
        the evaluation's per-sample norms where given (untargeted), else off one run on the bench."""
        attack, n = self.attack.with_eps(eps), len(self.bench.y)
        if attack is self.attack and self.samples is not None and attack.target is None and len(self.samples) >= n:
            norms = torch.as_tensor(self.samples["norm"].to_numpy()[:n].copy(), device=self.bench.x.device)
            eligible = self.bench.correct
            return eligible & torch.isfinite(norms) & attack.within_budget(norms, eps), eligible
        if self._run is None or self._run[0] is not attack:
            self._run = attack, self.bench.run(attack)
        result = self._run[1]
        eligible = self.bench.eligible(result.targets)
        return eligible & result.success & attack.within_budget(result.norms, eps), eligible

    def headline(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(fooled, eligible)`` of the run's attack at its headline budget on the bench."""
        if self._headline is None:
            if isinstance(self.attack, Ensemble):
                with self.bench.seeded(), eval_mode(self.bench.model):
                    self._fooled_by = torch.cat([
                        self.attack.fooled_by(self.bench.model, x, y, bounds=self.bench.bounds)
                        for x, y in zip(self.bench.x.split(self.bench.batch_size), self.bench.y.split(self.bench.batch_size))
                    ])
                eligible = self._eligible_without_targets()
                self._headline = eligible & (self._fooled_by >= 0), eligible
            else:
                self._headline = self._success(self.attack.eps)
        return self._headline

    def _applies(self, name: str, single_step_ok: bool = True) -> Check | None:
        """An ``n/a`` check when the comparisons at the headline budget make no sense, else None."""
        a = self.attack
        if a.eps == 0:
            return Check(name, NA, "the headline budget is 0")
        if not single_step_ok and is_single_step(a):
            return Check(name, NA, f"{a.label} is itself a single-step attack")
        return None

    def _against(self, other: Attack) -> tuple[int, int, int, int, int]:
        """``other`` at the headline budget against the run's attack: eligible samples, samples
        each fools, samples only ``other`` fools, and the tolerance."""
        fooled, eligible = self.headline()
        other_fooled, _ = self.bench.success(other, self.attack.eps)
        n = int(eligible.sum())
        return n, int(fooled.sum()), int(other_fooled.sum()), int((other_fooled & ~fooled).sum()), tolerance(n)

    def _compare(self, name: str, other: Attack, *, per_sample: bool, advice: str, what: str) -> Check:
        """Warn when ``other`` fools more samples than the run's attack (``per_sample``: samples
        that the run's attack missed) by more than the tolerance."""
        n, ours, theirs, missed, tol = self._against(other)
        excess = missed if per_sample else theirs - ours
        measured = (
            f"at eps {self.attack.eps:g} on {n} samples {self.attack.label} fools {ours}, {other.label} {theirs}"
            + (f" ({missed} that {self.attack.label} missed)" if per_sample else "")
            + f"; tolerance {tol}"
        )
        if excess > tol:
            return Check(name, WARN, f"{what}: {measured}", advice)
        return Check(name, PASS, measured)

    # --- the checks ----------------------------------------------------------------------

    @by_kind
    def single_step(self) -> Check:
        name = "single_step"
        skip = self._applies(name, single_step_ok=False)
        if skip:
            return skip
        return self._compare(
            name, single_step_attack(self.attack), per_sample=False,
            what="a single gradient step is stronger than the iterative attack",
            advice="the iterative attack is misconfigured (step size, too few steps) or the gradients mislead it "
                   "(gradient masking); check attack.step_size / steps, or try attack=apgd",
        )

    @by_kind
    def monotone(self) -> Check:
        name, rows = "monotone", self.rows
        if len(rows) < 2:
            return Check(name, NA, "the curve has a single budget")
        best, drops = 0, []  # best: the row with the most successes at a smaller budget
        for i in range(1, len(rows)):
            if rows["n_success"][i - 1] > rows["n_success"][best]:
                best = i - 1
            if rows["n_success"][i] < rows["n_success"][best] - tolerance(int(rows["n_eligible"][i])):
                drops.append(f"{100 * rows['success_rate'][best]:.1f}% at eps {rows['eps'][best]:g} -> "
                             f"{100 * rows['success_rate'][i]:.1f}% at eps {rows['eps'][i]:g}")
        if drops:
            return Check(
                name, WARN, "the success rate decreases as the budget grows: " + "; ".join(drops)
                + f" (tolerance {tolerance(int(rows['n_eligible'].max()))} samples)",
                "a larger budget contains every smaller one, so a working attack does at least as well: "
                "the step may not follow the budget (attack.step_size fixed) or the attack is stuck; "
                "use more steps or restarts",
            )
        return Check(name, PASS, f"success rate non-decreasing over {len(rows)} budgets "
                                 f"({100 * rows['success_rate'].min():.1f}% to {100 * rows['success_rate'].max():.1f}%)")

    @by_kind
    def large_budget(self) -> Check:
        """The attack at a budget that reaches the whole input box, unless the curve already
        reaches chance level."""
        a, bench = self.attack, self.bench
        chance = 1.0 / bench.num_classes
        top = self.rows.iloc[-1] if len(self.rows) else None
        if a.target is None and top is not None and top["robust_accuracy"] <= chance:
            return Check("large_budget", PASS, f"robust accuracy {100 * top['robust_accuracy']:.1f}% at the "
                                               f"curve's largest eps {top['eps']:g} is at most chance level "
                                               f"{100 * chance:.1f}%")
        radius = whole_box_radius(a.norm, bench.bounds, bench.x[0].numel())
        big = PGD(eps=radius, norm=a.norm, target=a.target) if is_single_step(a) else a
        fooled, eligible = bench.success(big, radius)
        return self._large_budget_verdict(fooled, eligible, f"{big.label} at eps {radius:g} (the whole box)")

    def _large_budget_unbounded(self) -> Check:
        """``large_budget`` of an attack whose one run serves every budget: the attack without a limit."""
        fooled, eligible = self._success(math.inf)
        return self._large_budget_verdict(fooled, eligible, f"unbounded {self.attack.label}")

    def _large_budget_verdict(self, fooled: torch.Tensor, eligible: torch.Tensor, what: str) -> Check:
        n, ours = int(eligible.sum()), int(fooled.sum())
        measured = f"{what} fools {ours} of {n} samples; tolerance {tolerance(n)}"
        if ours < n - tolerance(n):
            return Check("large_budget", WARN, f"the attack does not reach 100% success without a budget limit: "
                                               f"{measured}", _LARGE_BUDGET_ADVICE)
        return Check("large_budget", PASS, measured)

    @by_kind
    def more_iterations(self) -> Check:
        name = "more_iterations"
        skip = self._applies(name, single_step_ok=False)
        if skip:
            return skip
        stronger = stronger_attack(self.attack)
        if stronger is None:
            return Check(name, NA, f"no iteration count is known for {self.attack.label}")
        n, ours, theirs, _, tol = self._against(stronger)
        measured = (f"at eps {self.attack.eps:g} on {n} samples: {ours} fooled, {theirs} with twice the "
                    f"iterations; tolerance {tol}")
        if theirs > ours + tol:
            return Check(name, WARN, f"the attack has not converged: {measured}",
                         "raise the iterations (attack.steps, attack.restarts, attack.n_iter, attack.n_queries) "
                         "until the success rate stops growing")
        if theirs < ours - tol:
            return Check(name, WARN, f"more iterations weaken the attack: {measured}",
                         "a longer attack should never do worse: check the step size schedule (attack.step_size) "
                         "and keep the best iterate (attack.keep_best=true)")
        return Check(name, PASS, measured)

    @by_kind
    def black_box(self) -> Check:
        name, a = "black_box", self.attack
        skip = self._applies(name)
        if skip:
            return skip
        advice = ("gradients mislead the white-box attack (gradient masking): use attacks that do not rely on "
                  "them (attack=square with more queries, attack=ensemble) or an adaptive attack")
        if isinstance(a, Square):
            return Check(name, NA, "the run's attack is Square itself")
        if a.norm not in Square.norms:
            return Check(name, NA, f"Square has no {norm_name(a.norm)} form")
        if isinstance(a, Ensemble) and any(isinstance(m, Square) for m in a.attacks):
            kinds = [isinstance(m, Square) for m in a.attacks]
            if kinds.index(True) < len(kinds) - kinds[::-1].index(False):
                return Check(name, NA, "the ensemble runs Square before a white-box member")
            fooled, eligible = self.headline()
            by_square = int((fooled & (self._fooled_by >= kinds.index(True))).sum())
            n = int(eligible.sum())
            measured = (f"at eps {a.eps:g} on {n} samples Square members fool {by_square} samples the white-box "
                        f"members missed; tolerance {tolerance(n)}")
            if by_square > tolerance(n):
                return Check(name, WARN, f"the black-box attack beats the white-box ones: {measured}", advice)
            return Check(name, PASS, measured)
        square = Square(eps=a.eps, norm=a.norm, target=a.target, n_queries=self.square_queries)
        return self._compare(name, square, per_sample=True, advice=advice,
                             what="the black-box attack beats the white-box one")

    def gradients(self) -> Check:
        name, bench = "gradients", self.bench
        with eval_mode(bench.model), torch.enable_grad():
            grad = torch.cat([
                input_gradient(lambda z, y=y: Goal(y).loss(bench.model(z)), x)[0]
                for x, y in zip(bench.x.split(bench.batch_size), bench.y.split(bench.batch_size))
            ]).flatten(1)
        n = len(grad)
        nonfinite = int((~torch.isfinite(grad)).any(1).sum())
        zero = int((grad == 0).all(1).sum())
        measured = f"cross-entropy input gradients on {n} samples: {nonfinite} not finite, {zero} exactly zero"
        if nonfinite:
            return Check(name, WARN, measured,
                         "non-finite gradients (log of 0, a division by 0 in the model) blind gradient attacks: "
                         "fix the model's forward pass or use attack=square")
        if zero > ZERO_GRADIENT_SHARE * n:
            return Check(name, WARN, f"{measured} (more than {100 * ZERO_GRADIENT_SHARE:g}%)",
                         "zero gradients (quantisation, thresholds, a saturated softmax) leave gradient attacks "
                         "blind: attack a differentiable approximation (BPDA), a margin loss (attack=apgd "
                         "attack.loss=dlr) or a black-box attack (attack=square)")
        return Check(name, PASS, measured)

    def deterministic(self, passes: int = 3) -> Check:
        name, bench = "deterministic", self.bench
        outputs = [bench.logits]
        with eval_mode(bench.model), torch.no_grad():
            for _ in range(passes - 1):
                outputs.append(torch.cat([bench.model(part) for part in bench.x.split(bench.batch_size)]))
        unit = [o / (o.norm(dim=1, keepdim=True) + 1e-10) for o in outputs]
        difference = max((u - unit[0]).norm(dim=1).max().item() for u in unit[1:])
        flips = max(int((o.argmax(1) != outputs[0].argmax(1)).sum()) for o in outputs[1:])
        measured = (f"{passes} forward passes in eval mode on {len(bench.x)} samples: largest difference "
                    f"{difference:.3g} (outputs scaled to unit norm), {flips} predictions changed")
        if not difference <= DETERMINISM_TOLERANCE or flips:
            return Check(name, WARN, f"the model is randomised: {measured}",
                         "randomness at test time (dropout left on, input noise) misleads attacks that take one "
                         "gradient: average gradients over several passes (expectation over transformation, "
                         "Athalye et al. 2018: attack.eot_samples=20, or attack=ensemble attack.version=rand) "
                         "and report accuracy over several passes")
        return Check(name, PASS, measured)

    def logits(self) -> Check:
        name, out = "logits", self.bench.logits
        if not torch.isfinite(out).all():
            return Check(name, WARN, "the model's outputs are not all finite",
                         "fix the model: attacks and accuracies need finite logits")
        sums = out.sum(1)
        probabilities = looks_like_probabilities(out)  # the test the runner's model contract makes before training
        measured = (f"outputs in [{out.min().item():.3g}, {out.max().item():.3g}], row sums in "
                    f"[{sums.min().item():.3g}, {sums.max().item():.3g}]")
        if probabilities:
            return Check(name, WARN, f"the outputs look like probabilities: {measured}",
                         "return the logits (drop the final softmax): cross-entropy of probabilities saturates "
                         "and hides the gradients attacks follow")
        return Check(name, PASS, measured)

    def all(self) -> list[Check]:
        return [
            self.single_step(), self.monotone(), self.large_budget(), self.more_iterations(), self.black_box(),
            self.gradients(), self.deterministic(), self.logits(),
        ]


def audit(
    model: nn.Module,
    attack: Attack,
    x: torch.Tensor,
    y: torch.Tensor,
    curve: pd.DataFrame,
    *,
    bounds: Bounds,
    samples: pd.DataFrame | None = None,
    n_samples: int = 100,
    batch_size: int = 500,
    square_queries: int = 1000,
    seed: int = 0,
) -> list[Check]:
    """Audit the evaluation of ``model`` by ``attack`` on ``(x, y)`` (see the module docstring).

    ``curve`` is the evaluation's curve (:func:`advrun.evaluation.robustness_curve`; rows of
    other attacks, e.g. ``certified``, are ignored) and ``samples`` its per-sample norms for a
    minimum-norm attack. The extra attacks run on the first ``n_samples`` samples; the short
    Square attack makes ``square_queries`` queries per sample.
    """
    n = min(n_samples, len(x))
    with _one_thread(x.device):
        bench = Bench(model, x[:n].detach(), y[:n].detach(), bounds, batch_size=batch_size, seed=seed)
        checks = Audit(bench, attack, curve, samples, square_queries).all()
    log.info("evaluation audit on %d samples: %d warnings", n, sum(c.status == WARN for c in checks))
    return checks


@contextlib.contextmanager
def _one_thread(device: torch.device) -> Iterator[None]:
    """One intra-op CPU thread: the audit's batches are small, and more threads only add
    synchronisation (several times slower on a busy machine)."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def checks_to_records(checks: list[Check]) -> list[dict[str, str]]:
    """The checks as JSON records ``{name, status, reason, advice}`` (``audit.json``)."""
    return [dataclasses.asdict(check) for check in checks]


def summary(checks: list[Check]) -> dict[str, Any]:
    """Counts per status and the names of the checks that warned (for ``metrics.json``)."""
    return {
        "warnings": sum(c.status == WARN for c in checks),
        "passed": sum(c.status == PASS for c in checks),
        "not_applicable": sum(c.status == NA for c in checks),
        "warned": [c.name for c in checks if c.status == WARN],
    }


_STYLES = {PASS: "green", WARN: "bold yellow", NA: "dim"}


def audit_table(checks: list[Check], title: str = "evaluation audit") -> Table:
    """The checks as a rich table: warnings in yellow, with what to try."""
    warnings = sum(c.status == WARN for c in checks)
    table = Table(title=f"{title}: {warnings} warning{'s' * (warnings != 1)}", caption=(
        "Checks of Carlini et al. 2019 and AutoAttack on the first samples; counts compared with a "
        "tolerance of max(2, 2%) samples."
    ))
    table.add_column("check")
    table.add_column("status")
    table.add_column("what was measured / what to try", overflow="fold")
    for check in checks:
        style = _STYLES[check.status]
        text = check.reason if check.status != WARN else f"{check.reason}. Try: {check.advice}"
        table.add_row(check.name, Text(check.status, style=style), Text(text, style=style if check.status == WARN else ""))
    return table


__all__ = [
    "Check", "audit", "audit_table", "checks_to_records", "requested", "single_step_attack", "stronger_attack",
    "summary", "tolerance", "whole_box_radius",
]
