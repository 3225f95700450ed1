"""The evaluation's bookkeeping on hand-made attacks with known outcomes."""

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from advrun.attacks import BoundedAttack, MinimumNormAttack, ThreatModelAttack
from advrun.evaluation import robustness_curve

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
