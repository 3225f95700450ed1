"""The kinds of attack are types: a tiny attack of each kind, written outside advrun, runs
through the evaluation and the audit as its kind says; every attack of the menu is of the kind
its documentation names."""

import math
import re
from dataclasses import dataclass, field

import pandas as pd
import pytest
import torch
from hydra.utils import get_class

from advrun import audit
from advrun.attacks import Attack, BoundedAttack, Ensemble, MinimumNormAttack, ThreatModelAttack
from advrun.attacks.base import input_gradient
from advrun.errors import AttackCheckError
from advrun.evaluation import robustness_curve
from tests.conftest import REPO, groups

pytestmark = pytest.mark.usefixtures("one_thread")

BOUNDS = (0.0, 1.0)
#: Budgets between the scales of SmallestSignStep (multiples of 0.05), so no norm ties a budget.
GRID = [0.0, 0.03, 0.08, 0.13, 0.33]
N, BATCH = 100, 50  # two batches
BUDGET_CHECKS = ("single_step", "monotone", "large_budget", "more_iterations", "black_box")


@dataclass
class SignSteps(BoundedAttack):
    """``steps`` signed gradient steps of eps/steps in Linf, kept in the ball and the box."""

    name = "sign_steps"
    norms = (math.inf,)

    steps: int = 5
    seen: list = field(default_factory=list, compare=False, repr=False)  # the budget of every call

    def perturb(self, model, x, goal, bounds):
        self.seen.append(self.eps)
        x_adv = x.clone()
        for _ in range(self.steps):
            grad, _ = input_gradient(lambda z: goal.loss(model(z)), x_adv)
            x_adv = (x + (x_adv + self.eps / self.steps * grad.sign() - x).clamp(-self.eps, self.eps)).clamp(*bounds)
        return x_adv


@dataclass
class SmallestSignStep(MinimumNormAttack):
    """Along the sign of the input gradient at x, the smallest multiple of 1/``scales`` that reaches the goal."""

    name = "smallest_sign_step"
    norms = (math.inf,)

    scales: int = 20
    seen: list = field(default_factory=list, compare=False, repr=False)

    def perturb(self, model, x, goal, bounds):
        self.seen.append(self.eps)
        grad, _ = input_gradient(lambda z: goal.loss(model(z)), x)
        best, found = x.clone(), torch.zeros(len(x), dtype=torch.bool)
        for t in torch.arange(1, self.scales + 1) / self.scales:
            candidate = (x + t * grad.sign()).clamp(*bounds)
            with torch.no_grad():
                reached = goal.reached(model(candidate)) & ~found
            best[reached], found = candidate[reached], found | reached
        return best


@dataclass
class ShiftRight(ThreatModelAttack):
    """Every image rolled one pixel to the right: a change of large norm, whatever ``eps``."""

    name = "shift_right"
    seen: list = field(default_factory=list, compare=False, repr=False)

    def perturb(self, model, x, goal, bounds):
        self.seen.append(self.eps)
        return torch.roll(x, 1, dims=-1)


def evaluate(model, attack, x, y):
    """The curve (and per-sample table) over GRID, and the audit's checks by name."""
    evaluation = robustness_curve(model, attack, x, y, GRID, bounds=BOUNDS, batch_size=BATCH)
    checks = audit.audit(model, attack, x, y, evaluation.curve, bounds=BOUNDS, samples=evaluation.samples,
                         square_queries=100)
    return evaluation, {check.name: check for check in checks}


@pytest.fixture
def digits_model(trained):
    model, x, y = trained("logreg")
    return model, x[:N], y[:N]


def test_a_bounded_attack_runs_once_per_budget_and_gets_every_check(digits_model):
    model, x, y = digits_model
    attack = SignSteps(eps=0.08)
    evaluation, checks = evaluate(model, attack, x, y)
    curve = evaluation.curve
    assert evaluation.samples is None and curve["eps"].tolist() == GRID
    # the evaluation's runs: each positive budget on both batches (at budget 0 nothing runs), in order
    assert attack.seen[: 2 * (len(GRID) - 1)] == [eps for eps in GRID[1:] for _ in range(2)]
    assert curve["norm_q50"].isna().all()
    assert curve["robust_accuracy"].iloc[0] == curve["clean_accuracy"].iloc[0] > curve["robust_accuracy"].iloc[-1]
    assert all(checks[name].status != "n/a" for name in BUDGET_CHECKS), checks
    assert "twice the iterations" in checks["more_iterations"].reason  # steps found and doubled
    # a composite attack of one member gives that member's curve
    ensemble = robustness_curve(model, Ensemble(eps=0.08, attacks=[SignSteps(eps=0.0)]), x, y, GRID, bounds=BOUNDS,
                                batch_size=BATCH).curve
    assert ensemble["robust_accuracy"].tolist() == curve["robust_accuracy"].tolist()


def test_a_minimum_norm_attack_runs_once_and_the_curve_is_read_off_its_norms(digits_model):
    model, x, y = digits_model
    attack = SmallestSignStep(eps=0.08)
    evaluation, checks = evaluate(model, attack, x, y)
    curve, samples = evaluation.curve, evaluation.samples
    # one run of two batches; the audit reads the evaluation's per-sample norms instead of running it again
    assert attack.seen == [0.08, 0.08] and curve["eps"].tolist() == GRID
    fooled = samples["clean_correct"] & samples["success"]
    assert fooled.sum() > 0 and (samples.loc[~samples["success"], "norm"] == math.inf).all()
    for _, row in curve.iterrows():
        assert row["n_success"] == (fooled & (samples["norm"] <= row["eps"])).sum()
    assert curve["norm_q50"].iloc[0] == pytest.approx(samples.loc[fooled, "norm"].quantile(0.5), rel=1e-6)
    assert checks["monotone"].status == "n/a" and "by construction" in checks["monotone"].reason
    assert checks["more_iterations"].status == "n/a"
    assert f"unbounded {attack.label}" in checks["large_budget"].reason
    assert checks["single_step"].status != "n/a" and checks["black_box"].status != "n/a"


def test_a_threat_model_attack_gives_one_row_and_no_budget_checks(digits_model):
    model, x, y = digits_model
    attack = ShiftRight(eps=0.01)  # the shift's norm is far above eps: not checked
    evaluation, checks = evaluate(model, attack, x, y)
    curve = evaluation.curve
    assert attack.seen == [0.01, 0.01] and len(curve) == 1 and math.isnan(curve["eps"].iloc[0])
    assert curve["median_norm"].iloc[0] > 0.01 and evaluation.samples is None
    for name in BUDGET_CHECKS:
        assert checks[name].status == "n/a" and f"{attack.label} is not an Lp attack" in checks[name].reason
    assert checks["gradients"].status == "pass"


@pytest.mark.parametrize("attack, headline, budget, drawn, certified", [
    (SignSteps(eps=0.1), 0.1, "eps 0.1", 0.1, math.inf),
    (SignSteps(eps=0.0), 0.0, "eps 0", None, math.inf),
    (SmallestSignStep(eps=0.2), 0.2, "its minimal perturbation", 0.3, math.inf),
    (ShiftRight(eps=0.1), None, "its threat model", None, None),
])
def test_what_each_kind_tells_the_runner_the_figures_and_the_certification(attack, headline, budget, drawn, certified):
    """``headline``: the budget of the run's headline numbers, ``budget``: how figures state it,
    ``drawn``: the budget of a figure's optimal perturbation given the data set's 0.3, ``certified``:
    the norm a certificate bounds the attack in."""
    rows = pd.DataFrame({"eps": [0.0, 0.1, 0.2], "robust_accuracy": [0.9, 0.5, 0.2]})
    if headline is None:  # the one row of an attack without budget
        rows = pd.DataFrame({"eps": [math.nan], "robust_accuracy": [0.4]})
    assert attack.headline_eps == headline
    assert attack.headline_row(rows)["robust_accuracy"] == {0.0: 0.9, 0.1: 0.5, 0.2: 0.2, None: 0.4}[headline]
    assert attack.describe_budget() == budget
    assert attack.illustration_eps(0.3) == drawn
    assert attack.certificate_norm == certified


def test_the_contract_checks_the_budget_of_a_bounded_attack_only(digits_model):
    model, x, y = digits_model

    @dataclass
    class TooFar(BoundedAttack):
        def perturb(self, model, x, goal, bounds):
            return (x + 2 * self.eps).clamp(*bounds)

    with pytest.raises(AttackCheckError, match="exceeds eps"):
        TooFar(eps=0.05)(model, x[:5], y[:5])
    assert ShiftRight(eps=0.05)(model, x[:5], y[:5]).norms.min() > 0.05


def documented_kinds() -> dict[type, set[str]]:
    """Per kind, the options of the table under its heading in docs/attacks.md (``none`` left out)."""
    headings = {"Bounded attacks": BoundedAttack, "Minimum-norm attacks": MinimumNormAttack,
                "Other threat models": ThreatModelAttack}
    documented: dict[type, set[str]] = {}
    for section in (REPO / "docs" / "attacks.md").read_text().split("\n## ")[1:]:
        heading, _, body = section.partition("\n")
        if heading.strip() in headings:
            options = set(re.findall(r"^\| `(\w+)`", body, flags=re.MULTILINE)) - {"none"}
            documented[headings[heading.strip()]] = options
    return documented


#: Options whose kind is that of the attack they wrap (docs/attacks.md); tests/test_transfer.py checks them.
WRAPPERS = {"transfer"}


def test_every_menu_attack_is_of_the_kind_its_documentation_names(make_cfg):
    documented = documented_kinds()
    assert set(documented) == {BoundedAttack, MinimumNormAttack, ThreatModelAttack} and all(documented.values())
    assert set(groups()["attack"]) == set().union(*documented.values()) | {"none"}  # each option in one table
    for kind, options in documented.items():
        for option in options - WRAPPERS:
            cls = get_class(make_cfg(f"attack={option}").attack._target_)
            assert [k for k in documented if issubclass(cls, k)] == [kind], option


def test_an_attack_must_have_a_kind_and_the_old_flags_say_what_replaced_them():
    @dataclass
    class Kindless(Attack):
        pass

    with pytest.raises(TypeError, match="must derive from a kind of attack: BoundedAttack, MinimumNormAttack"):
        Kindless()
    with pytest.raises(TypeError, match="'minimum_norm' is gone; derive from the kind"):
        type("Old", (BoundedAttack,), {"minimum_norm": True})
    with pytest.raises(TypeError, match="'lp_bounded' is gone"):
        type("Old", (BoundedAttack,), {"lp_bounded": False})
