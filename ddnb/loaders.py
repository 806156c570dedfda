"""Readers of the file formats ddnb's datasets come in: folder -> raw uint8 arrays and class names.

Every ``load_*`` function takes the folder a dataset was found in and returns
``(x_train, y_train, x_test, y_test, classes)`` with images as uint8 (N, C, H, W) and labels as
int arrays; ``ddnb.data`` finds the folder, checks the labels and normalizes.  A file that is
corrupted or of another format raises ValueError naming the file.  The ``missing_*`` functions say
which required files a folder lacks, so ``ddnb.data`` can tell where it looked and what was absent.
"""
from __future__ import annotations

import gzip
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DIGIT_CLASSES = [str(d) for d in range(10)]


def missing_files(names: tuple[str, ...], folder: Path) -> list[str]:
    """The names among `names` that do not exist in folder."""
    return [n for n in names if not (folder / n).exists()]


def missing_idx(names: tuple[str, ...], folder: Path) -> list[str]:
    """The IDX files among `names` that folder holds neither gzipped nor raw, as 'name[.gz]'."""
    return [f"{n}[.gz]" for n in names if _idx_path(folder, n) is None]


# ---- IDX (MNIST, Fashion-MNIST) --------------------------------------------------------------

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
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


def load_idx_folder(classes: list[str], folder: Path) -> tuple:
    """train/t10k images and labels of an MNIST-style IDX folder, images as (N,1,28,28) uint8."""
    arrays = [read_idx(_idx_path(folder, n)) for n in IDX_FILES]
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


def load_cifar10(folder: Path) -> tuple:
    parts = [_cifar_arrays(folder / f"data_batch_{i}", b"labels") for i in range(1, 6)]
    x_test, y_test = _cifar_arrays(folder / "test_batch", b"labels")
    classes = [n.decode() for n in _read_cifar_pickle(folder / "batches.meta")[b"label_names"]]
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            x_test, y_test, classes)


def load_cifar100(folder: Path) -> tuple:
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


def load_svhn(folder: Path) -> tuple:
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


def load_tinyimagenet(folder: Path) -> tuple:
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
