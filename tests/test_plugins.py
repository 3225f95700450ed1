"""Models, attacks and defenses of one's own: the model contract checked before training, a
``_target_`` that does not import, the folder the command starts from on the Python path, and
the model cache keyed by the user's source file."""

import textwrap
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from advrun import cache
from advrun.contract import accepted, check_classifier, import_problem, looks_like_probabilities
from advrun.errors import ConfigError
from tests.conftest import TINY, run_inprocess

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = [*TINY, "eval.epsilons=[0,0.1]", "attack.steps=2", "cache.enabled=false"]


class FixedNet(nn.Module):
    """A digits model with fixed sizes: no in_shape, num_classes or fit_normalization."""

    def __init__(self, hidden: int = 16):
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x):
        return self.layers(x)


class WrongClasses(FixedNet):
    def __init__(self):
        super().__init__()
        self.layers[-1] = nn.Linear(16, 3)


class WrongShape(FixedNet):
    def forward(self, x):
        return super().forward(x)[:, :, None]


class Probabilities(FixedNet):
    def forward(self, x):
        return super().forward(x).softmax(dim=1)


class WrongInputs(nn.Module):
    """Expects 28x28 inputs; the digits are 8x8."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))

    def forward(self, x):
        return self.layers(x)


class NoConstructor(nn.Module):
    """A fixed function with no parameters and no __init__ of its own."""

    def forward(self, x):
        return 5 * x.flatten(1)[:, :10]


class NotAModule:
    def __init__(self, in_shape, num_classes):
        pass


class NotAnAttack:
    def __init__(self, **keys):
        self.keys = keys


@dataclass
class NoLoss:
    scale: float = 1.0


HERE = __name__  # tests.test_plugins, importable as the test suite runs from the repository root


def one_line_error(proc, key: str) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"advrun: error: {key}: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("target, words", [
    (f"{HERE}.WrongClasses", "returns 3 logits per input, the data set has 10 classes"),
    (f"{HERE}.WrongShape", "to (4, 10, 1)"),
    (f"{HERE}.Probabilities", "returns probabilities"),
    (f"{HERE}.WrongInputs", "fails on a batch of 4 inputs of shape (1, 8, 8)"),
    (f"{HERE}.NotAModule", "must be a torch.nn.Module"),
    (f"{HERE}.NoConstructor", "has no trainable parameters"),
    ("torch.nn.Identity", "maps a batch of shape (4, 1, 8, 8) to (4, 1, 8, 8)"),  # the example
])
def test_a_model_breaking_the_contract_stops_before_training(tmp_path, target, words):
    out = tmp_path / "run"
    proc = run_inprocess(*SETTINGS, "model=logreg", f"model._target_={target}", "~model.normalize", "~model.binary",
                         f"hydra.run.dir={out}")
    assert words in one_line_error(proc, "model")
    assert not (out / "training.csv").exists() and not (out / "checkpoint.pt").exists()


@pytest.mark.parametrize("override, key, words", [
    ("model._target_=no_such_module.Net", "model._target_", "no module named 'no_such_module'"),
    (f"model._target_={HERE}.Missing", "model._target_", f"{HERE} has no 'Missing'"),
    ("attack._target_=no_such_module.Attack", "attack._target_", "no module named"),
    ("defense=adversarial defense.attack._target_=torch.nope", "defense.attack._target_", "torch has no 'nope'"),
    (f"attack._target_={HERE}.NotAnAttack", "attack._target_", "not an attack"),
    (f"defense._target_={HERE}.NoLoss", "defense", "has no loss(model, x, y)"),
])
def test_a_target_that_does_not_import_or_fit_is_one_line(tmp_path, override, key, words):
    proc = run_inprocess(*SETTINGS, *override.split(), f"hydra.run.dir={tmp_path / 'run'}")
    assert words in one_line_error(proc, key)


def test_a_plain_module_of_fixed_size_trains_and_is_attacked(tmp_path):
    out = tmp_path / "run"
    proc = run_inprocess(*SETTINGS, "model=logreg", f"model._target_={HERE}.FixedNet", "~model.normalize",
                         "~model.binary", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr
    assert (out / "metrics.json").is_file()


def test_modules_beside_the_command_import_and_its_config_folder_adds_options(tmp_path):
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "cwd_nets_for_plugins_test.py").write_text(textwrap.dedent("""
        from torch import nn

        class Net(nn.Sequential):
            def __init__(self, in_shape, num_classes):
                super().__init__(nn.Flatten(), nn.Linear(in_shape[0] * in_shape[1] * in_shape[2], num_classes))
    """))
    (tmp_path / "conf" / "model" / "mine.yaml").write_text("_target_: cwd_nets_for_plugins_test.Net\n")
    proc = run_inprocess("hydra.searchpath=[file://conf]", "model=mine", *SETTINGS,
                         f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Net" in proc.stdout
    assert str(tmp_path) not in __import__("sys").path  # only while the command runs


def test_contract_helpers():
    assert looks_like_probabilities(torch.tensor([[0.2, 0.8], [1.0, 0.0]]))
    assert not looks_like_probabilities(torch.tensor([[0.2, 0.8], [1.5, -0.5]]))
    assert accepted(FixedNet, in_shape=[1], num_classes=2) == {}
    assert accepted("torch.nn.Identity", in_shape=[1]) == {"in_shape": [1]}  # **kwargs takes them all
    assert accepted("advrun.models.MLP", in_shape=[1], bounds=(0, 1)) == {"in_shape": [1]}
    assert accepted(NoConstructor, in_shape=[1]) == {}  # nn.Module.__init__ takes **kwargs but refuses them
    assert import_problem("advrun.models.MLP") == ""
    assert "not a class or function" in import_problem("advrun.models")
    with pytest.raises(ConfigError, match="^model: FixedNet returns 10 logits per input, the data set has 3"):
        check_classifier(FixedNet(), torch.rand(5, 1, 8, 8), num_classes=3)
    check_classifier(FixedNet(), torch.rand(5, 1, 8, 8), num_classes=10)


def test_the_cache_key_follows_the_source_of_a_model_of_ones_own(tmp_path, make_cfg, monkeypatch):
    module = tmp_path / "cached_nets_for_plugins_test.py"
    module.write_text("from torch import nn\nNet = nn.Identity\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = make_cfg("model._target_=cached_nets_for_plugins_test.Net")
    device = torch.device("cpu")
    first = cache.training_spec(cfg, device)
    assert set(first["sources"]) == {"cached_nets_for_plugins_test.Net"}
    module.write_text("from torch import nn\nNet = nn.Identity  # changed\n")
    assert cache.training_key(cache.training_spec(cfg, device)) != cache.training_key(first)
    assert "sources" not in cache.training_spec(make_cfg(), device)  # advrun's own models: its code version
