"""Expert models trained on real data and their training trajectories (for MTT / DATM / DANCE).

A trajectory is the list of a model's flattened parameters at every epoch boundary: entry 0 is
the initialization, entry e the weights after epoch e (as MTT's `buffer.py` stores them; only
parameters, no BatchNorm running statistics). Experts are cached on disk, one safetensors file
per expert, in a folder named by the hash of everything that determines an expert (data
fingerprint, architecture, training settings, seed, ddnb version). Expert i uses seed + i, so
asking for more experts later reuses the ones already on disk, and an interrupted run resumes
at the first missing expert.

Defaults follow MTT `buffer.py` (lr_teacher 0.01, batch_train 256, mom 0, l2 0, 50 epochs, DSA on,
no lr decay); DANCE's pre-training uses momentum 0.9 and weight decay 5e-4, and officially lr x0.2 at
2/3 and 5/6 of training (schedule "multistep") and CutMix with probability 0.5 (pass them).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ddnb.settings import Int, require
from ddnb.synset import load_tensor_file, save_tensor_file
from ddnb.utils import atomic_save_json, resolve_device

if TYPE_CHECKING:
    from ddnb.data import Dataset

Trajectory = list[Tensor]  # flat parameter vectors, epoch 0 (init) .. epoch E
FILE_KIND = "ddnb.ExpertTrajectory"


def default_cache_dir() -> Path:
    """Where experts are cached: $DDNB_CACHE/experts, else ~/.cache/ddnb/experts."""
    root = os.environ.get("DDNB_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "ddnb") / "experts"


def flatten_params(model: nn.Module) -> Tensor:
    """All parameters of `model` as one flat float32 CPU vector (in `model.parameters()` order)."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).float().cpu()


def load_params(model: nn.Module, flat: Tensor) -> nn.Module:
    """Copy a flat parameter vector (from flatten_params / a trajectory) into `model`, in place."""
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    if flat.dim() != 1 or flat.numel() != total:
        raise ValueError(f"flat parameters have shape {tuple(flat.shape)}, but the model has {total} "
                         f"parameters; expected a 1-D vector of {total} values")
    with torch.no_grad():
        offset = 0
        for p in params:
            p.copy_(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
    return model


def data_fingerprint(dataset: Dataset, n_samples: int = 256) -> dict[str, Any]:
    """Name, shapes and a SHA-256 of all labels plus n_samples evenly spaced training images."""
    x, y = dataset.x_train, dataset.y_train
    idx = torch.linspace(0, x.shape[0] - 1, min(n_samples, x.shape[0])).long()
    h = hashlib.sha256()
    h.update(y.detach().cpu().long().numpy().tobytes())
    h.update(x[idx.to(x.device)].detach().cpu().float().contiguous().numpy().tobytes())
    return {"name": dataset.name, "x_train": list(x.shape), "y_train": list(y.shape), "sha256": h.hexdigest()}


def expert_config(dataset: Dataset, arch: str, epochs: int, lr: float, momentum: float, weight_decay: float,
                  batch_size: int, dsa: bool | str, seed: int, model_kw: dict[str, Any], schedule: str = "constant",
                  cutmix_prob: float = 0.0) -> dict[str, Any]:
    """Everything that determines expert i (besides i): the cache key is its hash.

    The multistep schedule's milestones and gamma, and CutMix, enter only when used, so the keys of
    experts without them (MTT's) are the same as before they existed.
    """
    from ddnb import __version__
    from ddnb.schedules import IDC_MILESTONES

    config = {
        "data": data_fingerprint(dataset), "arch": arch, "model_kw": dict(sorted(model_kw.items())),
        "epochs": epochs, "lr": lr, "momentum": momentum, "weight_decay": weight_decay,
        "batch_size": batch_size, "dsa": dsa, "optimizer": "sgd", "schedule": schedule,
        "seed": seed, "ddnb_version": __version__,
    }
    if schedule == "multistep":
        config.update(milestones=list(IDC_MILESTONES), gamma=0.2)
    if cutmix_prob:
        config.update(cutmix_prob=cutmix_prob, cutmix_alpha=1.0)
    return config


def cache_key(config: dict[str, Any]) -> str:
    """Short stable hash of a config (sorted-key JSON, SHA-256)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _check_args(arch: str, n: int, epochs: int, lr: float, batch_size: int, seed: int) -> None:
    """ValueError for counts, sizes and seeds that make no sense."""
    for what, value in (("n", n), ("epochs", epochs), ("batch_size", batch_size)):
        require(what, value, Int(1))
    require("seed", seed, Int(0))
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if not isinstance(arch, str):
        raise ValueError(f"arch must be a model name (see ddnb.models.list_models()), got {arch!r}")


def train_experts(
    dataset: Dataset, arch: str = "convnet3", n: int = 5, epochs: int = 50, lr: float = 0.01,
    momentum: float = 0.0, weight_decay: float = 0.0, batch_size: int = 256, dsa: bool | str = True,
    seed: int = 0, cache_dir: str | os.PathLike | None = None, device: str | torch.device | None = None,
    progress: bool = True, model_kw: dict[str, Any] | None = None, schedule: str = "constant",
    cutmix_prob: float = 0.0,
) -> list[Trajectory]:
    """Train (or load from the cache) n experts on the real training set; returns their trajectories.

    Each trajectory has epochs + 1 flat parameter vectors (CPU, float32). SGD with cross-entropy at a
    constant lr, or schedule "multistep" (x0.2 at 2/3 and 5/6 of training, DANCE's pre-training);
    dsa True / a strategy string augments every batch (per-sample DSA); cutmix_prob > 0: CutMix
    (alpha 1) on a batch with that probability.
    """
    _check_args(arch, n, epochs, lr, batch_size, seed)
    if schedule not in ("constant", "multistep"):
        raise ValueError(f"schedule must be 'constant' or 'multistep', got {schedule!r}")
    if not 0 <= cutmix_prob <= 1:
        raise ValueError(f"cutmix_prob must be in [0, 1], got {cutmix_prob!r}")
    model_kw = dict(model_kw or {})
    config = expert_config(dataset, arch, epochs, lr, momentum, weight_decay, batch_size, dsa, seed, model_kw,
                           schedule, cutmix_prob)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = folder / f"{dataset.name}_{arch}_{cache_key(config)}"
    if not (folder / "config.json").is_file():
        atomic_save_json(folder / "config.json", config)
    dev = resolve_device(device)
    trajectories = []
    for i in tqdm(range(n), desc=f"experts {arch}", disable=not progress):
        path = folder / f"expert_{i:03d}.safetensors"
        if path.is_file():
            trajectories.append(_load_expert(path, config, i))
            continue
        traj = _train_one(dataset, arch, model_kw, seed + i, config, dev, progress)
        save_tensor_file(path, {"trajectory": torch.stack(traj)}, {"config": config, "index": i}, FILE_KIND)
        trajectories.append(traj)
    return trajectories


def _train_one(dataset: Dataset, arch: str, model_kw: dict[str, Any], seed: int, config: dict[str, Any],
               device: torch.device, progress: bool) -> Trajectory:
    """Train one expert (the training settings of `config`) from a seeded init, snapshotting the flat
    parameters at every epoch boundary."""
    from ddnb.models import seeded_model
    from ddnb.train import train_model

    model = seeded_model(arch, dataset, seed, device, **model_kw)
    snapshots = [flatten_params(model)]
    optional = {k: config[k] for k in ("milestones", "gamma", "cutmix_alpha", "cutmix_prob") if k in config}
    train_model(model, dataset.x_train, dataset.y_train, epochs=config["epochs"], regime="hl", optimizer="sgd",
                lr=config["lr"], momentum=config["momentum"], weight_decay=config["weight_decay"],
                batch_size=config["batch_size"], schedule=config["schedule"], dsa=config["dsa"], seed=seed,
                device=device, progress=progress, on_epoch_end=lambda _e, m: snapshots.append(flatten_params(m)),
                **optional)
    return snapshots


def _load_expert(path: Path, config: dict[str, Any], index: int) -> Trajectory:
    """Read one cached expert, checking that it was made by the same config and has the right length."""
    tensors, meta = load_tensor_file(path, FILE_KIND)
    stored = meta.get("config")
    if stored != json.loads(json.dumps(config)) or meta.get("index") != index:
        raise ValueError(f"{path} was written for another expert configuration; delete its folder "
                         f"{path.parent} to retrain")
    traj = tensors.get("trajectory")
    if traj is None or traj.dim() != 2 or traj.shape[0] != config["epochs"] + 1:
        raise ValueError(f"{path} holds no trajectory of {config['epochs'] + 1} epochs; delete it to retrain")
    return list(traj.unbind(0))
