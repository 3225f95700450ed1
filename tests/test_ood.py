"""eval.ood: top-class confidence on noise images and on noise optimised for confidence (advrun.ood)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from torch import nn

from advrun import experiment
from advrun.errors import ConfigError
from advrun.ood import OutOfDistribution, fooling_confidence, top_confidence
from advrun.reporting.sweep import OOD, job_record
from tests.conftest import TINY

pytestmark = pytest.mark.usefixtures("one_thread")


def binary_affine(d: int, seed: int) -> nn.Linear:
    """Two logits, affine in the input; margins stay below ~10 on [0, 1]^d, so softmax keeps
    ``1 - p`` representable in float32 (the gradient of ``log p`` does not vanish)."""
    torch.manual_seed(seed)
    model = nn.Linear(d, 2)
    with torch.no_grad():
        model.weight.normal_(0, 1.5 / d ** 0.5)
        model.bias.uniform_(-0.5, 0.5)
    return model


def most_confident_corner(model: nn.Linear, start: torch.Tensor, bounds=(0.0, 1.0)) -> torch.Tensor:
    """Closed form: the largest confidence of the start's top class ``c`` over the box, sigmoid of
    the largest margin ``max_x (w_c - w_o) . x + b_c - b_o``, reached at the corner sign(w_c - w_o)."""
    lo, hi = bounds
    top = model(start).argmax(dim=1)
    difference = model.weight[0] - model.weight[1]
    sign = torch.where(top == 0, 1.0, -1.0)[:, None]
    direction = sign * difference  # w_c - w_o per sample
    bias = sign[:, 0] * (model.bias[0] - model.bias[1])
    margin = torch.where(direction > 0, hi * direction, lo * direction).sum(dim=1) + bias
    return torch.sigmoid(margin.double())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fooling_steps_reach_the_most_confident_corner_of_an_affine_model(seed):
    d = 20
    model = binary_affine(d, seed)
    start = torch.rand(200, d, generator=torch.Generator().manual_seed(seed))
    # 25 steps of 0.05 cross the whole range: every coordinate ends on the corner its sign points to
    with torch.no_grad():
        expected = most_confident_corner(model, start)
    found = fooling_confidence(model, start, steps=25, step=0.05, bounds=(0.0, 1.0), batch_size=64).double()
    assert torch.allclose(found, expected, rtol=0, atol=1e-6)
    global_best = expected.max()
    assert (found <= global_best + 1e-6).all()  # nothing beats the box's best corner
    few = fooling_confidence(model, start, steps=3, step=0.05, bounds=(0.0, 1.0), batch_size=64).double()
    uniform = top_confidence(model, start, batch_size=64).double()
    assert (few <= found + 1e-6).all() and (few >= uniform - 1e-6).all()
    assert (few < found - 1e-4).any()  # three steps do not reach the corner: the count of steps matters


def test_confidence_is_the_largest_softmax_probability_in_any_batching():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 5))
    x = torch.rand(37, 1, 4, 4)
    direct = torch.softmax(model(x), dim=1).max(dim=1).values.detach()
    for batch in (1, 8, 37, 100):
        assert torch.allclose(top_confidence(model, x, batch), direct, atol=1e-7)


def test_measurement_is_seeded_leaves_the_model_alone_and_never_lowers_confidence(trained):
    model, _, _ = trained("mlp")
    model.train()
    for p in model.parameters():
        p.grad = None
    ood = OutOfDistribution(n=64, steps=5, step_size=0.05)
    first = ood.measure(model, (1, 8, 8), (0.0, 1.0), seed=3, batch_size=25)
    assert first == ood.measure(model, (1, 8, 8), (0.0, 1.0), seed=3, batch_size=25)
    assert first != ood.measure(model, (1, 8, 8), (0.0, 1.0), seed=4, batch_size=25)
    assert model.training and all(p.grad is None for p in model.parameters())
    model.eval()
    uniform, optimised = first["uniform"], first["optimised"]
    assert optimised["mean_confidence"] >= uniform["mean_confidence"] - 1e-6
    assert optimised["max_confidence"] >= uniform["max_confidence"] - 1e-6
    for figures in (uniform, optimised):
        assert 0.1 <= figures["mean_confidence"] <= figures["max_confidence"] <= 1.0  # 10 classes: at least 1/10
        assert 0.0 <= figures["confident_share"] <= 1.0


def test_shares_count_images_at_or_above_the_threshold(trained):
    model, _, _ = trained("mlp")
    ood = OutOfDistribution(n=100, steps=3, step_size=0.1, threshold=0.6)
    record = ood.measure(model, (1, 8, 8), (0.0, 1.0), seed=0, batch_size=40)
    noise = torch.rand((100, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    confidence = top_confidence(model, noise, 40)
    assert record["uniform"]["confident_share"] == pytest.approx(float((confidence >= 0.6).double().mean()))
    assert record["uniform"]["mean_confidence"] == pytest.approx(float(confidence.mean()), abs=1e-7)


@pytest.mark.parametrize("key, value", [("n", -1), ("steps", 1.5), ("step_size", 0), ("threshold", 1.0)])
def test_bad_settings_name_their_key_before_training(make_cfg, tmp_path, key, value):
    with pytest.raises(ConfigError) as info:
        experiment.plan(make_cfg(*TINY, f"eval.ood.{key}={value}"), tmp_path)
    assert info.value.key == f"eval.ood.{key}"


def test_runs_record_the_confidence_in_metrics_report_and_sweep_summary(make_cfg, tmp_path):
    metrics = experiment.run(make_cfg(*TINY, "report=true", "eval.ood.n=50"), tmp_path / "on")
    record = json.loads((tmp_path / "on" / "metrics.json").read_text())["ood"]
    assert record == metrics["ood"] and record["n"] == 50 and record["steps"] == 10
    assert record["optimised"]["mean_confidence"] >= record["uniform"]["mean_confidence"]
    report = (tmp_path / "on" / "report.md").read_text()
    assert "top-class confidence on 50 images of uniform noise" in report
    assert "noise after 10 confidence-raising gradient steps" in report
    row = job_record(tmp_path / "on", tmp_path)
    assert row[OOD["optimised"]] == pytest.approx(record["optimised"]["mean_confidence"])
    off = experiment.run(make_cfg(*TINY, "eval.ood.n=0"), tmp_path / "off")
    assert "ood" not in off and "ood" not in json.loads((tmp_path / "off" / "metrics.json").read_text())
    assert OOD["optimised"] not in job_record(tmp_path / "off", tmp_path)


def test_the_model_without_an_attack_is_measured_too(make_cfg, tmp_path):
    metrics = experiment.run(make_cfg(*TINY, "attack=none", "eval.ood.n=20"), tmp_path)
    assert metrics["ood"]["n"] == 20 and "robust_accuracy" not in metrics
    frame = pd.DataFrame([job_record(tmp_path, tmp_path.parent)])
    assert frame[OOD["uniform"]].notna().all()
