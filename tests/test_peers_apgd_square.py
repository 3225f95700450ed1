"""APGD and Square against torchattacks' implementations (test-only peer) on the trained digits
MLP: same inputs, budget, iterations or queries; advrun must be no weaker (robust accuracy no
higher than the peer's by more than about one point)."""

import pytest
import torch

from advrun.attacks import APGD, Square

pytestmark = pytest.mark.numerics

TOLERANCE = 0.012  # about one point of robust accuracy (5 of 450 samples)


@pytest.fixture
def setup(trained):
    return trained("mlp")


def robust(model, x, y, x_adv):
    with torch.no_grad():
        return ((model(x).argmax(1) == y) & (model(x_adv).argmax(1) == y)).float().mean().item()


@pytest.mark.parametrize("norm, eps", [("inf", 0.1), (2, 0.5)])
@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_is_no_weaker_than_torchattacks(setup, norm, eps, loss):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = setup
    torch.manual_seed(0)
    ours = APGD(eps=eps, norm=norm, loss=loss, n_iter=50)(model, x, y).x_adv
    peer = torchattacks.APGD(model, norm="Linf" if norm == "inf" else "L2", eps=eps, steps=50, loss=loss, seed=0)
    theirs = peer(x, y)
    assert robust(model, x, y, ours) <= robust(model, x, y, theirs) + TOLERANCE


def test_apgd_t_is_no_weaker_than_torchattacks(setup):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = setup
    x, y = x[:200], y[:200]
    torch.manual_seed(0)
    ours = APGD(eps=0.1, loss="dlr_targeted", n_iter=30, n_target_classes=9)(model, x, y).x_adv
    theirs = torchattacks.APGDT(model, norm="Linf", eps=0.1, steps=30, n_classes=10, seed=0)(x, y)
    assert robust(model, x, y, ours) <= robust(model, x, y, theirs) + 0.015


@pytest.mark.parametrize("norm, eps", [("inf", 0.1), (2, 0.5)])
def test_square_is_no_weaker_than_torchattacks(setup, norm, eps):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = setup
    torch.manual_seed(0)
    ours = Square(eps=eps, norm=norm, n_queries=300)(model, x, y).x_adv
    peer = torchattacks.Square(model, norm="Linf" if norm == "inf" else "L2", eps=eps, n_queries=300, seed=0)
    theirs = peer(x, y)
    assert robust(model, x, y, ours) <= robust(model, x, y, theirs) + TOLERANCE
