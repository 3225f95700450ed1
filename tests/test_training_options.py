"""Losses, optimizers, learning-rate schedules, full-batch training and model.checkpoint."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from advrun import experiment
from advrun.errors import ConfigError, InvalidValue
from advrun.losses import binary_logistic, get_loss, squared_error
from advrun.models import LogReg
from advrun.schedules import lr_factor
from advrun.training import train

from tests.conftest import TINY, groups

pytestmark = pytest.mark.usefixtures("one_thread")

# Comparisons without stated tolerances use the defaults, a few ulps: torch.testing.assert_close
# (float64 rtol 1e-7, atol 1e-7) and pytest.approx (rel 1e-6, abs 1e-12): a formula against
# another float evaluation of it (log1p(exp) against log-sum-exp, a schedule's arithmetic against
# its closed form, a learning rate read back from CSV).


# --- losses -------------------------------------------------------------------------------------

def test_squared_error_is_the_mean_squared_distance_to_the_one_hot_target():
    logits = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.0, 0.0]])
    y = torch.tensor([2, 0])
    by_hand = ((0.5**2 + 1.0**2 + 1.0**2) + (1.0**2)) / 2
    assert squared_error(logits, y).item() == pytest.approx(by_hand)


def test_binary_logistic_is_log_one_plus_exp_of_minus_the_signed_margin():
    logits = torch.randn(50, 2, dtype=torch.float64)
    y = torch.randint(0, 2, (50,))
    margin = logits[:, 1] - logits[:, 0]
    sign = torch.where(y == 1, 1.0, -1.0).double()
    expected = torch.log1p(torch.exp(-sign * margin)).mean()
    torch.testing.assert_close(binary_logistic(logits, y), expected)
    torch.testing.assert_close(binary_logistic(logits, y), F.cross_entropy(logits, y))  # the same loss on two logits


def test_losses_refuse_what_they_cannot_train():
    with pytest.raises(InvalidValue, match="two classes"):
        binary_logistic(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(InvalidValue, match="cross_entropy"):
        get_loss("hinge")


@pytest.mark.parametrize("overrides, key", [
    (["train.loss=hinge"], "train.loss"),
    (["train.loss=logistic"], "train.loss"),  # ten classes
    (["model=logreg", "defense=linear_robust", "train.loss=mse"], "train.loss"),
    (["train.batch_size=half"], "train.batch_size"),
    (["train.schedule=linear"], "train.schedule"),
    (["train.schedule=step", "train.step_epochs=0"], "train.step_epochs"),
    (["train.schedule=cyclic", "train.peak=1.5"], "train.peak"),
    (["optimizer=sgd", "optimizer.momentum=0", "optimizer.nesterov=true"], "optimizer"),
    (["train.epochs=0"], "train.epochs"),
    (["deterministic=maybe"], "deterministic"),
])
def test_bad_training_options_name_their_key(make_cfg, tmp_path, overrides, key):
    with pytest.raises(ConfigError) as error:
        experiment.run(make_cfg(*TINY, "attack=none", *overrides), tmp_path)
    assert error.value.key == key
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("loss", ["mse", "logistic"])
def test_every_loss_trains_a_model_end_to_end(make_cfg, tmp_path, loss):
    classes = ["dataset.classes=[0,1]"] if loss == "logistic" else []
    metrics = experiment.run(make_cfg(*TINY, *classes, "attack=none", "train.epochs=4", f"train.loss={loss}"), tmp_path)
    chance = 0.5 if classes else 0.1
    assert metrics["clean_accuracy"] > chance + 0.3


# --- optimizers and schedules -------------------------------------------------------------------

def test_every_optimizer_option_is_offered():
    assert {"sgd", "adam", "adamw", "adagrad", "rmsprop"} <= set(groups()["optimizer"])


@pytest.mark.parametrize("overrides", [["optimizer=sgd", "optimizer.nesterov=true"], ["optimizer=adamw"],
                                       ["optimizer=adagrad"], ["optimizer=rmsprop", "optimizer.momentum=0.5"]])
def test_optimizers_train(make_cfg, tmp_path, overrides):
    metrics = experiment.run(make_cfg(*TINY, "attack=none", "train.epochs=3", *overrides), tmp_path)
    assert metrics["clean_accuracy"] > 0.6


def test_schedule_factors_follow_their_formulas():
    e, t = 5, 50  # 5 steps per epoch, 10 epochs
    step = lr_factor("step", e, t, step_epochs=3, gamma=0.5)
    assert [step(j) for j in (0, 14, 15, 29, 30)] == [1, 1, 0.5, 0.5, 0.25]
    cosine = lr_factor("cosine", e, t)
    assert cosine(0) == 1 and cosine(25) == pytest.approx(0.5) and cosine(50) == pytest.approx(0)
    cyclic = lr_factor("cyclic", e, t, peak=0.4)  # up over 20 steps, down over 30; step j read at j + 1
    assert cyclic(19) == pytest.approx(1) and cyclic(9) == pytest.approx(0.5) and cyclic(34) == pytest.approx(0.5)
    assert cyclic(49) == 0
    inverse = lr_factor("inverse", e, t)
    assert [inverse(j) for j in range(4)] == [1, 1 / 2, 1 / 3, 1 / 4]
    assert lr_factor("constant", e, t)(37) == 1


def test_full_batch_gradient_descent_with_the_decreasing_step_matches_the_update_by_hand(make_cfg, tmp_path, digits):
    """train.batch_size=full and train.schedule=inverse: w_{j+1} = w_j - (lr / (j + 1)) grad L(w_j),
    one step per epoch, recomputed here with autograd on the same initial weights."""
    epochs, lr = 4, 0.5
    cfg = make_cfg("dataset.n_train=200", "dataset.n_test=50", "model=logreg", "optimizer=sgd", "optimizer.momentum=0",
                   f"optimizer.lr={lr}", "train.batch_size=full", "train.schedule=inverse", f"train.epochs={epochs}",
                   "attack=none", "device=cpu")
    experiment.run(cfg, tmp_path)
    history = pd.read_csv(tmp_path / "training.csv")
    assert history["lr"].tolist() == pytest.approx([lr / (j + 1) for j in range(epochs)])

    data = experiment.load_dataset(experiment.to_container(cfg.dataset))
    experiment.seed_everything(cfg.seed)
    model = experiment.build_model(cfg.model, data)
    w, b = (p.detach().clone().requires_grad_() for p in (model[-1].weight, model[-1].bias))
    x, y = data.x_train.flatten(1), data.y_train
    for j in range(epochs):
        loss = F.cross_entropy(x @ w.T + b, y)
        gw, gb = torch.autograd.grad(loss, (w, b))
        with torch.no_grad():
            w -= lr / (j + 1) * gw
            b -= lr / (j + 1) * gb
    trained = torch.load(tmp_path / "model.pt", weights_only=True)
    # float32: 4 steps of lr up to 0.5 on gradients summed over 200 samples in another order (the
    # trainer's kernels against this loop's), ~1e-6 relative per step, carried by later steps
    torch.testing.assert_close(trained["1.weight"], w.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(trained["1.bias"], b.detach(), rtol=1e-4, atol=1e-5)


def test_the_cyclic_schedule_drives_the_optimizer(digits):
    model = LogReg((1, 8, 8), 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    from advrun.defenses import Standard
    from advrun.schedules import build_scheduler

    x, y = digits.x_train[:100], digits.y_train[:100]
    scheduler = build_scheduler(optimizer, "cyclic", steps_per_epoch=4, epochs=5, peak=0.5)
    history = train(model, Standard(), optimizer, x, y, x, y, epochs=5, batch_size=25,
                    generator=torch.Generator().manual_seed(0), scheduler=scheduler)
    # rate at the first step of each epoch: 0.2 * (4e + 1) / 10 rising, then falling
    expected = [0.2 * min((4 * e + 1) / 10, (20 - 4 * e - 1) / 10) for e in range(5)]
    assert history["lr"].tolist() == pytest.approx(expected)


# --- model.checkpoint ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from hydra import compose, initialize_config_dir

    from advrun.config import config_dir

    out = tmp_path_factory.mktemp("source")
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, "attack=fgsm", "model.hidden=[32]", "cache.enabled=false"])
    metrics = experiment.run(cfg, out)
    return out, metrics


def test_a_checkpoint_restores_the_weights_and_epochs_zero_only_evaluates(make_cfg, tmp_path, finished_run):
    source, metrics = finished_run
    for path in (source, source / "model.pt"):  # a run folder or the weights file
        out = tmp_path / path.name
        again = experiment.run(make_cfg(*TINY, "attack=fgsm", "model.hidden=[32]", f"model.checkpoint={path}",
                                        "train.epochs=0"), out)
        assert again["clean_accuracy"] == metrics["clean_accuracy"]
        assert again["robust_accuracy"] == metrics["robust_accuracy"]
        assert again["training"] == {"trained": False, "source": str(path)}
        saved, loaded = (torch.load(p / "model.pt", weights_only=True) for p in (source, out))
        assert all(torch.equal(saved[k], loaded[k]) for k in saved)


def test_a_checkpoint_is_the_starting_point_of_further_training(make_cfg, tmp_path, finished_run):
    source, metrics = finished_run
    again = experiment.run(make_cfg(*TINY, "attack=none", "model.hidden=[32]", f"model.checkpoint={source}",
                                    "train.epochs=1", "optimizer.lr=1e-6"), tmp_path)
    assert again["training"]["trained"] is True
    assert abs(again["clean_accuracy"] - metrics["clean_accuracy"]) < 0.05  # a tiny rate barely moves the weights


@pytest.mark.parametrize("model, expected", [
    (["model.hidden=[16]"], r"shape \(file vs model\): 2.weight \(32, 64\) vs \(16, 64\)"),
    (["model=logreg"], r"missing: 1.bias, 1.weight; unexpected: 0.mean, 0.std, 2.bias"),
])
def test_a_checkpoint_of_another_architecture_names_the_keys_that_differ(make_cfg, tmp_path, finished_run, model,
                                                                          expected):
    source, _ = finished_run
    with pytest.raises(ConfigError, match=expected) as error:
        experiment.run(make_cfg(*TINY, "attack=none", *model, f"model.checkpoint={source}"), tmp_path)
    assert error.value.key == "model.checkpoint"


def test_a_checkpoint_that_needs_unpickling_is_refused(make_cfg, tmp_path):
    pickled = tmp_path / "whole_model.pt"
    torch.save(LogReg((1, 8, 8), 10), pickled)  # a pickled module, not a state_dict
    with pytest.raises(ConfigError, match="arbitrary unpickling") as error:
        experiment.run(make_cfg(*TINY, "attack=none", "model=logreg", f"model.checkpoint={pickled}"), tmp_path / "run")
    assert error.value.key == "model.checkpoint"
    with pytest.raises(ConfigError, match="does not exist"):
        experiment.run(make_cfg(*TINY, "attack=none", f"model.checkpoint={tmp_path / 'nowhere.pt'}"), tmp_path / "r2")


def test_metrics_record_every_seed(make_cfg, tmp_path):
    experiment.run(make_cfg(*TINY, "attack=none", "seed=0"), tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["seed"] == 0
    assert set(metrics["seeds"]) >= {"python", "numpy", "torch", "batch_order", "evaluation"}
    assert not math.isnan(metrics["test_accuracy"])
