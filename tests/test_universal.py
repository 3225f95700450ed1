"""Universal adversarial perturbations (Moosavi-Dezfooli et al. 2017): one perturbation within the
budget for every input, checked against the closed form of the best universal perturbation of an
affine binary classifier, an independent count of the fooling rate, and random perturbations."""

import math

import pandas as pd
import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from advrun import experiment
from advrun.attacks import BoundedAttack, Universal
from advrun.attacks.norms import dual_norm, lp_norm
from advrun.errors import InvalidValue
from advrun.evaluation import robustness_curve
from advrun.reporting.report import write_run_report
from tests.conftest import TINY

#: Tiny models on a shared 2-core machine: a second intra-op thread only adds contention.
pytestmark = pytest.mark.usefixtures("one_thread")

#: ``x + v - x`` against ``v`` in float32 for inputs and perturbations in [-1, 1]: two roundings
#: of at most half an ulp of 2 (1.2e-7) each.
ROUND_TRIP_ATOL = 5e-7

FAST = {"train_samples": 300, "max_passes": 2}


def fitted(model, x_train, **settings):
    """A Universal attack prepared on ``x_train`` (digits' bounds) with ``settings``, and its fit."""
    attack = Universal(**settings)
    attack.prepare(model, x_train, None, (0.0, 1.0))
    return attack, attack.perturbation(model)


@pytest.mark.parametrize("norm, eps", [(math.inf, 0.1), (2.0, 1.0)])
def test_one_perturbation_within_the_budget_for_every_input(trained, digits, norm, eps):
    """``v`` lies in the eps-ball of its norm, and every input, in any batch, gets ``clip(x + v)``:
    ``x_adv - x`` is ``v`` wherever ``x + v`` stays in the box, and ``v`` cut towards 0 elsewhere."""
    model, x, y = trained("mlp")
    attack, fit = fitted(model, digits.x_train, eps=eps, norm=norm, **FAST)
    v = fit.v
    assert v.shape == (1, *x.shape[1:])
    assert lp_norm(v, norm).item() <= eps * (1 + 1e-6)
    assert lp_norm(v, norm).item() > 0.5 * eps  # it is used, not left at 0
    first, second = attack(model, x[:100], y[:100]), attack(model, x[100:], y[100:])
    x_adv = torch.cat([first.x_adv, second.x_adv])
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    change = x_adv - x
    inside = ((x + v) > 0) & ((x + v) < 1)
    assert inside.float().mean() > 0.3
    torch.testing.assert_close(change[inside], v.expand_as(x)[inside], atol=ROUND_TRIP_ATOL, rtol=0)
    clipped = v.expand_as(x)[~inside]
    assert (change[~inside].abs() <= clipped.abs() + ROUND_TRIP_ATOL).all()
    assert (change[~inside] * clipped >= 0).all()  # never against v's sign
    assert (lp_norm(change, norm) <= eps * (1 + 1e-5)).all()


def test_the_fooling_rates_are_counted_on_the_model_labels(trained, digits):
    """The curve's ``fooling_rate`` and ``train_fooling_rate`` against an independent count: the
    share of test (training) images whose label under ``clip(x + v)`` differs from their clean
    label, whatever the true label; robust accuracy still counts the true labels."""
    model, x, y = trained("mlp")
    x_train = digits.x_train[:300]
    attack = Universal(eps=0.15, norm="inf", train_samples=None, max_passes=2)
    attack.prepare(model, x_train, None, digits.bounds)
    curve = robustness_curve(model, attack, x, y, [0.0, 0.15], bounds=digits.bounds, batch_size=100).curve
    v = attack.perturbation(model).v
    with torch.no_grad():
        clean, moved = model(x).argmax(1), model((x + v).clamp(0, 1)).argmax(1)
        train_clean, train_moved = model(x_train).argmax(1), model((x_train + v).clamp(0, 1)).argmax(1)
    row = curve.set_index("eps").loc[0.15]
    assert row["fooling_rate"] == pytest.approx((moved != clean).double().mean().item())
    assert row["train_fooling_rate"] == pytest.approx((train_moved != train_clean).double().mean().item())
    assert row["n_robust"] == int(((clean == y) & (moved == y)).sum())
    assert (moved != clean).sum() > 10 and ((clean != y) & (moved != clean)).any()  # counts the misclassified too
    zero = curve.set_index("eps").loc[0.0]
    assert zero["fooling_rate"] == 0 and zero["train_fooling_rate"] == 0


def _affine_binary(seed: int, d: int = 20, n: int = 200):
    """A single Linear layer with 2 outputs on ``n`` random inputs in [0, 1]^d, its bias set so that
    40-60% of them fall in class 1; the inputs and each one's margin ``w . x + b`` (float64),
    ``w``, ``b`` the differences of the two rows, positive exactly where class 1 wins."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, 2)).eval()
    x = torch.rand(n, 1, d)
    layer = model[1]
    with torch.no_grad():
        scores = x.flatten(1) @ (layer.weight[1] - layer.weight[0])
        layer.bias[1] = layer.bias[0] - scores.quantile(0.4 + 0.2 * torch.rand(()))
    w = (layer.weight[1] - layer.weight[0]).detach().double()
    b = (layer.bias[1] - layer.bias[0]).detach().double()
    return model, x, w, x.double().flatten(1) @ w + b


#: Margins of the affine model in float32 carry the rounding of a 20-term dot product of numbers
#: below 1 (~1e-6); a sample whose margin lies within this of the reach counts either way.
MARGIN_TOL = 1e-4


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("norm, eps", [(math.inf, 0.05), (2.0, 0.2)])
@pytest.mark.parametrize("batch_size", [1, 20])
def test_the_best_universal_perturbation_of_an_affine_binary_classifier(seed, norm, eps, batch_size):
    """Any ``||v||_p <= eps`` moves every margin by the same ``w . v``, at most ``eps ||w||_q`` in size
    (q the dual norm): the best fooling rate is the larger share, over the two directions, of samples
    of one predicted class whose margin is below ``eps ||w||_q``. The attack reaches it and cannot
    exceed it (the box is wide enough never to clip)."""
    model, x, w, margin = _affine_binary(seed)
    reach = eps * torch.linalg.vector_norm(w, ord=dual_norm(norm)).item()

    def best(tol):
        return max(((margin > 0) & (margin < reach + tol)).double().mean().item(),
                   ((margin < 0) & (-margin < reach + tol)).double().mean().item())

    attack = Universal(eps=eps, norm=norm, train_samples=None, max_passes=2, delta=0.0, batch_size=batch_size)
    attack.prepare(model, x, None, (-10.0, 11.0))
    fit = attack.perturbation(model)
    assert best(-MARGIN_TOL) > 0.15  # the optimum fools a fair share: the check has teeth
    assert best(-MARGIN_TOL) <= fit.train_fooling_rate <= best(MARGIN_TOL)
    assert lp_norm(fit.v, norm).item() <= eps * (1 + 1e-6)


@pytest.mark.parametrize("norm, eps, margin", [(math.inf, 0.2, 0.05), (2.0, 1.5, 0.4)])
def test_a_universal_perturbation_beats_random_ones_of_its_norm(trained, digits, norm, eps, margin):
    """On the digits MLP, held-out test images: the universal perturbation (each of 3 fitting seeds)
    fools more than any of 10 random perturbations of the same norm (Linf: random corners of the
    cube, L2: random directions at the norm of ``v``). Measured, fitting seeds 0-2 against the
    same random draws: Linf 0.256-0.391 against at most 0.160, L2 0.644-0.729 against at most 0.076."""
    model, x, _ = trained("mlp")
    with torch.no_grad():
        clean = model(x).argmax(1)

    def fooling(v):
        with torch.no_grad():
            return (model((x + v).clamp(0, 1)).argmax(1) != clean).double().mean().item()

    for seed in range(3):
        _, fit = fitted(model, digits.x_train, eps=eps, norm=norm, seed=seed, **FAST)
        generator = torch.Generator().manual_seed(seed)
        randoms = []
        for _ in range(10):
            if norm == math.inf:
                v = eps * (2 * torch.randint(0, 2, fit.v.shape, generator=generator) - 1).float()
            else:
                v = torch.randn(fit.v.shape, generator=generator)
                v = v * lp_norm(fit.v, 2.0) / lp_norm(v, 2.0)
            randoms.append(fooling(v))
        assert fooling(fit.v) > max(randoms) + margin


def test_fits_are_shared_by_the_copies_and_kept_per_budget(trained, digits):
    """The copies at other budgets (the curve's, ``with_eps``) use the training images of the one
    prepared; each budget is fitted once; the image shows every budget fitted with these settings."""
    model, x, y = trained("mlp")
    attack = Universal(eps=0.1, norm="inf", **FAST)
    assert attack.artifacts() == {}
    with pytest.raises(RuntimeError, match="prepare"):
        attack(model, x[:4], y[:4])
    attack.prepare(model, digits.x_train, None, digits.bounds)
    small, large = attack.with_eps(0.05), attack.with_eps(0.2)
    v_small = small.perturbation(model).v
    assert small.perturbation(model) is attack.with_eps(0.05).perturbation(model)  # not fitted again
    assert lp_norm(large.perturbation(model).v, math.inf).item() > lp_norm(v_small, math.inf).item()
    image = attack.artifacts()["universal_perturbation"]
    assert image.shape[0] == 3 and image.min() >= 0 and image.max() <= 1
    assert image.shape[1] == 64 and image.shape[2] == 2 * 64 + 2  # two budgets, 8x8 enlarged 8 times
    assert isinstance(attack, BoundedAttack)


@pytest.mark.parametrize("kwargs, field", [
    ({"norm": 1}, "norm"), ({"target": 0}, "target"), ({"train_samples": 0}, "train_samples"),
    ({"max_passes": 0}, "max_passes"), ({"delta": 1.0}, "delta"), ({"delta": -0.1}, "delta"),
    ({"delta": "small"}, "delta"), ({"steps": 0}, "steps"), ({"overshoot": -0.1}, "overshoot"),
    ({"batch_size": 0}, "batch_size"), ({"seed": -1}, "seed"), ({"eps": math.inf}, "eps"),
])
def test_invalid_settings_name_the_field(kwargs, field):
    with pytest.raises(InvalidValue) as info:
        Universal(**{"eps": 0.1, **kwargs})
    assert info.value.field == field


def test_the_config_builds_the_documented_defaults(make_cfg):
    attack = instantiate(make_cfg("attack=universal").attack, eps=0.1)
    assert type(attack) is Universal and attack.norm == math.inf
    assert (attack.train_samples, attack.max_passes, attack.delta, attack.steps, attack.overshoot,
            attack.batch_size, attack.seed) == (1000, 5, 0.2, 10, 0.02, 20, 0)


def test_the_run_writes_the_perturbation_and_the_fooling_rates(make_cfg, tmp_path):
    """``advrun attack=universal`` (tiny): the curve has both fooling rates, the folder the image of
    the perturbations, and the report shows both."""
    cfg = make_cfg("attack=universal", *TINY, "eval.epsilons=[0,0.1,0.2]", "attack.train_samples=60",
                   "attack.max_passes=1")
    out = tmp_path / "run"
    experiment.run(cfg, out)
    curve = pd.read_csv(out / "curve.csv")
    assert {"fooling_rate", "train_fooling_rate"} <= set(curve.columns)
    assert curve["fooling_rate"].between(0, 1).all() and curve["train_fooling_rate"].between(0, 1).all()
    assert (out / "universal_perturbation.png").is_file()
    markdown, _ = write_run_report(out)
    text = markdown.read_text()
    assert "universal_perturbation.png" in text and "train fooling rate" in text


def test_the_latest_of_equally_good_perturbations_is_kept(trained, digits):
    """At a budget too small to fool any training image every iterate ties at 0: the fit returns the
    last one (fitted, at the budget's rim in Linf), not the zero perturbation it started from."""
    model, _, _ = trained("mlp")
    _, fit = fitted(model, digits.x_train, eps=0.005, norm="inf", **FAST)
    assert fit.train_fooling_rate == 0
    assert lp_norm(fit.v, math.inf).item() == pytest.approx(0.005)


def test_the_audit_compares_no_per_input_attack_with_a_universal_one(trained, digits):
    """The checks against per-input attacks and the whole box do not apply and say why; the curve's
    monotonicity and twice the DeepFool steps (a refit at the headline budget) are checked."""
    from tests.test_audit import run_audit

    model, x, y = trained("mlp")
    attack = Universal(eps=0.2, norm="inf", train_samples=200, max_passes=1)
    attack.prepare(model, digits.x_train, None, digits.bounds)
    checks = run_audit(model, attack, x[:100], y[:100], grid=[0.0, 0.2])
    for name in ("single_step", "large_budget", "black_box"):
        assert checks[name].status == "n/a" and "one perturbation for all inputs" in checks[name].reason
    assert checks["monotone"].status == "pass"
    # measured: 16 of 96 fooled either way (DeepFool converges in a few steps on this model)
    assert checks["more_iterations"].status == "pass" and "twice the iterations" in checks["more_iterations"].reason
    assert (0.2, math.inf, 200, 1, 0.2, 20) in {settings[:6] for settings in attack.fits.fitted}  # the refit
