"""FGSM and PGD checked against closed forms on linear models and against their contract."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advrun.attacks import FGSM, PGD, check_adversarial, lp_norm
from advrun.attacks.base import Goal
from advrun.errors import AttackCheckError, InvalidValue
from tests.conftest import linear_model


def small_mlp(d=12, k=4):
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, k))


def test_fgsm_on_a_linear_model_is_the_closed_form():
    """For softmax regression grad_x CE = W^T (softmax(Wx + b) - onehot(y)), computed by hand."""
    model, w, b = linear_model()
    x = torch.rand(64, 12) * 0.6 + 0.2  # interior points: eps = 0.1 never reaches the bounds
    y = torch.randint(0, 3, (64,))
    grad = (torch.softmax(x @ w.T + b, dim=1) - F.one_hot(y, 3).float()) @ w
    assert grad.abs().min() > 1e-4  # no sign within float error (~1e-7) of a tie: any kernel agrees
    expected = x + 0.1 * grad.sign()
    result = FGSM(eps=0.1)(model, x, y)
    torch.testing.assert_close(result.x_adv, expected)
    torch.testing.assert_close(result.norms, torch.full((64,), 0.1))


def test_fgsm_on_binary_softmax_regression_moves_along_the_weight_difference():
    """Two classes: the loss grows along w_other - w_y, so x_adv = clip(x + eps sign(w_other - w_y))."""
    model, w, _ = linear_model(d=10, k=2)
    x = torch.rand(40, 10)
    y = torch.randint(0, 2, (40,))
    assert (w[1] - w[0]).abs().min() > 1e-4  # no sign within float error of a tie
    direction = torch.where(y[:, None] == 0, (w[1] - w[0]).sign(), (w[0] - w[1]).sign())
    expected = (x + 0.25 * direction).clamp(0, 1)
    torch.testing.assert_close(FGSM(eps=0.25)(model, x, y).x_adv, expected)


@pytest.mark.parametrize("norm", ["inf", 2, 1])
@pytest.mark.parametrize("random_start", [True, False])
def test_pgd_never_leaves_the_ball_or_the_bounds(norm, random_start):
    torch.manual_seed(1)
    model = small_mlp()
    x = torch.rand(50, 12)
    x[:10] = 0.0  # samples sitting on the bounds
    x[10:20] = 1.0
    y = torch.randint(0, 4, (50,))
    eps = {"inf": 0.2, 2: 0.8, 1: 2.0}[norm]
    attack = PGD(eps=eps, norm=norm, steps=15, step_scale=4.0, random_start=random_start, restarts=2)
    x_adv, logits = attack.perturb(model.eval(), x, Goal(y), (0.0, 1.0))  # the raw output, before any checks
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x_adv))  # the logits it hands back are those of x_adv
    p = {"inf": math.inf, 2: 2.0, 1: 1.0}[norm]
    assert torch.isfinite(x_adv).all()
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert (lp_norm(x_adv - x, p) <= eps * (1 + 1e-5)).all()


def test_pgd_reaches_the_optimum_on_a_linear_model():
    """Two-class softmax regression: the worst Linf perturbation (bounds not binding) is
    eps * sign(w_other - w_y). PGD must fool exactly the samples the optimum fools, and land
    on the optimum where it does not (fooled samples keep their first misclassified iterate)."""
    model, w, b = linear_model(d=10, k=2, seed=3)
    x = torch.rand(200, 10) * 0.5 + 0.25
    y = torch.randint(0, 2, (200,))
    eps = 0.1
    optimum = x + eps * torch.where(y[:, None] == 0, (w[1] - w[0]).sign(), (w[0] - w[1]).sign())
    with torch.no_grad():
        fooled_at_optimum = model(optimum).argmax(1) != y
    assert 0 < fooled_at_optimum.sum() < len(y)  # the test covers both cases
    with torch.no_grad():
        top2 = model(optimum).topk(2, dim=1).values
    assert (top2[:, 0] - top2[:, 1]).min() > 1e-4  # none within float error of the boundary: one answer each
    result = PGD(eps=eps, steps=20, random_start=True)(model, x, y)
    assert torch.equal(result.success, fooled_at_optimum)
    torch.testing.assert_close(result.x_adv[~fooled_at_optimum], optimum[~fooled_at_optimum])


def test_pgd_is_at_least_as_strong_as_fgsm():
    torch.manual_seed(0)
    model = small_mlp()
    x, y = torch.rand(200, 12), torch.randint(0, 4, (200,))
    fgsm = FGSM(eps=0.15)(model, x, y)
    pgd = PGD(eps=0.15, steps=20)(model, x, y)
    assert pgd.success.sum() >= fgsm.success.sum()


def test_pgd_keeps_the_worst_case_over_restarts():
    """More restarts can only add successes: each sample keeps its best restart."""
    torch.manual_seed(0)
    model = small_mlp()
    x, y = torch.rand(300, 12), torch.randint(0, 4, (300,))
    torch.manual_seed(5)
    one = PGD(eps=0.05, steps=5, restarts=1)(model, x, y)
    torch.manual_seed(5)
    five = PGD(eps=0.05, steps=5, restarts=5)(model, x, y)
    assert (five.success | ~one.success).all()


def test_attack_restores_modes_and_leaves_parameter_gradients_alone():
    model = small_mlp()
    model.train()
    model[3].eval()  # a submodule in its own mode must get it back
    x, y = torch.rand(20, 12), torch.randint(0, 4, (20,))
    PGD(eps=0.1, steps=3)(model, x, y)
    assert model.training and model[1].training and not model[3].training
    assert all(p.grad is None for p in model.parameters())


def test_attack_runs_the_model_in_eval_mode():
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append(self.training)
            return x

    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3), Spy()).train()
    PGD(eps=0.1, steps=2)(model, torch.rand(4, 12), torch.zeros(4, dtype=torch.long))
    assert seen and not any(seen)


def test_eps_zero_returns_the_inputs():
    model = small_mlp()
    x, y = torch.rand(10, 12), torch.randint(0, 4, (10,))
    result = PGD(eps=0.0)(model, x, y)
    assert torch.equal(result.x_adv, x)
    assert (result.norms == 0).all()


def test_result_fields_describe_the_attack():
    model = small_mlp().eval()
    x, y = torch.rand(30, 12), torch.randint(0, 4, (30,))
    result = PGD(eps=0.3, norm=2, steps=5)(model, x, y)
    with torch.no_grad():
        predictions = model(result.x_adv).argmax(1)
    assert torch.equal(result.predictions, predictions)
    assert torch.equal(result.success, predictions != y)
    torch.testing.assert_close(result.norms, (result.x_adv - x).flatten(1).norm(dim=1))


def test_check_rejects_broken_outputs():
    x = torch.rand(4, 3)
    with pytest.raises(AttackCheckError, match="exceeds eps"):
        check_adversarial(x, (x + 0.2).clamp(0, 1) * 0 + x + 0.2, 0.1, math.inf, (-1.0, 2.0))
    with pytest.raises(AttackCheckError, match="bounds"):
        check_adversarial(x, x + 1.5, 2.0, math.inf, (0.0, 1.0))
    with pytest.raises(AttackCheckError, match="non-finite"):
        check_adversarial(x, x * torch.nan, 1.0, math.inf, (0.0, 1.0))


@pytest.mark.parametrize("kwargs, field", [
    ({"eps": -0.1}, "eps"), ({"eps": math.nan}, "eps"), ({"norm": 3}, "norm"), ({"steps": 0}, "steps"),
    ({"restarts": 0}, "restarts"), ({"step_size": -1.0}, "step_size"), ({"steps": 2.5}, "steps"),
])
def test_invalid_settings_name_the_field(kwargs, field):
    with pytest.raises(InvalidValue) as info:
        PGD(**kwargs)
    assert info.value.field == field


def test_fgsm_refuses_other_norms():
    with pytest.raises(InvalidValue, match="supports linf"):
        FGSM(norm=2)


def test_with_eps_copies_the_settings():
    pgd = PGD(eps=0.1, norm=2, steps=7, restarts=3)
    other = pgd.with_eps(0.5)
    assert (other.eps, other.norm, other.steps, other.restarts) == (0.5, 2.0, 7, 3)
    assert pgd.eps == 0.1
    assert other.alpha == pytest.approx(2.5 * 0.5 / 7)


def test_target_modes():
    from advrun.attacks.base import choose_targets

    logits = torch.tensor([[3.0, 1.0, -2.0, 0.5], [0.0, 2.0, 1.0, -1.0]])
    y = torch.tensor([0, 1])
    assert choose_targets("least_likely", logits, y).tolist() == [2, 3]
    assert choose_targets(2, logits, y).tolist() == [2, 2]
    torch.manual_seed(0)
    random = choose_targets("random", logits.repeat(500, 1), y.repeat(500))
    assert (random != y.repeat(500)).all() and set(random.tolist()) == {0, 1, 2, 3}
    # two classes: the random other class is the other class
    assert choose_targets("random", logits[:, :2], y).tolist() == [1, 0]


@pytest.mark.parametrize("target", ["least_likely", "random", 3])
def test_targeted_pgd_reaches_its_targets(trained, target):
    model, x, y = trained("mlp")
    result = PGD(eps=0.5, steps=40, target=target)(model, x[:100], y[:100])
    assert result.targets is not None and result.success.float().mean() > 0.95
    assert torch.equal(result.success, result.predictions == result.targets)


@pytest.mark.parametrize("target", [-1, "most_likely", True])
def test_invalid_targets_are_errors(target):
    with pytest.raises(InvalidValue) as info:
        PGD(target=target)
    assert info.value.field == "target"


def test_a_target_class_must_exist(make_cfg, tmp_path):
    from advrun import experiment
    from advrun.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        experiment.run(make_cfg("dataset.classes=[0,1]", "attack.target=5", "train.epochs=1"), tmp_path)
    assert info.value.key == "attack.target"
