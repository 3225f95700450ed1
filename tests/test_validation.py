"""The one validation mechanism (:mod:`advrun.errors`) and the bad values it must turn into one
line naming the key: out-of-range budgets and seeds, splits that cannot hold every class, batch
norm on batches of one, checkpoints that are not safe weights or not finite, overrides Hydra
cannot parse, values too long to echo, networks without the layers their name promises."""

from __future__ import annotations

import math
import os
import re

import numpy as np
import pytest
import torch

from advrun.checkpoints import load_weights
from advrun.data import _split
from advrun.errors import (BUDGET, CLIPPED_CHARACTERS, SEED, ConfigError, DataError, InvalidValue, Number, Switch,
                           check_fields, clipped, keyed, shown)
from advrun.models import CNN, MLP
from advrun.training import batch_starts
from tests.conftest import TINY, run_inprocess

pytestmark = pytest.mark.usefixtures("one_thread")

ERROR_LINE = re.compile(r"^advrun: error: (\S+): (\S.*)$")


# --- the mechanism ---------------------------------------------------------------------------

@pytest.mark.parametrize("check, good, bad", [
    (Number(1, integer=True), [1, 2, 2**63 - 1], [0, 1.0, True, "1", None, math.nan, [1], 2**63, 10**30]),
    (Number(0, 1, high_open=True), [0, 0.5, 0.999], [1, -1e-9, math.nan, math.inf, False]),
    (Number(0, 1, low_open=True), [1e-300, 1], [0, 1.0000001]),
    (Number(0, math.inf, high_open=True, optional=True), [None, 0, 1e30], [math.inf, -0.0001, "x", 1.0001e30]),
    (Number(0), [0, 1e30, math.inf, 2**63 - 1], [1.0001e30, 10**40, 2**64, -1]),  # infinity passes where the interval holds it
    (SEED, [0, 2**64 - 1], [-1, 2**64, 0.5]),
    (BUDGET, [0, 0.3, 1e30], [1e30 * 1.0001, math.inf, -1e-12, math.nan]),
])
def test_number_holds_exactly_inside_its_interval(check, good, bad):
    for value in good:
        check.check("field", value)
    for value in bad:
        with pytest.raises(InvalidValue, match=r"^field: must be ") as raised:
            check.check("field", value)
        assert raised.value.field == "field"


def test_descriptions_read_as_the_messages_users_know():
    assert Number(1, integer=True).description() == "an integer >= 1"
    assert Number(0, math.inf, high_open=True).description() == "a finite number >= 0"
    assert Number(0, 1, high_open=True).description() == "a number in [0, 1)"
    assert Number(1, integer=True, optional=True).description() == "an integer >= 1 or null"
    with pytest.raises(InvalidValue, match="must be true or false, got 1"):
        Switch().check("flag", 1)


def test_check_fields_reads_mappings_and_objects_and_names_the_first_bad_field():
    checks = {"a": Number(0), "b": Switch()}
    check_fields({"a": 1, "b": True}, checks)
    with pytest.raises(InvalidValue) as raised:
        check_fields(type("Obj", (), {"a": 1, "b": "yes"})(), checks)
    assert raised.value.field == "b"


def test_keyed_prefixes_the_field_once_and_keeps_the_message():
    with pytest.raises(ConfigError) as raised, keyed("attack"):
        raise InvalidValue("steps", "must be an integer >= 1, got 0")
    assert (raised.value.key, raised.value.message) == ("attack.steps", "must be an integer >= 1, got 0")
    with pytest.raises(InvalidValue) as nested, keyed("attacks.1", error=InvalidValue):
        raise InvalidValue("eps", "bad")
    assert nested.value.field == "attacks.1.eps"
    with pytest.raises(DataError) as data, keyed("dataset", error=DataError, note=" (see the docs)"):
        raise InvalidValue("noise", "bad")
    assert str(data.value) == "dataset.noise: bad (see the docs)"


def test_long_values_are_cut_in_the_middle_saying_how_long_they_were():
    assert shown("abc") == "'abc'"
    text = shown("x" * 100_000)
    assert len(text) < 120 and "(100002 characters)" in text
    line = str(ConfigError("k" * 100_000, "got " + "y" * 100_000 + " and a hint"))
    assert len(line) < 3 * CLIPPED_CHARACTERS + 100 and line.endswith("(100000 characters) and a hint")
    path = "/" + "p" * (CLIPPED_CHARACTERS - 1)  # a long path still fits whole
    assert clipped(path) == path


# --- bad values at the command line: one line naming the key, exit 2, no results --------------

BASE = [*(a for a in TINY if not a.startswith("train.epochs=")), "train.epochs=1", "attack.steps=2", "eval.epsilons=[0,0.1]"]


def one_error_line(tmp_path, *args: str) -> tuple[str, str]:
    out = tmp_path / "run"
    proc = run_inprocess(*BASE, *args, f"hydra.run.dir={out}")
    lines = [line for line in proc.stderr.splitlines() if line.startswith("advrun: error")]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert not (out / "metrics.json").exists()
    found = ERROR_LINE.match(lines[0])
    assert found, lines[0]
    return found.group(1), found.group(2)


@pytest.mark.parametrize("args, key, said", [
    (["attack.eps=1e308"], "attack.eps", "at most 1e+30"),
    (["attack.step_size=1e300", "attack.norm=2"], "attack.step_size", "at most 1e+30"),
    (["optimizer.lr=1e300"], "optimizer.lr", "at most 1e+30"),
    (["attack.step_size=18446744073709551616"], "attack.step_size", "an integer at most 2**63 - 1"),
    (["attack=deepfool", "attack.overshoot=1e300"], "attack.overshoot", "at most 1e+30"),
    (["model.activation=softplus", "model.softplus_beta=1e39"], "model.softplus_beta", "at most 1e+30"),
    (["attack.eps=3e38", "attack.norm=2"], "attack.eps", "at most 1e+30"),
    (["eval.epsilons=[0,1e308]"], "eval.epsilons", "[0, 1e+30]"),
    (["eval.epsilons=[0,1e31]"], "eval.epsilons", "[0, 1e+30]"),
    (["seed=18446744073709551616"], "seed", "[0, 18446744073709551615]"),
    (["seed=-1"], "seed", "[0, 18446744073709551615]"),
    (["dataset.test_fraction=0.001"], "dataset.test_fraction", "choose a value in (0.005008, 0.9944]"),
    (["dataset.test_fraction=0.999"], "dataset.test_fraction", "choose a value in (0.005008, 0.9944]"),
    (["train.batch_size=1", "model.batch_norm=true"], "train.batch_size", "batch norm needs at least two"),
    (["dataset.split_seed=-1"], "dataset.split_seed", "[0, 4294967295]"),
    (["dataset.split_seed=4294967296"], "dataset.split_seed", "[0, 4294967295]"),
    (["dataset=moons", "dataset.noise=-1"], "dataset.noise", "finite number >= 0"),
    (["dataset=moons", "dataset.noise=nan"], "dataset.noise", "finite number >= 0"),
    (["dataset=moons", "dataset.noise=inf"], "dataset.noise", "finite number >= 0"),
    (["model.hidden=[]"], "model.hidden", "at least one hidden layer width"),
    (["model=cnn", "model.channels=[]"], "model.channels", "at least one convolution block width"),
    (["dataset.n_train=1"], "dataset.n_train", "each of the 10 classes"),
    (["dataset.classes=[0,1]", "dataset.n_train=1"], "dataset.n_train", "each of the 2 classes"),
    (["model.activation=" + "y" * 100_000], "model.activation", "(100002 characters)"),
    (["model.checkpoint=/tmp/modèle.pt"], "model.checkpoint", """'model.checkpoint="/tmp/modèle.pt"'"""),
    (["model.checkpoint=/dev/zero", "train.epochs=0"], "model.checkpoint", "not a regular file"),
    (["model.checkpoint=/" + "x" * 5000], "model.checkpoint", "cannot be opened"),
])
def test_bad_values_end_in_one_line_naming_the_key(tmp_path, args, key, said):
    named, message = one_error_line(tmp_path, *args)
    assert named == key and said in message, message
    assert len(message) < 1000


def test_the_largest_budget_and_seed_allowed_run(tmp_path):
    proc = run_inprocess(*BASE, "attack.eps=1e30", "attack.norm=2", f"seed={2**64 - 1}",
                         f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_the_test_fractions_named_as_allowed_split_and_their_neighbours_do_not():
    k, n = 3, 60
    y = np.repeat(np.arange(k), n // k)
    x = np.zeros((n, 2), dtype=np.float32)
    low, high = (k - 1) / n, (n - k) / n
    for fraction in (low + 1e-9, high):
        _, _, y_train, y_test = _split(x, y, fraction, 0)
        assert set(y_train) == set(y_test) == set(range(k))
    for fraction in (low, high + 1e-9):
        with pytest.raises(DataError, match=re.escape(f"choose a value in ({low:.4g}, {high:.4g}]")):
            _split(x, y, fraction, 0)


def test_batch_norm_refuses_training_batches_of_one_sample():
    with_norm, without = MLP((4,), 2, hidden=[3], batch_norm=True), MLP((4,), 2, hidden=[3])
    assert batch_starts(5, 1, without) == [0, 1, 2, 3, 4]
    assert batch_starts(5, 2, with_norm) == [0, 2]  # the last sample joins the batch before
    for n, batch_size in ((5, 1), (1, 8)):
        with pytest.raises(InvalidValue, match="at least two samples") as raised:
            batch_starts(n, batch_size, with_norm)
        assert raised.value.field == "batch_size"


def test_empty_layer_lists_are_refused_by_the_constructors():
    for build, field in ((lambda: MLP((4,), 2, hidden=[]), "hidden"),
                         (lambda: CNN((1, 8, 8), 2, channels=[]), "channels")):
        with pytest.raises(InvalidValue) as raised:
            build()
        assert raised.value.field == field


# --- checkpoints ---------------------------------------------------------------------------

def _state(**changes: float) -> dict[str, torch.Tensor]:
    state = MLP((1, 8, 8), 10, hidden=[8]).state_dict()
    for name, value in changes.items():
        state[name.replace("_", ".")][...] = value
    return state


@pytest.mark.parametrize("content, said", [
    (b"", "not a weights file advrun can read safely"),
    (os.urandom(4096), "not a weights file advrun can read safely"),
    (b"\x80\x02}q\x00.", "not a weights file advrun can read safely"),  # a pickle, not torch's zip format
])
def test_a_file_that_is_not_safe_weights_is_refused_without_advice_to_unpickle(tmp_path, content, said):
    file = tmp_path / "weights.pt"
    file.write_bytes(content)
    with pytest.raises(ConfigError) as raised:
        load_weights(MLP((1, 8, 8), 10, hidden=[8]), file)
    assert raised.value.key == "model.checkpoint" and said in raised.value.message
    assert "weights_only=False" not in str(raised.value) and "will likely succeed" not in str(raised.value)


def test_a_pickled_module_is_named_and_refused_without_advice_to_unpickle(tmp_path):
    file = tmp_path / "module.pt"
    torch.save(MLP((1, 8, 8), 10, hidden=[8]), file)
    with pytest.raises(ConfigError, match="pickled advrun.models.MLP, which needs arbitrary unpickling") as raised:
        load_weights(MLP((1, 8, 8), 10, hidden=[8]), file)
    assert "weights_only=False" not in str(raised.value)


@pytest.mark.parametrize("changes, said", [
    ({"2_weight": math.nan}, "non-finite weights (NaN or infinity) in 2.weight"),
    ({"4_bias": math.inf}, "non-finite weights (NaN or infinity) in 4.bias"),
    ({"2_weight": 1e30, "4_weight": 1e30}, "non-finite logits (NaN or infinity) on 5 of the first 5 test inputs"),
])
def test_non_finite_weights_or_logits_are_refused(tmp_path, changes, said):
    file = tmp_path / "weights.pt"
    torch.save(_state(**changes), file)
    model = MLP((1, 8, 8), 10, hidden=[8])
    with pytest.raises(ConfigError, match=re.escape(said)):
        load_weights(model, file, probe=torch.rand(5, 1, 8, 8))
    load_weights(model, _save(tmp_path, _state()), probe=torch.rand(5, 1, 8, 8))  # finite weights load


def _save(tmp_path, state) -> str:
    file = tmp_path / "good.pt"
    torch.save(state, file)
    return str(file)


def test_a_checkpoint_of_nan_weights_evaluated_as_is_ends_in_one_line(tmp_path):
    torch.save(_state(**{"2_weight": math.nan}), tmp_path / "nan.pt")
    key, message = one_error_line(tmp_path, "model.hidden=[8]", f"model.checkpoint={tmp_path / 'nan.pt'}",
                                  "train.epochs=0")
    assert key == "model.checkpoint" and "non-finite weights" in message


def test_integer_fields_without_an_upper_end_stop_at_int64():
    from advrun.errors import Number

    Number(1, integer=True).check("steps", 2**63 - 1)
    for value in (2**63, 10**20):
        with pytest.raises(InvalidValue, match=r"steps: must be an integer >= 1 and at most 2\*\*63 - 1"):
            Number(1, integer=True).check("steps", value)
    Number(0, 2**64 - 1, integer=True).check("seed", 2**64 - 1)  # an interval that says more holds
