"""FMN (Pintor et al. 2021) against mathematics: never below the exact minimal perturbation of an
affine model (LinearExact) and close to it, inside the bounds, targets reached, L0 norms that
count changed pixels; its settings checked. Against foolbox: tests/test_peers_minimum_norm.py."""

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from advrun.attacks import FMN, LinearExact
from advrun.attacks.fmn import project_l0
from advrun.errors import InvalidValue

#: As in tests/test_attacks_minimum_norm.py: float32 norms against a float64 optimum (~1e-6 relative).
FLOAT32_NORM = 1e-5

pytestmark = pytest.mark.usefixtures("one_thread")


def predicted(model, x):
    with torch.no_grad():
        return model(x).argmax(dim=1)


@pytest.mark.parametrize("norm", [math.inf, 2.0, 1.0])
def test_fmn_is_never_below_the_exact_minimum_of_softmax_regression(trained, norm):
    """Real digits on softmax regression, where the box binds: per sample FMN's norm is at least
    the exact optimum (every point it returns is a genuine adversarial point) and its median is
    within 1% of it (measured on these 100 samples: median ratio 1.0001 Linf, 1.0002 L2, 1.0066
    L1; 90th percentile 1.09, 1.06, 1.06: 100 steps do not reach the optimum on every sample)."""
    model, x, y = trained("logreg")
    x, y = x[:100], y[:100]
    correct = predicted(model, x) == y
    # a crossing margin of 1e-8 (times the logit scale) keeps the exact norms within ~1e-7 of the infimum
    exact = LinearExact(norm=norm, overshoot=1e-8)(model, x, y)
    result = FMN(norm=norm)(model, x, y)
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    fooled = correct & result.success
    assert fooled.sum() >= 0.95 * correct.sum()  # measured: all in Linf and L2, 92 of 93 in L1
    ratio = result.norms[fooled].double() / exact.norms[fooled].double()
    assert ratio.min() >= 1 - FLOAT32_NORM
    assert ratio.median() <= 1.01


@pytest.mark.parametrize("norm", [math.inf, 2.0, 1.0, 0.0])
def test_targeted_fmn_reaches_the_target(trained, norm):
    model, x, y = trained("mlp")
    x, y = x[:40], y[:40]
    result = FMN(norm=norm, target="random", steps=50)(model, x, y)
    assert (result.targets != y).all()
    assert result.success.float().mean() >= 0.95
    assert torch.equal(result.predictions[result.success], result.targets[result.success])
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1


def test_fmn_l0_norms_count_the_changed_pixels(trained):
    model, x, y = trained("mlp")
    x, y = x[:60], y[:60]
    result = FMN(norm=0)(model, x, y)
    changed = (result.x_adv != x).flatten(1).sum(dim=1)
    assert torch.equal(result.norms, changed.float())
    correct = predicted(model, x) == y
    assert result.success[correct].all()
    assert result.norms[correct].median() <= 4  # measured: 2 of the 64 pixels (as foolbox's FMN)


def test_l0_projection_keeps_the_largest_coordinates():
    delta = torch.tensor([[0.1, -0.5, 0.3, 0.0], [0.2, 0.2, -0.9, 0.05]])
    kept = project_l0(delta, torch.tensor([2.0, 1.0]))
    assert torch.equal(kept, torch.tensor([[0.0, -0.5, 0.3, 0.0], [0.0, 0.0, -0.9, 0.0]]))


def test_fmn_returns_the_input_where_it_fails(trained):
    model, x, y = trained("mlp")
    x, y = x[:60], y[:60]
    result = FMN(norm=2, steps=1)(model, x, y)
    correct = predicted(model, x) == y
    failed = correct & ~result.success
    assert failed.any()
    assert torch.equal(result.x_adv[failed], x[failed])
    # already misclassified samples are adversarial as they are: norm 0
    assert (result.success[~correct]).all() and (result.norms[~correct] == 0).all()


def test_fmn_takes_its_gradients_through_attack_gradient(trained):
    """Expectation over transformation: on a deterministic model the mean of two identical
    gradients is the gradient, so eot_samples=2 changes nothing."""
    model, x, y = trained("mlp")
    x, y = x[:20], y[:20]
    one = FMN(norm=2, steps=20)(model, x, y)
    two = FMN(norm=2, steps=20, eot_samples=2)(model, x, y)
    assert torch.equal(one.x_adv, two.x_adv)


@pytest.mark.parametrize("key, value", [
    ("norm", 3), ("steps", 0), ("alpha_init", 0.0), ("alpha_final", -1.0), ("gamma_init", 1.0),
    ("gamma_final", 0.0), ("eot_samples", 0),
])
def test_fmn_refuses_bad_settings_naming_the_key(key, value):
    with pytest.raises(InvalidValue) as info:
        FMN(**{key: value})
    assert info.value.field == key


def test_fmn_in_l0_has_no_certificate_and_no_single_step_comparison():
    assert FMN(norm=0).certificate_norm is None and FMN(norm=0).label == "fmn-l0"
    assert FMN(norm=0).audit_rules["single_step"].startswith("n/a")
    assert FMN(norm=2).certificate_norm == 2.0 and "single_step" not in FMN(norm=2).audit_rules


def test_config_builds_fmn_with_its_defaults(make_cfg):
    from hydra.utils import instantiate

    attack = instantiate(make_cfg("attack=fmn").attack, eps=None)
    assert attack == FMN(eps=None)  # the YAML repeats the class defaults


def test_every_data_set_has_default_l0_budgets(make_cfg, tmp_path):
    """attack=fmn attack.norm=0 alone gives a curve over the data set's L0 grid (counts of pixels)."""
    from omegaconf import OmegaConf
    from tests.conftest import TINY

    for path in sorted((Path(__file__).parents[1] / "conf" / "dataset").glob("*.yaml")):
        budgets = OmegaConf.load(path).budgets
        if path.stem == "tensors":  # the user's arrays: budgets depend on their bounds and size, none by default
            assert not budgets
            continue
        assert set(budgets) >= {"linf", "l2", "l1", "l0"}, path.name
        assert budgets.l0.eps in budgets.l0.grid and all(float(v).is_integer() for v in budgets.l0.grid), path.name
    from advrun import experiment

    experiment.run(make_cfg(*TINY, "attack=fmn", "attack.norm=0", "attack.steps=5"), tmp_path)
    curve = pd.read_csv(tmp_path / "curve.csv")
    assert sorted(curve["eps"]) == [0.0, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0] and set(curve["norm"]) == {"l0"}
