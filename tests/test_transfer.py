"""Transfer attacks (advrun.attacks.transfer) and a sweep's transfer matrix (advrun.transfer_matrix):
crafted on the target itself a transfer attack is the white-box attack; crafted on another model its
verdicts are the target's on the surrogate's points, recomputed here by hand; what cannot be a
surrogate or a crafting attack is refused under its key; a sweep over models writes the matrix."""

import math

import pandas as pd
import pytest
import torch
import yaml

from advrun import experiment
from advrun.attacks import FGSM, PGD, BoundedAttack, Ensemble, MinimumNormAttack, lp_norm
from advrun.attacks.deepfool import DeepFool
from advrun.attacks.spatial import Spatial
from advrun.attacks.transfer import BoundedTransfer, MinimumNormTransfer, Transfer, transfer_of
from advrun.config import to_container
from advrun.data import load_dataset
from advrun.errors import InvalidValue
from advrun.evaluation import robustness_curve
from advrun.reporting.sweep import write_sweep_report
from advrun.runfolder import RunFolder, SweepFolder
from tests.conftest import TINY, run_inprocess

pytestmark = pytest.mark.usefixtures("one_thread")

BOUNDS = (0.0, 1.0)
N = 120
BASE = [*TINY, "eval.epsilons=[0,0.1]"]
#: The TINY run the tests use as a surrogate: two PGD steps at two budgets.
SURROGATE_RUN = [*BASE, "attack.steps=2"]


def _equal_results(ours, theirs) -> None:
    for name in ("x_adv", "success", "norms", "predictions"):
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name
    assert (ours.targets is None) == (theirs.targets is None)
    if ours.targets is not None:
        assert torch.equal(ours.targets, theirs.targets)


CRAFTS = {
    "pgd-linf": lambda: PGD(eps=0.1, steps=10),  # random start: the same draws in the same order
    "pgd-l2-targeted": lambda: PGD(eps=1.0, norm=2, steps=10, target="random"),
    "fgsm-least-likely": lambda: FGSM(eps=0.1, target="least_likely"),
    "ensemble": lambda: Ensemble(eps=0.1, version="custom", attacks=[FGSM(eps=0.1), PGD(eps=0.1, steps=5)]),
    "deepfool": lambda: DeepFool(eps=1.0, norm=2),
}


@pytest.mark.parametrize("name", CRAFTS)
def test_crafting_on_the_target_itself_is_the_white_box_attack(trained, name):
    model, x, y = trained("mlp")
    x, y = x[:N], y[:N]
    craft = CRAFTS[name]()
    transfer = transfer_of(craft, model)
    kind = MinimumNormAttack if isinstance(craft, MinimumNormAttack) else BoundedAttack
    assert isinstance(transfer, kind) and transfer.target == craft.target and transfer.craft.target is None
    torch.manual_seed(1)
    white = craft(model, x, y)
    torch.manual_seed(1)
    _equal_results(transfer(model, x, y), white)
    grid = [0.0, 0.05, 0.1] if craft.norm == math.inf else [0.0, 0.5, 1.0]
    torch.manual_seed(2)
    white = robustness_curve(model, craft, x, y, grid, bounds=BOUNDS, batch_size=50)
    torch.manual_seed(2)
    ours = robustness_curve(model, transfer, x, y, grid, bounds=BOUNDS, batch_size=50)
    columns = ["eps", "n_robust", "n_eligible", "n_success", "robust_accuracy", "mean_norm"]
    pd.testing.assert_frame_equal(ours.curve[columns], white.curve[columns])
    pd.testing.assert_frame_equal(ours.per_sample.drop(columns=["attack", "fooled_by"]),
                                  white.per_sample.drop(columns=["attack", "fooled_by"]))


def test_a_bounded_transfer_is_the_target_judging_the_points_crafted_on_the_surrogate(trained):
    surrogate, x, y = trained("logreg")
    target, _, _ = trained("mlp")
    x, y = x[:N], y[:N]
    grid = [0.05, 0.1, 0.2]
    torch.manual_seed(3)
    curve = robustness_curve(target, transfer_of(PGD(eps=0.1, steps=10), surrogate), x, y, grid, bounds=BOUNDS,
                             batch_size=N).curve
    torch.manual_seed(3)
    with torch.no_grad():
        clean = target(x).argmax(1) == y
    by_hand = []
    for eps in grid:  # the curve runs its budgets in this order: the same random starts
        crafted = PGD(eps=eps, steps=10)(surrogate, x, y).x_adv
        assert lp_norm(crafted - x, math.inf).max() <= eps + 1e-6
        with torch.no_grad():
            by_hand.append(int((clean & (target(crafted).argmax(1) == y)).sum()))
    white_box = [int((clean & ~PGD(eps=eps, steps=10)(target, x, y).success).sum()) for eps in grid]
    assert curve["n_robust"].tolist() == by_hand
    assert by_hand != white_box  # the surrogate's points are not the target's own worst case


def test_the_targets_of_a_targeted_transfer_are_chosen_on_the_surrogate(trained):
    surrogate, x, y = trained("logreg")
    target, _, _ = trained("cnn")
    result = transfer_of(FGSM(eps=0.1, target="least_likely"), surrogate)(target, x[:N], y[:N])
    with torch.no_grad():
        assert torch.equal(result.targets, surrogate(x[:N]).argmin(1))
        assert not torch.equal(result.targets, target(x[:N]).argmin(1))
        assert torch.equal(result.success, target(result.x_adv).argmax(1) == result.targets)


def test_a_minimum_norm_transfer_counts_the_crafted_norms_of_the_points_that_fool_the_target(trained):
    surrogate, x, y = trained("logreg")
    target, _, _ = trained("cnn")
    x, y = x[:N], y[:N]
    grid = [0.0, 0.3, 0.7, 1.2, 2.5]
    transfer = transfer_of(DeepFool(eps=1.0, norm=2), surrogate)
    assert isinstance(transfer, MinimumNormTransfer)
    curve = robustness_curve(target, transfer, x, y, grid, bounds=BOUNDS, batch_size=N).curve
    found = DeepFool(eps=1.0, norm=2)(surrogate, x, y)  # the surrogate's own failures are x itself
    norms = lp_norm(found.x_adv - x, 2)
    with torch.no_grad():
        clean = target(x).argmax(1) == y
        fooled = clean & (target(found.x_adv).argmax(1) != y)
    assert 0 < int(fooled.sum()) < int(clean.sum())
    # budgets between the norms: none within float error of a budget
    assert (norms[fooled][:, None] - torch.tensor(grid)).abs().min() > 1e-4
    assert curve["n_robust"].tolist() == [int(clean.sum() - (fooled & (norms <= eps)).sum()) for eps in grid]


@pytest.fixture(scope="module")
def surrogate_run(tmp_path_factory):
    """A finished TINY run of an MLP on digits (PGD at two budgets)."""
    from hydra import compose, initialize_config_dir

    from advrun.config import config_dir

    folder = tmp_path_factory.mktemp("surrogate")
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*SURROGATE_RUN, "cache.enabled=false"])
    metrics = experiment.run(cfg, folder)
    return folder, metrics


def test_a_run_attacked_with_a_surrogate_of_its_own_config_repeats_the_white_box_run(make_cfg, surrogate_run, tmp_path):
    folder, white = surrogate_run
    cfg = make_cfg(*BASE, "cache.enabled=false", "attack=transfer", f"attack.surrogate={folder}",
                   "attack.craft.steps=2")
    ours = experiment.run(cfg, tmp_path / "transfer")
    assert ours["attack"] == "transfer" and ours["eps"] == white["eps"]
    assert [row["n_robust"] for row in ours["curve"]] == [row["n_robust"] for row in white["curve"]]
    assert ours["robust_accuracy"] == white["robust_accuracy"]


@pytest.mark.parametrize("craft, kind", [("pgd", BoundedTransfer), ("deepfool", MinimumNormTransfer)])
def test_attack_transfer_is_of_the_kind_of_its_crafting_attack(make_cfg, surrogate_run, digits, craft, kind):
    folder, _ = surrogate_run
    cfg = make_cfg("attack=transfer", f"attack@attack.craft={craft}", f"attack.surrogate={folder}", "attack.norm=2",
                   "attack.eps=1.0", "eval.epsilons=[0,1]")
    transfer, _ = experiment.build_attack(cfg, digits, experiment.load_run(folder).model)
    assert type(transfer) is kind and transfer.label == f"transfer-{craft}-l2" and transfer.eps == 1.0
    assert transfer.craft.norm == 2 and (kind is MinimumNormTransfer or transfer.craft.eps == 1.0)


def test_what_is_not_a_finished_run_is_refused_as_the_surrogate(trained, tmp_path):
    (tmp_path / "started" / ".hydra").mkdir(parents=True)
    (tmp_path / "started" / ".hydra" / "config.yaml").write_text("seed: 0\n")
    for folder, reason in ((tmp_path / "missing", "is not a folder"), (tmp_path / "started", "holds no finished run")):
        with pytest.raises(InvalidValue, match=reason) as caught:
            Transfer(craft=PGD(eps=0.1), surrogate=str(folder))
        assert caught.value.field == "surrogate"


def test_crafting_attacks_that_cannot_transfer_are_refused(trained):
    model, _, _ = trained("mlp")
    refusals = {
        "craft": lambda: Transfer(craft=Spatial(), surrogate=model),  # a threat-model attack
        "craft.norm": lambda: Transfer(craft=PGD(eps=0.1, norm=2), surrogate=model, norm="inf"),
        "craft.target": lambda: Transfer(craft=PGD(eps=0.1, target=3), surrogate=model),
    }
    for field, build in refusals.items():
        with pytest.raises(InvalidValue) as caught:
            build()
        assert caught.value.field == field


def test_a_surrogate_of_other_inputs_is_refused_before_training(surrogate_run):
    folder, _ = surrogate_run
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    transfer = Transfer(craft=PGD(eps=0.1), surrogate=str(folder))
    assert torch.equal(torch.rand(4), expected)  # loading the surrogate leaves the run's random stream alone
    assert isinstance(transfer, BoundedTransfer)
    transfer.check_model(transfer.surrogate_model, (1, 8, 8))
    with pytest.raises(InvalidValue, match="shape 1x8x8, this run's are 1x28x28") as caught:
        transfer.check_model(transfer.surrogate_model, (1, 28, 28))
    assert caught.value.field == "surrogate"
    with pytest.raises(InvalidValue, match="10 classes, this run 2"):
        transfer.check_classes(2)


@pytest.mark.parametrize("overrides, said", [
    (["dataset=moons"], "was trained on digits, this run is on moons"),
    (["dataset.classes=[3,5]"], "has the classes"),
])
def test_a_run_refuses_a_surrogate_of_another_data_set_in_one_line(surrogate_run, tmp_path, overrides, said):
    folder, _ = surrogate_run
    proc = run_inprocess(*BASE, *overrides, "attack=transfer", f"attack.surrogate={folder}",
                         f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and "attack.surrogate:" in lines[0] and said in lines[0], proc.stderr
    assert not (tmp_path / "run" / "training.csv").exists()  # refused before training


@pytest.mark.parametrize("overrides, said", [
    ([], "attack.surrogate: "),
    (["attack.surrogate=.", "+attack.steps=2"], "attack.steps: is not a key of Transfer; its keys: craft, surrogate"),
])
def test_a_mistake_in_the_transfer_config_is_one_line_naming_the_key(tmp_path, overrides, said):
    proc = run_inprocess(*BASE, "attack=transfer", *overrides, f"hydra.run.dir={tmp_path / 'run'}")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"advrun: error: {said}"), proc.stderr


def test_a_sweep_over_models_writes_the_transfer_matrix(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_inprocess("-m", *TINY, "model=logreg,mlp", "attack=fgsm", "eval.epsilons=[0,0.1]", "eval.n_samples=50",
                         "eval.batch_size=50", "sweep.transfer=true", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr
    folder = SweepFolder(sweep)
    matrix = pd.read_csv(folder.file(folder.TRANSFER)).set_index("surrogate")
    jobs = [job.path.name for job in folder.jobs()]
    assert matrix.index.tolist() == jobs and matrix.columns.tolist() == jobs
    runs = {job: experiment.load_run(sweep / job) for job in jobs}
    data = load_dataset(to_container(runs[jobs[0]].config.dataset))
    x, y = data.x_test[:50], data.y_test[:50]  # the evaluation samples, FGSM on them in one batch as the jobs ran it
    for i in jobs:
        # FGSM is deterministic: the job's own figure is FGSM on its own model
        crafted = FGSM(eps=0.1)(runs[i].model, x, y).x_adv
        for j in jobs:
            with torch.no_grad():
                robust = (runs[j].model(x).argmax(1) == y) & (runs[j].model(crafted).argmax(1) == y)
            assert matrix.loc[i, j] == pytest.approx(int(robust.sum()) / 50, abs=1e-12), (i, j)
        assert matrix.loc[i, i] == runs[i].metrics["robust_accuracy"]
    assert matrix.loc[jobs[0], jobs[1]] != matrix.loc[jobs[1], jobs[1]]  # transfer is not white-box here
    for name in (folder.SUMMARY_MD, folder.REPORT):
        text = folder.file(name).read_text()
        assert "Transfer matrix" in text and "crafted on / evaluated on" in text and "model=logreg" in text
    assert folder.file(folder.TRANSFER) in folder.summary_files()  # what advrun-report lists as written

    # jobs of different attacks make no matrix: the report says why, and no stale file stays
    config = sweep / jobs[1] / RunFolder.CONFIG
    changed = yaml.safe_load(config.read_text())
    changed["attack"]["eps"] = 0.2
    config.write_text(yaml.safe_dump(changed))
    write_sweep_report(sweep)
    assert not folder.file(folder.TRANSFER).exists() and folder.file(folder.TRANSFER) not in folder.summary_files()
    assert "No transfer matrix: the jobs differ in attack" in folder.file(folder.SUMMARY_MD).read_text()
    # without sweep.transfer (the default) there is none, and the report says nothing of it
    changed["sweep"]["transfer"] = False
    config.write_text(yaml.safe_dump(changed))
    write_sweep_report(sweep)
    assert not folder.file(folder.TRANSFER).exists()
    assert "transfer matrix" not in folder.file(folder.SUMMARY_MD).read_text().lower()
