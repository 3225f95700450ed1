"""The pass from config to files, run in-process on composed configs."""

import json

import pandas as pd
import pytest
import torch

from advrun import experiment
from advrun.attacks import PGD
from advrun.defenses import Adversarial
from advrun.errors import AdvrunError, ConfigError
from advrun.models import MLP
from tests.conftest import TINY

#: TINY without its eval.certify=false, for the tests that certify
CERTIFYING = [override for override in TINY if not override.startswith("eval.certify")]


def test_default_experiment_is_accurate_and_robust_accuracy_falls(make_cfg, tmp_path):
    """The default run (digits, MLP, PGD Linf): >= 95% clean accuracy, a falling curve."""
    metrics = experiment.run(make_cfg("device=cpu"), tmp_path)
    assert metrics["clean_accuracy"] >= 0.95
    curve = pd.read_csv(tmp_path / "curve.csv").query("attack == 'pgd'")
    robust = curve.sort_values("eps")["robust_accuracy"].tolist()
    assert robust[0] == pytest.approx(metrics["clean_accuracy"])
    assert all(a >= b for a, b in zip(robust, robust[1:])) and robust[-1] < 0.5 * robust[0]


def test_three_denominators(make_cfg, tmp_path):
    experiment.run(make_cfg(*TINY, "attack.steps=5"), tmp_path)
    curve = pd.read_csv(tmp_path / "curve.csv")
    n = curve["n_samples"]
    assert (curve["clean_accuracy"] == curve["n_correct"] / n).all()
    assert (curve["robust_accuracy"] == (curve["n_correct"] - curve["n_success"]) / n).all()
    assert (curve["robust_accuracy"] == curve["n_robust"] / n).all()
    assert (curve["success_rate"] == curve["n_success"] / curve["n_correct"]).all()
    pd.testing.assert_series_equal(
        curve["robust_accuracy"], curve["clean_accuracy"] * (1 - curve["success_rate"]), check_names=False
    )
    fooled = curve[curve["n_success"] > 0]
    assert (fooled["median_norm"] <= fooled["eps"] * (1 + 1e-5)).all()


def test_metrics_record_the_run(make_cfg, tmp_path):
    metrics = experiment.run(make_cfg(*TINY, "attack.steps=2", "seed=0"), tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["seed"] == 0 and saved["versions"]["torch"].startswith("2.14.1")
    assert set(saved["timings"]) == {"setup_s", "train_s", "eval_s", "audit_s", "ood_s", "total_s", "curve"}
    assert saved["attack"] == "pgd" and saved["norm"] == "linf" and saved["eps"] == 0.1
    assert "git_commit" in saved and len(saved["curve"]) == len(pd.read_csv(tmp_path / "curve.csv"))
    headline = [row for row in saved["curve"] if row["eps"] == saved["eps"]][0]
    assert saved["robust_accuracy"] == pytest.approx(headline["robust_accuracy"])
    from advrun.stats import clopper_pearson

    counts = saved["counts"]
    assert counts == {"n_correct": headline["n_correct"], "n_robust": headline["n_robust"],
                      "n_eligible": headline["n_eligible"], "n_success": headline["n_success"]}
    assert saved["clean_accuracy_ci"] == pytest.approx(clopper_pearson(counts["n_correct"], saved["n_eval"]))
    assert saved["robust_accuracy_ci"] == pytest.approx([headline["robust_accuracy_low"],
                                                          headline["robust_accuracy_high"]])
    assert saved["success_rate_ci"] == pytest.approx(clopper_pearson(counts["n_success"], counts["n_eligible"]))
    history = pd.read_csv(tmp_path / "training.csv")
    assert list(history["epoch"]) == [1, 2] and {"loss", "train_accuracy", "test_accuracy"} <= set(history)
    assert metrics["test_accuracy"] == history["test_accuracy"].iloc[-1]


def test_samples_csv_holds_every_sample_at_every_budget_as_the_curve_counts_them(make_cfg, tmp_path):
    experiment.run(make_cfg(*TINY, "attack.steps=2", "eval.epsilons=[0,0.1,0.2]", "eval.n_samples=40"), tmp_path)
    curve = pd.read_csv(tmp_path / "curve.csv")
    samples = pd.read_csv(tmp_path / "samples.csv")
    assert len(samples) == 40 * 3 and sorted(set(samples["index"])) == list(range(40))
    for record in curve.to_dict("records"):
        rows = samples[samples["eps"] == record["eps"]]
        assert (rows["success"] & rows["eligible"]).sum() == record["n_success"]
        assert rows["robust"].sum() == record["n_robust"] and rows["clean_correct"].sum() == record["n_correct"]
    run = experiment.load_run(tmp_path)
    pd.testing.assert_frame_equal(run.samples.drop(columns="fooled_by"), samples.drop(columns="fooled_by"))
    # index: the position in the run's test set, which the dataset config gives back
    from advrun.data import load_dataset

    data = load_dataset(experiment.to_container(run.config.dataset))
    assert samples["label"].head(40).tolist() == data.y_test[torch.tensor(samples["index"].head(40).tolist())].tolist()
    with torch.no_grad():
        predicted = run.model(data.x_test[:40]).argmax(1)
    assert samples["clean_prediction"].head(40).tolist() == predicted.tolist()


def test_budgets_follow_the_norm_and_the_headline_eps_joins_the_curve(make_cfg, tmp_path):
    experiment.run(make_cfg(*TINY, "attack.steps=2", "attack.norm=2", "attack.eps=0.7"), tmp_path / "a")
    curve = pd.read_csv(tmp_path / "a" / "curve.csv")
    assert sorted(curve["eps"]) == [0.0, 0.25, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0]  # digits' L2 grid + 0.7
    assert set(curve["norm"]) == {"l2"}
    experiment.run(make_cfg(*TINY, "attack.steps=2", "eval.epsilons=[0.2,0,0.2]"), tmp_path / "b")
    assert sorted(pd.read_csv(tmp_path / "b" / "curve.csv")["eps"]) == [0.0, 0.1, 0.2]


def test_same_seed_same_results(make_cfg, tmp_path):
    cfg = make_cfg(*TINY, "attack.steps=3", "seed=7", "cache.enabled=false")
    experiment.run(cfg, tmp_path / "a")
    experiment.run(cfg, tmp_path / "b")
    a, b = ((tmp_path / d / "curve.csv").read_bytes() for d in "ab")
    assert a == b


def test_a_finished_run_is_never_overwritten(make_cfg, tmp_path):
    cfg = make_cfg(*TINY, "attack=none")
    experiment.run(cfg, tmp_path)
    before = (tmp_path / "metrics.json").read_text()
    with pytest.raises(AdvrunError, match="already holds a finished run"):
        experiment.run(cfg, tmp_path)
    assert (tmp_path / "metrics.json").read_text() == before


@pytest.mark.parametrize("override, key", [
    ("attack.eps=-0.1", "attack.eps"),
    ("attack.norm=3", "attack.norm"),
    ("attack.steps=0", "attack.steps"),
    ("train.epochs=0", "train.epochs"),
    ("train.batch_size=0", "train.batch_size"),
    ("eval.batch_size=-5", "eval.batch_size"),
    ("eval.epsilons=[]", "eval.epsilons"),
    ("eval.epsilons=[0.1,-1]", "eval.epsilons"),
    ("optimizer.lr=-1", "optimizer.lr"),
    ("optimizer.weight_decay=[]", "optimizer.weight_decay"),
    ("optimizer.betas=[0.9,1.5]", "optimizer.betas"),
    ("optimizer=sgd optimizer.nesterov=3", "optimizer.nesterov"),
    ("model.hidden=0.3", "model.hidden"),
    ("model.activation=swish", "model.activation"),
    ("defense=adversarial defense.alpha=2", "defense.alpha"),
    ("defense=adversarial defense.attack.steps=0", "defense.attack.steps"),
    ("defense=linear_robust", "defense._target_"),
    ("defense=cross_lipschitz defense.form=closed model.hidden=[8,8]", "defense.form"),
    ("device=tpu", "device"),
    ("seed=-1", "seed"),
])
def test_invalid_values_name_the_key_before_any_work(make_cfg, tmp_path, override, key):
    with pytest.raises(ConfigError) as info:
        experiment.run(make_cfg(*TINY, *override.split()), tmp_path)
    assert info.value.key == key
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "model.pt").exists()


def test_adversarial_training_raises_robust_accuracy(make_cfg, tmp_path):
    common = ["device=cpu", "train.epochs=8", "attack.steps=10", "eval.epsilons=[0.1]"]
    standard = experiment.run(make_cfg(*common), tmp_path / "standard")
    robust = experiment.run(make_cfg(*common, "defense=adversarial", "defense.attack.steps=5"), tmp_path / "adv")
    assert robust["robust_accuracy"] > standard["robust_accuracy"] + 0.15


def test_training_attack_leaves_no_parameter_gradient():
    model = MLP(in_shape=(1, 8, 8), num_classes=10).train()
    defense = Adversarial(attack=PGD(eps=0.1, steps=3), alpha=0.5)
    loss = defense.loss(model, torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,)))
    assert all(p.grad is None for p in model.parameters()) and model.training
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_mixed_objective_matches_its_formula():
    torch.manual_seed(0)
    model = MLP(in_shape=(1, 8, 8), num_classes=10).train()
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    attack = PGD(eps=0.1, steps=3, random_start=False)
    mixed = Adversarial(attack=attack, alpha=0.3).loss(model, x, y)
    pure = Adversarial(attack=attack, alpha=0.0).loss(model, x, y)
    clean = torch.nn.functional.cross_entropy(model(x), y)
    torch.testing.assert_close(mixed, 0.3 * clean + 0.7 * pure)


def test_certified_accuracy_is_drawn_next_to_the_attack_and_never_above_it(make_cfg, tmp_path):
    metrics = experiment.run(make_cfg("model=logreg", "optimizer.lr=0.01", "train.epochs=5", "attack.steps=20",
                                      "device=cpu"), tmp_path)
    curve = pd.read_csv(tmp_path / "curve.csv")
    certified = curve[curve["attack"] == "certified-hein"].set_index("eps")["robust_accuracy"]
    attacked = curve[curve["attack"] == "pgd"].set_index("eps")["robust_accuracy"]
    assert list(certified.index) == list(attacked.index) and certified.iloc[0] == pytest.approx(attacked.iloc[0])
    assert (certified <= attacked + 1e-12).all() and certified.iloc[1] > 0
    assert metrics["certified_accuracy"] == pytest.approx(certified.loc[metrics["eps"]])
    assert metrics["certified_method"] == "hein"  # an affine model: the exact distance to its boundary
    rows = curve[curve["attack"] == "certified-hein"]
    assert (rows["n_robust"] == (rows["robust_accuracy"] * rows["n_samples"]).round()).all()
    assert (rows["robust_accuracy_low"] <= rows["robust_accuracy"]).all()
    assert (rows["robust_accuracy"] <= rows["robust_accuracy_high"]).all() and rows["success_rate_low"].isna().all()
    headline = rows.set_index("eps").loc[metrics["eps"]]
    assert metrics["counts"]["n_certified"] == headline["n_robust"]
    assert metrics["certified_accuracy_ci"] == pytest.approx([headline["robust_accuracy_low"],
                                                               headline["robust_accuracy_high"]])


def test_auto_certifies_a_relu_network_with_crown_and_a_named_method_is_required(make_cfg, tmp_path):
    metrics = experiment.run(make_cfg(*CERTIFYING, "attack.steps=10", "eval.epsilons=[0,0.02,0.1]"), tmp_path / "auto")
    curve = pd.read_csv(tmp_path / "auto" / "curve.csv")
    certified = curve[curve["attack"] == "certified-crown"].set_index("eps")["robust_accuracy"]
    attacked = curve[curve["attack"] == "pgd"].set_index("eps")["robust_accuracy"]
    assert metrics["certified_method"] == "crown" and list(certified.index) == [0.0, 0.02, 0.1]
    assert certified.loc[0.0] == pytest.approx(attacked.loc[0.0])  # at eps 0 a proof is the clean verdict
    assert (certified <= attacked + 1e-12).all() and certified.loc[0.02] > 0
    experiment.run(make_cfg(*CERTIFYING, "attack.steps=2", "eval.certify=ibp", "eval.epsilons=[0,0.02]"), tmp_path / "ibp")
    ibp = pd.read_csv(tmp_path / "ibp" / "curve.csv").query("attack == 'certified-ibp'").set_index("eps")
    assert list(ibp.index) == list(certified.index)  # the same trained model (from the cache): IBP <= CROWN
    assert (ibp["robust_accuracy"] <= certified + 1e-12).all()
    with pytest.raises(ConfigError) as info:
        experiment.run(make_cfg(*CERTIFYING, "eval.certify=hein", "model.hidden=[16]"), tmp_path / "hein")
    assert info.value.key == "model.activation" and "eval.certify=hein" in str(info.value)
    with pytest.raises(ConfigError) as info:
        experiment.run(make_cfg(*CERTIFYING, "eval.certify=smoothing"), tmp_path / "smoothing")  # the attack is Linf
    assert info.value.key == "attack.norm"
    with pytest.raises(ConfigError) as info:
        experiment.run(make_cfg(*CERTIFYING, "eval.certify=sometimes"), tmp_path / "bad")
    assert info.value.key == "eval.certify"
    with pytest.raises(ConfigError) as info:
        experiment.run(make_cfg(*CERTIFYING, "eval.certify=smoothing", "attack.norm=2", "eval.smoothing.n=0"), tmp_path / "n")
    assert info.value.key == "eval.smoothing.n"


def test_exact_certifies_between_crown_and_the_attack(make_cfg, tmp_path):
    common = [*CERTIFYING, "model.hidden=[16]", "attack.steps=20", "eval.epsilons=[0,0.02,0.05]", "eval.n_samples=30"]
    experiment.run(make_cfg(*common, "eval.certify=crown"), tmp_path / "crown")
    metrics = experiment.run(make_cfg(*common, "eval.certify=exact", "eval.exact.time_limit=5"), tmp_path / "exact")
    curve = pd.read_csv(tmp_path / "exact" / "curve.csv")
    exact = curve[curve["attack"] == "certified-exact"].set_index("eps")["robust_accuracy"]
    attacked = curve[curve["attack"] == "pgd"].set_index("eps")["robust_accuracy"]
    crown = pd.read_csv(tmp_path / "crown" / "curve.csv").query("attack == 'certified-crown'").set_index("eps")
    assert metrics["certified_method"] == "exact"
    assert list(crown.index) == list(exact.index) == [0.0, 0.02, 0.05, 0.1]  # the grid and the headline eps
    assert (crown["robust_accuracy"] <= exact + 1e-12).all() and (exact <= attacked + 1e-12).all()
    with pytest.raises(ConfigError) as info:
        experiment.run(make_cfg(*common, "eval.certify=exact", "eval.exact.time_limit=0"), tmp_path / "limit")
    assert info.value.key == "eval.exact.time_limit"


def test_smoothing_certifies_the_smoothed_classifier_and_says_so(make_cfg, tmp_path):
    metrics = experiment.run(make_cfg(*CERTIFYING, "attack.norm=2", "attack.eps=0.5", "attack.steps=2",
                                      "eval.epsilons=[0,0.25,0.5]", "eval.certify=smoothing", "eval.n_samples=40",
                                      "eval.smoothing.n=500", "eval.smoothing.n0=20", "report=true"), tmp_path)
    curve = pd.read_csv(tmp_path / "curve.csv")
    rows = curve[curve["attack"] == "certified-smoothing"]
    assert list(rows["eps"]) == [0.0, 0.25, 0.5] and rows["robust_accuracy"].is_monotonic_decreasing
    assert metrics["certified_method"] == "smoothing" and rows["median_norm"].notna().all()
    assert "the smoothed classifier's, not the model's" in (tmp_path / "report.md").read_text()


def test_report_false_keeps_the_results_and_skips_figures_and_report(make_cfg, tmp_path):
    experiment.run(make_cfg(*TINY, "report=false", "attack.steps=2", "eval.epsilons=[0,0.1]"), tmp_path / "off")
    names = {p.name for p in (tmp_path / "off").iterdir()}
    assert {"metrics.json", "curve.csv", "training.csv", "model.pt", "model.json"} <= names
    assert not [n for n in names if n.endswith((".png", ".svg")) or n.startswith("report.")], names
    with pytest.raises(ConfigError) as info:
        experiment.run(make_cfg(*TINY, "report=maybe"), tmp_path / "bad")
    assert info.value.key == "report"
