"""advrun's C&W and DeepFool against independent implementations (torchattacks, foolbox) on the
same trained model and inputs: at least the same success rate, and perturbations no larger
than the peer's (median over the samples both fool) by more than 5%."""

import math

import pytest
import torch

from advrun.attacks import CW, DeepFool

TOLERANCE = 1.05


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.numerics]


def fooled_and_norms(model, x, y, x_adv, p=2.0):
    with torch.no_grad():
        fooled = model(x_adv).argmax(dim=1) != y
    return fooled, torch.linalg.vector_norm((x_adv - x).flatten(1), ord=p, dim=1)


def compare(model, x, y, ours, peer_x_adv, p=2.0, overlap=0.5):
    """Success rates over the correctly classified samples and medians over those both fool
    (at least ``overlap`` of the correct ones)."""
    with torch.no_grad():
        correct = model(x).argmax(dim=1) == y
    peer_fooled, peer_norms = fooled_and_norms(model, x, y, peer_x_adv, p)
    assert ours.success[correct].float().mean() >= peer_fooled[correct].float().mean()
    both = correct & ours.success & peer_fooled
    assert both.sum() >= overlap * correct.sum()
    assert ours.norms[both].median() <= TOLERANCE * peer_norms[both].median()
    return ours.norms[both].median().item(), peer_norms[both].median().item()


@pytest.mark.parametrize("steps", [50, 200])
def test_cw_against_torchattacks(trained, steps):
    """torchattacks' CW runs one fixed c (1 by default) without the binary search."""
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = trained("mlp")
    x, y = x[:100], y[:100]
    ours = CW(steps=100, binary_steps=5, initial_const=0.1, lr=0.05)(model, x, y)
    theirs = torchattacks.CW(model, c=1, kappa=0, steps=steps, lr=0.01)(x, y)
    compare(model, x, y, ours, theirs)


def test_deepfool_against_torchattacks(trained):
    """torchattacks' DeepFool loops over samples (a small batch keeps this fast)."""
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = trained("mlp")
    x, y = x[:40], y[:40]
    ours = DeepFool(norm=2, steps=50, overshoot=0.02)(model, x, y)
    theirs = torchattacks.DeepFool(model, steps=50, overshoot=0.02)(x, y)
    compare(model, x, y, ours, theirs)


@pytest.mark.parametrize("norm", [2.0, math.inf])
def test_deepfool_against_foolbox(trained, norm):
    fb = pytest.importorskip("foolbox")
    model, x, y = trained("mlp")
    x, y = x[:150], y[:150]
    ours = DeepFool(norm=norm, steps=50, overshoot=0.02, candidates=10)(model, x, y)
    attack = (fb.attacks.L2DeepFoolAttack if norm == 2.0 else fb.attacks.LinfDeepFoolAttack)(
        steps=50, candidates=10, overshoot=0.02)
    _, theirs, _ = attack(fb.PyTorchModel(model, bounds=(0, 1)), x, y, epsilons=None)
    compare(model, x, y, ours, theirs, norm)


def test_deepfool_on_saturated_images_against_torchattacks(trained):
    """Binarised digits (every pixel on a bound): torchattacks' DeepFool, which clips and
    overshoots at every step, stalls on part of them; advrun's fools every one."""
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = trained("mlp")
    x, y = x[:40].round(), y[:40]
    ours = DeepFool(norm=2)(model, x, y)
    theirs = torchattacks.DeepFool(model, steps=50, overshoot=0.02)(x, y)
    compare(model, x, y, ours, theirs, overlap=0.2)
    with torch.no_grad():
        correct = model(x).argmax(dim=1) == y
    peer_fooled, _ = fooled_and_norms(model, x, y, theirs)
    assert ours.success[correct].all() and not peer_fooled[correct].all()
