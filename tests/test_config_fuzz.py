"""Random overrides thrown at the ``advrun`` command (hypothesis): wrong types, negative and huge
values, unknown keys, empty lists, missing files, group options that do not exist. Every case
must end in one of two ways:

- a valid run: exit status 0 and a ``metrics.json``;
- one clear error line, ``advrun: error: KEY: message``, naming a key the overrides touched,
  exit status 2, no traceback and no ``metrics.json``.

Never a traceback, another exit status, or a hang (each case has a time limit).

The examples are a function of ``ADVRUN_FUZZ_SEED`` (hypothesis' ``seed``, no example
database): the same seed draws the same cases, another seed other ones; unset, hypothesis'
derandomised search runs the same cases everywhere. Values include huge and tiny numbers, empty
lists and strings, text Hydra reads only quoted, very long values, and paths: missing files, a
folder, an empty file, a read-only file, random bytes, NaN weights, a device.

The command runs in this process (:func:`tests.conftest.run_inprocess`), as a subprocess would
run it but without starting Python for every case; each case has a time limit. Counts of work (``train.epochs``,
``attack.steps``) get no huge positive values: a billion epochs is a valid, very long run with a
progress bar, not a mistake advrun could tell from a plan.
"""

from __future__ import annotations

import math
import os
import random
import re

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import torch  # noqa: E402

from advrun.models import MLP  # noqa: E402
from tests.conftest import run_inprocess  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

#: A tiny run of the default experiment that the overrides then change.
BASE = ["dataset.n_train=120", "dataset.n_test=40", "train.epochs=1", "train.batch_size=32", "eval.batch_size=40",
        "eval.epsilons=[0,0.1]", "attack.steps=2", "eval.audit=false", "device=cpu"]

HUGE = 10**12
#: Numbers up to 2**64 and 1e308, down to subnormal floats.
HUGE_NUMBERS = [str(HUGE), "1e300", "1e308", "3.5e38", str(2**64), "inf"]
NUMBERS = ["-1", "0", "1", "2", "-0.5", "0.3", "-0.0", "1e-300", "5e-324", "-1e300", "-1e308", "nan", "-inf",
           str(-HUGE), str(-2**64), *HUGE_NUMBERS]
WRONG_TYPES = ["abc", "''", '""', "null", "true", "[]", "[[]]", "[1,2]", "[abc]", "{}", "{a: 1}", "é", "x" * 3000]
#: Paths, written as placeholders that :func:`with_paths` turns into files made for the test.
PATHS = ["/no/such/file.pt", "{folder}", "{empty_file}", "{readonly_file}", "{random_bytes}", "{nan_weights}",
         "{file}/below", "/dev/zero", '"{non_ascii}"', "{non_ascii}"]
SMALL_COUNTS = ["-1", "0", "1", "2", "3", str(-HUGE)]  # for counts of work: no huge positive values

#: key -> extra values worth trying beyond NUMBERS and WRONG_TYPES
KEYS: dict[str, list[str]] = {
    "seed": [],
    "device": ["cpu", "cuda", "cuda:7", "mps", "tpu"],
    "deterministic": ["false"],
    "train.epochs": SMALL_COUNTS,
    "train.batch_size": ["full"],
    "train.loss": ["mse", "logistic", "hinge"],
    "train.schedule": ["step", "cosine", "cyclic", "inverse", "exponential"],
    "train.gamma": [],
    "train.peak": [],
    "eval.n_samples": [],
    "eval.batch_size": [],
    "eval.epsilons": ["[0,0.05]", "[-0.1]", "[nan]", "[0.1,abc]"],
    "eval.audit": ["false"],
    "attack.eps": [],
    "attack.steps": SMALL_COUNTS,
    "attack.step_size": [],
    "attack.norm": ["inf", "2", "1", "l2", "linf", "3"],
    "model.hidden": ["[8]", "[8,8]", "[0]", "[-3]", f"[{HUGE}]", "[8,abc]"],
    "model.activation": ["tanh", "softplus", "abs", "swish"],
    "model.dropout": [],
    "model.checkpoint": PATHS,
    "model.batch_norm": ["true"],
    "model.channels": ["[4]"],
    "optimizer.lr": [],
    "optimizer.weight_decay": [],
    "dataset.n_train": [],
    "dataset.n_test": [],
    "dataset.test_fraction": ["0.001", "0.999"],
    "dataset.split_seed": [],
    "dataset.noise": [],
    "cache.enabled": ["false"],
    "cache.dir": PATHS,
}
GROUPS = {"model": ["logreg", "cnn", "transformer"], "attack": ["fgsm", "deepfool", "square", "nope"],
          "optimizer": ["sgd", "rmsprop", "lbfgs"], "defense": ["adversarial", "trades", "fast_at", "nope"],
          "dataset": ["moons", "imagenet"]}
UNKNOWN_KEYS = ["train.epoch", "attack.epsilon", "foo", "eval.epsilons.x"]


def value_for(key: str) -> st.SearchStrategy[str]:
    counts = key in ("train.epochs", "attack.steps")
    numbers = [v for v in NUMBERS if v not in HUGE_NUMBERS] if counts else NUMBERS
    return st.sampled_from(KEYS.get(key, []) + numbers + WRONG_TYPES)


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, str]:
    """The files that the placeholders of ``PATHS`` name."""
    root = tmp_path_factory.mktemp("paths")
    (root / "folder").mkdir()
    (root / "empty.pt").touch()
    (root / "random.pt").write_bytes(random.Random(0).randbytes(4096))
    readonly = root / "readonly.pt"
    readonly.write_bytes(b"not weights")
    readonly.chmod(0o444)
    weights = MLP((1, 8, 8), 10).state_dict()
    weights["2.weight"][0, 0] = math.nan
    torch.save(weights, root / "nan.pt")
    (root / "modèle.pt").touch()
    return {"folder": str(root / "folder"), "empty_file": str(root / "empty.pt"), "file": str(root / "empty.pt"),
            "readonly_file": str(readonly), "random_bytes": str(root / "random.pt"),
            "nan_weights": str(root / "nan.pt"), "non_ascii": str(root / "modèle.pt")}


def with_paths(args: list[str], paths: dict[str, str]) -> list[str]:
    """The overrides with each ``{placeholder}`` replaced by its path."""
    return [re.sub(r"\{(\w+)\}", lambda m: paths.get(m.group(1), m.group(0)), arg) for arg in args]


@st.composite
def overrides(draw) -> list[str]:
    chosen: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["key", "key", "key", "group", "unknown", "append", "remove"]))
        if kind == "key":
            key = draw(st.sampled_from(sorted(KEYS)))
            chosen.append(f"{key}={draw(value_for(key))}")
        elif kind == "group":
            group = draw(st.sampled_from(sorted(GROUPS)))
            chosen.append(f"{group}={draw(st.sampled_from(GROUPS[group]))}")
        elif kind == "unknown":
            chosen.append(f"{draw(st.sampled_from(UNKNOWN_KEYS))}={draw(st.sampled_from(NUMBERS))}")
        elif kind == "append":
            chosen.append(f"+{draw(st.sampled_from(UNKNOWN_KEYS))}={draw(st.sampled_from(NUMBERS))}")
        else:
            chosen.append(f"~{draw(st.sampled_from(sorted(KEYS)))}")
    return chosen


def touched(override: str) -> str:
    """The key an override touches: ``+train.epoch=3`` -> ``train.epoch``."""
    return override.split("=", 1)[0].lstrip("+~")


def related(a: str, b: str) -> bool:
    """Whether keys ``a`` and ``b`` are the same or one holds the other (``train``, ``train.epochs``)."""
    a, b = a.replace("/", "."), b.replace("/", ".")
    return a == b or a.startswith(f"{b}.") or b.startswith(f"{a}.")


ERROR_LINE = re.compile(r"^advrun: error: (\S+): \S.*$")
#: Keys that a choice of group or model legitimately brings into question: the chosen attack may
#: not suit the chosen model (attack._target_), a defense may not suit the loss (train.loss).
CONSEQUENCES = {"model": ["attack", "defense", "train.loss", "eval"], "attack": ["eval", "model"],
                "defense": ["train.loss", "model", "attack"], "dataset": ["model", "attack", "defense", "train.loss"],
                "train.loss": ["defense"], "eval.epsilons": ["attack.eps"], "attack.eps": ["eval.epsilons"],
                "attack.norm": ["attack.eps", "eval.epsilons"]}


def explained_by(key: str, args: list[str]) -> bool:
    for override in args:
        name = touched(override)
        if related(key, name) or any(related(key, other) for other in CONSEQUENCES.get(name.split(".")[0], [])
                                     + CONSEQUENCES.get(name, [])):
            return True
    return False


def fuzz_seed() -> int | None:
    """``ADVRUN_FUZZ_SEED`` as an integer, or None when unset."""
    value = os.environ.get("ADVRUN_FUZZ_SEED")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise pytest.UsageError(f"ADVRUN_FUZZ_SEED must be an integer, got {value!r}") from None


def searched(test, seed_value: int | None = None, examples: int | None = None):
    """``test`` with the search of this module: the examples are decided by ``seed_value``
    (default ``ADVRUN_FUZZ_SEED``; unset: hypothesis' derandomised search), never by a database."""
    seed_value = fuzz_seed() if seed_value is None else seed_value
    test = settings(max_examples=examples or int(os.environ.get("ADVRUN_FUZZ_EXAMPLES", "25")), deadline=None,
                    database=None, derandomize=seed_value is None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])(test)
    return test if seed_value is None else seed(seed_value)(test)


@searched
@given(args=overrides())
def test_random_overrides_end_in_a_run_or_one_error_line(tmp_path_factory, paths, args):
    out = tmp_path_factory.mktemp("fuzz") / "run"
    args = with_paths(args, paths)
    proc = run_inprocess(*BASE, *args, f"hydra.run.dir={out}")
    status, stderr = proc.returncode, proc.stderr
    event(f"exit status {status}")  # the mix of valid runs and errors: pytest --hypothesis-show-statistics
    assert "Traceback" not in stderr, f"{args}:\n{stderr}"
    if status == 0:
        assert (out / "metrics.json").is_file(), f"{args}: exit 0 without metrics.json"
        return
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert status == 2, f"{args}: exit status {status}\n{stderr}"
    errors = [line for line in lines if line.startswith("advrun: error")]
    assert len(errors) == 1, f"{args}: expected one error line\n{stderr}"
    found = ERROR_LINE.match(errors[0])
    assert found, f"{args}: error line without a key: {errors[0]}"
    assert explained_by(found.group(1), args), f"{args}: the error names {found.group(1)}: {errors[0]}"
    assert not (out / "metrics.json").exists()


def drawn(seed_value: int, examples: int = 30) -> list[list[str]]:
    """The overrides the search of this module draws with ``seed_value``."""
    cases: list[list[str]] = []

    @given(args=overrides())
    def collect(args):
        cases.append(args)

    searched(collect, seed_value, examples)()
    return cases


def test_the_seed_decides_the_examples():
    first, again, other = drawn(1), drawn(1), drawn(2)
    assert first == again
    assert first != other
    values = {override.split("=", 1)[-1] for case in first + other + drawn(3) for override in case}
    assert values & {"[]", "''", '""'} and values & set(HUGE_NUMBERS) and values & set(PATHS), values


@pytest.mark.parametrize("args", [
    ["train.epochs=abc"], ["eval.epsilons=[]"], ["optimizer.lr=nan"], ["model.checkpoint=/no/such/model.pt"],
    ["foo=1"], ["+train.epoch=3"], ["~train"], [f"model.hidden=[{HUGE}]"], ["dataset.n_train=-1"],
])
def test_known_bad_overrides_give_one_error_line(tmp_path, args):
    # The property's own examples vary with hypothesis' search; these always run.
    proc = run_inprocess(*BASE, *args, f"hydra.run.dir={tmp_path / 'run'}")
    status, stderr = proc.returncode, proc.stderr
    lines = [line for line in stderr.splitlines() if line.startswith("advrun: error")]
    assert status == 2 and len(lines) == 1 and "Traceback" not in stderr, stderr
    assert explained_by(ERROR_LINE.match(lines[0]).group(1), args), lines[0]
    assert not (tmp_path / "run" / "metrics.json").exists()
