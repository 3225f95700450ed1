"""MNIST from ../shared/data (skipped when that folder is absent)."""


from advrun import experiment


def test_mnist_run_offline(make_cfg, tmp_path, shared_data):
    cfg = make_cfg(
        "dataset=mnist", f"dataset.root={shared_data}", "dataset.download=false", "dataset.n_train=2000",
        "dataset.n_test=300", "model=cnn", "train.epochs=2", "attack.steps=5", "eval.epsilons=[0,0.1,0.3]",
        "device=cpu",
    )
    metrics = experiment.run(cfg, tmp_path)
    assert metrics["n_train"] == 2000 and metrics["n_eval"] == 300
    assert metrics["clean_accuracy"] > 0.85
    curve = {row["eps"]: row["robust_accuracy"] for row in metrics["curve"] if row["attack"] == metrics["attack"]}
    assert curve[0.0] > curve[0.1] > curve[0.3]
