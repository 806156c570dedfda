"""Small shared helpers: devices, seeds, atomic file writes, provenance."""
from __future__ import annotations

import json
import logging
import os
import random
import re
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddnb.settings import Seed, require

log = logging.getLogger(__name__)


def default_device() -> str:
    """The device ddnb uses when none is given: CUDA when present, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _allowed_devices() -> str:
    """The devices this machine has, in words (for error messages)."""
    allowed = ["cpu"]
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        allowed += ["cuda", "cuda:0" if n == 1 else f"cuda:0 .. cuda:{n - 1}"]
    if torch.backends.mps.is_available():
        allowed.append("mps")
    return ", ".join(allowed)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None (ddnb's default) or a device name -> a torch.device that is here; ValueError naming the value
    and the devices allowed otherwise (a typo, a device type ddnb does not run on, a GPU that is not here)."""
    if device is None:
        return torch.device(default_device())
    allowed = f"allowed: {_allowed_devices()}"
    if not isinstance(device, (str, torch.device)):
        raise ValueError(f"device must be a name such as 'cpu' or 'cuda:0' (or a torch.device), got "
                         f"{type(device).__name__} {device!r}; {allowed}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"device {str(device)!r} is not a device name; {allowed}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was asked for but CUDA is not available here; {allowed}")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r} was asked for but this machine has "
                         f"{torch.cuda.device_count()} GPU(s); {allowed}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r} was asked for but MPS is not available here; {allowed}")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {str(device)!r} is not one ddnb runs on; {allowed}")
    return dev


def to_device(t: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """`t` on `device` without a host sync: a CPU tensor bound for CUDA goes pinned, non-blocking (values unchanged)."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch, and return a CPU generator seeded the same way."""
    require("seed", seed, Seed())
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def check_writable(path: str | os.PathLike, what: str = "output") -> Path:
    """`path` as a Path when a file or folder can be created there, else ValueError saying why.

    Probes the nearest existing folder on the way to `path` (an existing `path` itself when it is
    a folder) by creating and removing a temp file in it, so that a run fails before its work,
    not after it.
    """
    if not os.fspath(path):
        raise ValueError(f"{what} path is empty; give a file or folder path")
    path = Path(path)
    existing = next(p for p in (path, *path.parents) if p.exists() or p == Path(p.anchor or "."))
    if existing != path and not existing.is_dir():
        raise ValueError(f"{what} {str(path)!r} cannot be created: {str(existing)!r} is a file, not a folder")
    folder = existing if existing.is_dir() else existing.parent
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".ddnb-write-check.", suffix=".tmp")
    except OSError as exc:
        raise ValueError(f"{what} {str(path)!r} cannot be written: {str(folder)!r} is not writable "
                         f"({exc.strerror or exc})") from exc
    os.close(fd)
    os.unlink(probe)
    return path


def _file_mode() -> int:
    """The mode open() gives a new file under the current umask (mkstemp's temp files are 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes so that a crash never leaves a half-written file: temp file, then rename.

    Only a regular file is replaced: a folder, a device (/dev/null) or a pipe at `path` is a ValueError.
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        what = "a folder" if path.is_dir() else "not a regular file (a device or a pipe)"
        raise ValueError(f"{path} is {what} and is never replaced by a file; give a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomic text write (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomic JSON write, indented for people to read."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    """Make numpy / torch scalars and paths JSON-serializable."""
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def git_sha() -> str | None:
    """The git commit of the ddnb checkout, when ddnb runs from one (for provenance)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


TEMP_RE = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp$")  # atomic_write_bytes' mkstemp names


def remove_stale_temps(folder: str | os.PathLike, names: Iterable[str] | None = None) -> list[Path]:
    """Delete the temp files atomic_write_bytes left in `folder` when a writer was killed (kill -9):
    those of the files `names`, or all when None. Call it only while holding the folder's outputs
    (ddnb.locks), so no live writer's temp file is taken."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    wanted = None if names is None else set(names)
    removed = [p for p in folder.iterdir()
               if (m := TEMP_RE.match(p.name)) and (wanted is None or m.group("name") in wanted) and p.is_file()]
    for path in removed:
        path.unlink(missing_ok=True)
        log.info("removed %s, left by a write that was interrupted", path)
    return removed
