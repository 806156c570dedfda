"""ddnb: notebook-first dataset distillation.

The package a notebook calls: datasets, models, augmentation, synthetic sets, training and
evaluation, distillation and selection methods. Submodules are imported lazily so that
`import ddnb` stays fast in a notebook's first cell.
"""
from __future__ import annotations

import importlib
from typing import Any

from ddnb import alloc as _alloc

__version__ = "0.1.0"
_alloc.tune_malloc()  # every use of ddnb (evaluation and testing too, not only distillation): see ddnb.alloc

_EXPORTS = {
    "load_dataset": "ddnb.data",
    "list_datasets": "ddnb.data",
    "get_model": "ddnb.models",
    "SyntheticSet": "ddnb.synset",
    "train_model": "ddnb.train",
    "evaluate_synset": "ddnb.train",
    "train_experts": "ddnb.experts",
    "compute_scores": "ddnb.scores",
    "select": "ddnb.methods",
    "distill": "ddnb.methods",
    "list_methods": "ddnb.methods",
}


def __getattr__(name: str) -> Any:
    """Import the submodule that defines `name` on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ddnb' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
