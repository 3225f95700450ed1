"""Shared fixtures: composing configs with Hydra's compose API, tiny run settings, shared data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from advrun.config import config_dir

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"
REFERENCE_MODELS = SHARED / "reference-models"

#: Overrides that make any run take a second or two. The evaluation audit (a few seconds for a
#: CNN) and the figures and report (about 2 s) are off: the tests of the audit, of the reports and
#: the end-to-end CLI test turn them on.
TINY = [
    "dataset.n_train=240",
    "dataset.n_test=60",
    "train.epochs=2",
    "train.batch_size=32",
    "eval.batch_size=25",
    "device=cpu",
    "eval.audit=false",
    "eval.certify=false",   # the attack's rows only; the tests of certification name their method
    "report=false",
]

#: TINY with a two-step attack at two budgets: a whole run from the command line in a second or two.
FAST = [*TINY, "attack.steps=2", "eval.epsilons=[0,0.1]"]

#: Per defense, the overrides that make a TINY run train in about a second.
TINY_DEFENSE = {
    "adversarial": ["defense.attack.steps=2"],
    "trades": ["defense.steps=2"],
    "fast_at": ["defense.check_steps=2"],
    "linear_robust": ["model=logreg"],  # the closed form is exact for affine models only
    "cross_lipschitz": ["model.hidden=[32]"],  # one hidden layer: the closed form (any model: autograd)
}


def linear_model(d: int = 12, k: int = 3, seed: int = 0, gain: float = 1.0):
    """Softmax regression on ``d`` inputs and ``k`` classes (weights from ``seed``, scaled by
    ``gain``) in eval mode, with its weight and bias: ``(model, w, b)``, for closed forms."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, k))
    with torch.no_grad():
        model[1].weight.mul_(gain)
    return model.eval(), model[1].weight.detach(), model[1].bias.detach()


#: Coordinates of two implementations of one attack step agree to float error: both compute the
#: same float32 gradient, with kernels that PyTorch picks by ATEN_CPU_CAPABILITY and batch shape,
#: and differ by a few ulps per step; over 10-30 steps of 0.004-0.25 that stays below 2e-5.
PEER_ATOL = 2e-5

#: At most this share of the samples may follow another trajectory than the peer's (see
#: :func:`assert_same_iterates`). Measured on the digits models, ATEN_CPU_CAPABILITY=avx2 / default:
#: Linf PGD (CNN) 0 / 3 of 200 samples, L2 PGD (CNN) 1 / 0 of 60, BIM (30 steps, MLP) 0 / 17 of 200,
#: MI-FGSM (MLP) 0 / 12 of 200: samples classified so confidently that their gradient is mostly
#: float error. A wrong step size, sign or projection moves nearly every sample (measured: a step
#: of 0.026 instead of 0.025 moves 197 of 200).
MAX_SPLIT = 0.15


def assert_same_iterates(ours: torch.Tensor, theirs: torch.Tensor, atol: float = PEER_ATOL,
                         max_split: float = MAX_SPLIT) -> None:
    """``ours`` and ``theirs``, the outputs of two implementations of one deterministic iterative
    attack, agree per sample within ``atol``, except on at most ``max_split`` of the samples.

    Those samples meet a tie on their way: a gradient coordinate within float error of zero
    (whose sign decides a whole Linf step), or a ReLU or a bound met within float error; one
    implementation takes one branch and the other the other, and from there the iterates follow
    different, equally valid paths (measured: up to 0.2 in Linf, 0.007 in L2 at eps 1)."""
    assert ours.shape == theirs.shape
    differs = (ours - theirs).abs().flatten(1).amax(dim=1)
    split = differs > atol
    assert split.float().mean() <= max_split, (
        f"{int(split.sum())} of {len(split)} samples differ from the peer by up to {float(differs.max()):.3g} "
        f"(atol {atol}, at most {max_split:.0%} of the samples may split at a tie)")


def assert_same_sign_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ours: torch.Tensor,
                          theirs: torch.Tensor, atol: float = 1e-5) -> None:
    """``ours`` and ``theirs``, one signed-gradient step from ``x`` (FGSM) by two
    implementations, agree within ``atol`` at every coordinate whose gradient has a reliable
    sign. A coordinate whose exact (float64) gradient is within ten times the float32 error of
    its sample's gradient (measured here: the largest difference between the float32 and the
    float64 gradient of that sample) may step either way."""
    import copy

    def gradient(m, inputs):
        inputs = inputs.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(m(inputs), y, reduction="sum")
        return torch.autograd.grad(loss, inputs)[0]

    exact = gradient(copy.deepcopy(model).double(), x.double())
    error = (gradient(model, x).double() - exact).abs()
    noise = error.flatten(1).amax(dim=1).view(-1, *[1] * (x.dim() - 1))
    differs = (ours - theirs).abs() > atol
    wrong = differs & (exact.abs() > 10 * noise)
    assert not wrong.any(), (
        f"{int(wrong.sum())} coordinates differ from the peer by up to {float((ours - theirs).abs()[wrong].max()):.3g} "
        f"where the gradient's sign is reliable (|gradient| above ten times its float32 error)")


def groups() -> dict[str, list[str]]:
    """Every option of every config group, read from conf/."""
    root = config_dir()
    return {
        group: sorted(p.stem for p in (root / group).glob("*.yaml"))
        for group in ("dataset", "model", "optimizer", "attack", "defense")
    }


@pytest.fixture
def make_cfg():
    """``make_cfg(*overrides)`` composes the advrun config as the CLI would."""

    def _compose(*overrides: str):
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))

    return _compose


class FakeCIFAR10:
    """A stand-in for torchvision's CIFAR10, which checks file checksums: the same attributes
    (HWC uint8 ``data``, list ``targets``, ``classes``); channel 0 is 255, channel 1 is 0 and
    channel 2 random, so that the channel order can be checked and a model has something to learn."""

    classes = [f"c{i}" for i in range(10)]

    def __init__(self, root, train, download):
        n = 100 if train else 40
        self.targets = [i % 10 for i in range(n)]
        self.data = np.zeros((n, 32, 32, 3), dtype=np.uint8)
        self.data[..., 0] = 255
        self.data[..., 2] = np.random.default_rng(0 if train else 1).integers(0, 256, size=(n, 32, 32))


@pytest.fixture
def fake_cifar10(monkeypatch):
    """torchvision's CIFAR10 replaced by :class:`FakeCIFAR10` for one test."""
    import torchvision.datasets as tvd

    monkeypatch.setattr(tvd, "CIFAR10", FakeCIFAR10)
    return FakeCIFAR10


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "MNIST" / "raw" / "t10k-images-idx3-ubyte").is_file():
        pytest.skip(f"real MNIST not available: {SHARED_DATA} is absent (it sits beside the checkout)")
    return SHARED_DATA


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python -m advrun ARGS`` in ``cwd`` and capture its output."""
    inherited = {k: v for k, v in os.environ.items() if k not in ("ADVRUN_DEBUG", "HYDRA_FULL_ERROR")}
    full_env = {**inherited, "PYTHONUNBUFFERED": "1", "COLUMNS": "120", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "advrun", *args], cwd=cwd, env=full_env, capture_output=True, text=True,
        timeout=timeout,
    )


class Hang(Exception):
    """An in-process run that did not end within its time limit."""


def run_inprocess(*args: str, cwd: Path | None = None, env: dict | None = None,
                  timeout: int = 300) -> subprocess.CompletedProcess:
    """``advrun ARGS`` through :func:`advrun.cli.main` in this process, as the console script runs
    it: its exit status and what it printed. Seconds faster than :func:`run_cli` (no Python and
    torch start-up), for the many tests of one command line each. An exception that escapes
    ``main`` (which the command would show as a traceback) is returned as exit status -1 with its
    traceback in ``stderr``; a run longer than ``timeout`` raises :class:`Hang`. ``cwd`` and ``env``
    (added to the environment) hold for the call only."""
    import contextlib
    import io as _io
    import signal
    import traceback

    from advrun import cli

    def on_alarm(signum, frame):
        raise Hang(f"advrun {' '.join(args)}: no result within {timeout} s")

    out, err = _io.StringIO(), _io.StringIO()
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(timeout)
    argv, sys.argv = sys.argv, ["advrun", *args]
    saved_environ, saved_cwd = dict(os.environ), os.getcwd()
    for key in ("ADVRUN_DEBUG", "HYDRA_FULL_ERROR"):
        os.environ.pop(key, None)
    os.environ.update(env or {})
    if cwd is not None:
        os.chdir(cwd)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                cli.main()
                status = 0
            except SystemExit as e:
                status = e.code if isinstance(e.code, int) else 1
            except Hang:
                raise
            except BaseException:  # noqa: BLE001 - the command would die with this traceback
                err.write(traceback.format_exc())
                status = -1
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        sys.argv = argv
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_environ)
    return subprocess.CompletedProcess(["advrun", *args], status, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny models: a second thread only adds contention
    on a busy 2-core machine (use with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def digits():
    """The digits data set (train / test tensors in [0, 1], shape 1x8x8, 10 classes)."""
    from advrun.data import load_dataset

    return load_dataset({"name": "digits", "test_fraction": 0.25, "split_seed": 0})


_TRAINED: dict = {}


@pytest.fixture(scope="session")
def trained(digits):
    """``trained("mlp" | "logreg" | "cnn", classes=None)``: a model trained on digits (cached per
    session, eval mode) and its test data ``(model, x_test, y_test)``; with ``classes`` only
    those digits, relabelled 0..K-1."""
    from advrun.models import CNN, MLP, LogReg

    def _get(kind: str, classes: tuple[int, ...] | None = None):
        key = (kind, classes)
        if key not in _TRAINED:
            x, y, xt, yt = digits.x_train, digits.y_train, digits.x_test, digits.y_test
            if classes is not None:
                lookup = {c: i for i, c in enumerate(classes)}
                keep, keep_t = torch.isin(y, torch.tensor(classes)), torch.isin(yt, torch.tensor(classes))
                x, xt = x[keep], xt[keep_t]
                y = torch.tensor([lookup[int(v)] for v in y[keep]])
                yt = torch.tensor([lookup[int(v)] for v in yt[keep_t]])
            k = int(y.max()) + 1
            torch.manual_seed(0)
            model = {"mlp": MLP, "logreg": LogReg, "cnn": CNN}[kind](in_shape=(1, 8, 8), num_classes=k)
            model.fit_normalization(x)
            optimizer = torch.optim.Adam(model.parameters(), lr=0.01 if kind == "logreg" else 0.003)
            generator = torch.Generator().manual_seed(0)
            for _ in range(15):
                for index in torch.randperm(len(x), generator=generator).split(64):
                    loss = torch.nn.functional.cross_entropy(model(x[index]), y[index])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
            _TRAINED[key] = (model.eval(), xt, yt)
        return _TRAINED[key]

    return _get


@pytest.fixture(autouse=True)
def _model_cache(tmp_path_factory, monkeypatch):
    """Each test gets an empty model cache (runs from Python and from the command line alike)."""
    monkeypatch.setenv("ADVRUN_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
