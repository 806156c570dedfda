"""Datasets by name, loaded from local files into normalized float32 tensors on a device.

Pixel space (one per dataset, used by every method, model and synthetic set in ddnb):
pixels are first scaled to [0, 1] (x01 = uint8 / 255; digits: value / 16), then normalized per
channel as ``x = (x01 - mean) / std``.  ``Dataset.denormalize`` maps back to [0, 1] for display.

=============  ===========  =======  ============================  ============================
name           shape C,H,W  classes  mean                          std
=============  ===========  =======  ============================  ============================
digits         1, 8, 8      10       0.3054                        0.3762
fashion_mnist  1, 28, 28    10       0.2861                        0.3530
mnist          1, 28, 28    10       0.1307                        0.3081
cifar10        3, 32, 32    10       0.4914, 0.4822, 0.4465        0.2023, 0.1994, 0.2010
cifar100       3, 32, 32    100      0.5071, 0.4866, 0.4409        0.2673, 0.2564, 0.2762
svhn           3, 32, 32    10       0.4377, 0.4438, 0.4728        0.1980, 0.2010, 0.1970
tinyimagenet   3, 64, 64    200      0.485, 0.456, 0.406           0.229, 0.224, 0.225
=============  ===========  =======  ============================  ============================

The means/stds are those of the DC/DM reference code (VICO-UoE/DatasetCondensation).  Digits'
are the mean and (population) std of its train split, computed once and written here.

Digits is scikit-learn's ``load_digits`` (embedded, no download): 1797 images, split into a
fixed stratified test third (seed 0) -> 1198 train / 599 test.

Every other dataset is read from files, looked for under the ``root`` argument and then under
``$DDNB_DATA``, in the torchvision folder layout (``FashionMNIST/raw``, ``MNIST/raw``,
``cifar-10-batches-py``, ``cifar-100-python``, ``svhn`` or the folder itself for SVHN's
``{train,test}_32x32.mat``, ``tiny-imagenet-200``); Fashion-MNIST is also looked for in
``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist`` package).  A dataset
that is not found raises ``DatasetNotFoundError`` listing every place looked at and how to get it.
This module finds the files and builds the ``Dataset``; ``ddnb.loaders`` reads each file format.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ddnb.loaders import (DIGIT_CLASSES, FASHION_CLASSES, IDX_FILES, load_cifar10, load_cifar100, load_idx_folder,
                          load_svhn, load_tinyimagenet, missing_files, missing_idx)
from ddnb.settings import Float, Seed, require
from ddnb.utils import resolve_device, to_device

FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
DIGITS_TEST_FRACTION = 1 / 3
DIGITS_SPLIT_SEED = 0
_DIGITS_STATS = ((0.3054,), (0.3762,))  # (mean, std): digits is embedded, so it has no _SPECS entry
_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are in none of the places looked at; the message says how to get them."""


# --------------------------------------------------------------------------------------------
# The Dataset container
# --------------------------------------------------------------------------------------------

@dataclass(eq=False, repr=False)
class Dataset:
    """Train/test tensors of one dataset in its normalized pixel space, with class helpers."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    x_val: Tensor | None = None
    y_val: Tensor | None = None
    _class_indices: list[Tensor] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        """Check that images, labels and the per-channel statistics agree."""
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test),
                            ("val", self.x_val, self.y_val)):
            if x is None and y is None:
                continue
            if x is None or y is None or x.dim() != 4 or y.dim() != 1 or len(x) != len(y):
                raise ValueError(f"{split} split of {self.name!r} needs images (N,C,H,W) and labels (N,) "
                                 f"of the same N, got {_shape(x)} and {_shape(y)}")
        if not len(self.mean) == len(self.std) == self.x_train.shape[1]:
            raise ValueError(f"mean {self.mean} and std {self.std} need one value per channel "
                             f"({self.x_train.shape[1]} channels)")

    def __repr__(self) -> str:
        val = f", val={len(self.x_val)}" if self.x_val is not None else ""
        return (f"Dataset({self.name!r}, train={len(self.x_train)}{val}, test={len(self.x_test)}, "
                f"image_shape={self.image_shape}, classes={self.num_classes}, "
                f"device={self.x_train.device}, source={self.source!r})")

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.x_train.shape[1:]
        return (int(c), int(h), int(w))

    @property
    def channels(self) -> int:
        """Number of colour channels."""
        return self.image_shape[0]

    @property
    def image_size(self) -> int:
        """Image height (images are square in every ddnb dataset)."""
        return self.image_shape[1]

    def class_indices(self) -> list[Tensor]:
        """Per class, the ascending indices into x_train of its images (cached; for balanced sampling)."""
        if self._class_indices is None:
            order = torch.argsort(self.y_train, stable=True)
            counts = torch.bincount(self.y_train, minlength=self.num_classes).tolist()
            self._class_indices = list(torch.split(order, counts))
        return self._class_indices

    def real_by_class(self, c: int) -> Tensor:
        """All training images of class c."""
        return self.x_train[self.class_indices()[self._check_class(c)]]

    def sample_class(self, c: int, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n distinct random training images of class c (without replacement), drawn with `generator`."""
        idx = self.class_indices()[self._check_class(c)]
        if not isinstance(n, int) or not 0 <= n <= len(idx):
            raise ValueError(f"n={n!r} images of class {c} asked for; allowed: an int in 0..{len(idx)} "
                             f"(class {c} has {len(idx)} training images)")
        device = generator.device if generator is not None else torch.device("cpu")
        perm = torch.randperm(len(idx), generator=generator, device=device)[:n]
        return self.x_train[idx[to_device(perm, idx.device)]]

    def normalize(self, x01: Tensor) -> Tensor:
        """Map images with pixels in [0, 1] into this dataset's normalized pixel space."""
        mean, std = self._stats_like(x01)
        return (x01 - mean) / std

    def denormalize(self, x: Tensor) -> Tensor:
        """Map normalized images back to pixels in [0, 1] (clamped), e.g. for display."""
        mean, std = self._stats_like(x)
        return (x * std + mean).clamp(0.0, 1.0)

    def to(self, device: str | torch.device | None) -> Dataset:
        """This dataset with every tensor on `device` (None: ddnb's default): self if already there, else a copy."""
        dev = resolve_device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())  # tensors on "cuda" report "cuda:N"
        tensors = (self.x_train, self.y_train, self.x_test, self.y_test, self.x_val, self.y_val)
        if all(t is None or t.device == dev for t in tensors):
            return self
        move = (lambda t: None if t is None else t.to(dev))
        return dataclasses.replace(self, x_train=move(self.x_train), y_train=move(self.y_train),
                                   x_test=move(self.x_test), y_test=move(self.y_test),
                                   x_val=move(self.x_val), y_val=move(self.y_val))

    def subset(self, indices: Tensor | np.ndarray | Sequence[int]) -> Dataset:
        """This dataset with its training split restricted to x_train[indices] (test, val and the rest kept)."""
        idx = torch.as_tensor(indices)
        idx = idx.long() if idx.numel() == 0 else idx
        n = len(self.x_train)
        if idx.dim() != 1 or idx.dtype not in _INT_DTYPES or (len(idx) and not 0 <= idx.min() <= idx.max() < n):
            raise ValueError(f"subset indices must be a 1-D sequence of ints in 0..{n - 1} (the training images of "
                             f"{self.name!r}), got {_describe(idx)}")
        idx = idx.to(device=self.x_train.device, dtype=torch.long)
        return dataclasses.replace(self, x_train=self.x_train[idx], y_train=self.y_train[idx])

    def _check_class(self, c: int) -> int:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < self.num_classes:
            raise ValueError(f"class {c!r} does not exist; allowed: an int in 0..{self.num_classes - 1}")
        return int(c)

    def _stats_like(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() < 3 or x.shape[-3] != self.channels:
            raise ValueError(f"images of shape {tuple(x.shape)} do not fit {self.name!r}; "
                             f"allowed: (..., {self.channels}, H, W)")
        shape = (self.channels, 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return mean, std


def _shape(t: Tensor | None) -> str:
    return "None" if t is None else str(tuple(t.shape))


def _describe(idx: Tensor) -> str:
    """Dtype, shape and (for 1-D integer indices) range of an index tensor, for error messages."""
    text = f"{idx.dtype} of shape {tuple(idx.shape)}"
    if idx.dim() == 1 and idx.dtype in _INT_DTYPES:
        text += f" ranging over {int(idx.min())}..{int(idx.max())}"
    return text


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------

def load_dataset(name: str, root: str | os.PathLike | None = None, device: str | torch.device | None = None,
                 val_fraction: float = 0.0, seed: int = 0) -> Dataset:
    """Load a dataset by name, normalized, on `device`; optionally carve a stratified validation split."""
    key = canonical_name(name)
    require("val_fraction", val_fraction, Float(0, 1, high_open=True))
    require("seed", seed, Seed())
    check_root(root)
    resolve_device(device)
    data = _load_digits() if key == "digits" else _load_from_disk(key, root)
    if val_fraction > 0:
        data = _with_validation(data, val_fraction, seed)
    return data.to(device)


def list_datasets(root: str | os.PathLike | None = None) -> list[dict]:
    """Every known dataset, whether it is available, where it was found and every place looked at."""
    check_root(root)
    rows = [{"name": "digits", "available": True, "path": "sklearn",
             "places": ["sklearn.datasets.load_digits (embedded)"]}]
    for key in DATASET_NAMES[1:]:
        found, places = _locate(key, root)
        rows.append({"name": key, "available": found is not None,
                     "path": None if found is None else str(found), "places": [str(p.path) for p in places]})
    return rows


def check_root(root: str | os.PathLike | None) -> None:
    """ValueError unless `root` is None or a folder path (one that does not exist yet is listed where a
    dataset is not found); a file is not a folder."""
    if root is None:
        return
    if not isinstance(root, (str, os.PathLike)):
        raise ValueError(f"root must be a folder path, got {type(root).__name__} {root!r}")
    if Path(root).expanduser().exists() and not Path(root).expanduser().is_dir():
        raise ValueError(f"root {str(root)!r} is a file; give the folder to look for datasets in")


def require_dataset(value: object, name: str = "dataset") -> Dataset:
    """`value` when it is a loaded Dataset, else ValueError naming what was given and how to get one."""
    if not isinstance(value, Dataset):
        shown = repr(value) if isinstance(value, (str, int, float, type(None))) else type(value).__name__
        raise ValueError(f"{name} must be a ddnb Dataset (e.g. ddnb.load_dataset('digits')), got {shown}")
    return value


def canonical_name(name: str) -> str:
    """The registry name of a dataset ('Fashion-MNIST' -> 'fashion_mnist'); ValueError for unknown names."""
    key = name.strip().lower().replace("-", "_") if isinstance(name, str) else None
    if key not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASET_NAMES)}")
    return key


def stratified_split(labels: Tensor | np.ndarray, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Split indices into (kept, held_out), holding out round(fraction*n_c) of each class, by seed."""
    y = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels)
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction={fraction!r}; allowed: a number in [0, 1)")
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        held.append(idx[:min(int(round(len(idx) * fraction)), len(idx) - 1)])
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    kept_idx = np.setdiff1d(np.arange(len(y)), held_idx)
    return torch.from_numpy(kept_idx.astype(np.int64)), torch.from_numpy(held_idx.astype(np.int64))


def _with_validation(data: Dataset, fraction: float, seed: int) -> Dataset:
    """Move a stratified `fraction` of train (chosen by seed) into x_val / y_val."""
    kept, held = stratified_split(data.y_train, fraction, seed)
    return dataclasses.replace(data.subset(kept), x_val=data.x_train[held], y_val=data.y_train[held])


# --------------------------------------------------------------------------------------------
# Where the files are
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Place:
    path: Path
    origin: str   # "root", "$DDNB_DATA" or "system"


@dataclass(frozen=True)
class _Spec:
    mean: tuple[float, ...]
    std: tuple[float, ...]
    subdirs: tuple[str, ...]             # where under a base folder the files may lie ("." = the base)
    missing: Callable[[Path], list[str]]  # names of required files absent from a folder
    load: Callable[[Path], tuple]         # folder -> (x_train u8 NCHW, y_train, x_test, y_test, classes)
    how_to_get: str
    system_dirs: tuple[str, ...] = ()


def _bases(root: str | os.PathLike | None) -> list[_Place]:
    """The base folders to look under: the root argument, then $DDNB_DATA."""
    bases = []
    if root is not None:
        bases.append(_Place(Path(root).expanduser(), "root"))
    env = os.environ.get("DDNB_DATA", "").strip()
    if env:
        bases.append(_Place(Path(env).expanduser(), "$DDNB_DATA"))
    return bases


def _candidates(key: str, root: str | os.PathLike | None) -> list[_Place]:
    spec = _SPECS[key]
    places = [_Place((b.path / sub) if sub != "." else b.path, b.origin) for b in _bases(root) for sub in spec.subdirs]
    return places + [_Place(Path(d), "system") for d in spec.system_dirs]


def _locate(key: str, root: str | os.PathLike | None) -> tuple[Path | None, list[_Place]]:
    """The first candidate folder holding every required file, and all candidates looked at."""
    places = _candidates(key, root)
    found = next((p.path for p in places if p.path.is_dir() and not _SPECS[key].missing(p.path)), None)
    return found, places


def _not_found_message(key: str, places: list[_Place]) -> str:
    lines = [f"dataset {key!r} was not found. Places looked at:"]
    for p in places:
        state = ("does not exist" if not p.path.is_dir()
                 else "missing " + ", ".join(_SPECS[key].missing(p.path)))
        lines.append(f"  - {p.path}  [{p.origin}]: {state}")
    if not any(p.origin != "system" for p in places):
        lines.append("  (no root argument was given and $DDNB_DATA is not set)")
    lines.append("How to get it:")
    lines.append(_SPECS[key].how_to_get)
    lines.append("Then call load_dataset(name, root=ROOT) or set the environment variable DDNB_DATA=ROOT.")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Loading and normalizing
# --------------------------------------------------------------------------------------------

def _load_from_disk(key: str, root: str | os.PathLike | None) -> Dataset:
    found, places = _locate(key, root)
    if found is None:
        raise DatasetNotFoundError(_not_found_message(key, places))
    spec = _SPECS[key]
    x_train, y_train, x_test, y_test, classes = spec.load(found)
    for split, y in (("train", y_train), ("test", y_test)):
        _check_labels(y, len(classes), f"{key} {split} labels in {found}")
    return _make_dataset(key, x_train, y_train, x_test, y_test, classes, 255.0, str(found))


def _make_dataset(key: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                  y_test: np.ndarray, classes: list[str], scale: float, source: str) -> Dataset:
    spec_mean, spec_std = _STATS[key]
    return Dataset(name=key, x_train=_normalize(x_train, scale, spec_mean, spec_std),
                   y_train=torch.from_numpy(np.array(y_train, dtype=np.int64)),
                   x_test=_normalize(x_test, scale, spec_mean, spec_std),
                   y_test=torch.from_numpy(np.array(y_test, dtype=np.int64)),
                   classes=list(classes), mean=spec_mean, std=spec_std, source=source)


def _normalize(images: np.ndarray, scale: float, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """(N,C,H,W) raw pixels -> float32 contiguous (x/scale - mean)/std per channel."""
    x = torch.from_numpy(np.array(images, dtype=np.float32, order="C"))
    shape = (1, len(mean), 1, 1)
    x.div_(scale).sub_(torch.tensor(mean).view(shape)).div_(torch.tensor(std).view(shape))
    return x


def _check_labels(y: np.ndarray, num_classes: int, where: str) -> None:
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{where}: labels range over {int(y.min())}..{int(y.max())}, "
                         f"allowed: 0..{num_classes - 1}; the file is corrupted or of another dataset")


def _load_digits() -> Dataset:
    """scikit-learn's 8x8 digits, with the fixed stratified test third."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = digits.images[:, None, :, :]
    train, test = stratified_split(digits.target, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    return _make_dataset("digits", x[train.numpy()], digits.target[train.numpy()], x[test.numpy()],
                         digits.target[test.numpy()], DIGIT_CLASSES, 16.0, "sklearn")


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

def _torchvision_hint(cls: str, writes: str, extra: str = "") -> str:
    return (f"  - online, with torchvision: python -c \"import torchvision; "
            f"torchvision.datasets.{cls}('ROOT', {extra}download=True)\"\n"
            f"    which writes {writes}")


_SPECS: dict[str, _Spec] = {
    "fashion_mnist": _Spec(
        (0.2861,), (0.3530,), ("FashionMNIST/raw", "fashion-mnist", "fashion_mnist"),
        partial(missing_idx, IDX_FILES), partial(load_idx_folder, FASHION_CLASSES),
        "  - on Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist  (installs "
        f"{FASHION_MNIST_SYSTEM_DIR})\n"
        + _torchvision_hint("FashionMNIST", "ROOT/FashionMNIST/raw/train-images-idx3-ubyte.gz etc.")
        + "\n  - or put the four IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,"
          " t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz; .gz optional) in ROOT/FashionMNIST/raw",
        system_dirs=(FASHION_MNIST_SYSTEM_DIR,)),
    "mnist": _Spec(
        (0.1307,), (0.3081,), ("MNIST/raw", "mnist"),
        partial(missing_idx, IDX_FILES), partial(load_idx_folder, DIGIT_CLASSES),
        _torchvision_hint("MNIST", "ROOT/MNIST/raw/train-images-idx3-ubyte.gz etc.")
        + "\n  - or put the four IDX files (train-images-idx3-ubyte.gz, ..., t10k-labels-idx1-ubyte.gz;"
          " .gz optional) in ROOT/MNIST/raw"),
    "cifar10": _Spec(
        (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), ("cifar-10-batches-py",),
        partial(missing_files, tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")),
        load_cifar10,
        _torchvision_hint("CIFAR10", "ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}")),
    "cifar100": _Spec(
        (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762), ("cifar-100-python",),
        partial(missing_files, ("train", "test", "meta")), load_cifar100,
        _torchvision_hint("CIFAR100", "ROOT/cifar-100-python/{train, test, meta}")),
    "svhn": _Spec(
        (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), ("svhn", "SVHN", "."),
        partial(missing_files, ("train_32x32.mat", "test_32x32.mat")), load_svhn,
        _torchvision_hint("SVHN", "ROOT/train_32x32.mat", "split='train', ")
        + "\n    (and again with split='test' for ROOT/test_32x32.mat); ROOT/svhn/ is looked in too"),
    "tinyimagenet": _Spec(
        (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), ("tiny-imagenet-200",),
        partial(missing_files, ("train", "val")), load_tinyimagenet,
        "  - download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it in ROOT, giving\n"
        "    ROOT/tiny-imagenet-200/train/<wnid>/images/*.JPEG and ROOT/tiny-imagenet-200/val/ with\n"
        "    val_annotations.txt + images/ (or val/<wnid>/ folders)"),
}

DATASET_NAMES: tuple[str, ...] = ("digits", *_SPECS)

_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "digits": _DIGITS_STATS, **{key: (spec.mean, spec.std) for key, spec in _SPECS.items()},
}
