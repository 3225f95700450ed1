"""Every option of every config group composes and runs end to end on tiny data."""

import json

import numpy as np
import pytest

from advrun import experiment
from tests.conftest import TINY, groups
from tests.fake_data import write_mnist_like

#: Tiny models on a shared 2-core machine: a second intra-op thread only adds contention.
pytestmark = pytest.mark.usefixtures("one_thread")

#: Per attack, the overrides that make it run in about a second.
TINY_ATTACK = {
    "pgd": ["attack.steps=3"],
    "bim": ["attack.steps=3"],
    "mifgsm": ["attack.steps=3"],
    "spatial": ["attack.rotations=3", "attack.translations=3"],
    "patch": ["attack.train_steps=5"],
    "deepfool": ["attack.steps=10"],
    "cw": ["attack.steps=10", "attack.binary_steps=3"],
    "lbfgs": ["attack.steps=10", "attack.binary_steps=3"],
    "linear_exact": ["model=logreg"],  # an exact attack on affine models only
    "apgd": ["attack.n_iter=5"],
    "square": ["attack.n_queries=20"],
    "ensemble": ["attack.attacks.0.n_iter=3", "attack.attacks.1.n_iter=3", "attack.attacks.1.n_target_classes=2",
                 "attack.attacks.2.n_queries=20"],
}

#: Per defense, the overrides that make it train in about a second.
TINY_DEFENSE = {
    "adversarial": ["defense.attack.steps=2"],
    "trades": ["defense.steps=2"],
    "fast_at": ["defense.check_steps=2"],
    "linear_robust": ["model=logreg"],  # exact for affine models only
    "cross_lipschitz": ["model.hidden=[32]"],  # one hidden layer: the closed form
}

#: Per model, the overrides that make it train in about a second.
TINY_MODEL = {
    "resnet": ["model.width=8"],  # PreActResNet-18 at 1/8 of its width
}

OPTIONS = [(group, option) for group, options in groups().items() for option in options]


def test_every_attack_has_tiny_settings():
    assert set(groups()["attack"]) - {"none", "fgsm", "fgm"} == set(TINY_ATTACK)


def test_the_groups_hold_the_documented_options():
    found = groups()
    assert {"digits", "moons", "mnist", "fashion_mnist", "cifar10"} <= set(found["dataset"])
    assert {"logreg", "mlp", "cnn", "resnet", "wong_mnist"} <= set(found["model"])
    assert {"sgd", "adam"} <= set(found["optimizer"])
    assert {"none", "fgsm", "pgd"} <= set(found["attack"])
    assert {"none", "adversarial", "trades", "fast_at", "linear_robust", "cross_lipschitz"} <= set(found["defense"])


@pytest.fixture
def fake_cifar10(monkeypatch):
    import torchvision.datasets as tvd

    class FakeCIFAR10:
        classes = [f"c{i}" for i in range(10)]

        def __init__(self, root, train, download):
            n = 100 if train else 40
            rng = np.random.default_rng(0)
            self.targets = [i % 10 for i in range(n)]
            self.data = rng.integers(0, 255, size=(n, 32, 32, 3), dtype=np.uint8)

    monkeypatch.setattr(tvd, "CIFAR10", FakeCIFAR10)


def _data_overrides(option, tmp_path, request):
    if option in ("mnist", "fashion_mnist"):
        write_mnist_like(tmp_path / "data", "MNIST" if option == "mnist" else "FashionMNIST")
        return [f"dataset.root={tmp_path / 'data'}"]
    if option == "cifar10":
        request.getfixturevalue("fake_cifar10")
    return []


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_runs(group, option, make_cfg, tmp_path, request):
    overrides = [f"{group}={option}", *TINY, "eval.epsilons=[0,0.05]"]
    if group == "dataset":
        overrides += _data_overrides(option, tmp_path, request)
    if (group, option) == ("model", "wong_mnist"):  # built for 28x28 MNIST only
        overrides += ["dataset=mnist", *_data_overrides("mnist", tmp_path, request)]
    if group == "model":
        overrides += TINY_MODEL.get(option, [])
    if group == "attack":
        overrides += TINY_ATTACK.get(option, [])
    if group == "defense":
        overrides += TINY_DEFENSE.get(option, [])
    cfg = make_cfg(*overrides)
    out = tmp_path / "run"
    metrics = experiment.run(cfg, out)
    assert 0 <= metrics["clean_accuracy"] <= 1
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["clean_accuracy"] == metrics["clean_accuracy"]
    for name in ("model.pt", "model.json", "training.csv"):  # figures: tests/test_reporting.py
        assert (out / name).is_file(), name
    if option == "none" and group == "attack":
        assert saved["attack"] is None and not (out / "curve.csv").exists()
    else:
        assert (out / "curve.csv").is_file()
