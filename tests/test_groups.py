"""Every option of every config group composes and runs end to end on tiny data."""

import json

import pytest

from advrun import experiment
from tests.conftest import TINY, TINY_DEFENSE, groups
from tests.fake_data import write_mnist_like
from tests.test_data_byo import write_folder, write_npz
from tests.test_models_byo import export_program

#: Tiny models on a shared 2-core machine: a second intra-op thread only adds contention.
pytestmark = pytest.mark.usefixtures("one_thread")

#: Per attack, the overrides that make it run in about a second.
TINY_ATTACK = {
    "pgd": ["attack.steps=3"],
    "bim": ["attack.steps=3"],
    "mifgsm": ["attack.steps=3"],
    "spatial": ["attack.rotations=3", "attack.translations=3"],
    "patch": ["attack.train_steps=5"],
    "universal": ["attack.train_samples=50", "attack.max_passes=1"],
    "deepfool": ["attack.steps=10"],
    "cw": ["attack.steps=10", "attack.binary_steps=3"],
    "lbfgs": ["attack.steps=10", "attack.binary_steps=3"],
    "fmn": ["attack.steps=10"],
    "linear_exact": ["model=logreg"],  # an exact attack on affine models only
    "region": ["attack.rounds=1", "attack.samples=1"],
    "apgd": ["attack.n_iter=5"],
    "square": ["attack.n_queries=20"],
    "fab": ["attack.n_iter=3"],
    "ensemble": ["attack.version=custom",
                 "attack.attacks=[{_target_: advrun.attacks.APGD, eps: 0.0, n_iter: 3},"
                 " {_target_: advrun.attacks.FAB, eps: null, n_iter: 3, n_target_classes: 2},"
                 " {_target_: advrun.attacks.Square, eps: 0.0, n_queries: 20}]"],
    "transfer": ["attack.craft.steps=3"],  # attack.surrogate: a run the test makes first
}


#: Per model, the overrides that make it train in about a second.
TINY_MODEL = {
    "resnet": ["model.width=8"],  # PreActResNet-18 at 1/8 of its width
    "torchvision": ["model.name=resnet18", "dataset.n_train=32", "train.epochs=1"],  # 11M parameters
    "exported": ["train.epochs=0"],  # a program evaluated as it is (model.path: written by the test)
    "kernel": ["model.centres=50"],  # centres are training images: TINY keeps 240
}

OPTIONS = [(group, option) for group, options in groups().items() for option in options]


def test_every_attack_has_tiny_settings():
    assert set(groups()["attack"]) - {"none", "fgsm", "fgm"} == set(TINY_ATTACK)


def test_the_groups_hold_the_documented_options():
    found = groups()
    assert {"digits", "moons", "mnist", "fashion_mnist", "cifar10", "folder", "tensors"} <= set(found["dataset"])
    assert {"logreg", "mlp", "cnn", "resnet", "wong_mnist", "exported", "torchvision"} <= set(found["model"])
    assert {"sgd", "adam"} <= set(found["optimizer"])
    assert {"none", "fgsm", "pgd"} <= set(found["attack"])
    assert {"none", "adversarial", "trades", "fast_at", "linear_robust", "cross_lipschitz"} <= set(found["defense"])


def _data_overrides(option, tmp_path, request):
    if option in ("mnist", "fashion_mnist"):
        write_mnist_like(tmp_path / "data", "MNIST" if option == "mnist" else "FashionMNIST")
        return [f"dataset.root={tmp_path / 'data'}"]
    if option == "cifar10":
        request.getfixturevalue("fake_cifar10")
    if option == "folder":  # a few PNGs per class in ImageFolder layout
        return [f"dataset.root={write_folder(tmp_path / 'images')}", "dataset.size=8"]
    if option == "tensors":  # arrays in a .npz; no default budgets (their scale is the user's)
        return [f"dataset.path={write_npz(tmp_path / 'data.npz')}", "attack.eps=0.05"]
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
    if (group, option) == ("model", "exported"):
        overrides += [f"model.path={export_program(tmp_path / 'net.pt2')}"]
    if group == "attack":
        overrides += TINY_ATTACK.get(option, [])
    if (group, option) == ("attack", "transfer"):  # the surrogate: a finished run on the same data
        experiment.run(make_cfg(*TINY, "attack=none"), tmp_path / "surrogate")
        overrides += [f"attack.surrogate={tmp_path / 'surrogate'}"]
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
