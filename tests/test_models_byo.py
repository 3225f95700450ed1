"""Models brought without code: an exported program (torch.export.save, .pt2) or a TorchScript
file evaluated as it is (model=exported), and any torchvision classification architecture by
name (model=torchvision): shapes checked against the data set, input gradients for the attacks,
end-to-end runs, and one clear error naming the key for each mistake."""

import json
import warnings

import pytest
import torch
from torch import nn

from advrun import experiment
from advrun.attacks import PGD
from advrun.errors import InvalidValue
from advrun.models import Exported, TorchVision
from tests.conftest import TINY, run_inprocess
from tests.test_validation import ERROR_LINE

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (1, 8, 8)  # the digits data set


def tiny_net(k: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, k)).eval()


def export_program(path, k: int = 10, batch: str | None = "batch", shape=SHAPE):
    """A tiny net saved with torch.export.save; ``batch=None``: a fixed batch size of 2."""
    dynamic = ({0: torch.export.Dim(batch)},) if batch else None
    net = tiny_net(k) if shape == SHAPE else nn.Sequential(nn.Flatten(), nn.Linear(shape[-1], k)).eval()
    torch.export.save(torch.export.export(net, (torch.rand(2, *shape),), dynamic_shapes=dynamic), path)
    return path


def script_file(path, k: int = 10):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(tiny_net(k)), path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("programs")
    return {"pt2": export_program(root / "net.pt2"), "ts": script_file(root / "net.ts")}


@pytest.mark.parametrize("kind", ["pt2", "ts"])
def test_exported_models_compute_the_saved_net_with_input_gradients(files, kind):
    model = Exported(SHAPE, 10, str(files[kind])).eval()
    x = torch.rand(5, *SHAPE)
    torch.testing.assert_close(model(x), tiny_net()(x))
    attack = PGD(eps=0.1, steps=3)
    y = model(x).argmax(dim=1)
    x_adv = attack(model, x, y, bounds=(0.0, 1.0)).x_adv
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and not torch.equal(x_adv, x)
    assert (model.refuses_training is None) == (kind == "ts")


def test_exported_file_mistakes_name_model_path(tmp_path, files):
    state = tmp_path / "state.pt"
    torch.save(tiny_net().state_dict(), state)
    text = tmp_path / "notes.pt2"
    text.write_text("hello")
    cases = [
        (tmp_path / "nowhere.pt2", SHAPE, 10, "does not exist"),
        (text, SHAPE, 10, "cannot be read as an exported program"),
        (state, SHAPE, 10, "saved with torch.save"),
        (files["pt2"], (1, 8, 7), 10, r"takes inputs of shape \(batch, 1, 8, 8\); the data set's are \(batch, 1, 8, 7\)"),
        (files["ts"], (1, 8, 7), 10, r"fails on a batch of inputs of the data set's shape \(1, 8, 7\) .*mat1 and mat2"),
        (files["pt2"], SHAPE, 3, "gives 10 logits per input; the data set has 3 classes"),
        (files["ts"], SHAPE, 3, "gives 10 logits per input; the data set has 3 classes"),
        (export_program(tmp_path / "fixed.pt2", batch=None), SHAPE, 10, "exported for batches of exactly 2 inputs"),
    ]
    for path, shape, k, match in cases:
        with pytest.raises(InvalidValue, match=match) as info:
            Exported(shape, k, str(path))
        assert info.value.field == "path" and "\n" not in str(info.value), path


def test_an_exported_program_is_evaluated_as_it_is(files, make_cfg, tmp_path):
    cfg = make_cfg("model=exported", f"model.path={files['pt2']}", *TINY, "train.epochs=0", "attack.steps=2",
                   "eval.epsilons=[0,0.1]", "eval.audit=true", "report=true")
    metrics = experiment.run(cfg, tmp_path / "run")
    assert metrics["training"] == {"trained": False, "source": str(files["pt2"])}
    assert 0 <= metrics["robust_accuracy"] <= metrics["clean_accuracy"]
    assert (tmp_path / "run" / "report.html").is_file()


def test_a_torchscript_model_can_be_trained(files, make_cfg, tmp_path):
    cfg = make_cfg("model=exported", f"model.path={files['ts']}", *TINY, "train.epochs=1", "attack.steps=2",
                   "eval.epsilons=[0,0.1]")
    metrics = experiment.run(cfg, tmp_path / "run")
    assert metrics["training"]["trained"] is True
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert not torch.equal(state["0.1.weight"], tiny_net()[1].weight)
    again = experiment.load_run(tmp_path / "run")  # rebuilt from the file and the trained weights
    torch.testing.assert_close(again.model.state_dict()["0.1.weight"], state["0.1.weight"])


def _error_line(tmp_path, *args):
    out = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
    proc = run_inprocess(*TINY, "attack.steps=2", "eval.epsilons=[0,0.1]", *args, f"hydra.run.dir={out}")
    lines = [line for line in proc.stderr.splitlines() if line.startswith("advrun: error")]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return ERROR_LINE.match(lines[0]).groups()


def test_command_line_mistakes_are_one_line_naming_the_key(files, tmp_path):
    key, message = _error_line(tmp_path, "model=exported", f"model.path={files['pt2']}")
    assert key == "train.epochs" and "an exported program (.pt2) is evaluated as it is" in message
    key, message = _error_line(tmp_path, "model=exported", f"model.path={files['pt2']}", "train.epochs=0",
                               "dataset.classes=[0,1]")
    assert key == "model.path" and "gives 10 logits per input; the data set has 2 classes" in message
    key, message = _error_line(tmp_path, "model=exported", "train.epochs=0")
    assert key == "model.path"
    key, message = _error_line(tmp_path, "model=torchvision", "model.name=resnet_9000")
    assert key == "model.name" and "list_models" in message
    key, message = _error_line(tmp_path, "model=torchvision", "model.name=alexnet")
    assert key == "model.name" and "alexnet does not work on 8x8 inputs" in message


# ------------------------------------------------------------------------------ torchvision

def test_torchvision_resnet18_adapts_grey_images_and_gives_gradients():
    model = TorchVision(SHAPE, 10, "resnet18").eval()
    x = torch.rand(3, *SHAPE)
    assert model(x).shape == (3, 10)
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in __import__("torchvision").models.resnet18(num_classes=10).parameters())
    x_adv = PGD(eps=0.1, steps=2)(model, x, model(x).argmax(dim=1), bounds=(0.0, 1.0)).x_adv
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    with pytest.raises(InvalidValue, match="image inputs") as info:
        TorchVision((5,), 2, "resnet18")
    assert info.value.field == "name"


def test_torchvision_model_runs_end_to_end(make_cfg, tmp_path):
    cfg = make_cfg("model=torchvision", "model.name=resnet18", *TINY, "dataset.n_train=32", "dataset.n_test=10",
                   "train.epochs=1", "attack.steps=1", "eval.epsilons=[0,0.1]")
    metrics = experiment.run(cfg, tmp_path / "run")
    assert metrics["training"]["trained"] is True and metrics["n_eval"] == 10
    assert json.loads((tmp_path / "run" / "model.json").read_text())["num_classes"] == 10


def test_the_model_cache_knows_the_program_by_its_content(tmp_path, make_cfg):
    from advrun.cache import training_key, training_spec

    file = script_file(tmp_path / "net.ts")
    cfg = make_cfg("model=exported", f"model.path={file}")
    before = training_key(training_spec(cfg, torch.device("cpu")))
    script_file(file, k=3)  # the same path, another program
    assert training_key(training_spec(cfg, torch.device("cpu"))) != before
