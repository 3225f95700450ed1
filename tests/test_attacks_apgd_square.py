"""APGD, Square and the ensemble checked against their papers' formulas, closed forms on linear
models, PGD on the trained digits MLP, and the contract (budget, bounds, no gradients)."""

import dataclasses
import math

import pytest
import torch
from torch import nn

from advrun.attacks import APGD, FAB, FGSM, PGD, Ensemble, Square, ThreatModelAttack, lp_norm
from advrun.attacks.apgd import checkpoints, dlr_loss, dlr_targeted_loss
from advrun.attacks.base import Goal
from advrun.attacks.square import bump, l2_window, square_fraction
from advrun.config import build
from advrun.errors import InvalidValue
from tests.conftest import linear_model


def small_mlp(in_features=12, k=4):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, 16), nn.ReLU(), nn.Linear(16, k)).eval()


def robust_accuracy(model, x, y, result):
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    return (correct & ~result.success).float().mean().item()


# --- APGD -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n_iter", [1, 5, 37, 100, 1000])
def test_apgd_checkpoints_follow_the_formula(n_iter):
    """w_j = ceil(p_j N), p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), p_j <= 1."""
    p = [0.0, 0.22]
    while True:
        following = p[-1] + max(p[-1] - p[-2] - 0.03, 0.06)
        if round(following, 9) > 1:
            break
        p.append(following)
    expected = sorted({math.ceil(round(pj * n_iter, 9)) for pj in p})
    assert checkpoints(n_iter) == expected
    if n_iter == 100:
        assert expected == [0, 22, 41, 57, 70, 80, 87, 93, 99]


def test_dlr_losses_on_hand_made_logits():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.5], [0.0, 4.0, -1.0, 2.0]])
    # eq. 7: -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3); sorted rows: (3, 2, 1, .5), (4, 2, 0, -1)
    expected = torch.tensor([-(1.0 - 3.0) / (3.0 - 1.0), -(4.0 - 2.0) / (4.0 - 0.0)])
    torch.testing.assert_close(dlr_loss(logits, torch.tensor([1, 1])), expected)
    torch.testing.assert_close(dlr_loss(logits, torch.tensor([0, 2])), torch.tensor([-(3 - 2) / 2.0, -(-1 - 4) / 4.0]))
    # eq. 8: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)
    expected_t = torch.tensor([-(3.0 - 0.5) / (3.0 - 0.75), -(4.0 - 0.0) / (4.0 + 0.5)])
    torch.testing.assert_close(dlr_targeted_loss(logits, torch.tensor([0, 1]), torch.tensor([3, 0])), expected_t)
    # shift and scale invariant, unlike the cross-entropy
    labels = torch.tensor([2, 3])
    torch.testing.assert_close(dlr_loss(5 * logits + 7, labels), dlr_loss(logits, labels))


def test_dlr_needs_enough_classes():
    for loss, fewest in (("dlr", 3), ("dlr_targeted", 4)):
        with pytest.raises(InvalidValue, match="needs >= ") as info:
            APGD(loss=loss).check_classes(fewest - 1)
        assert info.value.field == "loss"
        APGD(loss=loss).check_classes(fewest)
    with pytest.raises(InvalidValue, match="needs >= 4"):  # a targeted DLR is DLR-T
        APGD(loss="dlr", target="random").check_classes(3)
    APGD(loss="ce").check_classes(2)


@pytest.mark.parametrize("norm, eps", [("inf", 0.05), (2, 0.15)])
def test_apgd_reaches_the_optimum_on_a_linear_model(norm, eps):
    """Two-class softmax regression, interior points: the worst perturbation is eps * sign(w_o - w_y)
    (Linf) or eps * (w_o - w_y) / ||w_o - w_y|| (L2). APGD fools exactly the samples the
    optimum fools and lands on the optimum for the others."""
    model, w, _ = linear_model(d=10, k=2, seed=3)
    x = torch.rand(200, 10) * 0.5 + 0.25
    y = torch.randint(0, 2, (200,))
    direction = torch.where(y[:, None] == 0, w[1] - w[0], w[0] - w[1])
    step = direction.sign() if norm == "inf" else direction / direction.norm(dim=1, keepdim=True)
    optimum = x + eps * step
    with torch.no_grad():
        fooled_at_optimum = model(optimum).argmax(1) != y
    assert 20 < fooled_at_optimum.sum() < 180
    result = APGD(eps=eps, norm=norm)(model, x, y)
    assert torch.equal(result.success, fooled_at_optimum)
    gap = (result.x_adv - optimum)[~fooled_at_optimum]
    if norm == "inf":  # the corner of the box is reached exactly: float error of x + eps (~6e-8)
        assert gap.abs().max() <= 1e-6
    else:  # the iterates approach the optimum on the sphere: a convergence error, not a float one.
        # Seeds 0-4, ATEN_CPU_CAPABILITY avx2 and default: largest distance 0.9e-3 to 1.8e-3 eps
        assert gap.norm(dim=1).max() <= 5e-3 * eps


@pytest.mark.parametrize("loss", ["ce", "dlr", "dlr_targeted"])
@pytest.mark.parametrize("norm", ["inf", 2])
def test_apgd_never_leaves_the_ball_or_the_bounds(norm, loss):
    torch.manual_seed(1)
    model = small_mlp()
    x = torch.rand(60, 12)
    x[:10], x[10:20] = 0.0, 1.0  # samples on the bounds
    y = torch.randint(0, 4, (60,))
    eps = 0.2 if norm == "inf" else 0.8
    x_adv, logits = APGD(eps=eps, norm=norm, loss=loss, n_iter=20, n_target_classes=3).perturb(model, x, Goal(y), (0.0, 1.0))
    torch.testing.assert_close(logits, model(x_adv))  # the logits handed back are those of x_adv
    assert torch.isfinite(x_adv).all() and x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert (lp_norm(x_adv - x, math.inf if norm == "inf" else 2.0) <= eps * (1 + 1e-5)).all()


@pytest.mark.parametrize("norm, budgets", [("inf", (0.05, 0.1)), (2, (0.5,))])
def test_apgd_is_at_least_as_strong_as_pgd_40(trained, norm, budgets):
    model, x, y = trained("mlp")
    for eps in budgets:
        torch.manual_seed(0)
        pgd = PGD(eps=eps, norm=norm, steps=40)(model, x, y)
        torch.manual_seed(0)
        apgd = APGD(eps=eps, norm=norm)(model, x, y)
        assert robust_accuracy(model, x, y, apgd) <= robust_accuracy(model, x, y, pgd)


def test_apgd_t_over_more_target_classes_only_adds_successes(trained):
    """The first target class runs identically (same seed); later ones attack the survivors."""
    model, x, y = trained("mlp")
    x, y = x[:250], y[:250]
    torch.manual_seed(2)
    one = APGD(eps=0.08, loss="dlr_targeted", n_iter=30, n_target_classes=1)(model, x, y)
    torch.manual_seed(2)
    four = APGD(eps=0.08, loss="dlr_targeted", n_iter=30, n_target_classes=4)(model, x, y)
    assert (four.success | ~one.success).all()
    assert four.success.sum() > one.success.sum()


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_targeted_apgd_reaches_the_targets(trained, loss):
    model, x, y = trained("mlp")
    torch.manual_seed(0)
    pgd = PGD(eps=0.15, steps=40, target="least_likely")(model, x, y)
    torch.manual_seed(0)
    apgd = APGD(eps=0.15, loss=loss, target="least_likely", n_iter=50)(model, x, y)
    assert torch.equal(apgd.success, apgd.predictions == apgd.targets)
    assert apgd.success.sum() >= pgd.success.sum() - 5


# --- Square ---------------------------------------------------------------------------------


def test_square_schedule_halves_p_at_the_papers_iterations():
    """For 10,000 queries p halves after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000."""
    values = [square_fraction(0.8, i, 10000) for i in (0, 10, 11, 50, 51, 200, 201, 8000, 8001, 9999)]
    assert values == [0.8, 0.8, 0.4, 0.4, 0.2, 0.2, 0.1, 0.8 / 256, 0.8 / 512, 0.8 / 512]
    assert square_fraction(0.8, 3, 1000) == 0.8 / 2  # rescaled: iteration 3 of 1,000 is 30 of 10,000
    assert square_fraction(0.8, 6, 1000) == 0.8 / 4


def test_square_l2_window_is_eq_3():
    # 5 x 5 bump: n = 2, the centre holds 1 + 1/4 + 1/9, the next ring 1/4 + 1/9, the border 1/9
    b = bump(5, 5)
    assert b[2, 2].item() == pytest.approx(1 + 1 / 4 + 1 / 9)
    assert b[1, 2].item() == pytest.approx(1 / 4 + 1 / 9) and b[1, 1].item() == pytest.approx(1 / 4 + 1 / 9)
    assert b[0, 0].item() == pytest.approx(1 / 9) and b[4, 3].item() == pytest.approx(1 / 9)
    window = l2_window(5)
    assert window.norm().item() == pytest.approx(1.0)
    assert (window[:2] > 0).all() and (window[2:] < 0).all()


class NoGrad(nn.Module):
    """Logits without a graph, and a record of whether autograd was on at each call."""

    def __init__(self, model):
        super().__init__()
        self.model, self.grad_enabled = model, []

    def forward(self, x):
        self.grad_enabled.append(torch.is_grad_enabled())
        return self.model(x).detach()


def test_square_uses_scores_only(trained):
    model, x, y = trained("mlp")
    spy = NoGrad(model)
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    result = Square(eps=0.1, n_queries=50)(spy, x[:100], y[:100])
    assert len(spy.grad_enabled) > 2 and not any(spy.grad_enabled)
    assert result.success.any()
    for p, g in zip(model.parameters(), grads):
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)


@pytest.mark.parametrize("norm, eps", [("inf", 0.2), (2, 1.0)])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 5, 7), (2,)])
def test_square_never_leaves_the_ball_or_the_bounds(norm, eps, shape):
    torch.manual_seed(0)
    d = math.prod(shape)
    model = small_mlp(in_features=d, k=3)
    x = torch.rand(40, *shape)
    x[:8], x[8:16] = 0.0, 1.0
    y = torch.randint(0, 3, (40,))
    x_adv, logits = Square(eps=eps, norm=norm, n_queries=60).perturb(model, x, Goal(y), (0.0, 1.0))
    torch.testing.assert_close(logits, model(x_adv))
    assert x_adv.shape == x.shape
    assert torch.isfinite(x_adv).all() and x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert (lp_norm(x_adv - x, math.inf if norm == "inf" else 2.0) <= eps * (1 + 1e-5)).all()


def test_square_l2_update_moves_mass_without_changing_the_norm():
    """Algorithm 3 puts the unused budget and the mass of W2 into W1: away from the bounds
    every proposal has norm exactly eps."""
    torch.manual_seed(0)
    attack = Square(eps=0.5, norm=2)
    x = torch.rand(30, 3, 12, 12) * 0.4 + 0.3
    current = attack._start(x, (0.0, 1.0))
    torch.testing.assert_close(lp_norm(current - x, 2.0), torch.full((30,), 0.5))
    for side in (3, 5, 11):
        proposal = attack._propose(x, current, side, (0.0, 1.0))
        torch.testing.assert_close(lp_norm(proposal - x, 2.0), torch.full((30,), 0.5))
        assert ((proposal != current).flatten(1).any(1)).all()
        current = proposal


@pytest.mark.parametrize("norm, eps, queries", [("inf", 0.2, 300), (2, 1.5, 500)])
def test_square_comes_close_to_pgd(trained, norm, eps, queries):
    model, x, y = trained("mlp")
    torch.manual_seed(0)
    pgd = PGD(eps=eps, norm=norm, steps=40)(model, x, y)
    torch.manual_seed(0)
    square = Square(eps=eps, norm=norm, n_queries=queries)(model, x, y)
    assert square.success.float().mean() >= pgd.success.float().mean() - 0.05


def test_square_targeted_reaches_the_target(trained):
    model, x, y = trained("mlp")
    x, y = x[:250], y[:250]
    torch.manual_seed(0)
    pgd = PGD(eps=0.2, steps=40, target=0)(model, x, y)
    result = Square(eps=0.2, n_queries=300, target=0)(model, x, y)
    assert torch.equal(result.success, result.predictions == 0)
    assert result.success.float().mean() >= pgd.success.float().mean() - 0.06


# --- Ensemble -------------------------------------------------------------------------------


def test_ensemble_is_robust_only_where_every_member_is(trained):
    """Deterministic members: per sample, the ensemble fools exactly where some member alone does."""
    model, x, y = trained("mlp")
    members = [
        FGSM(eps=0.0),
        PGD(eps=0.0, steps=10, random_start=False),
        PGD(eps=0.0, steps=3, step_scale=1.0, random_start=False),
    ]
    ensemble = Ensemble(eps=0.07, attacks=members)
    alone = [m.with_eps(0.07)(model, x, y).success for m in members]
    together = ensemble(model, x, y)
    assert torch.equal(together.success, alone[0] | alone[1] | alone[2])
    assert not torch.equal(alone[0], alone[1])  # the members differ, so the test can fail


def test_ensemble_is_at_least_as_strong_as_each_member(trained):
    model, x, y = trained("mlp")
    members = [
        APGD(eps=0.0, n_iter=20),
        APGD(eps=0.0, loss="dlr_targeted", n_iter=20, n_target_classes=3),
        Square(eps=0.0, n_queries=200),
    ]
    ensemble = Ensemble(eps=0.1, attacks=members)
    torch.manual_seed(0)
    together = robust_accuracy(model, x, y, ensemble(model, x, y))
    alone = []
    for member in ensemble.attacks:
        torch.manual_seed(0)
        alone.append(robust_accuracy(model, x, y, member(model, x, y)))
    assert together <= min(alone)
    torch.manual_seed(0)
    fooled_by = ensemble.fooled_by(model, x, y)
    torch.manual_seed(0)
    first = ensemble.attacks[0](model, x, y)
    assert torch.equal(fooled_by == 0, first.success)  # the first member runs alone on the whole batch
    assert set(fooled_by.unique().tolist()) <= {-1, 0, 1, 2}


def test_ensemble_passes_its_budget_and_checks_its_members():
    ensemble = Ensemble(eps=0.3, norm=2)
    assert ensemble.version == "standard"
    assert [type(m) for m in ensemble.attacks] == [APGD, APGD, FAB, Square]
    assert [m.loss for m in ensemble.attacks[:2]] == ["ce", "dlr_targeted"] and ensemble.attacks[1].n_target_classes == 9
    assert ensemble.attacks[2].n_target_classes == 9 and ensemble.attacks[2].n_restarts == 1
    assert ensemble.attacks[3].n_queries == 5000
    other = ensemble.with_eps(0.7)
    assert [m.eps for m in other.attacks] == [0.7, 0.7, math.inf, 0.7] and [m.norm for m in other.attacks] == [2.0] * 4
    assert [m.eps for m in ensemble.attacks] == [0.3, 0.3, math.inf, 0.3]
    with pytest.raises(InvalidValue) as info:
        Ensemble(eps=0.1, attacks=[APGD(eps=0.0), PGD(eps=0.0, norm=2)])
    assert info.value.field == "attacks.1.norm"
    with pytest.raises(InvalidValue) as info:
        Ensemble(eps=0.1, attacks=[APGD(eps=0.0, target=1)])
    assert info.value.field == "attacks.0.target"

    @dataclasses.dataclass
    class Rotation(ThreatModelAttack):
        pass

    with pytest.raises(InvalidValue, match="not an Lp attack"):
        Ensemble(eps=0.1, attacks=[Rotation(eps=0.0)])
    with pytest.raises(InvalidValue) as info:
        Ensemble(eps=0.1).check_classes(2)
    assert info.value.field == "attacks.1.loss"


def test_ensemble_versions_are_autoattacks():
    """standard: APGD-CE, APGD-T, FAB-T, Square; plus: APGD-CE, APGD-DLR, FAB (5 restarts each),
    Square, APGD-T, FAB-T; rand: APGD-CE, APGD-DLR with 20 samples per gradient."""
    labels = {v: [m.label for m in Ensemble(eps=0.1, version=v).attacks] for v in ("standard", "plus", "rand")}
    assert labels["standard"] == ["apgd-ce-linf", "apgd-t-linf", "fab-t-linf", "square-linf"]
    assert labels["plus"] == ["apgd-ce-linf", "apgd-dlr-linf", "fab-linf", "square-linf", "apgd-t-linf", "fab-t-linf"]
    assert labels["rand"] == ["apgd-ce-linf", "apgd-dlr-linf"]
    plus = Ensemble(eps=0.1, version="plus").attacks
    assert [m.n_restarts for m in plus[:3]] == [5, 5, 5] and [m.n_restarts for m in plus[4:]] == [1, 1]
    assert [m.eot_samples for m in Ensemble(eps=0.1, version="rand").attacks] == [20, 20]
    assert Ensemble(eps=0.1, attacks=[APGD(eps=0.0)]).version == "custom"
    for kwargs, field in (({"version": "fast"}, "version"), ({"version": "custom"}, "attacks")):
        with pytest.raises(InvalidValue) as info:
            Ensemble(eps=0.1, **kwargs)
        assert info.value.field == field


def test_a_minimum_norm_member_counts_only_within_the_budget(trained):
    """FAB-T in the ensemble: its points are projected into the ball, so that every sample it fools
    is fooled within eps, and it fools every sample that FAB-T alone fools within eps."""
    model, x, y = trained("mlp")
    x, y = x[:80], y[:80]
    fab = FAB(n_iter=30, n_target_classes=3)
    alone = fab(model, x, y)
    for eps in (0.05, 0.1):
        result = Ensemble(eps=eps, attacks=[fab])(model, x, y)
        assert (result.norms <= eps * (1 + 1e-5)).all()
        assert torch.equal(result.fooled_by == 0, result.success)
        assert (result.success | ~(alone.success & (alone.norms <= eps))).all()
        assert 0 < result.success.sum() < alone.success.sum()


def test_the_curve_shows_the_robust_accuracy_after_each_member(trained):
    from advrun.evaluation import robustness_curve

    model, x, y = trained("mlp")
    x, y = x[:100], y[:100]
    members = [APGD(eps=0.0, n_iter=10), FAB(n_iter=10, n_target_classes=2), Square(eps=0.0, n_queries=50)]
    curve = robustness_curve(model, Ensemble(eps=0.1, attacks=members), x, y, [0.0, 0.1], bounds=(0.0, 1.0),
                             batch_size=40).curve
    after = ["robust_after_apgd-ce-linf", "robust_after_fab-t-linf", "robust_after_square-linf"]
    assert list(curve.columns[-3:]) == after
    for _, row in curve.iterrows():
        values = row[after].tolist()
        assert values == sorted(values, reverse=True) and values[0] <= row.clean_accuracy
        assert values[-1] == pytest.approx(row.robust_accuracy)
    assert curve.iloc[0][after].tolist() == [curve.iloc[0].clean_accuracy] * 3


def test_the_report_shows_the_robust_accuracy_after_each_member():
    import pandas as pd

    from advrun.reporting.report import curve_table

    curve = pd.DataFrame([{"attack": "ensemble", "norm": "linf", "eps": 0.3, "robust_accuracy": 0.8,
                           "robust_after_apgd-ce-linf": 0.85, "robust_after_fab-t-linf": 0.8}])
    table = curve_table(curve)
    text = str(table)
    assert "robust after apgd-ce-linf" in text and "robust after fab-t-linf" in text and "85.00%" in text


def test_ensemble_config_builds_versions_and_custom_lists(make_cfg):
    ensemble = build(make_cfg("attack=ensemble", "attack.norm=2").attack, "attack", eps=0.4)
    assert ensemble.version == "standard" and [type(m) for m in ensemble.attacks] == [APGD, APGD, FAB, Square]
    assert [m.eps for m in ensemble.attacks] == [0.4, 0.4, math.inf, 0.4] and {m.norm for m in ensemble.attacks} == {2.0}
    plus = build(make_cfg("attack=ensemble", "attack.version=plus").attack, "attack", eps=0.1)
    assert len(plus.attacks) == 6
    members = ("[{_target_: advrun.attacks.APGD, eps: 0.0, norm: '${...norm}', n_iter: 3},"
               " {_target_: advrun.attacks.FAB, eps: null, norm: '${...norm}', n_iter: 3, n_target_classes: 2}]")
    custom = build(make_cfg("attack=ensemble", "attack.norm=2", "attack.version=custom", f"attack.attacks={members}").attack,
                   "attack", eps=0.4)
    assert [type(m) for m in custom.attacks] == [APGD, FAB] and custom.attacks[0].n_iter == 3
    assert [m.norm for m in custom.attacks] == [2.0, 2.0] and custom.attacks[1].n_target_classes == 2


# --- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize("cls, kwargs, field", [
    (APGD, {"loss": "cw"}, "loss"), (APGD, {"n_iter": 0}, "n_iter"), (APGD, {"n_restarts": 1.5}, "n_restarts"),
    (APGD, {"n_target_classes": 0}, "n_target_classes"), (APGD, {"norm": 1}, "norm"),
    (Square, {"n_queries": 0}, "n_queries"), (Square, {"p_init": 0.0}, "p_init"), (Square, {"p_init": 1.5}, "p_init"),
    (Square, {"loss": "dlr"}, "loss"), (Square, {"norm": 1}, "norm"), (Ensemble, {"attacks": []}, "attacks"),
    (Ensemble, {"version": "plus+"}, "version"),
])
def test_invalid_settings_name_the_field(cls, kwargs, field):
    with pytest.raises(InvalidValue) as info:
        cls(**kwargs)
    assert info.value.field == field
