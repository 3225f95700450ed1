"""The evaluation audit: an ordinary model passes; masked, randomised and probability-output
models, a misconfigured attack and a curve that falls with eps are flagged."""

import json

import pandas as pd
import pytest
import torch
from rich.console import Console
from torch import nn

from advrun import audit, experiment
from advrun.attacks import PGD
from advrun.attacks.apgd import APGD
from advrun.attacks.bim import BIM
from advrun.attacks.deepfool import DeepFool
from advrun.attacks.ensemble import Ensemble
from advrun.attacks.spatial import Spatial
from advrun.attacks.square import Square
from advrun.errors import ConfigError
from advrun.evaluation import CURVE_COLUMNS, robustness_curve
from tests.conftest import TINY

pytestmark = pytest.mark.usefixtures("one_thread")

GRID = [0.0, 0.05, 0.1, 0.2, 0.3]
N = 150  # samples of the curve; the audit uses the first 100


class InputQuantised(nn.Module):
    """``f(round(x * levels) / levels)``: piecewise constant in x, so every input gradient is exactly 0."""

    def __init__(self, model: nn.Module, levels: int = 8):
        super().__init__()
        self.model, self.levels = model, levels

    def forward(self, x):
        return self.model(torch.round(x * self.levels) / self.levels)


class Probabilities(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return torch.softmax(self.model(x), dim=1)


class AlwaysDropout(nn.Module):
    """Dropout on the inputs that stays on in eval mode (``training=True`` hard-wired)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(nn.functional.dropout(x, 0.2, training=True))


def run_audit(model, attack, x, y, grid=GRID, **kwargs):
    evaluation = robustness_curve(model, attack, x, y, grid, bounds=(0.0, 1.0), batch_size=500)
    checks = audit.audit(model, attack, x, y, evaluation.curve, bounds=(0.0, 1.0), samples=evaluation.samples, **kwargs)
    assert [c.name for c in checks] == [
        "single_step", "monotone", "large_budget", "more_iterations", "black_box", "gradients", "deterministic", "logits",
    ]
    return {c.name: c for c in checks}


def statuses(checks):
    return {name: c.status for name, c in checks.items()}


def test_an_ordinary_model_passes_every_check(trained):
    model, x, y = trained("mlp")
    checks = run_audit(model, PGD(eps=0.1, steps=40), x[:N], y[:N])
    assert statuses(checks) == dict.fromkeys(checks, "pass"), checks
    assert all(c.advice == "" for c in checks.values())


def test_a_gradient_masked_model_is_flagged(trained):
    """Quantised inputs: the loss is piecewise constant, its gradient 0 everywhere; PGD is blind,
    the score-based Square attack is not."""
    model, x, y = trained("mlp")
    masked = InputQuantised(model)
    checks = run_audit(masked, PGD(eps=0.1, steps=40), x[:N], y[:N])
    assert checks["gradients"].status == "warn" and "100 exactly zero" in checks["gradients"].reason
    assert "warn" in (checks["single_step"].status, checks["black_box"].status)
    assert checks["black_box"].status == "warn"
    assert checks["large_budget"].status == "warn"  # PGD at eps 1 (any image) cannot fool every sample
    assert checks["logits"].status == "pass" and checks["deterministic"].status == "pass"


def test_the_ensemble_is_flagged_when_its_square_member_beats_the_gradient_members(trained):
    """AutoAttack's check_square_sr: samples that only the black-box member fools."""
    model, x, y = trained("mlp")
    ensemble = Ensemble(eps=0.1, attacks=[APGD(eps=0.1, n_iter=10), Square(eps=0.1, n_queries=300)])
    for net, expected in ((model, "pass"), (InputQuantised(model), "warn")):
        checks = run_audit(net, ensemble, x[:N], y[:N], grid=[0.0, 0.1, 0.3])
        assert checks["black_box"].status == expected, checks["black_box"]
    swapped = Ensemble(eps=0.1, attacks=[Square(eps=0.1, n_queries=50), APGD(eps=0.1, n_iter=5)])
    assert run_audit(model, swapped, x[:60], y[:60], grid=[0.1])["black_box"].status == "n/a"


def test_probabilities_instead_of_logits_are_flagged(trained):
    model, x, y = trained("mlp")
    bench = audit.Bench(Probabilities(model), x[:100], y[:100], (0.0, 1.0))
    check = audit.Audit(bench, PGD(), pd.DataFrame(columns=CURVE_COLUMNS), None, 100).logits()
    assert check.status == "warn" and "probabilities" in check.reason and check.advice


def test_dropout_left_on_in_eval_mode_is_flagged(trained):
    model, x, y = trained("mlp")
    for net, expected in ((model, "pass"), (AlwaysDropout(model), "warn")):
        bench = audit.Bench(net, x[:100], y[:100], (0.0, 1.0))
        check = audit.Audit(bench, PGD(), pd.DataFrame(columns=CURVE_COLUMNS), None, 100).deterministic()
        assert check.status == expected, check


def curve_with(successes, eligible=100):
    return pd.DataFrame([{
        "attack": "pgd", "norm": "linf", "eps": eps, "n_samples": eligible, "n_correct": eligible, "n_eligible": eligible,
        "n_success": s, "success_rate": s / eligible, "robust_accuracy": (eligible - s) / eligible,
    } for eps, s in zip([0.0, 0.1, 0.2, 0.3], successes)], columns=CURVE_COLUMNS)


@pytest.mark.parametrize("successes, expected", [
    ([0, 50, 30, 90], "warn"),   # 50% at eps 0.1, 30% at 0.2
    ([0, 50, 90, 40], "warn"),   # a drop below the best of any smaller budget
    ([0, 50, 49, 90], "pass"),   # one sample less: within the tolerance of 2 samples
    ([0, 50, 50, 90], "pass"),
])
def test_a_success_rate_that_falls_as_eps_grows_is_flagged(trained, successes, expected):
    model, x, y = trained("mlp")
    bench = audit.Bench(model, x[:10], y[:10], (0.0, 1.0))
    check = audit.Audit(bench, PGD(), curve_with(successes), None, 100).monotone()
    assert check.status == expected, check
    if expected == "warn":
        assert "decreases" in check.reason and check.advice


def test_a_misconfigured_iterative_attack_loses_to_one_step(trained):
    """PGD with a step of 1e-4 and no random start hardly moves: FGSM at the same budget, and
    Square, beat it."""
    model, x, y = trained("mlp")
    weak = PGD(eps=0.1, steps=5, step_size=1e-4, random_start=False)
    checks = run_audit(model, weak, x[:100], y[:100], grid=[0.0, 0.1])
    assert checks["single_step"].status == "warn" and "fgsm-linf" in checks["single_step"].reason
    assert checks["black_box"].status == "warn"


def test_checks_that_do_not_apply_say_why(trained):
    model, x, y = trained("mlp")
    minimum = run_audit(model, DeepFool(norm=2, eps=1.0), x[:100], y[:100], grid=[0.0, 0.5, 1.0, 2.0])
    assert minimum["monotone"].status == "n/a" and "by construction" in minimum["monotone"].reason
    assert minimum["more_iterations"].status == "n/a"
    assert minimum["large_budget"].status == "pass" and "unbounded deepfool" in minimum["large_budget"].reason
    assert minimum["gradients"].status == "pass"
    spatial = run_audit(model, Spatial(rotations=3, translations=1), x[:40], y[:40], grid=[0.0])
    for name in ("single_step", "monotone", "large_budget", "more_iterations", "black_box"):
        assert spatial[name].status == "n/a" and "not an Lp attack" in spatial[name].reason
    assert spatial["gradients"].status == "pass"


def test_stronger_attack_doubles_iterations_and_restarts():
    pgd = audit.stronger_attack(PGD(eps=0.1, steps=40, restarts=1))
    assert (pgd.steps, pgd.restarts, pgd.alpha) == (80, 2, pytest.approx(2.5 * 0.1 / 80))
    bim = BIM(eps=0.1)  # Kurakin's schedule: ceil(min(25.5 + 4, 1.25 * 25.5)) = 30 steps of 1/255
    assert audit.stronger_attack(bim).iterations == 60 and audit.stronger_attack(bim).restarts == 1
    assert audit.stronger_attack(APGD(n_iter=100)).n_iter == 200
    members = audit.stronger_attack(Ensemble(eps=0.1)).attacks
    assert [m.n_iter for m in members[:3]] + [members[3].n_queries] == [200, 200, 200, 10000]  # APGDs, FAB-T, Square
    assert audit.single_step_attack(PGD(eps=0.3, norm=2)).label == "fgm-l2"
    assert audit.whole_box_radius(2.0, (0.0, 1.0), 64) == 8.0 and audit.tolerance(450) == 9


def test_the_audit_leaves_the_random_stream_alone(trained):
    model, x, y = trained("mlp")
    attack = PGD(eps=0.1, steps=5)
    curve = robustness_curve(model, attack, x[:50], y[:50], [0.0, 0.1], bounds=(0.0, 1.0), batch_size=500).curve
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    first = audit.audit(model, attack, x[:50], y[:50], curve, bounds=(0.0, 1.0), seed=1)
    assert torch.equal(torch.rand(3), expected)
    assert audit.audit(model, attack, x[:50], y[:50], curve, bounds=(0.0, 1.0), seed=1) == first  # its own seed


def test_table_shows_warnings_in_yellow():
    checks = [audit.Check("gradients", "warn", "100 exactly zero", "use square"), audit.Check("logits", "pass", "ok"),
              audit.Check("monotone", "n/a", "minimum-norm")]
    console = Console(record=True, width=120, color_system="truecolor", force_terminal=True)
    console.print(audit.audit_table(checks))
    text, html = console.export_text(clear=False), console.export_html(inline_styles=True)
    assert "1 warning" in text and "Try: use square" in text
    assert "color: #808000" in html  # rich's yellow
    assert audit.checks_to_records(checks)[0] == {
        "name": "gradients", "status": "warn", "reason": "100 exactly zero", "advice": "use square"}
    with pytest.raises(ValueError):
        audit.Check("x", "fail", "no such status")


def test_a_run_writes_audit_json_and_counts_warnings(make_cfg, tmp_path):
    metrics = experiment.run(make_cfg(*TINY, "attack.steps=10", "eval.audit=true"), tmp_path / "on")
    records = json.loads((tmp_path / "on" / "audit.json").read_text())
    assert len(records) == 8 and all(set(r) == {"name", "status", "reason", "advice"} for r in records)
    assert all(r["status"] in ("pass", "warn", "n/a") for r in records)
    assert metrics["audit"]["warnings"] == sum(r["status"] == "warn" for r in records)
    assert metrics["audit"]["warned"] == [r["name"] for r in records if r["status"] == "warn"]
    metrics = experiment.run(make_cfg(*TINY, "attack.steps=2", "eval.audit=false"), tmp_path / "off")
    assert "audit" not in metrics and not (tmp_path / "off" / "audit.json").exists()


def test_eval_audit_must_be_a_boolean(make_cfg, tmp_path):
    with pytest.raises(ConfigError) as info:
        experiment.run(make_cfg(*TINY, "eval.audit=sometimes"), tmp_path)
    assert info.value.key == "eval.audit" and not (tmp_path / "model.pt").exists()
