"""Data sets: bounds, shapes, splits, class selection, limits and missing files."""

import pytest
import torch

from advrun.data import load_dataset
from advrun.errors import DataError
from tests.fake_data import write_mnist_like

DIGITS = {"name": "digits", "test_fraction": 0.25, "split_seed": 0}


def test_digits_are_in_bounds_with_a_fixed_split():
    a = load_dataset(DIGITS)
    b = load_dataset(DIGITS)
    assert a.shape == (1, 8, 8) and a.num_classes == 10 and a.bounds == (0.0, 1.0)
    assert len(a.x_train) + len(a.x_test) == 1797 and len(a.x_test) == 450
    assert a.x_train.min() >= 0 and a.x_train.max() <= 1 and a.x_train.dtype == torch.float32
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)
    # stratified: every class is in the test set in about its share
    assert torch.bincount(a.y_test).min() >= 40


def test_classes_are_kept_and_relabelled_in_order():
    data = load_dataset({**DIGITS, "classes": [7, 1]})
    assert data.class_names == ["7", "1"] and data.num_classes == 2
    assert set(data.y_train.tolist()) == {0, 1}
    full = load_dataset(DIGITS)
    sevens = full.x_train[full.y_train == 7]
    assert len(data.x_train[data.y_train == 0]) == len(sevens)


@pytest.mark.parametrize("classes, match", [([3], "at least two"), ([1, 1], "at least two"), ([0, 10], "not a class")])
def test_bad_class_lists_are_errors(classes, match):
    with pytest.raises(DataError, match=match) as info:
        load_dataset({**DIGITS, "classes": classes})
    assert info.value.key == "dataset.classes"


def test_n_train_and_n_test_limit_the_sets():
    data = load_dataset({**DIGITS, "n_train": 100, "n_test": 30})
    assert (len(data.x_train), len(data.x_test)) == (100, 30)
    with pytest.raises(DataError) as info:
        load_dataset({**DIGITS, "n_train": 0})
    assert info.value.key == "dataset.n_train"


def test_moons_are_two_dimensional_in_bounds():
    data = load_dataset({"name": "moons", "n_samples": 200, "noise": 0.1, "test_fraction": 0.25})
    assert data.shape == (2,) and data.num_classes == 2
    assert data.x_train.min() >= 0.04 and data.x_train.max() <= 0.96


def test_missing_mnist_files_name_the_root(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset({"name": "mnist", "root": str(tmp_path / "nowhere"), "download": False})
    assert info.value.key == "dataset.root"
    assert "nowhere/MNIST/raw" in info.value.message and "train-images-idx3-ubyte" in info.value.message


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_layouts_load_from_disk(tmp_path, name, folder):
    write_mnist_like(tmp_path, folder, n_train=50, n_test=20)
    data = load_dataset({"name": name, "root": str(tmp_path), "download": False, "classes": [0, 1, 2]})
    assert data.shape == (1, 28, 28) and data.num_classes == 3
    assert data.x_train.max() <= 1.0 and data.x_train.max() > 0.9
    assert len(data.x_test) == 6  # 20 test images, labels cycling 0..9


def test_cifar10_arrays_are_channels_first_in_bounds(fake_cifar10):
    data = load_dataset({"name": "cifar10", "root": "unused", "download": False})
    assert data.shape == (3, 32, 32) and data.num_classes == 10
    assert torch.equal(data.x_train[0, 0], torch.ones(32, 32)) and torch.equal(data.x_train[0, 1], torch.zeros(32, 32))


def test_missing_cifar10_files_name_the_root(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset({"name": "cifar10", "root": str(tmp_path), "download": False})
    assert info.value.key == "dataset.root" and "cifar-10-batches-py" in info.value.message


def test_real_mnist_from_shared_data(shared_data):
    data = load_dataset({"name": "mnist", "root": str(shared_data), "download": False})
    assert (len(data.x_train), len(data.x_test)) == (5000, 10000)
    assert data.shape == (1, 28, 28) and data.x_test.min() == 0 and data.x_test.max() == 1
    assert torch.bincount(data.y_test).tolist()[:3] == [980, 1135, 1032]  # the official t10k counts
