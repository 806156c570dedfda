"""Output locks: at most one ddnb run writes a given output at a time.

The lock is an OS file lock (`fcntl.flock`) on a hidden file beside the output, `.NAME.lock`,
holding the holder's pid, host and start time. The OS drops the lock when its process ends,
kill -9 included, so a lock is never stale; a leftover lock file is just taken over.
"""
from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path


class OutputInUse(ValueError):
    """Another live process holds the lock of an output."""


def lock_path(target: str | os.PathLike) -> Path:
    """The lock file of an output (a file or a folder): `.NAME.lock` beside it."""
    target = Path(target)
    return target.parent / f".{target.name}.lock"


def _holder(fd: int) -> str:
    """What the lock file says about its holder, or that it is still starting."""
    text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    return text or "a process that is starting and has not written its pid yet"


def _open_locked(path: Path, target: Path) -> int:
    """An fd holding the exclusive lock on the lock file now at `path`; OutputInUse naming a live holder."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise OutputInUse(f"{target} is in use by another ddnb run ({holder}); wait for it to end "
                              f"or choose another path") from None
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(os.fstat(fd), current):
            return fd
        os.close(fd)  # the holder released and removed that file between our open and flock: take the new one


@contextmanager
def output_lock(target: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock of `target` (a file or folder that need not exist yet) for the `with` block;
    OutputInUse (a ValueError) names the holder when another live process has it."""
    target = Path(target)
    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _open_locked(path, target)
    try:
        since = datetime.now(timezone.utc).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}\n".encode(), 0)
        yield path
    finally:
        path.unlink(missing_ok=True)  # while still locked, so a waiter that opened it retries on a new file
        os.close(fd)
