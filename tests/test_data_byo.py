"""Data sets brought without code: images in ImageFolder layout (dataset=folder) and arrays in a
.npz file (dataset=tensors): shapes, bounds, class names, seeded splits, end-to-end runs, and one
clear error naming the key for each way the files can be wrong."""

import json

import numpy as np
import pytest
import torch

from advrun import experiment
from advrun.data import load_dataset
from advrun.errors import DataError
from tests.conftest import TINY, run_inprocess
from tests.test_validation import ERROR_LINE

pytestmark = pytest.mark.usefixtures("one_thread")

COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "emu": (30, 30, 200)}


def write_folder(root, per_class=8, size=(12, 10)):
    """An ImageFolder of small PNGs: one colour per class, plus noise; ``size`` is (width, height)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.integers(-30, 30, size=(size[1], size[0], 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    (root / "cat" / "notes.txt").write_text("not an image: skipped")
    return root


def folder_cfg(images, **options):
    return {"name": "folder", "root": str(images), "size": 8, "channels": 3, "test_fraction": 0.25,
            "split_seed": 0, **options}


@pytest.fixture
def images(tmp_path):
    return write_folder(tmp_path / "images")


def test_folder_images_are_resized_scaled_and_named_by_their_folders(images):
    data = load_dataset(folder_cfg(images))
    assert data.shape == (3, 8, 8) and data.class_names == ["cat", "dog", "emu"] and data.bounds == (0.0, 1.0)
    assert len(data.x_train) + len(data.x_test) == 24 and len(data.x_test) == 6
    assert data.x_train.dtype == torch.float32 and 0 <= data.x_train.min() and data.x_train.max() <= 1
    assert torch.bincount(data.y_test).tolist() == [2, 2, 2]  # stratified
    # the colour of each class survives: cats are red, emus blue
    cats = data.x_train[data.y_train == 0].mean(dim=(0, 2, 3))
    assert cats[0] > 0.6 and cats[1] < 0.3
    assert "default" not in data.budgets and data.budgets == {}  # budgets come from the config group


def test_folder_split_is_seeded_and_size_and_channels_are_as_stated(images):
    a, b = load_dataset(folder_cfg(images)), load_dataset(folder_cfg(images))
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)
    c = load_dataset(folder_cfg(images, split_seed=1))
    assert not torch.equal(a.x_test, c.x_test)
    grey = load_dataset(folder_cfg(images, channels=1, size=[6, 10]))
    assert grey.shape == (1, 6, 10)


@pytest.mark.parametrize("change, key, match", [
    (lambda root: {"root": str(root / "nowhere")}, "dataset.root", "does not exist"),
    (lambda root: {"root": str(root / "cat")}, "dataset.root", "at least two class folders"),
    (lambda root: {"root": str(root / "cat" / "0.png")}, "dataset.root", "is not a folder"),
    (lambda root: {"root": "x" * 3000}, "dataset.root", "cannot be opened .File name too long"),
    (lambda root: {"channels": 1.0}, "dataset.channels", "1 .grey. or 3"),
    (lambda root: (root / "fox").mkdir() or {}, "dataset.root", "without images: fox"),
    (lambda root: (root / "dog" / "broken.png").write_bytes(b"not a png") and {}, "dataset.root",
     "broken.png cannot be read as an image"),
    (lambda root: {"channels": 2}, "dataset.channels", "1 .grey. or 3"),
    (lambda root: {"size": 0}, "dataset.size", "integer in"),
    (lambda root: {"size": [8, 8, 8]}, "dataset.size", "height, width"),
])
def test_folder_mistakes_name_the_key(images, change, key, match):
    with pytest.raises(DataError, match=match) as info:
        load_dataset(folder_cfg(images, **change(images)))
    assert info.value.key == key


# ----------------------------------------------------------------------------------- tensors

def write_npz(path, n=(90, 30), shape=(1, 6, 6), k=3, low=0.0, high=1.0, **arrays):
    rng = np.random.default_rng(0)
    content = {}
    for part, count in zip(("train", "test"), n):
        y = np.arange(count) % k
        x = rng.uniform(low, high, size=(count, *shape)).astype(np.float32)
        x[:, 0] = np.clip(x[:, 0] * 0.2 + low + (high - low) * y.reshape(-1, *[1] * (len(shape) - 1)) / k, low, high)
        content[f"x_{part}"], content[f"y_{part}"] = x, y
    content.update(arrays)
    np.savez(path, **{k: v for k, v in content.items() if v is not None})
    return path


def test_tensors_load_with_their_stated_bounds_and_class_names(tmp_path):
    file = write_npz(tmp_path / "d.npz", low=-1.0, high=2.0, class_names=np.array(["a", "b", "c"]))
    data = load_dataset({"name": "tensors", "path": str(file), "bounds": [-1, 2], "split_seed": 0})
    assert data.shape == (1, 6, 6) and data.bounds == (-1.0, 2.0) and data.class_names == ["a", "b", "c"]
    assert (len(data.x_train), len(data.x_test)) == (90, 30) and data.y_train.dtype == torch.int64
    vectors = load_dataset({"name": "tensors", "path": str(write_npz(tmp_path / "v.npz", shape=(5,), k=2))})
    assert vectors.shape == (5,) and vectors.class_names == ["0", "1"] and vectors.bounds == (0.0, 1.0)


def _object_array():
    return np.array([{"a": 1}] * 30, dtype=object)


@pytest.mark.parametrize("arrays, options, key, match", [
    ({}, {"path": "nowhere.npz"}, "dataset.path", "does not exist"),
    ({}, {"path": "."}, "dataset.path", "is not a regular file"),
    ({"y_test": None}, {}, "dataset.path", "lacks y_test"),
    ({"x_test": np.zeros((30, 1, 6, 5), np.float32)}, {}, "dataset.path", "x_test's inputs have shape"),
    ({"x_test": np.full((30, 1, 6, 6), 1.5, np.float32)}, {}, "dataset.bounds",
     r"x_test in .* holds values in \[1.5, 1.5\], outside the stated bounds \[0, 1\]"),
    ({"x_train": np.full((90, 1, 6, 6), np.nan, np.float32)}, {}, "dataset.path", "x_train holds NaN"),
    ({"y_train": np.arange(90) % 3 * 1.0}, {}, "dataset.path", "y_train must hold one integer label"),
    ({"y_train": np.arange(90) % 3 * 2}, {}, "dataset.path", "missing: 1, 3"),
    ({"y_test": -(np.arange(30) % 3)}, {}, "dataset.path", "y_test holds the label -2"),
    ({"x_train": np.zeros((90, 6, 6), np.float32)}, {}, "dataset.path", "x_train must be .* shape"),
    ({"x_test": _object_array()}, {}, "dataset.path", "x_test cannot be read without unpickling"),
    ({"class_names": np.array(["a", "b"])}, {}, "dataset.path", "class_names must be 3 strings"),
    ({}, {"bounds": [1, 0]}, "dataset.bounds", "low < high"),
])
def test_tensor_mistakes_name_the_key_and_the_array(tmp_path, arrays, options, key, match):
    file = write_npz(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError, match=match) as info:
        load_dataset({"name": "tensors", "path": str(file), "bounds": [0, 1], **options})
    assert info.value.key == key


def test_files_that_are_not_npz_archives_are_refused(tmp_path):
    text = tmp_path / "d.npz"
    text.write_text("x_train,y_train\n")
    single = tmp_path / "one.npy"
    np.save(single, np.zeros(3))
    for file, match in ((text, "not a .npz file"), (single, "holds one array")):
        with pytest.raises(DataError, match=match) as info:
            load_dataset({"name": "tensors", "path": str(file)})
        assert info.value.key == "dataset.path"


# ------------------------------------------------------------------------------ end to end

def test_a_folder_of_images_runs_end_to_end(images, make_cfg, tmp_path):
    cfg = make_cfg("dataset=folder", f"dataset.root={images}", "dataset.size=8", "model=cnn", "model.channels=[4]",
                   "model.hidden=8", *TINY, "attack.steps=2")
    metrics = experiment.run(cfg, tmp_path / "run")
    assert metrics["dataset"] == "folder" and metrics["n_test"] == 6 and metrics["eps"] == pytest.approx(8 / 255)
    info = json.loads((tmp_path / "run" / "model.json").read_text())
    assert info["class_names"] == ["cat", "dog", "emu"] and info["in_shape"] == [3, 8, 8]


def test_tensors_run_end_to_end_within_their_bounds(tmp_path, make_cfg):
    file = write_npz(tmp_path / "d.npz", low=-1.0, high=1.0)
    cfg = make_cfg("dataset=tensors", f"dataset.path={file}", "dataset.bounds=[-1,1]", *TINY, "attack.steps=2",
                   "attack.eps=0.2", "eval.epsilons=[0,0.2]", "eval.audit=true")
    metrics = experiment.run(cfg, tmp_path / "run")
    assert metrics["dataset"] == "tensors" and metrics["n_eval"] == 30
    assert json.loads((tmp_path / "run" / "model.json").read_text())["bounds"] == [-1.0, 1.0]
    assert metrics["audit"] is not None


def test_a_bad_file_is_one_error_line_naming_the_key(tmp_path):
    file = write_npz(tmp_path / "d.npz", low=0.0, high=2.0)
    proc = run_inprocess("dataset=tensors", f"dataset.path={file}", *TINY, "attack.eps=0.1", "eval.epsilons=[0,0.1]",
                         f"hydra.run.dir={tmp_path / 'run'}")
    lines = [line for line in proc.stderr.splitlines() if line.startswith("advrun: error")]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert ERROR_LINE.match(lines[0]).group(1) == "dataset.bounds"
    no_budget = run_inprocess("dataset=tensors", f"dataset.path={write_npz(tmp_path / 'e.npz')}", *TINY,
                              f"hydra.run.dir={tmp_path / 'run2'}")
    assert no_budget.returncode == 2 and "advrun: error: eval.epsilons: dataset tensors has no default budgets" \
        in no_budget.stderr, no_budget.stderr


def test_the_model_cache_knows_brought_data_by_its_content(tmp_path, images, make_cfg):
    from advrun.cache import training_key, training_spec

    def key(cfg):
        return training_key(training_spec(cfg, torch.device("cpu")))

    file = write_npz(tmp_path / "d.npz")
    tensors = make_cfg("dataset=tensors", f"dataset.path={file}")
    folder = make_cfg("dataset=folder", f"dataset.root={images}")
    before = key(tensors), key(folder)
    assert before == (key(tensors), key(folder))
    write_npz(file, k=2)  # the same path, other arrays
    (images / "dog" / "extra.png").write_bytes((images / "dog" / "0.png").read_bytes())
    assert key(tensors) != before[0] and key(folder) != before[1]
