"""BIM, MI-FGSM and FGM against independent implementations (torchattacks, ART) on the same
model and inputs. Sign steps can split at ties: see tests/conftest.py, assert_same_iterates.

The peers return the last iterate. With ``keep_best: false`` ours do too and are compared
directly. With ``keep_best: true`` (the default) ours keep per sample the first iterate that
reaches the goal, else the one with the highest loss: the peer's whole trajectory is rebuilt
by running it for 1, 2, ..., T steps (the runs share their prefix: no randomness) and the same
rule picks the expected iterate from it, so every sample is compared, fooled or not.
"""

import numpy as np
import pytest
import torch

from advrun.attacks import BIM, FGM, MIFGSM
from advrun.attacks.base import Goal
from tests.conftest import assert_same_iterates
from tests.test_attacks_gradient_family import worst_iterate

pytestmark = pytest.mark.numerics

#: One L2 step of length eps (FGM) is continuous in the gradient: no sign to flip, and a clamp to
#: the bounds moves both implementations alike. Float32 error of a unit step of length 1: ~1e-7
#: per coordinate; 1e-5 leaves room for the peers' other reductions (mean loss, numpy).
FGM_ATOL = 1e-5


@pytest.fixture
def setup(trained):
    model, x, y = trained("mlp")
    return model, x[:200], y[:200]


def peer_trajectory(make, x, y, steps):
    """x_0 = x, then the peer's output after 1 ... steps iterations."""
    return torch.stack([x] + [make(t)(x, y) for t in range(1, steps + 1)])


def test_bim_matches_torchattacks(setup):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = setup
    eps, alpha, steps = 0.1, 1 / 255, 30
    theirs = torchattacks.BIM(model, eps=eps, alpha=alpha, steps=steps)(x, y)
    ours = BIM(eps=eps, step_size=alpha, steps=steps, keep_best=False)(model, x, y).x_adv
    assert_same_iterates(ours, theirs)


def test_bim_keeping_the_worst_iterate_matches_the_torchattacks_trajectory(setup):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = setup
    eps, steps = 0.1, 10
    trajectory = peer_trajectory(lambda t: torchattacks.BIM(model, eps=eps, alpha=eps / steps, steps=t), x, y, steps)
    ours = BIM(eps=eps, steps=steps, step_size=None)(model, x, y)
    expected = worst_iterate(model, trajectory, Goal(y))
    assert_same_iterates(ours.x_adv, expected)
    with torch.no_grad():
        reached_last = model(trajectory[-1]).argmax(1) != y
    assert (ours.success | ~reached_last).all()  # every sample the peer fools, we fool


def test_least_likely_bim_matches_torchattacks(setup):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = setup
    eps, alpha, steps = 0.2, 2 / 255, 20
    peer = torchattacks.BIM(model, eps=eps, alpha=alpha, steps=steps)
    peer.set_mode_targeted_least_likely()
    theirs = peer(x, y)
    ours = BIM(eps=eps, step_size=alpha, steps=steps, keep_best=False, target="least_likely")(model, x, y)
    assert_same_iterates(ours.x_adv, theirs)
    with torch.no_grad():
        assert torch.equal(ours.targets, model(x).argmin(1))


@pytest.mark.parametrize("decay", [1.0, 0.5])
def test_mifgsm_matches_torchattacks(setup, decay):
    """torchattacks divides the gradient by its mean absolute value instead of its L1 norm: a
    per-sample constant factor (the input size) that leaves sign(g) unchanged."""
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = setup
    eps, steps = 0.1, 10
    theirs = torchattacks.MIFGSM(model, eps=eps, alpha=eps / steps, steps=steps, decay=decay)(x, y)
    ours = MIFGSM(eps=eps, steps=steps, decay=decay, keep_best=False)(model, x, y).x_adv
    assert_same_iterates(ours, theirs)


def test_mifgsm_keeping_the_worst_iterate_matches_the_torchattacks_trajectory(setup):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = setup
    eps, steps = 0.1, 10
    make = lambda t: torchattacks.MIFGSM(model, eps=eps, alpha=eps / steps, steps=t, decay=1.0)  # noqa: E731
    trajectory = peer_trajectory(make, x, y, steps)
    ours = MIFGSM(eps=eps, steps=steps)(model, x, y).x_adv
    assert_same_iterates(ours, worst_iterate(model, trajectory, Goal(y)))


def test_normalized_fgm_matches_art(setup):
    pytest.importorskip("art")
    from art.attacks.evasion import FastGradientMethod
    from art.estimators.classification import PyTorchClassifier

    model, x, y = setup
    classifier = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 8, 8),
                                   nb_classes=10, clip_values=(0.0, 1.0))
    theirs = FastGradientMethod(classifier, norm=2, eps=1.0).generate(x.numpy(), y=y.numpy())
    ours = FGM(eps=1.0)(model, x, y).x_adv
    torch.testing.assert_close(ours, torch.from_numpy(theirs).float(), atol=FGM_ATOL, rtol=0)


def test_normalized_fgm_matches_one_step_of_torchattacks_pgdl2(setup):
    """One L2 step of length eps without random start; per sample, because PGDL2 averages the
    loss over the batch and adds 1e-10 to the gradient norm."""
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = setup
    x, y = x[:40], y[:40]
    peer = torchattacks.PGDL2(model, eps=1.0, alpha=1.0, steps=1, random_start=False)
    theirs = torch.cat([peer(x[i : i + 1], y[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(FGM(eps=1.0)(model, x, y).x_adv, theirs, atol=FGM_ATOL, rtol=0)


def test_targeted_fgm_matches_art(setup):
    pytest.importorskip("art")
    from art.attacks.evasion import FastGradientMethod
    from art.estimators.classification import PyTorchClassifier

    model, x, y = setup
    classifier = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 8, 8),
                                   nb_classes=10, clip_values=(0.0, 1.0))
    targets = np.full(len(x), 3)
    theirs = FastGradientMethod(classifier, norm=2, eps=1.0, targeted=True).generate(x.numpy(), y=targets)
    ours = FGM(eps=1.0, target=3)(model, x, y).x_adv
    torch.testing.assert_close(ours, torch.from_numpy(theirs).float(), atol=FGM_ATOL, rtol=0)
