"""What gradient attacks ascend (``attack.loss``), expectation over transformation (``eot_samples``),
the true label of targeted goals, and the random start of PGD."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advrun.attacks import APGD, FGM, FGSM, PGD, Square
from advrun.attacks.base import Goal
from advrun.attacks.norms import lp_norm, random_in_ball, random_start
from advrun.attacks.objectives import OBJECTIVES, dlr_loss, dlr_targeted_loss, objective
from advrun.errors import InvalidValue

LOGITS = torch.tensor([[2.0, 1.0, -1.0, 0.5], [0.0, 3.0, 1.0, -2.0]])
LABELS = torch.tensor([0, 2])
TARGETS = torch.tensor([3, 0])


def test_each_objective_is_its_formula_on_hand_made_logits():
    untargeted, targeted = Goal(LABELS), Goal(TARGETS, targeted=True, source=LABELS)
    torch.testing.assert_close(objective("ce", untargeted, LOGITS), F.cross_entropy(LOGITS, LABELS, reduction="none"))
    torch.testing.assert_close(objective("ce", targeted, LOGITS), -F.cross_entropy(LOGITS, TARGETS, reduction="none"))
    # margin: max other - own (untargeted), target - max other (targeted)
    torch.testing.assert_close(objective("margin", untargeted, LOGITS), torch.tensor([1.0 - 2.0, 3.0 - 1.0]))
    torch.testing.assert_close(objective("margin", targeted, LOGITS), torch.tensor([0.5 - 2.0, 0.0 - 3.0]))
    # dlr: eq. 7 untargeted; eq. 8 with the true label y and the target t when targeted
    torch.testing.assert_close(objective("dlr", untargeted, LOGITS), dlr_loss(LOGITS, LABELS))
    torch.testing.assert_close(objective("dlr", targeted, LOGITS), dlr_targeted_loss(LOGITS, LABELS, TARGETS))
    expected_first = -(2.0 - 0.5) / (2.0 - (0.5 - 1.0) / 2)  # -(z_y - z_t) / (z_1 - (z_3 + z_4) / 2)
    assert objective("dlr", targeted, LOGITS)[0].item() == pytest.approx(expected_first)
    # mse: ||z - e_y||^2, minus that towards the target
    assert objective("mse", untargeted, LOGITS)[0].item() == pytest.approx(1 + 1 + 1 + 0.25)
    assert objective("mse", targeted, LOGITS)[1].item() == pytest.approx(-(1 + 9 + 1 + 4))
    # logistic on two logits: log(1 + exp(-s (z1 - z0))), s = 2y - 1
    two = torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    expected = torch.tensor([math.log1p(math.exp(2.0)), math.log1p(math.exp(-2.0))])
    torch.testing.assert_close(objective("logistic", Goal(torch.tensor([0, 0])), two), expected)


def test_the_margin_is_positive_exactly_where_the_goal_is_reached():
    logits = torch.randn(200, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 5, (200,), generator=torch.Generator().manual_seed(1))
    for goal in (Goal(labels), Goal(labels, targeted=True, source=(labels + 1) % 5)):
        assert torch.equal(objective("margin", goal, logits) > 0, goal.reached(logits))


def test_train_must_be_resolved_and_unknown_losses_are_refused():
    with pytest.raises(InvalidValue, match="loss: train names the run's training loss"):
        objective("train", Goal(LABELS), LOGITS)
    with pytest.raises(InvalidValue, match="loss: unknown loss 'hinge'"):
        PGD(eps=0.1, loss="hinge")
    attack = PGD(eps=0.1, loss="train")
    assert attack.with_training_loss("mse").loss == "mse"
    assert attack.with_training_loss("cross_entropy").loss == "ce"
    assert PGD(eps=0.1, loss="margin").with_training_loss("mse").loss == "margin"  # only train is resolved


def test_losses_that_need_more_classes_say_so():
    with pytest.raises(InvalidValue, match="needs >= 3 classes"):
        PGD(eps=0.1, loss="dlr").check_classes(2)
    with pytest.raises(InvalidValue, match="two classes"):
        FGSM(eps=0.1, loss="logistic").check_classes(10)


@pytest.mark.parametrize("loss", [name for name in OBJECTIVES if name not in ("train", "logistic")])
def test_pgd_ascends_the_loss_it_is_given(trained, loss):
    """One step of FGSM along each objective raises that objective on most samples."""
    model, x, y = trained("mlp")
    x, y = x[:100], y[:100]
    with torch.no_grad():
        before = objective(loss, Goal(y), model(x))
        after = objective(loss, Goal(y), model(FGSM(eps=0.02, loss=loss)(model, x, y).x_adv))
    assert (after > before).float().mean() > 0.9


def test_targeted_apgd_dlr_uses_the_true_label():
    """DLR-T (eq. 8) on a targeted goal: the true label y, not the largest other logit."""
    attack = APGD(eps=0.1, loss="dlr", target=3)
    goal = Goal(TARGETS, targeted=True, source=LABELS)
    torch.testing.assert_close(attack._objective(LOGITS, goal, None), dlr_targeted_loss(LOGITS, LABELS, TARGETS))
    model = nn.Linear(4, 4)
    chosen = attack.goal_for(model, torch.randn(2, 4), LABELS)
    assert torch.equal(chosen.source, LABELS) and torch.equal(chosen.subset(torch.tensor([1])).source, LABELS[1:])


class RandomMask(nn.Module):
    """A classifier that is random at test time: each forward pass drops input pixels at random
    (dropout that eval mode does not turn off), a model for expectation over transformation."""

    def __init__(self, model: nn.Module, p: float):
        super().__init__()
        self.model, self.p = model, p

    def forward(self, x):
        return self.model(F.dropout(x, self.p, training=True))


def test_one_eot_sample_is_the_plain_gradient(trained):
    model, x, y = trained("mlp")
    x, y = x[:20], y[:20]
    for parameter in model.parameters():
        parameter.grad = None
    grad, value, logits = PGD(eps=0.1).gradient(model, x, lambda z: F.cross_entropy(z, y, reduction="none"))
    point = x.clone().requires_grad_(True)
    plain = F.cross_entropy(model(point), y, reduction="none")
    (expected,) = torch.autograd.grad(plain.sum(), point)
    torch.testing.assert_close(grad, expected)
    torch.testing.assert_close(value, plain.detach())
    torch.testing.assert_close(logits, model(x).detach())
    assert all(p.grad is None for p in model.parameters())


def test_eot_averages_gradients_over_passes(trained):
    """The EOT gradient is the mean of per-pass gradients (same random masks replayed), and
    Jacobian objectives ([n, m] values) give one gradient row per column."""
    model, x, y = trained("mlp")
    random_model = RandomMask(model, 0.3)
    x, y = x[:10], y[:10]
    attack = PGD(eps=0.1, eot_samples=4)
    torch.manual_seed(5)
    grad, value, logits = attack.gradient(random_model, x, lambda z: F.cross_entropy(z, y, reduction="none"))
    torch.manual_seed(5)
    passes = [PGD(eps=0.1).gradient(random_model, x, lambda z: F.cross_entropy(z, y, reduction="none")) for _ in range(4)]
    torch.testing.assert_close(grad, sum(p[0] for p in passes) / 4)
    torch.testing.assert_close(value, sum(p[1] for p in passes) / 4)
    torch.testing.assert_close(logits, sum(p[2] for p in passes) / 4)
    jacobian, columns, _ = PGD(eps=0.1).gradient(model, x, lambda z: z[:, :3])
    assert jacobian.shape == (10, 3, *x.shape[1:]) and columns.shape == (10, 3)
    single, _, _ = PGD(eps=0.1).gradient(model, x, lambda z: z[:, 1])
    torch.testing.assert_close(jacobian[:, 1], single)


def majority_fooled(model: nn.Module, x: torch.Tensor, y: torch.Tensor, passes: int = 64) -> torch.Tensor:
    """Per sample, whether most random forward passes misclassify ``x``."""
    with torch.no_grad():
        wrong = torch.stack([model(x).argmax(1) != y for _ in range(passes)]).float().mean(0)
    return wrong > 0.5


def test_eot_pgd_fools_a_random_model_more_often_than_plain_pgd(trained):
    """Athalye et al. 2018: on a model random at test time, averaging the gradient over its
    randomness makes a stronger attack than following one random gradient. Measured over
    seeds 0-4 on these 200 digits: plain PGD fools 67.5-75.5% (majority vote of 64 passes),
    EOT-PGD with 16 samples 83.5-86.5%, a gap of 9.5 points or more; the test asks for 5."""
    model, x, y = trained("mlp")
    random_model = RandomMask(model, 0.5)
    x, y = x[:200], y[:200]
    torch.manual_seed(0)
    plain = PGD(eps=0.1, steps=20, keep_best=False)(random_model, x, y).x_adv
    eot = PGD(eps=0.1, steps=20, keep_best=False, eot_samples=16)(random_model, x, y).x_adv
    torch.manual_seed(1)
    rate_plain = majority_fooled(random_model, plain, y).float().mean().item()
    rate_eot = majority_fooled(random_model, eot, y).float().mean().item()
    assert rate_eot >= rate_plain + 0.05, (rate_plain, rate_eot)


def test_eot_is_for_gradient_attacks():
    assert PGD(eps=0.1, eot_samples=3).eot_samples == 3 and FGM(eps=0.5, eot_samples=2).eot_samples == 2
    with pytest.raises(InvalidValue, match="eot_samples: square takes no gradients"):
        Square(eps=0.1, eot_samples=2)
    with pytest.raises(InvalidValue, match="eot_samples"):
        PGD(eps=0.1, eot_samples=0)


@pytest.mark.parametrize("norm", [2.0, 1.0])
def test_pgd_random_start_radius_is_uniform_in_zero_to_eps(norm):
    """The L2 / L1 start: a radius uniform in [0, eps] (mean eps/2, quartiles eps/4, 3 eps/4),
    not the volume-uniform radius eps * u^(1/d), which sits at the rim in 64 dimensions."""
    torch.manual_seed(0)
    like, eps = torch.zeros(20000, 1, 8, 8), 2.0
    radii = lp_norm(random_start(like, eps, norm), norm)
    assert radii.max() <= eps * (1 + 1e-6)
    quartiles = radii.quantile(torch.tensor([0.25, 0.5, 0.75]))
    # a uniform sample of 20,000 puts its quartiles within ~0.01 eps of the truth (3 standard errors)
    torch.testing.assert_close(quartiles / eps, torch.tensor([0.25, 0.5, 0.75]), atol=0.015, rtol=0)
    assert lp_norm(random_in_ball(like, eps, norm), norm).quantile(0.05) > 0.9 * eps  # the rim
    directions = random_start(like, 1.0, norm).flatten(1)
    assert directions.mean(0).abs().max() < 0.02  # no preferred direction


def test_pgd_linf_random_start_is_uniform_in_the_cube():
    torch.manual_seed(0)
    start = random_start(torch.zeros(4000, 64), 0.3, math.inf)
    assert start.abs().max() <= 0.3 and abs(start.abs().mean().item() - 0.15) < 0.005
