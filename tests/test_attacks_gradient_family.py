"""FGM, BIM and MI-FGSM checked against closed forms on linear models, hand-written recursions
and the relations between them (BIM with one step of eps is FGSM; MI-FGSM without momentum
is BIM)."""

import math

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

from advrun.attacks import BIM, FGM, FGSM, MIFGSM, lp_norm
from advrun.attacks.base import Goal
from advrun.attacks.bim import kurakin_steps
from advrun.errors import InvalidValue
from tests.conftest import linear_model


def ce_gradient(x, w, b, labels):
    """grad_x CE(Wx + b, labels) = W^T (softmax(Wx + b) - onehot(labels)) for softmax regression."""
    return (torch.softmax(x @ w.T + b, dim=1) - F.one_hot(labels, w.shape[0]).float()) @ w


def worst_iterate(model, iterates, goal):
    """The documented keep_best rule applied to a trajectory ``iterates`` (T+1 x N x ...): per
    sample the first iterate that reaches the goal, else the first one with the highest loss."""
    with torch.no_grad():
        logits = torch.stack([model(z) for z in iterates])
    t, n = logits.shape[:2]
    reached = torch.stack([goal.reached(logits[i]) for i in range(t)])
    losses = torch.stack([goal.loss(logits[i]) for i in range(t)])
    first_reached = reached.to(torch.int8).argmax(dim=0)
    pick = torch.where(reached.any(dim=0), first_reached, losses.argmax(dim=0))
    return iterates[pick, torch.arange(n)]


# ---------------------------------------------------------------- FGM


def test_fgm_normalized_on_a_linear_model_is_the_closed_form():
    model, w, b = linear_model()
    x = torch.rand(64, 12) * 0.6 + 0.2  # interior: a step of L2 length 0.1 never reaches the bounds
    y = torch.randint(0, 3, (64,))
    g = ce_gradient(x, w, b, y)
    expected = x + 0.1 * g / g.norm(dim=1, keepdim=True)
    result = FGM(eps=0.1)(model, x, y)
    torch.testing.assert_close(result.x_adv, expected)
    torch.testing.assert_close(result.norms, torch.full((64,), 0.1))


def test_fgm_gradient_value_form_on_a_linear_model_is_the_closed_form():
    """normalize false: x + eps * grad where ||grad||_2 <= 1; the step is cut to length eps where
    ||grad||_2 > 1 (the documented cap that keeps the attack inside the L2 ball)."""
    model, w, b = linear_model(gain=2.0)
    x = torch.rand(200, 12) * 0.6 + 0.2
    y = torch.randint(0, 3, (200,))
    g = ce_gradient(x, w, b, y)
    size = g.norm(dim=1)
    assert (size < 1).sum() >= 10 and (size > 1).sum() >= 10  # both cases are covered
    eps = 0.15
    expected = x + eps * g / size.clamp_min(1.0)[:, None]
    result = FGM(eps=eps, normalize=False)(model, x, y)
    torch.testing.assert_close(result.x_adv, expected)
    torch.testing.assert_close(result.norms, eps * size.clamp(max=1.0))
    assert (result.norms <= eps * (1 + 1e-6)).all()


def test_fgm_targeted_descends_the_target_loss():
    model, w, b = linear_model()
    x = torch.rand(64, 12) * 0.6 + 0.2
    y = torch.randint(0, 3, (64,))
    g = ce_gradient(x, w, b, torch.full((64,), 2))
    expected = x - 0.1 * g / g.norm(dim=1, keepdim=True)
    result = FGM(eps=0.1, target=2)(model, x, y)
    torch.testing.assert_close(result.x_adv, expected)
    assert (result.targets == 2).all()


def test_fgm_clips_to_the_bounds():
    model, w, b = linear_model(gain=5.0)
    x = torch.rand(50, 12)
    x[:, :4] = torch.randint(0, 2, (50, 4)).float()  # pixels on the bounds
    y = torch.randint(0, 3, (50,))
    for normalize in (True, False):
        x_adv = FGM(eps=2.0, normalize=normalize)(model, x, y).x_adv
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        g = ce_gradient(x, w, b, y)
        step = 2.0 * g / (g.norm(dim=1, keepdim=True) if normalize else g.norm(dim=1, keepdim=True).clamp_min(1.0))
        torch.testing.assert_close(x_adv, (x + step).clamp(0, 1))


# ---------------------------------------------------------------- BIM


def test_bim_with_one_step_of_eps_is_fgsm(trained):
    """On softmax regression the loss is convex in x, so one sign step of eps raises it and the
    kept iterate is the step itself; samples misclassified from the start keep x (their first
    iterate reaching the goal). With keep_best false BIM returns the step everywhere."""
    model, x, y = trained("logreg")
    fgsm = FGSM(eps=0.1)(model, x, y).x_adv
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    assert (~correct).any()
    kept = BIM(eps=0.1, steps=1, step_size=0.1)(model, x, y).x_adv
    torch.testing.assert_close(kept[correct], fgsm[correct])
    assert torch.equal(kept[~correct], x[~correct])
    last = BIM(eps=0.1, steps=1, step_size=0.1, keep_best=False)(model, x, y).x_adv
    torch.testing.assert_close(last, fgsm)


def test_bim_iterates_are_clipped_sign_steps_on_a_linear_model():
    """keep_best false: the last iterate of x_{n+1} = Clip_{x,eps}(x_n + alpha sign(grad)),
    written out by hand with the closed-form gradient."""
    model, w, b = linear_model(d=10, k=4, seed=2, gain=3.0)
    x = torch.rand(80, 10)
    y = torch.randint(0, 4, (80,))
    eps, alpha, steps = 0.2, 0.03, 9
    x_n = x.clone()
    for _ in range(steps):
        x_n = x_n + alpha * ce_gradient(x_n, w, b, y).sign()
        x_n = torch.minimum(torch.maximum(x_n, x - eps), x + eps).clamp(0, 1)
    ours = BIM(eps=eps, steps=steps, step_size=alpha, keep_best=False)(model, x, y).x_adv
    torch.testing.assert_close(ours, x_n)


def test_bim_default_schedule_is_kurakins():
    """alpha = 1/255 and min(eps*255 + 4, 1.25 eps*255) iterations (rounded up), per budget."""
    assert kurakin_steps(8 / 255) == 10  # min(12, 10)
    assert kurakin_steps(16 / 255) == 20  # min(20, 20)
    assert kurakin_steps(0.1) == 30  # min(29.5, 31.875) -> 30
    assert kurakin_steps(1e-4) == 1
    bim = BIM(eps=0.1)
    assert (bim.iterations, bim.alpha) == (30, pytest.approx(1 / 255))
    other = bim.with_eps(8 / 255)
    assert other.iterations == 10 and bim.iterations == 30
    relative = BIM(eps=0.1, steps=20, step_size=None)
    assert relative.alpha == pytest.approx(0.1 / 20)
    assert relative.with_eps(0.3).alpha == pytest.approx(0.3 / 20)


def test_bim_steps_null_runs_kurakins_number_of_iterations():
    model, _, _ = linear_model(d=10, k=4, seed=2, gain=3.0)
    x, y = torch.rand(80, 10), torch.randint(0, 4, (80,))
    eps = 8 / 255  # Kurakin: 10 steps of 1/255
    runs = {steps: BIM(eps=eps, steps=steps, keep_best=False)(model, x, y).x_adv for steps in (None, 9, 10)}
    assert torch.equal(runs[None], runs[10])
    assert not torch.equal(runs[None], runs[9])


def test_bim_least_likely_reaches_the_target(trained):
    model, x, y = trained("mlp")
    with torch.no_grad():
        least_likely = model(x).argmin(1)
    result = BIM(eps=0.5, target="least_likely")(model, x, y)  # Kurakin's schedule: 132 steps of 1/255
    assert torch.equal(result.targets, least_likely)
    assert result.success.float().mean() > 0.95
    assert torch.equal(result.success, result.predictions == least_likely)
    assert (lp_norm(result.x_adv - x, math.inf) <= 0.5 + 1e-6).all()


# ---------------------------------------------------------------- MI-FGSM


@pytest.mark.parametrize("keep_best", [True, False])
def test_mifgsm_without_momentum_is_bim(trained, keep_best):
    model, x, y = trained("mlp")
    eps, steps = 0.1, 10
    ours = MIFGSM(eps=eps, steps=steps, decay=0.0, keep_best=keep_best)(model, x, y)
    bim = BIM(eps=eps, steps=steps, step_size=eps / steps, keep_best=keep_best)(model, x, y)
    torch.testing.assert_close(ours.x_adv, bim.x_adv)
    assert torch.equal(ours.success, bim.success)


def hand_momentum_iterates(x, y, w, b, eps, steps, decay, norm):
    """Algorithm 1 of Dong et al. with the closed-form softmax-regression gradient (and its L2 form)."""
    alpha = eps / steps
    g = torch.zeros_like(x)
    iterates = [x.clone()]
    x_t = x.clone()
    for _ in range(steps):
        grad = ce_gradient(x_t, w, b, y)
        g = decay * g + grad / grad.abs().sum(dim=1, keepdim=True)
        if norm == "inf":
            x_t = x_t + alpha * g.sign()
            x_t = torch.minimum(torch.maximum(x_t, x - eps), x + eps)
        else:
            x_t = x_t + alpha * g / g.norm(dim=1, keepdim=True)
            delta = x_t - x
            x_t = x + delta * (eps / delta.norm(dim=1, keepdim=True)).clamp(max=1.0)
        x_t = x_t.clamp(0, 1)
        iterates.append(x_t)
    return torch.stack(iterates)


@pytest.mark.parametrize("norm, eps", [("inf", 0.3), (2, 1.0)])
@pytest.mark.parametrize("decay", [1.0, 0.5])
def test_mifgsm_accumulates_momentum_as_algorithm_1(norm, eps, decay):
    model, w, b = linear_model(d=10, k=4, seed=1, gain=3.0)
    x = torch.rand(200, 10) * 0.8 + 0.1
    y = torch.randint(0, 4, (200,))
    steps = 8
    iterates = hand_momentum_iterates(x, y, w, b, eps, steps, decay, norm)
    without = hand_momentum_iterates(x, y, w, b, eps, steps, 0.0, norm)
    assert (iterates[-1] - without[-1]).abs().amax() > 1e-2  # the momentum matters here (tolerance 1e-5)
    last = MIFGSM(eps=eps, norm=norm, steps=steps, decay=decay, keep_best=False)(model, x, y).x_adv
    torch.testing.assert_close(last, iterates[-1])
    kept = MIFGSM(eps=eps, norm=norm, steps=steps, decay=decay)(model, x, y).x_adv
    torch.testing.assert_close(kept, worst_iterate(model, iterates, Goal(y)))


def test_mifgsm_stops_on_samples_that_reach_the_goal():
    """Fooled samples leave the batch: the model sees fewer rows as the attack goes on."""
    model, _, _ = linear_model(d=10, k=4, seed=1, gain=3.0)
    rows = []

    class Spy(nn.Module):
        def forward(self, z):
            rows.append(len(z))
            return model(z)

    x, y = torch.rand(100, 10), torch.randint(0, 4, (100,))
    result = MIFGSM(eps=0.3, steps=10)(Spy(), x, y)
    assert result.success.any()
    assert rows[0] == 100 and rows[-1] < 100 and rows == sorted(rows, reverse=True)


# ---------------------------------------------------------------- contract and configs


def test_outputs_are_finite_in_bounds_and_within_budget(trained):
    model, x, y = trained("cnn")
    x, y = x[:100].clone(), y[:100]
    x[:10] = 0.0  # samples on the lower bound
    for attack in (FGM(eps=1.5), FGM(eps=1.5, normalize=False), BIM(eps=0.2), MIFGSM(eps=0.2),
                   MIFGSM(eps=1.5, norm=2), BIM(eps=0.2, target="random")):
        raw = attack.perturb(model, x, Goal(y), (0.0, 1.0))
        x_adv = raw[0] if isinstance(raw, tuple) else raw
        assert torch.isfinite(x_adv).all() and x_adv.min() >= 0 and x_adv.max() <= 1
        assert (lp_norm(x_adv - x, attack.norm) <= attack.eps * (1 + 1e-5)).all()


@pytest.mark.parametrize("cls, kwargs, field", [
    (FGM, {"norm": "inf"}, "norm"), (FGM, {"normalize": "yes"}, "normalize"),
    (BIM, {"norm": 2}, "norm"), (BIM, {"steps": 0}, "steps"), (BIM, {"step_size": -1.0}, "step_size"),
    (BIM, {"step_scale": 0.0}, "step_scale"), (BIM, {"keep_best": 1}, "keep_best"),
    (MIFGSM, {"norm": 1}, "norm"), (MIFGSM, {"steps": 0}, "steps"), (MIFGSM, {"decay": -0.5}, "decay"),
    (MIFGSM, {"step_size": 0.0}, "step_size"), (MIFGSM, {"keep_best": "no"}, "keep_best"),
])
def test_invalid_settings_name_the_field(cls, kwargs, field):
    with pytest.raises(InvalidValue) as info:
        cls(**kwargs)
    assert info.value.field == field


def test_bim_has_no_random_start_or_restarts():
    with pytest.raises(TypeError):
        BIM(random_start=True)
    with pytest.raises(TypeError):
        BIM(restarts=3)


@pytest.mark.parametrize("option, cls", [("fgm", FGM), ("bim", BIM), ("mifgsm", MIFGSM)])
def test_configs_build_the_paper_defaults(make_cfg, option, cls):
    node = make_cfg(f"attack={option}").attack
    attack = instantiate(node, eps=0.1 if option != "fgm" else 1.0)
    assert type(attack) is cls
    defaults = {"fgm": {"normalize": True, "norm": 2.0},
                "bim": {"steps": None, "step_size": pytest.approx(1 / 255), "norm": math.inf, "target": None},
                "mifgsm": {"steps": 10, "decay": 1.0, "step_size": None, "norm": math.inf}}[option]
    for key, value in defaults.items():
        assert getattr(attack, key) == value
