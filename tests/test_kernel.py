"""The Gaussian-kernel machine (``model=kernel``) and its certificate (``eval.certify=hein``):
the forward pass against a direct float64 computation, the centres drawn from the training set,
the cross-Lipschitz penalty against the closed-form input gradient of a kernel expansion, the
RKHS norm against Bochner's integral, the feature-distance bound against a dense evaluation of
what it bounds, and the radius against exact minima on a 2-D grid and against attacks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from advrun import certify, experiment
from advrun.attacks import FMN, PGD, DeepFool
from advrun.certify import KernelPart, certified_radii, decompose
from advrun.defenses import CrossLipschitz
from advrun.errors import ConfigError, InvalidValue
from advrun.models import KernelMachine
from advrun.structure import probe_points

from tests.conftest import TINY
from tests.test_certify import ATTACK_SLACK, SHAPE, WIDE, correct, fit

pytestmark = pytest.mark.usefixtures("one_thread")


def machine(dims: int, centres: int, classes: int, gamma: float, seed: int, scale: float = 2.0) -> KernelMachine:
    """A kernel machine on ``dims`` inputs whose centres are ``centres`` points uniform in [0, 1]
    and whose coefficients are normal with standard deviation ``scale`` (all from ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    model = KernelMachine((dims,), classes, centres=centres, gamma=gamma)
    with torch.no_grad():
        model.kernel.centres.copy_(torch.rand(centres, dims, generator=generator))
        model.head.weight.copy_(scale * torch.randn(classes, centres, generator=generator))
        model.head.bias.copy_(0.1 * torch.randn(classes, generator=generator))
    return model.eval()


def direct_logits(model: KernelMachine, x: torch.Tensor) -> np.ndarray:
    """``sum_i alpha_ki exp(-gamma ||x - c_i||^2) + b_k`` term by term in float64 (numpy)."""
    centres = model.kernel.centres.double().numpy()
    alpha, bias = model.head.weight.detach().double().numpy(), model.head.bias.detach().double().numpy()
    gamma = float(model.kernel.gamma)
    out = np.zeros((len(x), len(bias)))
    for n, point in enumerate(x.flatten(1).double().numpy()):
        for k in range(len(bias)):
            out[n, k] = bias[k] + sum(alpha[k, i] * math.exp(-gamma * float(np.sum((point - c) ** 2)))
                                      for i, c in enumerate(centres))
    return out


# ------------------------------------------------------------------------------------ the model


def test_forward_is_the_kernel_expansion():
    model = machine(dims=5, centres=7, classes=3, gamma=0.7, seed=0)
    x = torch.rand(6, 5, generator=torch.Generator().manual_seed(1))
    x[0] = model.kernel.centres[2]  # at a centre: distance 0, no cancellation below 0
    # float32: each of 7 terms of size <= |alpha| (about 2) carries ~1e-7 relative error
    torch.testing.assert_close(model(x).double(), torch.from_numpy(direct_logits(model, x)), rtol=1e-5, atol=1e-5)


def test_centres_are_training_images_drawn_with_the_run_seed_and_gamma_auto_is_one_over_d_var(digits):
    def built(seed):
        torch.manual_seed(seed)
        model = KernelMachine(SHAPE, 10, centres=40)
        state = torch.get_rng_state()
        model.fit_normalization(digits.x_train)
        assert torch.equal(torch.get_rng_state(), state)  # its own generator: the global stream does not move
        return model

    first, again, other = built(0), built(0), built(1)
    flat = digits.x_train.flatten(1)
    rows = (first.kernel.centres[:, None, :] == flat[None]).all(dim=2)
    assert (rows.sum(dim=1) >= 1).all()  # every centre is a training image
    assert torch.equal(first.kernel.centres, again.kernel.centres)
    assert not torch.equal(first.kernel.centres, other.kernel.centres)
    assert float(first.kernel.gamma) == pytest.approx(1 / (64 * flat.double().var().item()))
    every = KernelMachine((3,), 2, centres=20)  # as many centres as images: each image once (no replacement)
    images = torch.rand(20, 3, generator=torch.Generator().manual_seed(0))
    every.fit_normalization(images)
    assert sorted(map(tuple, every.kernel.centres.tolist())) == sorted(map(tuple, images.tolist()))
    fixed = KernelMachine(SHAPE, 10, centres=40, gamma=0.25)
    fixed.fit_normalization(digits.x_train)
    assert float(fixed.kernel.gamma) == 0.25


@pytest.mark.parametrize("override, key", [("model.centres=100000", "model.centres"), ("model.gamma=-1", "model.gamma"),
                                           ("model.centres=0", "model.centres")])
def test_bad_options_name_their_key_before_training(make_cfg, tmp_path, override, key):
    with pytest.raises(ConfigError) as error:
        experiment.plan(make_cfg("model=kernel", *TINY, override), tmp_path / "run")
    assert error.value.key == key


def test_a_run_trains_certifies_with_hein_and_reloads_its_centres(make_cfg, tmp_path):
    cfg = make_cfg("model=kernel", "model.centres=50", *TINY, "attack.norm=2", "attack.eps=0.5",
                   "eval.certify=auto", "cache.enabled=false")
    metrics = experiment.run(cfg, tmp_path / "run")
    assert metrics["certified_method"] == "hein"
    run = experiment.load_run(tmp_path / "run")
    x = torch.rand(4, *SHAPE, generator=torch.Generator().manual_seed(0))
    assert torch.equal(run.model.kernel.centres.abs().sum(dim=1) > 0, torch.ones(50, dtype=torch.bool))
    torch.testing.assert_close(run.model(x).double(), torch.from_numpy(direct_logits(run.model, x)),
                               rtol=1e-5, atol=1e-5)


def test_auto_chooses_hein_alone_and_crown_refuses():
    model = machine(dims=4, centres=5, classes=3, gamma=1.0, seed=0)
    assert certify.choose(model, 2, (4,)) == ["hein"]
    assert certify.choose(model, "inf", (4,)) == ["hein"]
    with pytest.raises(InvalidValue):
        certify.check_method(model, "crown", 2, (4,))


def test_cross_lipschitz_penalises_the_closed_form_input_gradients():
    """``grad f_k(x) = -2 gamma sum_i alpha_ki k_i(x) (x - c_i)``; the defense reads it by autograd."""
    model = machine(dims=5, centres=7, classes=3, gamma=0.7, seed=2).train()
    x = torch.rand(4, 5, generator=torch.Generator().manual_seed(3))
    logits, gradients = CrossLipschitz(form="auto").class_gradients(model, x)
    c, alpha = model.kernel.centres.double(), model.head.weight.detach().double()
    gamma, xd = float(model.kernel.gamma), x.double()
    k = torch.exp(-gamma * ((xd[:, None, :] - c[None]) ** 2).sum(dim=2))  # (n, N)
    closed = -2 * gamma * torch.einsum("ki,ni,nid->nkd", alpha, k, xd[:, None, :] - c[None])
    torch.testing.assert_close(gradients.double(), closed, rtol=1e-5, atol=1e-5)
    defense = CrossLipschitz(weight=0.5)
    loss = defense.loss(model, x, torch.tensor([0, 1, 2, 0]))
    loss.backward()  # differentiable in alpha through the penalty
    assert model.head.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- the certificate


def part_of(model: KernelMachine, dims: int) -> KernelPart:
    with torch.enable_grad():
        return decompose(model, probe_points((dims,), torch.zeros(())))


@pytest.mark.parametrize("seed", range(3))
def test_rkhs_norm_is_bochners_integral(seed):
    """``||sum_i beta_i k(c_i, .)||_H^2 = E_w |sum_i beta_i exp(i w c_i)|^2`` with ``w ~ N(0, 2 gamma)``
    (the Gaussian kernel's spectral measure), integrated by quadrature in one dimension."""
    model = machine(dims=1, centres=6, classes=3, gamma=3.0, seed=seed)
    part = part_of(model, 1)
    c = part.centres[:, 0].numpy()
    for a in range(3):
        for b in range(3):
            if a == b:
                continue
            beta = (part.weight[a] - part.weight[b]).numpy()
            scale = math.sqrt(2 * part.gamma)

            def density(w):
                spectrum = np.sum(beta * np.exp(1j * w * c))
                return abs(spectrum) ** 2 * math.exp(-w * w / (2 * scale**2)) / (scale * math.sqrt(2 * math.pi))

            value, error = integrate.quad(density, -np.inf, np.inf, epsabs=1e-12, epsrel=1e-12, limit=200)
            assert error < 1e-9
            # quad's own error estimate (< 1e-9) dominates the float64 rounding of the norm
            assert part.rkhs_norms[a, b].item() ** 2 == pytest.approx(value, rel=1e-8, abs=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_the_change_of_a_class_difference_within_r_stays_below_the_feature_distance_bound(seed):
    """``|g(x + d) - g(x)| <= ||g||_H sqrt(2 - 2 exp(-gamma ||d||^2))`` for every ``d`` of a dense
    polar grid around several points (2-D), and ``<= ||g||_H sqrt(2 gamma) ||d||``, the Lipschitz form."""
    model = machine(dims=2, centres=8, classes=3, gamma=4.0, seed=seed)
    part = part_of(model, 2)
    angles = torch.linspace(0, 2 * math.pi, 721, dtype=torch.float64)[:-1]
    radii = torch.linspace(0, 1.5, 301, dtype=torch.float64)
    ring = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    steps = (radii[:, None, None] * ring[None]).reshape(-1, 2)
    lengths = steps.norm(dim=1)
    g_norm = part.rkhs_norms[0, 1].item()
    worst = 0.0
    for point in torch.rand(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)):
        logits = part.features(point + steps) @ part.weight.T + part.bias
        here = part.features(point[None]) @ part.weight.T + part.bias
        change = ((logits[:, 0] - logits[:, 1]) - (here[0, 0] - here[0, 1])).abs()
        bound = g_norm * torch.sqrt(2 - 2 * torch.exp(-part.gamma * lengths**2))
        assert (change <= bound * (1 + 1e-12) + 1e-12).all()
        assert (bound <= g_norm * math.sqrt(2 * part.gamma) * lengths * (1 + 1e-12) + 1e-15).all()
        worst = max(worst, (change / bound.clamp_min(1e-300))[lengths > 0].max().item())
    # the bound is not vacuous: over seeds 0-5 the grid reaches 0.43-0.97 of it (margin 0.13)
    assert worst > 0.3


def first_adversarial_radius(model: KernelMachine, point: torch.Tensor, label: int, grid_radii, ring) -> float:
    """The norm of the nearest point of a polar grid around ``point`` that the model does not
    classify as ``label`` (inf if none): the exact minimum is at most this."""
    steps = (grid_radii[:, None, None] * ring[None]).reshape(-1, 2)
    with torch.no_grad():
        wrong = model((point + steps).float()).argmax(dim=1) != label
    return steps[wrong].norm(dim=1).min().item() if wrong.any() else math.inf


@pytest.mark.parametrize("seed", range(5))
def test_no_point_of_a_dense_2d_grid_inside_the_certified_ball_changes_the_decision(seed):
    model = machine(dims=2, centres=10, classes=3, gamma=3.0, seed=seed)
    angles = torch.linspace(0, 2 * math.pi, 721, dtype=torch.float64)[:-1]
    ring = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    grid_radii = torch.linspace(0, 2.0, 401, dtype=torch.float64)[1:]
    points = torch.rand(10, 2, generator=torch.Generator().manual_seed(100 + seed))
    with torch.no_grad():
        labels = model(points).argmax(dim=1)
    local = certified_radii(model, points, labels, 2)
    lipschitz = certified_radii(model, points, labels, 2, bound="lipschitz")
    assert (lipschitz <= local).all() and (local > 0).all()
    ratios = []
    for point, label, radius in zip(points.double(), labels.tolist(), local.tolist()):
        nearest = first_adversarial_radius(model, point, label, grid_radii, ring)
        # the grid point's float32 evaluation may disagree with exact arithmetic within ~1e-6 of the boundary
        assert radius <= nearest + ATTACK_SLACK
        if math.isfinite(nearest):
            ratios.append(radius / nearest)
    # boundaries were found for every point, and the radius is not vacuous: over seeds 0-7 the
    # largest ratio of radius to nearest grid boundary is 0.40-0.91 (margin 0.1)
    assert len(ratios) == len(points) and max(ratios) > 0.3


def test_the_radius_in_other_norms_is_the_l2_radius_over_the_norm_ratio():
    model = machine(dims=6, centres=9, classes=4, gamma=1.0, seed=0)
    x = torch.rand(10, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    two = certified_radii(model, x, y, 2)
    torch.testing.assert_close(certified_radii(model, x, y, 1), two)  # ||d||_2 <= ||d||_1
    torch.testing.assert_close(certified_radii(model, x, y, "inf"), two / math.sqrt(6))  # ||d||_2 <= sqrt(d) ||d||_inf
    wrong = (y + 1) % 4
    assert (certified_radii(model, x, wrong, 2) == 0).all()


def test_a_margin_beyond_sqrt2_times_the_rkhs_norm_is_certified_everywhere():
    """With a bias larger than ``sqrt(2) ||g||_H`` no input can change the decision (the kernel
    part moves g by at most ``sqrt(2) ||g||_H``): the radius is infinite, and the model's logits agree."""
    model = machine(dims=3, centres=4, classes=2, gamma=1.0, seed=0, scale=0.1)
    with torch.no_grad():
        model.head.bias.copy_(torch.tensor([0.0, 10.0]))
    x = torch.rand(5, 3, generator=torch.Generator().manual_seed(0))
    radii = certified_radii(model, x, torch.ones(5, dtype=torch.long), 2)
    assert torch.isinf(radii).all()
    far = torch.randn(1000, 3, generator=torch.Generator().manual_seed(1)) * 3
    assert (model(far).argmax(dim=1) == 1).all()


# -------------------------------------------------------------- a trained model against attacks


@pytest.fixture(scope="module", params=[0, 1], ids=["seed0", "seed1"])
def trained_kernel(digits, request):
    def make():
        torch.manual_seed(request.param)
        return KernelMachine(SHAPE, 10, centres=150)

    return fit(make, digits, epochs=6)


@pytest.mark.parametrize("norm", [2.0, math.inf])
def test_no_minimum_norm_attack_goes_below_the_certified_radius(trained_kernel, digits, norm):
    x, y = digits.x_test[:150], digits.y_test[:150]
    radii = certified_radii(trained_kernel, x, y, norm)
    clean = correct(trained_kernel, x, y)
    assert (radii[clean] > 0).all() and (radii[~clean] == 0).all()
    found = 0
    for attack in (FMN(norm=norm, steps=300), DeepFool(norm=norm)):
        result = attack(trained_kernel, x, y, bounds=WIDE)
        hit = result.success & clean
        found += int(hit.sum())
        assert (radii[hit] <= result.norms[hit].double() + ATTACK_SLACK).all(), attack.label
    assert found > 150


def test_pgd_never_succeeds_inside_the_certified_ball(trained_kernel, digits):
    x, y = digits.x_test[:20], digits.y_test[:20]
    radii = certified_radii(trained_kernel, x, y, 2)
    keep = radii > 0
    x, y, radii = x[keep], y[keep], radii[keep]
    for i in range(len(x)):  # PGD takes one budget per call
        # 1 - 1e-3: well above the float32 rounding of PGD's projected iterate (~1e-6 relative)
        attack = PGD(eps=(1 - 1e-3) * radii[i].item(), norm=2, steps=100, restarts=2)
        assert not attack(trained_kernel, x[i : i + 1], y[i : i + 1], bounds=WIDE).success.any()
    # and the certificate is not vacuous: PGD at twice the radius fools some of them
    fooled = sum(int(PGD(eps=2 * radii[i].item(), norm=2, steps=100)(trained_kernel, x[i : i + 1], y[i : i + 1],
                                                                       bounds=WIDE).success.sum())
                 for i in range(len(x)))
    assert fooled > len(x) // 4


@pytest.mark.parametrize("order", ["command line", "sweep"])
@pytest.mark.parametrize("regularizer", ["none", "weight_decay", "cross_lipschitz"])
def test_the_kernel_study_applies_its_regularizer_whichever_override_comes_first(make_cfg, regularizer, order):
    overrides = ["+experiment=crosslip_mnist_kernel", f"+regularizer={regularizer}"]
    cfg = make_cfg(*(overrides if order == "command line" else overrides[::-1]))
    assert cfg.model._target_.endswith("KernelMachine") and cfg.eval.certify == "hein"
    assert cfg.defense._target_.endswith("CrossLipschitz" if regularizer == "cross_lipschitz" else "Standard")
    assert (cfg.optimizer.get("weight_decay", 0) > 0) == (regularizer == "weight_decay")


@pytest.mark.numerics
def test_on_mnist_no_deepfool_or_fmn_perturbation_goes_below_the_certified_radius(make_cfg, tmp_path, shared_data):
    """784 inputs and 300 centres: the rounding allowance grows with both; the radius stays sound."""
    cfg = make_cfg("+experiment=crosslip_mnist_kernel", "+regularizer=cross_lipschitz", f"dataset.root={shared_data}",
                   "dataset.n_train=1000", "model.centres=300", "train.epochs=3", "eval.n_samples=100",
                   "attack.steps=5", "eval.epsilons=[0,0.5]", "eval.audit=false", "report=false", "device=cpu",
                   "cache.enabled=false")
    metrics = experiment.run(cfg, tmp_path / "run")
    assert metrics["certified_method"] == "hein"
    model = experiment.load_run(tmp_path / "run").model
    from advrun.data import load_dataset

    data = load_dataset(experiment.to_container(cfg.dataset))
    x, y = data.x_test[:100], data.y_test[:100]
    radii = certified_radii(model, x, y, 2)
    clean = correct(model, x, y)
    assert (radii[clean] > 0).all()
    for attack in (DeepFool(norm=2), FMN(norm=2, steps=200)):
        result = attack(model, x, y, bounds=WIDE)
        hit = result.success & clean
        assert hit.sum() >= 0.9 * clean.sum()
        assert (radii[hit] <= result.norms[hit].double() + ATTACK_SLACK).all(), attack.label
