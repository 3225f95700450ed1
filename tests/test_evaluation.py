"""The evaluation's bookkeeping on hand-made attacks with known outcomes."""

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from advrun.attacks import BoundedAttack, MinimumNormAttack, ThreatModelAttack
from advrun.evaluation import SAMPLE_COLUMNS, robustness_curve

# pytest.approx without a tolerance (rel 1e-6) compares fractions k / n of small counts, exact up
# to the division's rounding, and float32 norms of differences of float32 inputs in [0, 1]: the
# inputs round by half an ulp (<= 6e-8), e.g. |0.49 - 0.55| is 0.06 within 4e-8 relative and a
# shift by 0.12 is 0.12 within 1.2e-7 relative (measured).


class Logits(nn.Module):
    """Two classes whose logits are the two input coordinates."""

    def forward(self, x):
        return x


def margin_data():
    # label 0 where x0 > x1 by a margin 2m; the last two samples are misclassified
    m = torch.tensor([0.05, 0.1, 0.15, 0.2, 0.25, 0.3, -0.1, -0.2])
    x = torch.stack([0.5 + m, 0.5 - m], dim=1)
    return x, torch.zeros(8, dtype=torch.long), m


@dataclass
class CrossToOne(MinimumNormAttack):
    """Moves every sample to just past the boundary, (0.49, 0.51): Linf norm |m| + 0.01;
    samples with margin m = 0.3 (x0 = 0.8) are left unchanged (the attack 'fails' on them)."""

    name = "cross"

    def perturb(self, model, x, goal, bounds):
        x_adv = torch.tensor([0.49, 0.51]).expand_as(x).clone()
        fail = (x[:, 0] - 0.8).abs() < 1e-6  # float32 0.5 + 0.3 is 0.8 within an ulp (6e-8); margins are 0.05 apart
        x_adv[fail] = x[fail]
        return x_adv


def test_minimum_norm_curve_is_read_off_the_norms():
    x, y, m = margin_data()
    attack = CrossToOne(norm="inf")
    epsilons = [0.0, 0.1, 0.2, 0.5]
    evaluation = robustness_curve(Logits(), attack, x, y, epsilons, bounds=(0.0, 1.0), batch_size=3)
    curve = evaluation.curve.set_index("eps")
    norms = m + 0.01
    correct = m > 0
    for eps in epsilons:
        fooled = correct & (norms <= eps) & (torch.arange(8) != 5)
        assert curve.loc[eps, "robust_accuracy"] == pytest.approx((correct & ~fooled).sum().item() / 8)
        assert curve.loc[eps, "success_rate"] == pytest.approx(fooled.sum().item() / correct.sum().item())
    assert curve.loc[0.5, "robust_accuracy"] == pytest.approx(1 / 8)  # only the failed sample survives
    samples = evaluation.samples
    assert not samples.loc[5, "success"] and math.isinf(samples.loc[5, "norm"])
    assert samples.loc[0, "norm"] == pytest.approx(0.06)
    # the norm quantiles cover the successful, initially correct samples: 0.06 .. 0.26
    assert curve.loc[0.0, "norm_q50"] == pytest.approx(torch.tensor([0.06, 0.11, 0.16, 0.21, 0.26]).quantile(0.5).item())


@dataclass
class ShiftBy(BoundedAttack):
    """A bounded attack that moves the first coordinate down by eps (second up by eps)."""

    name = "shift"

    def perturb(self, model, x, goal, bounds):
        return (x + torch.tensor([-self.eps, self.eps])).clamp(*bounds)


def test_bounded_curve_runs_once_per_budget():
    x, y, m = margin_data()
    curve = robustness_curve(Logits(), ShiftBy(), x, y, [0.0, 0.12, 0.22], bounds=(0.0, 1.0), batch_size=4).curve
    assert curve["robust_accuracy"].tolist() == pytest.approx([6 / 8, 4 / 8, 2 / 8])
    assert curve["n_correct"].tolist() == [6, 6, 6]
    assert curve["median_norm"].iloc[1] == pytest.approx(0.12)


@dataclass
class ToTarget(MinimumNormAttack):
    """A targeted attack that moves each sample onto its target class outright."""

    name = "to_target"

    def perturb(self, model, x, goal, bounds):
        return torch.nn.functional.one_hot(goal.labels, 3).float() * 0.9 + 0.05


def test_targeted_success_excludes_samples_already_of_the_target_class():
    x = torch.eye(3).repeat(4, 1) * 0.8 + 0.1  # 12 samples, labels 0, 1, 2, 0, 1, 2 ...
    y = torch.arange(3).repeat(4)
    attack = ToTarget(target=1)
    curve = robustness_curve(Logits(), attack, x, y, [2.0], bounds=(0.0, 1.0), batch_size=5).curve.iloc[0]
    assert curve["n_correct"] == 12 and curve["n_eligible"] == 8  # the 4 samples of class 1 are excluded
    assert curve["success_rate"] == 1.0 and curve["robust_accuracy"] == pytest.approx(4 / 12)
    assert curve["target"] == "1"


@dataclass
class Swap(ThreatModelAttack):
    """Outside the Lp threat model: swaps the coordinates, whatever the budget."""

    name = "swap"

    def perturb(self, model, x, goal, bounds):
        return x.flip(1)


def test_attacks_outside_the_lp_model_give_one_row():
    x, y, m = margin_data()
    curve = robustness_curve(Logits(), Swap(eps=0.01), x, y, [0.0, 0.1], bounds=(0.0, 1.0), batch_size=8).curve
    assert len(curve) == 1 and math.isnan(curve["eps"].iloc[0])
    assert curve["robust_accuracy"].iloc[0] == 0.0


# ----------------------------------------------------------------------------- per-sample results


def _counted(attack, rows, eps):
    """The rows of ``rows`` that count at the curve's budget ``eps``, and per row whether the attack
    reached its goal within ``eps`` and whether the sample stayed correct, by the rule of samples.csv."""
    if rows["eps"].isna().all():  # one run: a threat-model attack (eps NaN), or a minimum-norm attack read off norms
        within = (torch.ones(len(rows), dtype=torch.bool) if math.isnan(eps)
                  else attack.within_budget(torch.tensor(rows["perturbation_norm"].to_numpy()), eps))
        at = rows
    else:
        at = rows[rows["eps"] == eps]
        within = torch.ones(len(at), dtype=torch.bool)
    within = within.numpy()
    success = at["success"].to_numpy() & within
    # a minimum-norm row is robust at any budget; at budget eps also where its norm is beyond eps
    robust = at["robust"].to_numpy() | (at["clean_correct"].to_numpy() & ~within)
    return at, success, robust


def three_classes():
    x = torch.eye(3).repeat(4, 1) * 0.8 + 0.1  # 12 samples, labels 0, 1, 2, 0, 1, 2 ...
    y = torch.arange(3).repeat(4)
    y[-1] = 0  # one sample misclassified
    return x, y


@pytest.mark.parametrize("attack, data, epsilons", [
    (ShiftBy(), margin_data, [0.0, 0.12, 0.22]),
    (CrossToOne(norm="inf"), margin_data, [0.0, 0.07, 0.1, 0.2, 0.5]),
    (Swap(eps=0.01), margin_data, [0.0, 0.1]),
    (ToTarget(target=1), three_classes, [0.5, 2.0]),
    (ShiftBy(target=1), margin_data, [0.0, 0.22]),
], ids=["bounded", "minimum-norm", "threat-model", "targeted-minimum-norm", "targeted-bounded"])
def test_per_sample_rows_count_exactly_what_the_curve_counts(attack, data, epsilons):
    x, y = data()[:2]
    evaluation = robustness_curve(Logits(), attack, x, y, epsilons, bounds=(0.0, 1.0), batch_size=5)
    rows = evaluation.per_sample
    assert list(rows.columns) == SAMPLE_COLUMNS
    runs = rows.groupby("eps", dropna=False)
    assert all(group["index"].tolist() == list(range(len(x))) for _, group in runs)
    assert len(rows) == len(x) * rows["eps"].nunique(dropna=False)
    for record in evaluation.curve.to_dict("records"):
        at, success, robust = _counted(attack, rows, record["eps"])
        eligible = at["eligible"].to_numpy()
        assert at["clean_correct"].sum() == record["n_correct"]
        assert eligible.sum() == record["n_eligible"]
        assert (success & eligible).sum() == record["n_success"], record["eps"]
        assert robust.sum() == record["n_robust"] == round(record["robust_accuracy"] * len(x))
        assert at["label"].tolist() == y.tolist()
        assert at["clean_prediction"].tolist() == x.argmax(1).tolist()  # Logits: the inputs are the logits


def test_per_sample_rows_of_each_kind_of_attack():
    x, y, m = margin_data()
    bounded = robustness_curve(Logits(), ShiftBy(), x, y, [0.0, 0.12], bounds=(0.0, 1.0), batch_size=3).per_sample
    assert bounded["eps"].tolist() == [0.0] * 8 + [0.12] * 8
    moved = bounded[bounded["eps"] == 0.12]
    assert moved["perturbation_norm"].tolist() == pytest.approx([0.12] * 8)
    # margins 0.05 and 0.1 are crossed by a shift of 0.12 in each coordinate, the larger ones are not
    assert moved["success"].tolist() == [True, True, False, False, False, False, True, True]
    assert moved["robust"].tolist() == [False, False, True, True, True, True, False, False]
    assert moved["adversarial_prediction"].tolist() == [1, 1, 0, 0, 0, 0, 1, 1]
    assert moved["target"].isna().all() and (moved["fooled_by"] == "").all()

    minimal = robustness_curve(Logits(), CrossToOne(norm="inf"), x, y, [0.0, 0.1], bounds=(0.0, 1.0),
                               batch_size=3).per_sample
    assert len(minimal) == 8 and minimal["eps"].isna().all()
    assert minimal["perturbation_norm"].tolist()[:5] == pytest.approx((m[:5] + 0.01).tolist())
    assert not minimal.loc[5, "success"] and math.isinf(minimal.loc[5, "perturbation_norm"])  # failed: no norm
    assert minimal.loc[5, "robust"] and not minimal.loc[0, "robust"]

    targeted = robustness_curve(Logits(), ToTarget(target=1), *three_classes(), [2.0], bounds=(0.0, 1.0),
                                batch_size=5).per_sample
    assert targeted["target"].tolist() == [1] * 12
    assert targeted["eligible"].tolist() == [True, False, True] * 3 + [True, False, False]


def test_the_ensemble_names_the_member_that_fooled_each_sample():
    from advrun.attacks import FGSM, PGD, Ensemble
    from advrun.attacks.base import AttackResult
    from advrun.evaluation import per_sample_rows

    ensemble = Ensemble(eps=0.1, attacks=[FGSM(eps=0.0), PGD(eps=0.0, steps=2)])
    y = torch.tensor([0, 1, 2])
    result = AttackResult(x_adv=torch.zeros(3, 2), success=torch.tensor([True, True, False]),
                          norms=torch.tensor([0.1, 0.05, 0.1]), predictions=torch.tensor([1, 0, 2]),
                          fooled_by=torch.tensor([1, 0, -1]))
    rows = per_sample_rows(ensemble, [0.1], y, y.clone(), result)
    assert rows["fooled_by"].tolist() == ["pgd-linf", "fgsm-linf", ""]
    result.fooled_by = None  # a result that names no member
    assert (per_sample_rows(ensemble, [0.1], y, y.clone(), result)["fooled_by"] == "").all()


def test_an_ensemble_run_records_its_first_successful_member_per_sample(trained):
    from advrun.attacks import FGSM, PGD, Ensemble

    model, x, y = trained("mlp")
    x, y = x[:60], y[:60]
    ensemble = Ensemble(eps=0.1, attacks=[FGSM(eps=0.0), PGD(eps=0.0, steps=5)])
    rows = robustness_curve(model, ensemble, x, y, [0.1], bounds=(0.0, 1.0), batch_size=25).per_sample
    expected = ensemble.fooled_by(model, x, y)
    labels = ["fgsm-linf", "pgd-linf"]
    assert rows["fooled_by"].tolist() == [labels[i] if i >= 0 else "" for i in expected.tolist()]
    assert set(rows.loc[rows["success"], "fooled_by"]) <= set(labels)


def test_every_proportion_of_the_curve_has_its_interval_from_the_row_counts():
    from advrun.stats import clopper_pearson

    x, y, m = margin_data()
    curve = robustness_curve(Logits(), ShiftBy(), x, y, [0.0, 0.12, 0.22], bounds=(0.0, 1.0), batch_size=4).curve
    assert curve["n_robust"].tolist() == [6, 4, 2]
    for record in curve.to_dict("records"):
        for name, count, total in (("clean_accuracy", "n_correct", "n_samples"),
                                   ("robust_accuracy", "n_robust", "n_samples"),
                                   ("success_rate", "n_success", "n_eligible")):
            low, high = clopper_pearson(record[count], record[total])
            assert (record[f"{name}_low"], record[f"{name}_high"]) == (low, high)
            assert low <= record[name] <= high
    assert curve["success_rate_low"].iloc[0] == 0.0 and curve["robust_accuracy_high"].iloc[0] < 1.0
