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
"""
from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import struct
import zlib
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ddnb.utils import resolve_device

DATASET_NAMES = ("digits", "fashion_mnist", "mnist", "cifar10", "cifar100", "svhn", "tinyimagenet")

FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
DIGITS_TEST_FRACTION = 1 / 3
DIGITS_SPLIT_SEED = 0

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DIGIT_CLASSES = [str(d) for d in range(10)]


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
        return self.x_train[idx[perm.to(idx.device)]]

    def normalize(self, x01: Tensor) -> Tensor:
        """Map images with pixels in [0, 1] into this dataset's normalized pixel space."""
        mean, std = self._stats_like(x01)
        return (x01 - mean) / std

    def denormalize(self, x: Tensor) -> Tensor:
        """Map normalized images back to pixels in [0, 1] (clamped), e.g. for display."""
        mean, std = self._stats_like(x)
        return (x * std + mean).clamp(0.0, 1.0)

    def to(self, device: str | torch.device | None) -> Dataset:
        """A copy of this dataset with every tensor on `device` (None: ddnb's default device)."""
        dev = resolve_device(device)
        move = (lambda t: None if t is None else t.to(dev))
        return dataclasses.replace(self, x_train=move(self.x_train), y_train=move(self.y_train),
                                   x_test=move(self.x_test), y_test=move(self.y_test),
                                   x_val=move(self.x_val), y_val=move(self.y_val))

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


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------

def load_dataset(name: str, root: str | os.PathLike | None = None, device: str | torch.device | None = None,
                 val_fraction: float = 0.0, seed: int = 0) -> Dataset:
    """Load a dataset by name, normalized, on `device`; optionally carve a stratified validation split."""
    key = canonical_name(name)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction!r}; allowed: a number in [0, 1)")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r}; allowed: a non-negative int")
    data = _load_digits() if key == "digits" else _load_from_disk(key, root)
    if val_fraction > 0:
        data = _with_validation(data, val_fraction, seed)
    return data.to(device)


def list_datasets(root: str | os.PathLike | None = None) -> list[dict]:
    """Every known dataset, whether it is available, where it was found and every place looked at."""
    rows = [{"name": "digits", "available": True, "path": "sklearn",
             "places": ["sklearn.datasets.load_digits (embedded)"]}]
    for key in DATASET_NAMES[1:]:
        found, places = _locate(key, root)
        rows.append({"name": key, "available": found is not None,
                     "path": None if found is None else str(found), "places": [str(p.path) for p in places]})
    return rows


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
    return dataclasses.replace(data, x_train=data.x_train[kept].contiguous(), y_train=data.y_train[kept],
                               x_val=data.x_train[held].contiguous(), y_val=data.y_train[held])


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


def _missing_files(names: tuple[str, ...], folder: Path) -> list[str]:
    return [n for n in names if not (folder / n).exists()]


def _missing_idx(names: tuple[str, ...], folder: Path) -> list[str]:
    return [f"{n}[.gz]" for n in names if _idx_path(folder, n) is None]


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


# ---- IDX (MNIST, Fashion-MNIST) --------------------------------------------------------------

_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _idx_path(folder: Path, name: str) -> Path | None:
    """The IDX file `name` in folder, gzipped (.gz) or not, or None."""
    return next((p for p in (folder / f"{name}.gz", folder / name) if p.is_file()), None)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (.gz or raw), checking its magic number and size; ValueError if corrupted."""
    path = Path(path)
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{path} is not a valid gzip file ({err}); delete it and download it again") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ValueError(f"{path} is not an IDX file: bad magic number {raw[:4].hex()!r} "
                         "(expected 0000 + type byte 08..0e + number of dimensions)")
    ndim, dtype = raw[3], _IDX_DTYPES[raw[2]]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} is truncated: its IDX header needs {header} bytes, the file has {len(raw)}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path} is corrupted: dimensions {dims} need {expected} data bytes, "
                         f"the file has {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _load_idx_folder(classes: list[str], folder: Path) -> tuple:
    """train/t10k images and labels of an MNIST-style IDX folder, images as (N,1,28,28) uint8."""
    arrays = [read_idx(_idx_path(folder, n)) for n in _IDX_FILES]
    for images, labels, split in ((arrays[0], arrays[1], "train"), (arrays[2], arrays[3], "t10k")):
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels) or images.dtype != np.uint8:
            raise ValueError(f"{folder}: {split} images {images.shape} {images.dtype} and labels {labels.shape} "
                             "do not match (expected uint8 (N,H,W) and (N,))")
    return arrays[0][:, None], arrays[1], arrays[2][:, None], arrays[3], classes


# ---- CIFAR (python pickle batches) -------------------------------------------------------------

# The official CIFAR "python version" is pickle: dicts with bytes keys holding lists and numpy
# arrays.  Unpickling may run code, so only the globals needed to rebuild numpy arrays are allowed.
_SAFE_PICKLE_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
                        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _SAFE_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR batch holds only "
                                         "dicts, lists and numpy arrays")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core."):]
        return super().find_class(module, name)


def _read_cifar_pickle(path: Path) -> dict:
    """One CIFAR pickle file as a dict with bytes keys (pickle.load with encoding='bytes')."""
    with open(path, "rb") as fh:
        try:
            obj = _ArrayUnpickler(fh, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, ValueError) as err:
            raise ValueError(f"{path} is not a valid CIFAR pickle batch ({err})") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is not a valid CIFAR pickle batch (holds {type(obj).__name__}, not a dict)")
    return obj


def _cifar_arrays(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    batch = _read_cifar_pickle(path)
    if b"data" not in batch or label_key not in batch:
        raise ValueError(f"{path} lacks the keys b'data' and {label_key!r} of a CIFAR batch")
    data, labels = np.asarray(batch[b"data"], dtype=np.uint8), np.asarray(batch[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise ValueError(f"{path}: data {data.shape} and labels {labels.shape} are not (N, 3072) and (N,)")
    return data.reshape(-1, 3, 32, 32), labels


def _load_cifar10(folder: Path) -> tuple:
    parts = [_cifar_arrays(folder / f"data_batch_{i}", b"labels") for i in range(1, 6)]
    x_test, y_test = _cifar_arrays(folder / "test_batch", b"labels")
    classes = [n.decode() for n in _read_cifar_pickle(folder / "batches.meta")[b"label_names"]]
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            x_test, y_test, classes)


def _load_cifar100(folder: Path) -> tuple:
    x_train, y_train = _cifar_arrays(folder / "train", b"fine_labels")
    x_test, y_test = _cifar_arrays(folder / "test", b"fine_labels")
    classes = [n.decode() for n in _read_cifar_pickle(folder / "meta")[b"fine_label_names"]]
    return x_train, y_train, x_test, y_test, classes


# ---- SVHN (.mat) -------------------------------------------------------------------------------

def _svhn_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """X (32,32,3,N) -> (N,3,32,32); label 10 means digit 0."""
    from scipy.io import loadmat
    mat = loadmat(path)
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or y.size != x.shape[3]:
        raise ValueError(f"{path} is not an SVHN .mat file: expected X (32,32,3,N) and y (N,1)")
    labels = y.reshape(-1).astype(np.int64)
    labels[labels == 10] = 0
    return x.transpose(3, 2, 0, 1), labels


def _load_svhn(folder: Path) -> tuple:
    x_train, y_train = _svhn_arrays(folder / "train_32x32.mat")
    x_test, y_test = _svhn_arrays(folder / "test_32x32.mat")
    return x_train, y_train, x_test, y_test, DIGIT_CLASSES


# ---- Tiny-ImageNet (image folders) -------------------------------------------------------------

_IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
_TINY_SIZE = 64


def _images_in(folder: Path) -> list[Path]:
    """Image files of a class folder: folder/images/* when that exists, else folder/*."""
    folder = folder / "images" if (folder / "images").is_dir() else folder
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)


def _decode_images(paths: list[Path]) -> np.ndarray:
    """Decode 64x64 images to uint8 (N,3,64,64), converting grayscale ones to RGB."""
    from PIL import Image
    out = np.empty((len(paths), _TINY_SIZE, _TINY_SIZE, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            arr = np.asarray(im.convert("RGB"))
        if arr.shape[:2] != (_TINY_SIZE, _TINY_SIZE):
            raise ValueError(f"{p} is {arr.shape[1]}x{arr.shape[0]}; Tiny-ImageNet images must be 64x64")
        out[i] = arr
    return out.transpose(0, 3, 1, 2)


def _tiny_val_files(folder: Path) -> tuple[list[Path], list[str]]:
    """Validation images and their wnids, from val_annotations.txt or from val/<wnid>/ folders."""
    val = folder / "val"
    ann = val / "val_annotations.txt"
    if ann.is_file():
        image_dir = val / "images" if (val / "images").is_dir() else val
        rows = [line.split("\t")[:2] for line in ann.read_text().splitlines() if line.strip()]
        return [image_dir / name for name, _ in rows], [wnid for _, wnid in rows]
    class_dirs = sorted(d for d in val.iterdir() if d.is_dir() and d.name != "images")
    pairs = [(p, d.name) for d in class_dirs for p in _images_in(d)]
    return [p for p, _ in pairs], [w for _, w in pairs]


def _tiny_class_names(folder: Path, wnids: list[str]) -> list[str]:
    """Readable names from words.txt (first synonym) when present, else the wnids."""
    words = folder / "words.txt"
    if not words.is_file():
        return list(wnids)
    table = dict(line.split("\t", 1) for line in words.read_text().splitlines() if "\t" in line)
    return [table.get(w, w).split(",")[0].strip() for w in wnids]


def _load_tinyimagenet(folder: Path) -> tuple:
    wnids = sorted(d.name for d in (folder / "train").iterdir() if d.is_dir())
    index = {w: i for i, w in enumerate(wnids)}
    train = [(p, index[w]) for w in wnids for p in _images_in(folder / "train" / w)]
    val_paths, val_wnids = _tiny_val_files(folder)
    unknown = sorted(set(val_wnids) - set(index))
    if unknown:
        raise ValueError(f"{folder / 'val'} names classes {unknown[:5]} that have no train folder")
    if not train or not val_paths:
        raise ValueError(f"{folder} holds {len(train)} train and {len(val_paths)} val images; both must be > 0 "
                         "(expected train/<wnid>/[images/]*.JPEG and val/ with val_annotations.txt or <wnid>/)")
    return (_decode_images([p for p, _ in train]), np.array([c for _, c in train], dtype=np.int64),
            _decode_images(val_paths), np.array([index[w] for w in val_wnids], dtype=np.int64),
            _tiny_class_names(folder, wnids))


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
        partial(_missing_idx, _IDX_FILES), partial(_load_idx_folder, FASHION_CLASSES),
        "  - on Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist  (installs "
        f"{FASHION_MNIST_SYSTEM_DIR})\n"
        + _torchvision_hint("FashionMNIST", "ROOT/FashionMNIST/raw/train-images-idx3-ubyte.gz etc.")
        + "\n  - or put the four IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,"
          " t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz; .gz optional) in ROOT/FashionMNIST/raw",
        system_dirs=(FASHION_MNIST_SYSTEM_DIR,)),
    "mnist": _Spec(
        (0.1307,), (0.3081,), ("MNIST/raw", "mnist"),
        partial(_missing_idx, _IDX_FILES), partial(_load_idx_folder, DIGIT_CLASSES),
        _torchvision_hint("MNIST", "ROOT/MNIST/raw/train-images-idx3-ubyte.gz etc.")
        + "\n  - or put the four IDX files (train-images-idx3-ubyte.gz, ..., t10k-labels-idx1-ubyte.gz;"
          " .gz optional) in ROOT/MNIST/raw"),
    "cifar10": _Spec(
        (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), ("cifar-10-batches-py",),
        partial(_missing_files, tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")),
        _load_cifar10,
        _torchvision_hint("CIFAR10", "ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}")),
    "cifar100": _Spec(
        (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762), ("cifar-100-python",),
        partial(_missing_files, ("train", "test", "meta")), _load_cifar100,
        _torchvision_hint("CIFAR100", "ROOT/cifar-100-python/{train, test, meta}")),
    "svhn": _Spec(
        (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), ("svhn", "SVHN", "."),
        partial(_missing_files, ("train_32x32.mat", "test_32x32.mat")), _load_svhn,
        _torchvision_hint("SVHN", "ROOT/train_32x32.mat", "split='train', ")
        + "\n    (and again with split='test' for ROOT/test_32x32.mat); ROOT/svhn/ is looked in too"),
    "tinyimagenet": _Spec(
        (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), ("tiny-imagenet-200",),
        partial(_missing_files, ("train", "val")), _load_tinyimagenet,
        "  - download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it in ROOT, giving\n"
        "    ROOT/tiny-imagenet-200/train/<wnid>/images/*.JPEG and ROOT/tiny-imagenet-200/val/ with\n"
        "    val_annotations.txt + images/ (or val/<wnid>/ folders)"),
}

_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "digits": ((0.3054,), (0.3762,)),
    **{key: (spec.mean, spec.std) for key, spec in _SPECS.items()},
}
