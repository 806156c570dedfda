"""bf16 autocast where the hardware does bf16 natively: detection, the "auto" | "bf16" | "fp32" choice, the context.

Native bf16 means: on the CPU, the `avx512_bf16` or `amx_bf16` instruction flags (Linux /proc/cpuinfo; torch's
`get_cpu_capability()` names only the vector width, so it is reported, not used to decide); on CUDA,
`torch.cuda.is_bf16_supported()`; MPS and anything else: no. "auto" runs bf16 where it is native and fp32
elsewhere (saying so once per device type); "bf16" and "fp32" force either (bf16 without native support is
emulated: correct, slower). Autocast leaves parameters and optimizer state in fp32; only the ops autocast
lists (convolutions, matmuls) run in bf16.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import ContextManager

import torch

from ddnb.settings import Choice, require
from ddnb.speedups import speedups_on

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp32")
NATIVE_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
_told: set[str] = set()  # device types already told that auto means fp32 there


def cpu_flags() -> set[str]:
    """The CPU's instruction flags from /proc/cpuinfo (empty where there is no such file)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively (CPU: avx512_bf16 / amx_bf16 flags; CUDA: is_bf16_supported)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return bool(cpu_flags() & set(NATIVE_CPU_FLAGS))
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """"bf16" or "fp32" for a setting on `device`: "auto" is bf16 where native (unless DDNB_SPEEDUPS=off), else
    fp32 (logged once)."""
    require("precision", precision, Choice(*PRECISIONS))
    if precision != "auto":
        return precision
    if native_bf16(device) and speedups_on():
        return "bf16"
    if device.type not in _told:
        _told.add(device.type)
        if native_bf16(device):
            why = "DDNB_SPEEDUPS=off"
        else:
            why = f"no {' / '.join(NATIVE_CPU_FLAGS)} flag" if device.type == "cpu" else "no native bf16"
        log.warning("precision 'auto' means fp32 on %s: %s", device.type, why)
    return "fp32"


def autocast(precision: str, device: torch.device) -> ContextManager[object]:
    """torch.autocast to bf16 on `device` when `precision` resolves to "bf16", else a null context."""
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def describe(device: torch.device) -> dict[str, object]:
    """What decided the precision on `device`: the native-bf16 flags found, torch's CPU capability, the verdict."""
    return {"device": str(device), "bf16_flags": sorted(cpu_flags() & set(NATIVE_CPU_FLAGS)),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": native_bf16(device),
            "auto": resolve_precision("auto", device)}
