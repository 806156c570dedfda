"""Keep glibc malloc from returning large activation buffers to the kernel after every forward pass.

By default glibc serves large requests (over a dynamic threshold of at most 32 MiB) with a fresh
mmap and unmaps them on free, and trims the heap top back to the kernel, so every forward/backward
of a distillation step faults its activation pages in again (about half of a DM iteration on a
2-core CPU). Raising the mmap threshold and the trim threshold together (what
MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ do) keeps freed buffers in the heap for reuse,
at the price of holding the peak heap size. Measured on the plain DM loop (Fashion-MNIST,
ConvNet-3, 64 real images per class): minor page faults per iteration 262k by default, 199k with
the mmap threshold alone, 508k with the trim threshold alone, 4.5k with both (900 through
mallopt here); M_TOP_PAD adds nothing, so it is left alone. Off glibc (macOS, Windows, musl)
this is a no-op. Applied when ddnb is imported (ddnb/__init__.py), so evaluation-only code (test passes,
evaluate_synset) gets it too, not only the distillation loop; DDNB_MALLOC_TUNE=0 turns it off.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
# (mallopt parameter, value, environment variable that, when set, means the user chose already)
SETTINGS = (
    (M_MMAP_THRESHOLD, 1 << 30, "MALLOC_MMAP_THRESHOLD_"),
    (M_TRIM_THRESHOLD, 2**31 - 1, "MALLOC_TRIM_THRESHOLD_"),
)
_applied: dict[str, int] | None = None


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (has gnu_get_libc_version and mallopt), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not (hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt")):
        return None
    return libc


def tune_malloc() -> dict[str, int]:
    """Raise glibc's mmap and trim thresholds once per process; returns what was set.

    Skipped when DDNB_MALLOC_TUNE=0, for each value whose MALLOC_*_ variable is already set, and
    off glibc (a debug log line says so).
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = {}
    libc = _glibc()
    if os.environ.get("DDNB_MALLOC_TUNE", "1") == "0" or libc is None:
        log.debug("malloc tuning skipped (DDNB_MALLOC_TUNE=0 or not glibc)")
        return _applied
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    for param, value, env in SETTINGS:
        if env in os.environ:
            continue
        if libc.mallopt(param, value) == 1:
            _applied[env] = value
        else:
            log.debug("mallopt(%d, %d) was refused", param, value)
    return _applied
