"""One switch for what issue 12 added, so a run can measure what it buys: DDNB_SPEEDUPS=off.

With DDNB_SPEEDUPS=off (in the environment of a notebook run or a script), precision "auto" means fp32 everywhere
(ddnb.precision) and `evaluate_synset` trains several seeds one after another instead of batched (ddnb.train);
a setting given explicitly (precision="bf16", batched=True) still wins. Unset or "on": both on. Notebook runs
record the switch in results.json's `versions` (ddnb.runs.versions).
"""
from __future__ import annotations

import os

VALUES = ("on", "off")


def speedups_on() -> bool:
    """Whether batched multi-seed training and auto-bf16 are on (DDNB_SPEEDUPS unset or "on"; "off": off)."""
    value = os.environ.get("DDNB_SPEEDUPS", "on").strip().lower() or "on"
    if value not in VALUES:
        raise ValueError(f"DDNB_SPEEDUPS={value!r} is not allowed; allowed: {', '.join(VALUES)}")
    return value == "on"
