"""CAD-Prune (paper 004 §8.5, Tab. 11): EL2N scores from the checkpoint of a training run on the real
data whose compute matches the downstream budget, then the hardest (or easiest) ipc images per class.

Downstream, a student trains `epochs` epochs on a set of ipc * K images: epochs * ipc * K image
presentations. The scoring run on the N images of the training set (or of a seeded pool of `pool`
per class) gets the same number: e* = max(1, round(epochs * ipc * K / N)) epochs. checkpoint
"aligned" (CAD-Prune) trains a run of exactly e* epochs, its cosine schedule complete, and scores at
its end; "early" (Tab. 11's other arm) scores at epoch e* of a run of `long_epochs`, whose schedule
has barely begun. Scores: EL2N, ||softmax(f(x)) - onehot(y)||_2, averaged over `seeds` runs.

Left open by the supplement, and settings here: the direction of the selection (`order`, default
"hard": the highest EL2N at the aligned checkpoint, as Paul et al. keep the hardest), rounding e* to
the nearest epoch (at least 1), the scoring run's recipe (SGD, momentum 0.9, weight decay 5e-4,
cosine lr, no augmentation) and that N is the scored pool. Scores are cached on disk by config hash.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ddnb.experts import cache_key
from ddnb.methods import register
from ddnb.methods.base import real_init_indices
from ddnb.scores import Scores, class_ranking, dataset_fingerprint, default_cache_dir
from ddnb.settings import Choice, Int, Positive, Seed, Text, require
from ddnb.synset import SyntheticSet, load_tensor_file, save_tensor_file
from ddnb.utils import resolve_device

FILE_KIND = "ddnb.CadPruneScores"


def compute_aligned_epochs(epochs: int, set_size: int, train_size: int) -> int:
    """e*: epochs over `train_size` images that cost as many presentations as `epochs` over `set_size`."""
    for what, value in (("epochs", epochs), ("set_size", set_size), ("train_size", train_size)):
        require(what, value, Int(1))
    return max(1, math.floor(epochs * set_size / train_size + 0.5))


class _Reached(Exception):
    """Stops a scoring run once the checkpoint epoch is scored."""


def checkpoint_el2n(dataset: Any, indices: Tensor, run_epochs: int, at_epoch: int, *, arch: str, seed: int,
                    lr: float, batch_size: int, model_kw: dict[str, Any], device: torch.device) -> Tensor:
    """EL2N of x_train[indices] at epoch `at_epoch` of a cosine-schedule run of `run_epochs` on those images."""
    from ddnb.models import seeded_model
    from ddnb.score_kinds import el2n_values
    from ddnb.train import train_model

    x = dataset.x_train[indices.to(dataset.x_train.device)].to(device)
    y = dataset.y_train[indices.to(dataset.y_train.device)].to(device)
    model = seeded_model(arch, dataset, seed, device, **model_kw)
    out: list[Tensor] = []

    def on_epoch_end(e: int, m: torch.nn.Module) -> None:
        if e == at_epoch:
            out.append(el2n_values(m, x, y).double().cpu())
            raise _Reached

    try:
        train_model(model, x, y, epochs=run_epochs, regime="hl", optimizer="sgd", lr=lr, momentum=0.9,
                    weight_decay=5e-4, batch_size=batch_size, schedule="cosine", dsa=False, seed=seed,
                    device=device, on_epoch_end=on_epoch_end)
    except _Reached:
        pass
    return out[0]


@register("cad_prune", "select", paper="CAD-Prune: 004 §8.5 / Tab. 11 (compute-aware scoring checkpoint)")
def cad_prune(dataset: Any, ipc: int, seed: int = 0, device: Any = None, epochs: int = 300, order: str = "hard",
              checkpoint: str = "aligned", long_epochs: int = 200, arch: str = "convnet3", seeds: int = 1,
              pool: int | None = None, lr: float = 0.01, batch_size: int = 256, model_kw: dict[str, Any] | None = None,
              cache_dir: str | os.PathLike | None = None) -> tuple[SyntheticSet, Tensor]:
    """The ipc hardest (order "hard") or easiest images per class by EL2N at the compute-aligned checkpoint.

    `epochs`: the downstream training budget; checkpoint "aligned" or "early" (of a `long_epochs` run).
    """
    require("epochs", epochs, Int(1))
    require("order", order, Choice("easy", "hard"))
    require("checkpoint", checkpoint, Choice("aligned", "early"))
    require("long_epochs", long_epochs, Int(1))
    require("arch", arch, Text())
    require("seeds", seeds, Int(1))
    require("seed", seed, Seed())
    require("pool", pool, Int(1, optional=True))
    require("lr", lr, Positive())
    require("batch_size", batch_size, Int(1))
    model_kw = dict(model_kw or {})
    indices = (real_init_indices(dataset, pool, seed) if pool is not None else torch.arange(len(dataset.x_train))).cpu()
    at = compute_aligned_epochs(epochs, ipc * dataset.num_classes, len(indices))
    run_epochs = at if checkpoint == "aligned" else long_epochs
    if run_epochs < at:
        raise ValueError(f"long_epochs={long_epochs} is shorter than the compute-aligned epoch {at}; allowed: >= {at}")
    from ddnb import __version__

    config = {"kind": "el2n", "data": dataset_fingerprint(dataset),
              "method": "cad_prune", "budget_epochs": epochs, "ipc": ipc, "at_epoch": at, "run_epochs": run_epochs,
              "checkpoint": checkpoint, "arch": arch, "model_kw": dict(sorted(model_kw.items())),
              "seeds": [seed + i for i in range(seeds)], "pool": pool, "lr": lr, "batch_size": batch_size,
              "schedule": "cosine", "ddnb_version": __version__}
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / f"{dataset.name}_cad_prune_{cache_key(config)}.safetensors"
    cached = load_tensor_file(path, FILE_KIND) if path.is_file() else None
    if cached is not None and cached[1].get("config") == config:
        per_seed = cached[0]["per_seed"]
    else:
        dev = resolve_device(device)
        per_seed = torch.stack([checkpoint_el2n(dataset, indices, run_epochs, at, arch=arch, seed=seed + i, lr=lr,
                                                batch_size=batch_size, model_kw=model_kw, device=dev)
                                for i in range(seeds)])
        save_tensor_file(path, {"per_seed": per_seed}, {"config": config}, FILE_KIND)
    labels = dataset.y_train[indices.to(dataset.y_train.device)].detach().cpu().long()
    scores = Scores("el2n", per_seed.mean(0), indices, labels, per_seed, True, config)
    ranking = class_ranking(scores, order)
    if min(len(r) for r in ranking) < ipc:
        raise ValueError(f"ipc={ipc} needs {ipc} scored images per class; the smallest class has "
                         f"{min(len(r) for r in ranking)} (raise pool or lower ipc)")
    chosen = torch.cat([r[:ipc] for r in ranking])
    synset = SyntheticSet.from_real(dataset, chosen, "cad_prune", seed=seed, ipc=ipc, order=order,
                                    scores=scores.summary())
    return synset, chosen
