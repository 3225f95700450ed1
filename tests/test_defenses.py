"""Defenses (training objectives): TRADES, fast adversarial training with its catastrophic-
overfitting check, exact robust training of linear models and Cross-Lipschitz regularisation,
checked against closed forms, brute force and autograd, and for direction of effect on digits."""

import itertools
import logging
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advrun import experiment
from advrun.defenses import (
    CrossLipschitz, FastAT, LinearRobust, Standard, TRADES, affine_parameters, class_gradients_autograd,
    class_gradients_closed, one_hidden_layer,
)
from advrun.errors import ConfigError, InvalidValue
from advrun.models import CNN, MLP, LogReg
from advrun.training import accuracy, train
from tests.conftest import TINY, TINY_DEFENSE

pytestmark = pytest.mark.usefixtures("one_thread")

# Comparisons without stated tolerances use torch.testing.assert_close's defaults (float32: rtol
# 1.3e-6, atol 1e-5), a few ulps: they compare one float32 computation with the same one written
# out in another order (the closed form against the defense's code, batched against per sample).



class ModeRecorder(nn.Module):
    """Identity layer that records the training flag of every forward pass."""

    def __init__(self):
        super().__init__()
        self.modes = []

    def forward(self, x):
        self.modes.append(self.training)
        return x


def _mlp(**kwargs):
    torch.manual_seed(0)
    return MLP(in_shape=(1, 8, 8), num_classes=10, **kwargs)


# --- TRADES ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("norm, eps", [("inf", 0.1), (2, 0.5)])
def test_trades_inner_maximisation_stays_in_the_ball_in_eval_mode_without_parameter_gradients(norm, eps, digits):
    recorder = ModeRecorder()
    model = nn.Sequential(recorder, _mlp()).train()
    x = digits.x_train[:64]
    defense = TRADES(eps=eps, norm=norm, steps=5)
    x_adv = defense.adversarial_inputs(model, x)
    assert all(p.grad is None for p in model.parameters())
    assert model.training and recorder.modes and not any(recorder.modes)
    delta = (x_adv - x).flatten(1)
    # float32: the projection's scaling (1.2e-7 relative) and a norm summed over 64 coordinates (~1e-6)
    assert torch.linalg.vector_norm(delta, ord=float(norm), dim=1).max() <= eps * (1 + 1e-5)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    # the maximisation works: the KL at x' beats the KL at random points of the ball
    with torch.no_grad():
        clean = F.log_softmax(model(x), dim=1)
        kl = lambda z: F.kl_div(F.log_softmax(model(z), dim=1), clean, log_target=True, reduction="none").sum(1)
        random = x + eps * (torch.rand_like(x) * 2 - 1) if norm == "inf" else x + eps * F.normalize(
            torch.randn_like(x).flatten(1), dim=1).view_as(x)
        assert kl(x_adv).mean() > 3 * kl(random.clamp(0, 1)).mean()

    recorder.modes.clear()
    loss = defense.loss(model, x, digits.y_train[:64])
    assert all(p.grad is None for p in model.parameters())
    assert recorder.modes[-2:] == [True, True]  # the outer loss: f(x) and f(x') in train mode
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_trades_is_cross_entropy_plus_beta_times_the_kl(digits):
    model = _mlp().train()
    x, y = digits.x_train[:32], digits.y_train[:32]
    torch.manual_seed(1)
    plain = TRADES(beta=0.0, steps=3).loss(model, x, y)
    torch.testing.assert_close(plain, F.cross_entropy(model(x), y))
    torch.manual_seed(1)
    x_adv = TRADES(steps=3).adversarial_inputs(model, x)
    torch.manual_seed(1)
    weighted = TRADES(beta=6.0, steps=3).loss(model, x, y)
    kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), F.log_softmax(model(x), dim=1), log_target=True,
                  reduction="batchmean")
    assert kl > 0
    torch.testing.assert_close(weighted, F.cross_entropy(model(x), y) + 6.0 * kl)


# --- fast adversarial training --------------------------------------------------------------------

def test_fast_at_is_one_fgsm_step_from_a_random_start_inside_the_ball_and_bounds(digits):
    model = _mlp().eval()
    x, y = digits.x_train[:64], digits.y_train[:64]
    eps = 0.1
    defense = FastAT(eps=eps)
    torch.manual_seed(3)
    x_adv = defense.attack(model, x, y, bounds=(0.0, 1.0)).x_adv
    # float32 x + delta in [0, 1] rounds by half an ulp, <= 6e-8, i.e. 6e-7 of eps = 0.1
    assert (x_adv - x).abs().max() <= eps * (1 + 1e-6) and x_adv.min() >= 0 and x_adv.max() <= 1
    # Wong et al.'s step written out: uniform start, FGSM step of 1.25 eps, projections
    torch.manual_seed(3)
    start = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1).requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(start), y, reduction="sum"), start)
    expected = (x + (start.detach() + 1.25 * eps * grad.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    torch.testing.assert_close(x_adv, expected)
    assert ((x_adv - x).abs() > 0.99 * eps).float().mean() > 0.3  # most of the step survives the projection


def _collapse(defense, epochs_before=1):
    """A logistic model on a check batch of class 0: robust when it always says 0 (bias only),
    collapsed when large random weights decide. Returns the model, the robust state, the verdict."""
    model = LogReg(in_shape=(1, 8, 8), num_classes=10)
    x, y = torch.rand(64, 1, 8, 8), torch.zeros(64, dtype=torch.long)
    with torch.no_grad():
        model[-1].weight.zero_()
        model[-1].bias.copy_(torch.tensor([10.0] + [0.0] * 9))
    defense.loss(model, x, y)  # the first batch handed to the defense becomes the check batch
    for epoch in range(1, epochs_before + 1):
        assert defense.end_of_epoch(model, epoch) is None
    robust = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model[-1].weight.copy_(5 * torch.randn(10, 64))
        model[-1].bias.zero_()
    assert defense.check_accuracy(model) < 0.5
    return model, robust, defense.end_of_epoch(model, epochs_before + 1)


def test_catastrophic_overfitting_stops_training_and_restores_the_best_weights():
    defense = FastAT(eps=0.1, check_steps=5, on_overfit="stop")
    model, robust, verdict = _collapse(defense, epochs_before=2)
    assert defense.history[:2] == [1.0, 1.0] and defense.best_epoch == 2
    assert verdict == "stop"
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, robust[key])
    assert defense.check_accuracy(model) == 1.0


def test_catastrophic_overfitting_warns_and_goes_on(caplog):
    with caplog.at_level(logging.WARNING, logger="advrun.defenses"):
        model, robust, verdict = _collapse(FastAT(eps=0.1, check_steps=5, on_overfit="warn"))
    assert verdict is None and "catastrophic overfitting in epoch 2" in caplog.text
    assert not torch.equal(model[-1].weight, robust["1.weight"])  # the collapsed weights stay


def test_a_drop_within_overfit_drop_is_not_a_collapse():
    model, _, verdict = _collapse(FastAT(eps=0.1, check_steps=5, overfit_drop=1.0))
    assert verdict is None


def test_the_training_loop_stops_when_the_defense_asks(digits):
    class StopAtTwo(Standard):
        def end_of_epoch(self, model, epoch):
            if epoch == 2:
                with torch.no_grad():
                    for p in model.parameters():
                        p.zero_()  # a constant model: the row must describe this one
                return "stop"
            return None

    model = _mlp(normalize=False)
    x, y, xt, yt = digits.x_train[:200], digits.y_train[:200], digits.x_test[:100], digits.y_test[:100]
    history = train(model, StopAtTwo(), torch.optim.Adam(model.parameters(), 0.003), x, y, xt, yt,
                    epochs=6, batch_size=50, generator=torch.Generator().manual_seed(0))
    assert list(history["epoch"]) == [1, 2]
    assert history["test_accuracy"].iloc[-1] == accuracy(model, xt, yt) == int((yt == 0).sum()) / len(yt)


# --- exact robust training of linear models -------------------------------------------------------

def _vertices(d, eps, norm):
    """The vertices of the Linf ball (2^d corners) or the L1 ball (+-eps e_i)."""
    if norm == "inf":
        return eps * torch.tensor(list(itertools.product([-1.0, 1.0], repeat=d)))
    return eps * torch.cat([torch.eye(d), -torch.eye(d)])


@pytest.mark.parametrize("norm", ["inf", 1])
@pytest.mark.parametrize("classes", [2, 4])
def test_linear_robust_logits_are_the_worst_case_over_the_vertices_of_the_ball(norm, classes):
    torch.manual_seed(classes)
    model = LogReg(in_shape=(3,), num_classes=classes)
    x, y = torch.rand(16, 3), torch.randint(0, classes, (16,))
    eps = 0.3
    defense = LinearRobust(eps=eps, norm=norm)
    robust = defense.worst_case_logits(model, x, y).detach()
    with torch.no_grad():  # a linear function of delta peaks at a vertex of the polytope
        vertices = _vertices(3, eps, norm)
        corners = model((x[:, None, :] + vertices[None]).flatten(0, 1)).view(len(x), len(vertices), classes)
    own = corners.gather(2, y[:, None, None].expand(-1, corners.shape[1], 1))
    torch.testing.assert_close(robust - robust.gather(1, y[:, None]), (corners - own).amax(dim=1))
    worst_ce = torch.stack([F.cross_entropy(corners[:, v], y, reduction="none") for v in range(corners.shape[1])]).amax(0)
    loss = defense.loss(model, x, y)
    if classes == 2:  # exact: the logistic loss is monotone in the one margin
        torch.testing.assert_close(loss, worst_ce.mean())
    else:  # every pair at its own worst case: an upper bound
        assert loss >= worst_ce.mean() - 1e-6  # float32 cross entropies of order 1 (1.2e-7 relative)


def test_linear_robust_l2_worst_case_is_attained_and_never_exceeded():
    torch.manual_seed(0)
    model = LogReg(in_shape=(1, 4, 4), num_classes=2, normalize=True)
    model.fit_normalization(torch.rand(100, 1, 4, 4) * 0.5)
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 2, (8,))
    eps = 0.5
    loss = LinearRobust(eps=eps, norm=2).loss(model, x, y)
    with torch.no_grad():
        gradient = torch.autograd.functional.jacobian(lambda z: model(z).sum(0), x[:1])[:, 0].flatten(1)  # (2, 16)
        toward = (gradient[1 - y] - gradient[y]).view_as(x)
        best = x + eps * toward / toward.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        torch.testing.assert_close(loss, F.cross_entropy(model(best), y))
        for _ in range(20):
            direction = torch.randn_like(x)
            random = x + eps * direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            # float32 losses at float32-rounded points on the sphere: ~1e-6 of losses of order 1
            assert (F.cross_entropy(model(random), y, reduction="none")
                    <= F.cross_entropy(model(best), y, reduction="none") + 1e-5).all()


def test_linear_robust_at_eps_zero_is_cross_entropy_and_trains_the_parameters():
    torch.manual_seed(0)
    model = LogReg(in_shape=(1, 8, 8), num_classes=10, normalize=True)
    model.fit_normalization(torch.rand(50, 1, 8, 8))
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    torch.testing.assert_close(LinearRobust(eps=0.0).loss(model, x, y), F.cross_entropy(model(x), y))
    # the closed form is differentiable in the parameters: same gradients as with W written out
    weight, bias = affine_parameters(model, (1, 8, 8))
    std, mean, linear = model[0].std.flatten(), model[0].mean.flatten(), model[-1]
    explicit = linear.weight / std
    torch.testing.assert_close(weight, explicit)
    # float32: a 64-term sum in another order (1.2e-7 relative per term, ~1e-6 in all)
    torch.testing.assert_close(bias, linear.bias - explicit @ mean.expand(64), rtol=1e-5, atol=1e-5)
    LinearRobust(eps=0.1).loss(model, x, y).backward()
    found = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    gaps = explicit[None] - explicit[y][:, None]
    F.cross_entropy(model(x) + 0.1 * gaps.abs().sum(2), y).backward()
    for a, p in zip(found, model.parameters()):
        torch.testing.assert_close(a, p.grad)


def test_linear_robust_refuses_non_linear_models():
    with pytest.raises(InvalidValue, match="affine models only") as info:
        LinearRobust(eps=0.1).loss(_mlp(), torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))
    assert info.value.field == "_target_"


# --- Cross-Lipschitz ------------------------------------------------------------------------------

@pytest.mark.parametrize("activation", ["relu", "tanh", "softplus", "elu"])
def test_cross_lipschitz_closed_form_matches_double_backprop(activation):
    model = _mlp(hidden=[16], activation=activation, normalize=True).train()
    model.fit_normalization(torch.rand(100, 1, 8, 8) * 0.6 + 0.2)
    x, y = torch.rand(24, 1, 8, 8), torch.randint(0, 10, (24,))
    parts = one_hidden_layer(model)
    assert parts is not None and parts[0] is model[0]
    logits_c, closed = class_gradients_closed(parts, x)
    logits_a, auto = class_gradients_autograd(model, x)
    torch.testing.assert_close(logits_c, logits_a)
    # float32: U^T (v * sigma') by hand against double backprop, sums over 16 units in another order
    torch.testing.assert_close(closed, auto, rtol=1e-5, atol=1e-6)
    grads = {}
    for form in ("closed", "autograd"):
        model.zero_grad()
        CrossLipschitz(weight=1.0, form=form).loss(model, x, y).backward()
        grads[form] = [p.grad.clone() for p in model.parameters()]
    for a, b in zip(grads["closed"], grads["autograd"]):
        # float32 gradients of the penalty, through second derivatives and sums over 24 samples x 100
        # class pairs x 64 pixels in two orders: rounding accumulates to ~1e-5 relative
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_cross_lipschitz_penalty_is_the_pair_sum_of_eq_5():
    model = _mlp(hidden=[8, 8])
    x = torch.rand(3, 1, 8, 8)
    _, gradients = CrossLipschitz(form="auto").class_gradients(model, x)
    penalty = CrossLipschitz.penalty(gradients)
    pair_sum = 0.0
    for i in range(len(x)):
        jacobian = torch.autograd.functional.jacobian(model, x[i : i + 1])[0].flatten(1)  # (K, d)
        pair_sum += sum((jacobian[l] - jacobian[m]).pow(2).sum() for l in range(10) for m in range(10))
    torch.testing.assert_close(penalty, pair_sum / (len(x) * 10**2))


@pytest.mark.parametrize("form", ["closed", "autograd"])
def test_cross_lipschitz_penalty_vanishes_when_all_class_gradients_agree(form):
    model = _mlp(hidden=[16], activation="tanh")
    with torch.no_grad():
        model[-1].weight.copy_(model[-1].weight[:1].expand(10, -1))  # f_l = f_m + const
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    defense = CrossLipschitz(weight=1.0, form=form)
    _, gradients = defense.class_gradients(model, x)
    scale = gradients.pow(2).sum(dim=(1, 2)).mean()  # what the penalty would be of the same size without the tie
    # the penalty is quadratic in the differences between class gradients: rows equal up to float32
    # rounding (1.2e-7 relative) leave at most ~1e-14 of the scale
    assert scale > 0 and defense.penalty(gradients) <= 1e-12 * scale
    torch.testing.assert_close(defense.loss(model, x, y), F.cross_entropy(model(x), y))


def test_cross_lipschitz_closed_form_only_for_one_hidden_layer():
    assert one_hidden_layer(_mlp(hidden=[8])) is not None
    assert one_hidden_layer(_mlp(hidden=[8, 8])) is None
    assert one_hidden_layer(CNN(in_shape=(1, 8, 8), num_classes=10)) is None
    with pytest.raises(InvalidValue, match="one-hidden-layer") as info:
        CrossLipschitz(form="closed").loss(_mlp(), torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))
    assert info.value.field == "form"


# --- through the runner ---------------------------------------------------------------------------

@pytest.mark.parametrize("override, key", [
    ("defense=trades defense.beta=-1", "defense.beta"),
    ("defense=trades defense.norm=1", "defense.norm"),
    ("defense=trades defense.steps=0", "defense.steps"),
    ("defense=fast_at defense.on_overfit=maybe", "defense.on_overfit"),
    ("defense=fast_at defense.overfit_drop=0", "defense.overfit_drop"),
    ("defense=fast_at defense.step_scale=0", "defense.step_scale"),
    ("defense=linear_robust defense.eps=-0.1", "defense.eps"),
    ("defense=cross_lipschitz defense.form=exact", "defense.form"),
])
def test_invalid_defense_values_name_the_key(make_cfg, tmp_path, override, key):
    with pytest.raises(ConfigError) as info:
        experiment.run(make_cfg(*TINY, *override.split()), tmp_path)
    assert info.value.key == key


@pytest.mark.parametrize("defense", sorted(TINY_DEFENSE))
def test_new_defense_runs_with_its_tiny_settings(make_cfg, tmp_path, defense):
    metrics = experiment.run(make_cfg(f"defense={defense}", *TINY, *TINY_DEFENSE[defense], "attack.steps=2",
                                      "eval.epsilons=[0.05]"), tmp_path)
    assert 0 <= metrics["clean_accuracy"] <= 1 and math.isfinite(metrics["final_train_loss"])


DIGITS_MLP = ["device=cpu", "train.epochs=5", "optimizer.lr=0.003", "attack.steps=10", "eval.epsilons=[0.1]",
              "eval.n_samples=200"]


@pytest.fixture(scope="module")
def standard_mlp(tmp_path_factory):
    from hydra import compose, initialize_config_dir

    from advrun.config import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=DIGITS_MLP)
    return experiment.run(cfg, tmp_path_factory.mktemp("standard"))


@pytest.mark.parametrize("defense", [["defense=trades", "defense.steps=3"], ["defense=fast_at"]],
                         ids=["trades", "fast_at"])
def test_robust_training_raises_pgd_robust_accuracy(make_cfg, tmp_path, standard_mlp, defense):
    robust = experiment.run(make_cfg(*DIGITS_MLP, *defense), tmp_path)
    assert robust["clean_accuracy"] > 0.85
    assert robust["robust_accuracy"] > standard_mlp["robust_accuracy"] + 0.1


def test_linear_robust_raises_exact_robust_accuracy_of_logreg(make_cfg, tmp_path):
    common = ["device=cpu", "model=logreg", "attack=linear_exact", "eval.epsilons=[0.1]", "train.epochs=5",
              "optimizer.lr=0.01"]
    standard = experiment.run(make_cfg(*common), tmp_path / "standard")
    robust = experiment.run(make_cfg(*common, "defense=linear_robust", "defense.eps=0.1"), tmp_path / "robust")
    assert robust["robust_accuracy"] > standard["robust_accuracy"] + 0.08


def test_adversarial_training_is_madrys_inner_maximisation(make_cfg, tmp_path):
    """defense=adversarial: PGD runs all its steps and trains on its last iterate, ascending the
    run's training loss; the same attack written out by hand gives the same training inputs."""
    from advrun.attacks import PGD
    from advrun.defenses import Adversarial

    plan = experiment.plan(make_cfg(*TINY, "defense=adversarial", "train.loss=mse", "attack=pgd", "attack.loss=train"), tmp_path)
    inner = plan.defense.attack
    assert isinstance(inner, PGD) and inner.keep_best is False and inner.loss == "mse"
    assert plan.attack.loss == "mse"  # the evaluation attack's loss=train names the same loss
    model, x, y = plan.model, plan.data.x_test[:50], plan.data.y_test[:50]
    torch.manual_seed(3)
    by_defense = inner(model, x, y, bounds=plan.data.bounds).x_adv
    torch.manual_seed(3)
    by_hand = PGD(eps=inner.eps, norm=inner.norm, steps=inner.steps, step_scale=inner.step_scale,
                  keep_best=False, loss="mse")(model, x, y, bounds=plan.data.bounds).x_adv
    torch.testing.assert_close(by_defense, by_hand, rtol=0, atol=0)
    assert isinstance(plan.defense, Adversarial) and plan.defense.early_stop is False


def test_early_stopped_adversarial_training_is_a_named_option(make_cfg, tmp_path):
    plan = experiment.plan(make_cfg(*TINY, "defense=adversarial", "defense.early_stop=true"), tmp_path)
    assert plan.defense.attack.keep_best is True  # each sample stops at its first misclassified iterate
    goodfellow = experiment.plan(make_cfg(*TINY, "defense=goodfellow"), tmp_path / "goodfellow").defense.attack
    assert goodfellow.keep_best is False and goodfellow.loss == "ce" and goodfellow.steps == 1
    from advrun.attacks import FGSM
    from advrun.defenses import Adversarial

    with pytest.raises(InvalidValue, match="early_stop: needs an iterative training attack"):
        Adversarial(attack=FGSM(eps=0.1), early_stop=True)


def test_fast_at_ascends_the_training_loss():
    assert FastAT(eps=0.1, criterion="mse").attack.loss == "mse"
    assert FastAT(eps=0.1).attack.loss == "ce" and FastAT(eps=0.1).attack.keep_best is False
