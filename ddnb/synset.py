"""SyntheticSet: a distilled or selected training set (images, hard or soft labels, provenance)
with safe storage: one .safetensors file holding the tensors and a JSON header, no pickle.

Pixels live in the normalized space of the dataset they were made from ((x01 - mean) / std per
channel, see `ddnb.data.Dataset`). With an IDC factor f > 1 each stored image holds f*f smaller
images; `decoded()` turns them into full-size training images.
"""
from __future__ import annotations

import functools
import hashlib
import json
import numbers
import os
import struct
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import safetensors
import safetensors.torch
import torch
from torch import Tensor

from ddnb.utils import atomic_write_bytes, git_sha, resolve_device

if TYPE_CHECKING:
    from ddnb.data import Dataset

LABEL_KINDS = ("hard", "soft_probs", "soft_logits")
FILE_KIND = "ddnb.SyntheticSet"
_FORMAT_VERSION = "2"  # 2: the checksum covers the header (kind, version, meta) too; 1: the tensors only
_OLD_FORMAT_VERSIONS = ("1",)
_PROB_TOL = 1e-3  # rows of "soft_probs" labels must sum to 1 within this tolerance


@functools.lru_cache(maxsize=1)
def _cached_git_sha() -> str | None:
    """git_sha() once per process (it starts a subprocess)."""
    return git_sha()


def make_provenance(method: str | None = None, params: dict[str, Any] | None = None,
                    seed: int | None = None, **extra: Any) -> dict[str, Any]:
    """Provenance record of a set: method, its params, seed, ddnb version, git sha, UTC creation time."""
    from ddnb import __version__

    record: dict[str, Any] = {
        "method": method, "params": dict(params or {}), "seed": seed,
        "ddnb_version": __version__, "git_sha": _cached_git_sha(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    record.update(extra)
    return record


def infer_label_kind(labels: Tensor) -> str:
    """'hard' for integer (N,) labels; for float (N,K): 'soft_probs' if rows are distributions, else 'soft_logits'."""
    if not isinstance(labels, Tensor):
        raise ValueError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() == 1 and not labels.is_floating_point():
        return "hard"
    if labels.dim() == 2 and labels.is_floating_point():
        return "soft_probs" if _rows_are_distributions(labels) else "soft_logits"
    raise ValueError(
        f"labels must be integer class ids of shape (N,) or float scores of shape (N, K); "
        f"got dtype {labels.dtype} and shape {tuple(labels.shape)}"
    )


def _rows_are_distributions(labels: Tensor) -> bool:
    """True when every row is non-negative and sums to 1 (within _PROB_TOL)."""
    if labels.numel() == 0:
        return True
    sums = labels.detach().double().sum(1)
    return bool((labels >= 0).all()) and bool(((sums - 1).abs() <= _PROB_TOL).all())


@dataclass(repr=False, eq=False)
class SyntheticSet:
    """A small training set (distilled or selected) with its labels and where it came from."""

    images: Tensor
    labels: Tensor
    dataset: str
    num_classes: int
    image_shape: tuple[int, int, int]
    factor: int = 1
    provenance: dict[str, Any] = field(default_factory=dict)
    label_kind: str | None = None  # None: inferred by infer_label_kind

    def __post_init__(self) -> None:
        self.image_shape = _check_image_shape(self.image_shape)
        self._check_scalars()
        self._check_images()
        self.label_kind = self._check_labels()
        self.provenance = {**make_provenance(), **dict(self.provenance)}

    def _check_scalars(self) -> None:
        """Dataset name, class count, image shape and factor are well-formed."""
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ValueError(f"dataset must be a non-empty dataset name, got {self.dataset!r}")
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {self.num_classes!r}")
        if not isinstance(self.factor, int) or self.factor < 1:
            raise ValueError(f"factor must be a positive int (1 = no IDC factoring), got {self.factor!r}")
        if not isinstance(self.provenance, dict):
            raise ValueError(f"provenance must be a dict, got {type(self.provenance).__name__}")
        protocol = self.provenance.get("eval_protocol")
        if protocol is not None and not (isinstance(protocol, dict) and isinstance(protocol.get("name"), str)):
            raise ValueError(f"provenance['eval_protocol'] must be None or a dict with a protocol 'name' "
                             f"(see ddnb.train.protocol_record), got {protocol!r}")

    def _check_images(self) -> None:
        """Images are a float (N,C,h,w) tensor that fits image_shape and factor."""
        x = self.images
        if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"images must be a float tensor of shape (N, C, H, W), got {got}")
        c, h, w = self.image_shape
        if x.shape[1] != c:
            raise ValueError(f"images have {x.shape[1]} channels but image_shape {self.image_shape} says {c}")
        if self.factor == 1 and tuple(x.shape[2:]) != (h, w):
            raise ValueError(f"images are {tuple(x.shape[2:])} but image_shape says {(h, w)} (factor 1)")
        if x.shape[2] % self.factor or x.shape[3] % self.factor:
            raise ValueError(f"stored images {tuple(x.shape[2:])} are not divisible by factor {self.factor}")

    def _check_labels(self) -> str:
        """Labels match the images in number and the classes in range; returns the label kind."""
        kind = self.label_kind if self.label_kind is not None else infer_label_kind(self.labels)
        if kind not in LABEL_KINDS:
            raise ValueError(f"label_kind must be one of {LABEL_KINDS}, got {kind!r}")
        y, n, k = self.labels, self.images.shape[0], self.num_classes
        if kind == "hard":
            if y.dim() != 1 or y.is_floating_point():
                raise ValueError(f"hard labels must be integer class ids of shape (N,), got {y.dtype} {tuple(y.shape)}")
            self.labels = y = y.long()
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= k):
                raise ValueError(f"hard labels must lie in [0, {k}), got values in [{int(y.min())}, {int(y.max())}]")
        else:
            if y.dim() != 2 or not y.is_floating_point() or y.shape[1] != k:
                raise ValueError(f"{kind} labels must be float of shape (N, {k}), got {y.dtype} {tuple(y.shape)}")
            if not bool(torch.isfinite(y).all()):
                raise ValueError("soft labels contain NaN or inf")
            if kind == "soft_probs" and not _rows_are_distributions(y):
                raise ValueError("soft_probs labels must be non-negative rows summing to 1; "
                                 "use label_kind='soft_logits' for scores")
        if y.shape[0] != n:
            raise ValueError(f"got {y.shape[0]} labels for {n} images; they must match")
        return kind

    # ----------------------------------------------------------------- properties
    @property
    def is_soft(self) -> bool:
        """True for soft labels (probabilities or logits)."""
        return self.label_kind != "hard"

    @property
    def eval_protocol(self) -> dict[str, Any] | None:
        """The evaluation protocol the set should be evaluated with (ddnb.train.protocol_record), or None."""
        return self.provenance.get("eval_protocol")

    @property
    def n_stored(self) -> int:
        """Number of stored images (before IDC decoding)."""
        return int(self.images.shape[0])

    @property
    def n_decoded(self) -> int:
        """Number of full-size training images after decoding (n_stored * factor**2)."""
        return self.n_stored * self.factor**2

    @property
    def hard_labels(self) -> Tensor:
        """Class id per stored image: the labels themselves, or the argmax of soft labels."""
        return self.labels if self.label_kind == "hard" else self.labels.argmax(1)

    def class_counts(self) -> list[int]:
        """Decoded images per class, for every class (an unbalanced set shows here)."""
        counts = torch.bincount(self.hard_labels.cpu(), minlength=self.num_classes) * self.factor**2
        return [int(c) for c in counts]

    @property
    def ipc(self) -> int:
        """Decoded images per class: n_decoded // num_classes (exact for a balanced set; see class_counts)."""
        return self.n_decoded // self.num_classes

    # ----------------------------------------------------------------- tensors
    def decoded(self) -> tuple[Tensor, Tensor]:
        """Full-size training tensors (images, labels); with factor > 1 each label is repeated per piece
        in factor_decode's tile-major order (ddnb.augment.factor_labels)."""
        if self.factor == 1:
            return self.images, self.labels
        from ddnb.augment import factor_decode, factor_labels

        images = factor_decode(self.images, self.factor, self.image_shape[1])
        return images, factor_labels(self.labels, self.factor)

    def to(self, device: str | torch.device) -> SyntheticSet:
        """A copy with images and labels on `device` (same provenance)."""
        device = resolve_device(device)
        return SyntheticSet(self.images.to(device), self.labels.to(device), self.dataset, self.num_classes,
                            self.image_shape, self.factor, dict(self.provenance), self.label_kind)

    def __repr__(self) -> str:
        method = self.provenance.get("method")
        return (f"SyntheticSet(dataset={self.dataset!r}, n_stored={self.n_stored}, ipc={self.ipc}, "
                f"factor={self.factor}, labels={self.label_kind!r}, method={method!r})")

    # ----------------------------------------------------------------- creation
    @classmethod
    def from_real(cls, dataset: Dataset, indices: Tensor | Sequence[int], method: str,
                  **provenance: Any) -> SyntheticSet:
        """A set made of real training images (a coreset): x_train[indices] with their hard labels."""
        idx = torch.as_tensor(indices, dtype=torch.long).flatten().cpu()
        n = dataset.x_train.shape[0]
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise ValueError(f"indices must lie in [0, {n}) for {dataset.name!r} x_train, "
                             f"got [{int(idx.min())}, {int(idx.max())}]")
        dev = dataset.x_train.device
        images = dataset.x_train[idx.to(dev)].clone()
        labels = dataset.y_train[idx.to(dataset.y_train.device)].clone()
        record = make_provenance(method, indices=idx.tolist(), **provenance)
        return cls(images, labels, dataset.name, dataset.num_classes, tuple(dataset.image_shape), 1, record)

    # ----------------------------------------------------------------- storage
    def save(self, path: str | os.PathLike) -> Path:
        """Write to one .safetensors file (tensors + JSON header), atomically; returns the path."""
        meta = {
            "dataset": self.dataset, "num_classes": self.num_classes, "image_shape": list(self.image_shape),
            "factor": self.factor, "label_kind": self.label_kind, "provenance": self.provenance,
        }
        return save_tensor_file(path, {"images": self.images, "labels": self.labels}, meta, FILE_KIND)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SyntheticSet:
        """Read a file written by `save`; a foreign, truncated or corrupted file gives a clear ValueError."""
        tensors, meta = load_tensor_file(path, FILE_KIND)
        missing = {"images", "labels"} - set(tensors)
        keys = {"dataset", "num_classes", "image_shape", "factor", "label_kind", "provenance"}
        if missing or not keys <= set(meta):
            raise ValueError(f"{path}: SyntheticSet file lacks {sorted(missing | (keys - set(meta)))}")
        try:
            _check_stored_images(tensors["images"])
            return cls(tensors["images"], tensors["labels"], meta["dataset"], meta["num_classes"],
                       meta["image_shape"], meta["factor"], meta["provenance"], meta["label_kind"])
        except ValueError as exc:
            raise ValueError(f"{path}: stored SyntheticSet is invalid: {exc}") from exc


def _check_image_shape(shape: Any) -> tuple[int, int, int]:
    """`shape` as a (C, H, W) tuple of positive ints, else ValueError naming it (8.5, True or "abc" are no size)."""
    sizes = list(shape) if isinstance(shape, (tuple, list, torch.Size)) else None
    if sizes is None or len(sizes) != 3 or not all(
            isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 1 for n in sizes):
        raise ValueError(f"image_shape must be (C, H, W): three positive ints, got {shape!r}")
    return tuple(int(n) for n in sizes)  # type: ignore[return-value]


def _check_stored_images(images: Tensor) -> None:
    """ValueError unless stored images are a non-empty float32 tensor of finite pixels (what ddnb saves)."""
    if images.dtype != torch.float32:
        raise ValueError(f"images are {images.dtype}; ddnb sets hold float32 pixels")
    if images.dim() >= 1 and images.shape[0] == 0:
        raise ValueError("it holds 0 images; a set needs at least one")
    bad = int((~torch.isfinite(images)).sum())
    if bad:
        raise ValueError(f"{bad} of its {images.numel()} pixel values are NaN or inf")


def require_synset(value: Any, dataset: Dataset | None = None) -> SyntheticSet:
    """`value` when it is a SyntheticSet (made for `dataset`: same name, image shape and classes, when
    given), else ValueError naming what was given."""
    if not isinstance(value, SyntheticSet):
        shown = repr(value) if isinstance(value, (str, os.PathLike, int, float, type(None))) else type(value).__name__
        raise ValueError(f"synset must be a SyntheticSet (e.g. SyntheticSet.load(path) or the first result of "
                         f"ddnb.distill), got {shown}")
    if dataset is not None and (value.dataset, value.image_shape, value.num_classes) != (
            dataset.name, tuple(dataset.image_shape), dataset.num_classes):
        raise ValueError(f"synthetic set is for {value.dataset!r} {value.image_shape} with {value.num_classes} "
                         f"classes, "
                         f"but the data is {dataset.name!r} {tuple(dataset.image_shape)} with "
                         f"{dataset.num_classes} classes")
    return value


# --------------------------------------------------------------------- file format
def _tensor_digest(tensors: dict[str, Tensor], header: dict[str, str] | None = None) -> str:
    """SHA-256 over the header entries other than the checksum (when given), then the names, dtypes,
    shapes and bytes of the tensors (detects corruption of either on load)."""
    h = hashlib.sha256()
    if header is not None:
        h.update(json.dumps({k: v for k, v in header.items() if k != "sha256"}, sort_keys=True).encode() + b"|")
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_tensor_file(path: str | os.PathLike, tensors: dict[str, Tensor], meta: dict[str, Any], kind: str) -> Path:
    """Atomically write tensors + a JSON `meta` record + a checksum into one safetensors file tagged `kind`."""
    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header = {
        "ddnb_kind": kind, "ddnb_format_version": _FORMAT_VERSION,
        "ddnb_meta": json.dumps(meta, default=_json_default),
    }
    header["sha256"] = _tensor_digest(cpu, header)
    return atomic_write_bytes(path, safetensors.torch.save(cpu, metadata=header))


def _json_default(obj: Any) -> Any:
    """JSON for the tensors / numpy scalars / paths a provenance record may hold."""
    if isinstance(obj, Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"provenance value of type {type(obj).__name__} is not JSON-serializable")


def _read_header(path: Path, data: bytes, kind: str) -> dict[str, str]:
    """The string metadata of a safetensors byte string, or a ValueError saying what is wrong."""
    expected = f"expected a {kind} file written by ddnb (.safetensors with ddnb metadata)"
    if len(data) < 8:
        raise ValueError(f"{path} is too short ({len(data)} bytes) to be a safetensors file; {expected}")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError(f"{path} is not a safetensors file or is truncated (header of {n} bytes "
                         f"in a {len(data)}-byte file); {expected}")
    try:
        header = json.loads(data[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} has an unreadable safetensors header ({exc}); {expected}") from exc
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or "ddnb_kind" not in meta:
        raise ValueError(f"{path} is a safetensors file without ddnb metadata; {expected}")
    if meta["ddnb_kind"] != kind:
        raise ValueError(f"{path} holds a {meta['ddnb_kind']!r}, not a {kind!r}; {expected}")
    version = meta.get("ddnb_format_version")
    if version != _FORMAT_VERSION and version not in _OLD_FORMAT_VERSIONS:
        raise ValueError(f"{path} has format version {version!r}; this ddnb reads versions "
                         f"{[_FORMAT_VERSION, *_OLD_FORMAT_VERSIONS]}")
    return meta


def is_ddnb_file(path: str | os.PathLike, kind: str) -> bool:
    """True when `path` is a file whose safetensors header says it holds a `kind` written by ddnb."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
            size = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            _read_header(path, head + fh.read(min(size, 100_000_000)), kind)
    except (OSError, ValueError, struct.error):
        return False
    return True


def load_tensor_file(path: str | os.PathLike, kind: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a file written by save_tensor_file: (tensors on CPU, meta), checking kind, size and checksum."""
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path must be a file path, got {type(path).__name__} {path!r}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (expected a {kind} .safetensors file)")
    if not path.is_file():
        what = "a folder" if path.is_dir() else "not a regular file"
        raise ValueError(f"{path} is {what}; give the path of a {kind} .safetensors file")
    data = path.read_bytes()
    header = _read_header(path, data, kind)
    try:
        tensors = safetensors.torch.load(data)
    except safetensors.SafetensorError as exc:
        raise ValueError(f"{path} is truncated or corrupted ({exc}); expected a complete {kind} file") from exc
    if header["ddnb_format_version"] in _OLD_FORMAT_VERSIONS:
        if _tensor_digest(tensors) != header.get("sha256"):
            raise ValueError(f"{path} is corrupted: its tensors do not match the checksum stored when it was saved")
        warnings.warn(f"{path} was saved by an older ddnb (format {header['ddnb_format_version']}): its checksum "
                      f"covers the tensors but not the metadata; save it again to protect both", stacklevel=3)
    elif _tensor_digest(tensors, header) != header.get("sha256"):
        raise ValueError(f"{path} is corrupted: its tensors or metadata do not match the checksum stored when "
                         f"it was saved")
    try:
        meta = json.loads(header["ddnb_meta"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} has a damaged ddnb metadata record ({exc})") from exc
    return tensors, meta


def check_set_destination(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """`path` as a Path when a set may be saved there: nothing there yet, a ddnb set (replaced), or any
    other regular file when `overwrite`; otherwise a ValueError naming it (a folder, a device such as
    /dev/null or a pipe is never replaced)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give the path of the .safetensors file to save the set to")
    if path.exists() and not path.is_file():
        raise ValueError(f"{path} is not a regular file (a device or a pipe) and is never replaced; "
                         f"give the path of the .safetensors file to save the set to")
    if path.exists() and not overwrite and not is_ddnb_file(path, FILE_KIND):
        raise ValueError(f"{path} exists and is not a ddnb set; pass --overwrite (overwrite=True) to replace it, "
                         f"or choose another path")
    return path
