"""Data sets as in-memory tensors with their bounds, input shape and class names.

Every loader returns inputs scaled to [0, 1]; normalisation, if any, is a layer inside
the model, so attacks always see (and perturb) the data in its natural bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from advrun.errors import Check, DataError, Number, Switch, check_fields, keyed, shown


@dataclass
class Dataset:
    """Train and test tensors (``x``: float32 in ``bounds``, ``y``: int64 labels 0..K-1)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    class_names: list[str]
    bounds: tuple[float, float] = (0.0, 1.0)
    budgets: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. ``(1, 28, 28)`` or ``(2,)``."""
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to(self, device: torch.device | str) -> "Dataset":
        for name in ("x_train", "y_train", "x_test", "y_test"):
            setattr(self, name, getattr(self, name).to(device))
        return self


#: The keys of a ``dataset`` config and the values they take; a loader's keys are checked
#: where the config sets them (the loader's defaults hold otherwise).
FIELDS: dict[str, Check] = {
    "split_seed": Number(0, 2**32 - 1, integer=True, what=f"an integer in [0, {2**32 - 1}]"),
    "n_train": Number(1, integer=True, optional=True, what="a positive integer or null"),
    "n_test": Number(1, integer=True, optional=True, what="a positive integer or null"),
    "test_fraction": Number(0, 1, low_open=True, high_open=True, what="a number strictly between 0 and 1"),
    "n_samples": Number(10, integer=True),
    "noise": Number(0, math.inf, high_open=True),
    "download": Switch(),
}


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int):
    """A stratified split; both sides must hold each class, which bounds ``test_fraction`` by
    the data set's size ``n`` and its ``k`` classes to ``((k - 1) / n, (n - k) / n]``."""
    from sklearn.model_selection import train_test_split

    FIELDS["test_fraction"].check("dataset.test_fraction", test_fraction)
    n, k = len(y), len(np.unique(y))
    n_test = math.ceil(test_fraction * n)
    if not k <= n_test <= n - k:
        raise DataError("dataset.test_fraction", f"{test_fraction:g} of {n} samples leaves {n_test} for testing and "
                                                 f"{n - n_test} for training; each side needs all {k} classes: "
                                                 f"choose a value in ({(k - 1) / n:.4g}, {(n - k) / n:.4g}]")
    return train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)


def load_digits(test_fraction: float = 0.25, split_seed: int = 0):
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images), pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = _split(x, y, test_fraction, split_seed)
    return x_tr, y_tr, x_te, y_te, [str(c) for c in range(10)]


def load_moons(n_samples: int = 1000, noise: float = 0.1, test_fraction: float = 0.25, split_seed: int = 0):
    """Two interleaving half-moons in 2-D, rescaled into [0.05, 0.95]^2 (decision-boundary pictures)."""
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=n_samples, noise=noise, random_state=split_seed)
    x = (x - x.min(axis=0)) / (x.max(axis=0) - x.min(axis=0)) * 0.9 + 0.05
    x_tr, x_te, y_tr, y_te = _split(x.astype(np.float32), y.astype(np.int64), test_fraction, split_seed)
    return x_tr, y_tr, x_te, y_te, ["0", "1"]


def _torchvision(cls_name: str, folder: str, expected: str, root: str, download: bool):
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    root_path = Path(root).expanduser()
    try:
        train = cls(str(root_path), train=True, download=download)
        test = cls(str(root_path), train=False, download=download)
    except RuntimeError as e:
        if download:
            raise DataError("dataset.download", f"could not download {cls_name} into {root_path}: {e}") from None
        raise DataError(
            "dataset.root",
            f"{cls_name} files not found: expected {expected} under {root_path / folder}; "
            "set dataset.root to the folder that holds them, or dataset.download=true",
        ) from None
    return train, test


def _as_numpy(data: Any) -> np.ndarray:
    return data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)


def _mnist_like(cls_name: str, root: str, download: bool):
    train, test = _torchvision(
        cls_name, f"{cls_name}/raw", "train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte", root, download
    )

    def arrays(ds):
        x = _as_numpy(ds.data).astype(np.float32)[:, None, :, :] / 255.0
        return x, _as_numpy(ds.targets).astype(np.int64)

    return (*arrays(train), *arrays(test), [str(c) for c in train.classes])


def load_mnist(root: str = "data", download: bool = False):
    """MNIST in torchvision's layout (``root/MNIST/raw``), 28x28 grey images in [0, 1]."""
    return _mnist_like("MNIST", root, download)


def load_fashion_mnist(root: str = "data", download: bool = False):
    """Fashion-MNIST in torchvision's layout (``root/FashionMNIST/raw``)."""
    return _mnist_like("FashionMNIST", root, download)


def load_cifar10(root: str = "data", download: bool = False):
    """CIFAR-10 in torchvision's layout (``root/cifar-10-batches-py``), 3x32x32 in [0, 1]."""
    train, test = _torchvision("CIFAR10", "cifar-10-batches-py", "data_batch_1..5 and test_batch", root, download)

    def arrays(ds):
        x = np.asarray(ds.data, dtype=np.float32).transpose(0, 3, 1, 2) / 255.0
        return x, np.asarray(ds.targets, dtype=np.int64)

    return (*arrays(train), *arrays(test), list(train.classes))


#: Image files ``dataset=folder`` reads (torchvision's ImageFolder extensions); others are skipped.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _image_size(size: Any) -> tuple[int, int]:
    """``size``: one integer (square images) or ``[height, width]``, each >= 1."""
    sides = list(size) if isinstance(size, (list, tuple)) else [size, size]
    if len(sides) != 2 or not all(Number(1, 4096, integer=True).holds(side) for side in sides):
        raise DataError("dataset.size", f"must be an integer in [1, 4096] or [height, width], got {shown(size)}")
    return int(sides[0]), int(sides[1])


def _existing(path: str, key: str, folder: bool) -> Path:
    """The folder (or regular file) ``path`` names; otherwise one error naming ``key``."""
    where = Path(path).expanduser()
    try:
        exists, right = where.exists(), where.is_dir() if folder else where.is_file()
    except OSError as e:  # a name too long, a folder that cannot be searched
        raise DataError(key, f"{path} cannot be opened ({e.strerror or type(e).__name__})") from None
    if not exists:
        raise DataError(key, f"{where} does not exist")
    if not right:
        raise DataError(key, f"{where} is not a folder" if folder else f"{where} is not a regular file")
    return where


def load_folder(root: Any = None, size: Any = 32, channels: int = 3, test_fraction: float = 0.25,
                split_seed: int = 0):
    """Images in torchvision's ImageFolder layout, ``root/<class name>/<image>``: class names
    from the folder names (sorted, labels 0..K-1 in that order), each image converted to
    ``channels`` (1: grey, 3: RGB), resized to ``size`` (bilinear, aspect ratio not kept) and
    scaled to [0, 1]; a stratified train/test split seeded by ``split_seed``."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(root, str) or not root:
        raise DataError("dataset.root", f"must name a folder of class folders of images, got {shown(root)}")
    if not (isinstance(channels, int) and not isinstance(channels, bool) and channels in (1, 3)):
        raise DataError("dataset.channels", f"must be 1 (grey) or 3 (RGB), got {shown(channels)}")
    height, width = _image_size(size)
    folder = _existing(root, "dataset.root", folder=True)
    classes = sorted(entry.name for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    files = {c: sorted(f for f in (folder / c).rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
             for c in classes}
    empty = [c for c in classes if not files[c]]
    if len(classes) < 2 or empty:
        found = f"class folders without images: {', '.join(empty[:5])}" if empty else \
            f"{len(classes)} class folder{'s' * (len(classes) != 1)}"
        raise DataError("dataset.root", f"{folder} needs at least two class folders, each holding images "
                                        f"({', '.join(IMAGE_EXTENSIONS)}); found {found}")
    mode = "L" if channels == 1 else "RGB"
    images, labels = [], []
    for label, c in enumerate(classes):
        for file in files[c]:
            try:
                with Image.open(file) as image:
                    pixels = np.asarray(image.convert(mode).resize((width, height), Image.BILINEAR), dtype=np.float32)
            except (UnidentifiedImageError, OSError) as e:
                raise DataError("dataset.root", f"{file} cannot be read as an image ({type(e).__name__})") from None
            images.append(pixels.reshape(height, width, channels).transpose(2, 0, 1) / 255.0)
            labels.append(label)
    x, y = np.stack(images), np.asarray(labels, dtype=np.int64)
    x_tr, x_te, y_tr, y_te = _split(x, y, test_fraction, split_seed)
    return x_tr, y_tr, x_te, y_te, classes


TENSOR_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def _bounds(bounds: Any) -> tuple[float, float]:
    if not (isinstance(bounds, (list, tuple)) and len(bounds) == 2
            and all(Number(-LARGEST_BOUND, LARGEST_BOUND).holds(b) for b in bounds) and bounds[0] < bounds[1]):
        raise DataError("dataset.bounds", f"must be [low, high], two finite numbers with low < high, got {shown(bounds)}")
    return float(bounds[0]), float(bounds[1])


LARGEST_BOUND = 1e6


def load_tensors(path: Any = None, bounds: Any = (0.0, 1.0)):
    """Arrays in a NumPy ``.npz`` file (``numpy.savez``): ``x_train``, ``y_train``, ``x_test``,
    ``y_test``, and optionally ``class_names`` (strings); read with ``allow_pickle=False``.
    Inputs ``(n, features)`` or ``(n, channels, height, width)``, numbers within ``bounds``;
    labels integers 0..K-1. Returns the arrays, the class names and the bounds."""
    low, high = _bounds(bounds)
    if not isinstance(path, str) or not path:
        raise DataError("dataset.path", f"must name a .npz file holding {', '.join(TENSOR_ARRAYS)}, got {shown(path)}")
    file = _existing(path, "dataset.path", folder=False)
    try:
        archive = np.load(file, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - not a NumPy file at all
        raise DataError("dataset.path", f"{file} is not a .npz file NumPy can read ({type(e).__name__})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError("dataset.path", f"{file} holds one array (numpy.save); save the four arrays "
                                        f"{', '.join(TENSOR_ARRAYS)} with numpy.savez")
    with archive:
        missing = [name for name in TENSOR_ARRAYS if name not in archive.files]
        if missing:
            raise DataError("dataset.path", f"{file} lacks {', '.join(missing)}; it needs the arrays "
                                            f"{', '.join(TENSOR_ARRAYS)} (it holds {', '.join(archive.files) or 'none'})")
        arrays = {}
        for name in [*TENSOR_ARRAYS, *(["class_names"] if "class_names" in archive.files else [])]:
            try:
                arrays[name] = archive[name]
            except Exception as e:  # noqa: BLE001 - object arrays need pickle, which is refused
                raise DataError("dataset.path", f"{file}: {name} cannot be read without unpickling (an object array?);"
                                                f" save numbers ({type(e).__name__})") from None
    return checked_arrays(arrays, (low, high), "dataset.path", str(file))


def checked_arrays(arrays: dict[str, Any], bounds: tuple[float, float], key: str, source: str) -> tuple:
    """The data set in ``arrays`` (``x_train``, ``y_train``, ``x_test``, ``y_test``, optionally
    ``class_names``) checked as :func:`load_dataset` needs it: inputs ``(n, features)`` or ``(n,
    channels, height, width)`` of finite numbers within ``bounds``, labels integers 0..K-1 with
    every class in the training set. A problem is a :class:`DataError` naming ``key`` and
    ``source``. Returns the arrays (float32 inputs, int64 labels), the class names and the bounds."""
    low, high = bounds
    arrays = {name: np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value)
              for name, value in arrays.items()}
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if x.dtype.kind not in "biuf" or x.ndim not in (2, 4) or not len(x):
            raise DataError(key, f"{source}: x_{part} must be a non-empty array of numbers of shape (n, features) "
                         f"or (n, channels, height, width), got {x.dtype} {x.shape}")
        if y.dtype.kind not in "iu" or y.shape != (len(x),):
            raise DataError(key, f"{source}: y_{part} must hold one integer label per row of x_{part} "
                         f"(shape ({len(x)},)), got {y.dtype} {y.shape}")
        if not np.isfinite(x).all():
            raise DataError(key, f"{source}: x_{part} holds NaN or infinite values")
        if x.min() < low or x.max() > high:
            raise DataError("dataset.bounds", f"x_{part} in {source} holds values in [{x.min():g}, {x.max():g}], "
                                              f"outside the stated bounds [{low:g}, {high:g}]")
    if arrays["x_test"].shape[1:] != arrays["x_train"].shape[1:]:
        raise DataError(key, f"{source}: x_test's inputs have shape {arrays['x_test'].shape[1:]}, "
                         f"x_train's {arrays['x_train'].shape[1:]}")
    k = int(max(arrays["y_train"].max(), arrays["y_test"].max())) + 1
    for name in ("y_train", "y_test"):
        if arrays[name].min() < 0:
            raise DataError(key, f"{source}: {name} holds the label {arrays[name].min()}; labels are 0..K-1")
    absent = sorted(set(range(k)) - set(arrays["y_train"].tolist()))
    if k < 2 or absent:
        raise DataError(key, f"{source}: y_train must hold every label 0..K-1 (at least two classes); "
                         + (f"{k - 1} is the only one" if k < 2 else f"missing: {_listed(absent)}"))
    names = [str(c) for c in range(k)]
    if "class_names" in arrays:
        given = arrays["class_names"]
        if given.dtype.kind != "U" or given.shape != (k,):
            raise DataError(key, f"{source}: class_names must be {k} strings, one per label, got "
                         f"{given.dtype} {given.shape}")
        names = [str(c) for c in given]
    return (arrays["x_train"].astype(np.float32), arrays["y_train"].astype(np.int64),
            arrays["x_test"].astype(np.float32), arrays["y_test"].astype(np.int64), names, (low, high))


def _listed(items: list) -> str:
    return f"{', '.join(map(str, items[:6]))}{', ...' if len(items) > 6 else ''}"


LOADERS: dict[str, Callable[..., tuple]] = {
    "digits": load_digits,
    "moons": load_moons,
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "folder": load_folder,
    "tensors": load_tensors,
}

#: Keys every dataset config has, handled here rather than by the loader.
COMMON_KEYS = ("name", "classes", "n_train", "n_test", "budgets", "split_seed")


def _keep_classes(x, y, classes, all_names):
    if classes is None:
        return x, y, all_names
    classes = list(classes)
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise DataError("dataset.classes", f"needs at least two distinct classes, got {classes}")
    for c in classes:
        if not Number(0, len(all_names) - 1, integer=True).holds(c):
            raise DataError("dataset.classes", f"{shown(c)} is not a class label (0..{len(all_names) - 1})")
    keep = np.isin(y, classes)
    relabel = np.zeros(len(all_names), dtype=np.int64)
    relabel[classes] = np.arange(len(classes))
    return x[keep], relabel[y[keep]], [all_names[c] for c in classes]


def _limit(x, y, n, seed):
    if n is None or n >= len(x):
        return x, y
    index = np.random.default_rng(seed).permutation(len(x))[:n]
    return x[index], y[index]


def load_dataset(cfg: Any) -> Dataset:
    """Load the data set a ``dataset`` config group describes: one of advrun's (``name``) or one of
    one's own (``_target_``, see :func:`_user_arrays`)."""
    cfg = dict(cfg)
    name = cfg.get("name")
    if not cfg.get("_target_") and name not in LOADERS:
        raise DataError("dataset.name", f"unknown data set {shown(name)}; choose one of {sorted(LOADERS)} "
                                        "(or name a function of your own with _target_)")
    with keyed("dataset", error=DataError):
        check_fields(cfg, {key: check for key, check in FIELDS.items() if key in cfg})
    if cfg.get("_target_"):
        return _finish(cfg, name or str(cfg["_target_"]), *_user_arrays(cfg))
    options = {k: v for k, v in cfg.items() if k not in COMMON_KEYS}
    seed = cfg.get("split_seed", 0)
    if name in ("digits", "moons", "folder"):
        options["split_seed"] = seed
    try:
        loaded = LOADERS[name](**options)
    except TypeError as e:
        raise DataError("dataset", str(e)) from None
    return _finish(cfg, name, *loaded)


def _user_arrays(cfg: dict[str, Any]) -> tuple:
    """A data set of one's own: ``_target_`` names a callable (a function or a class) that the keys
    of the node other than advrun's (:data:`COMMON_KEYS`, ``bounds``) are passed to and that returns
    ``(x_train, y_train, x_test, y_test)`` or that and the class names (arrays or tensors), inputs
    within ``bounds`` (default ``[0, 1]``); checked as ``dataset=tensors`` checks its file."""
    from omegaconf import OmegaConf

    from advrun.config import build

    bounds = _bounds(cfg.get("bounds", (0.0, 1.0)))
    node = OmegaConf.create({k: v for k, v in cfg.items() if k not in (*COMMON_KEYS, "bounds")})
    returned = build(node, "dataset")
    if not isinstance(returned, (tuple, list)) or len(returned) not in (4, 5):
        raise DataError("dataset._target_", f"{cfg['_target_']} must return (x_train, y_train, x_test, y_test) or "
                                            f"that and the class names, got {type(returned).__name__}")
    arrays = dict(zip(TENSOR_ARRAYS, returned[:4]))
    if len(returned) == 5:
        arrays["class_names"] = np.asarray([str(c) for c in returned[4]])
    return checked_arrays(arrays, bounds, "dataset._target_", str(cfg["_target_"]))


def _finish(cfg: dict[str, Any], name: str, x_tr, y_tr, x_te, y_te, names, *bounds) -> Dataset:
    """The loaded arrays as a :class:`Dataset`, with ``classes``, ``n_train`` and ``n_test`` applied."""
    seed = cfg.get("split_seed", 0)
    classes = cfg.get("classes")
    x_tr, y_tr, names_kept = _keep_classes(x_tr, y_tr, classes, names)
    x_te, y_te, _ = _keep_classes(x_te, y_te, classes, names)
    n_train = cfg.get("n_train")
    if n_train is not None and n_train < len(names_kept):
        raise DataError("dataset.n_train", f"{n_train} cannot hold a training sample of each of the {len(names_kept)} "
                                           f"classes; use at least {len(names_kept)} (null: all)")
    x_tr, y_tr = _limit(x_tr, y_tr, n_train, seed)
    x_te, y_te = _limit(x_te, y_te, cfg.get("n_test"), seed + 1)
    return Dataset(
        name=name,
        x_train=torch.from_numpy(np.ascontiguousarray(x_tr)),
        y_train=torch.from_numpy(np.ascontiguousarray(y_tr)),
        x_test=torch.from_numpy(np.ascontiguousarray(x_te)),
        y_test=torch.from_numpy(np.ascontiguousarray(y_te)),
        class_names=names_kept,
        bounds=bounds[0] if bounds else (0.0, 1.0),  # a loader may state them (dataset=tensors)
        budgets=dict(cfg.get("budgets") or {}),
    )
