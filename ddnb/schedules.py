"""Optimizers and per-epoch learning-rate schedules of training: constant, step (DC), cosine with
warm-up (soft-label regimes) and multistep (IDC, DANCE's experts).
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
from torch import Tensor

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine", "constant", "multistep")
IDC_MILESTONES = (2 / 3, 5 / 6)  # IDC / DANCE MultiStepLR: x gamma at 2E//3 and 5E//6 of E epochs


def lr_schedule(schedule: str, base_lr: float, epochs: int, warmup_epochs: int = 0,
                milestones: Sequence[float] = IDC_MILESTONES, gamma: float = 0.2) -> list[float]:
    """Learning rate of each epoch: linear warm-up, then constant, step (x0.1 from epoch epochs//2),
    cosine, or multistep (x gamma at each milestone fraction of training).

    Warm-up: lr_e = base * (e + 1) / W for e < W. Cosine after warm-up:
    lr_e = base * (1 + cos(pi * (e - W) / (epochs - W))) / 2. Step: base before epochs // 2,
    base / 10 from then on (DC's reference decays one epoch later, after epoch E//2 + 1 of E + 1).
    Multistep (torch MultiStepLR stepped once per epoch): lr_e = base * gamma**k, k = the number of
    milestones m with floor(m * epochs) <= e; milestones (2/3, 5/6) give IDC's 2E//3 and 5E//6.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if not isinstance(warmup_epochs, int) or warmup_epochs < 0 or (warmup_epochs and warmup_epochs >= epochs):
        raise ValueError(f"warmup_epochs must be an int in [0, epochs={epochs}), got {warmup_epochs!r}")
    if not all(isinstance(m, (int, float)) and 0 < m <= 1 for m in milestones):
        raise ValueError(f"milestones must be fractions of training in (0, 1], got {milestones!r}")
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma!r}")
    starts = [math.floor(m * epochs + 1e-9) for m in milestones]  # 1e-9: 2/3 * 6 is 3.999..., meant as 4
    return [_lr_at(schedule, base_lr, e, epochs, warmup_epochs, starts, gamma) for e in range(epochs)]


def _lr_at(schedule: str, base: float, e: int, epochs: int, warmup: int, starts: list[int], gamma: float) -> float:
    """One epoch's learning rate (see lr_schedule); `starts` are the multistep milestone epochs."""
    if e < warmup:
        return base * (e + 1) / warmup
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * (e - warmup) / (epochs - warmup)))
    if schedule == "step":
        return base if e < epochs // 2 else base * 0.1
    if schedule == "multistep":
        return base * gamma ** sum(e >= start for start in starts)
    return base

def make_optimizer(name: str, params: Iterable[Tensor], lr: float, momentum: float,
                   weight_decay: float) -> torch.optim.Optimizer:
    """SGD (with momentum) or AdamW over `params`."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
