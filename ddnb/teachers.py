"""Teachers for the soft-label regimes (paper 004 §2, §5): models trained on the real training set,
cached on disk like experts, a small registry of named ones, and `relabel`, which gives any set (a
coreset or a distilled set) the teacher's soft labels.

A teacher trains under `train_model` (hard labels, SGD with momentum 0.9 and weight decay 5e-4,
cosine schedule, DSA) on the whole training set or a seeded pool of `pool` images per class; its
weights and buffers (BatchNorm running statistics included) go to one safetensors file named by the
hash of everything that determines it (data fingerprint, architecture, settings, seed, ddnb version),
with its test accuracy in the header. The registry's "weak" teachers are the same networks trained
for fewer epochs (004 §5 uses a weaker ResNet-18 the same way); "_bn" teachers have BatchNorm, which
SRe2L and DWA match statistics against.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ddnb.experts import cache_key, data_fingerprint
from ddnb.settings import Int, Positive, Seed, Text, require
from ddnb.synset import SyntheticSet, load_tensor_file, require_synset, save_tensor_file
from ddnb.utils import resolve_device

if TYPE_CHECKING:
    from ddnb.data import Dataset

FILE_KIND = "ddnb.Teacher"
# Named teachers: (arch, model_kw, epochs). Strong ones train 20 epochs, weak ones 2 (004 §5: a weak
# and a strong teacher); every entry can be overridden per call (get_teacher(..., epochs=..., pool=...)).
TEACHERS: dict[str, dict[str, Any]] = {
    "convnet3": dict(arch="convnet3", model_kw={}, epochs=20),
    "convnet3_weak": dict(arch="convnet3", model_kw={}, epochs=2),
    "convnet3_bn": dict(arch="convnet3", model_kw={"norm": "batchnorm"}, epochs=20),
    "resnet10_bn": dict(arch="resnet10_bn", model_kw={}, epochs=20),
    "resnet10_bn_weak": dict(arch="resnet10_bn", model_kw={}, epochs=2),
}


def default_cache_dir() -> Path:
    """Where teachers are cached: $DDNB_CACHE/teachers, else ~/.cache/ddnb/teachers."""
    root = os.environ.get("DDNB_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "ddnb") / "teachers"


def teacher_config(dataset: Dataset, arch: str, epochs: int, lr: float, batch_size: int, dsa: bool, seed: int,
                   model_kw: dict[str, Any], pool: int | None) -> dict[str, Any]:
    """Everything that determines a teacher: the cache key is its hash."""
    from ddnb import __version__

    return {"data": data_fingerprint(dataset), "arch": arch, "model_kw": dict(sorted(model_kw.items())),
            "epochs": epochs, "lr": lr, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": batch_size,
            "schedule": "cosine", "dsa": dsa, "seed": seed, "pool": pool, "ddnb_version": __version__}


def train_teacher(dataset: Dataset, arch: str = "convnet3", epochs: int = 20, *, lr: float = 0.01,
                  batch_size: int = 256, dsa: bool = True, seed: int = 0, pool: int | None = None,
                  model_kw: dict[str, Any] | None = None, name: str | None = None,
                  cache_dir: str | os.PathLike | None = None, device: str | torch.device | None = None,
                  progress: bool = True) -> nn.Module:
    """Train (or load from the cache) a teacher on the real training set; returns it in eval mode, frozen.

    pool: images per class (a seeded class-balanced pool; None: every image). The model carries
    `ddnb_teacher` (name, cache key, config without the data fingerprint, test accuracy %).
    """
    from ddnb.methods.base import real_init_indices
    from ddnb.models import seeded_model
    from ddnb.train import evaluate, train_model

    require("arch", arch, Text())
    require("epochs", epochs, Int(1))
    require("lr", lr, Positive())
    require("batch_size", batch_size, Int(1))
    require("seed", seed, Seed())
    require("pool", pool, Int(1, optional=True))
    model_kw = dict(model_kw or {})
    config = teacher_config(dataset, arch, epochs, lr, batch_size, dsa, seed, model_kw, pool)
    key = cache_key(config)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / f"{dataset.name}_{arch}_{key}.safetensors"
    dev = resolve_device(device)
    model = seeded_model(arch, dataset, seed, dev, **model_kw)
    if path.is_file():
        tensors, meta = load_tensor_file(path, FILE_KIND)
        if meta.get("config") != config:
            raise ValueError(f"{path} was written for another teacher configuration; delete it to retrain")
        model.load_state_dict({k: v.to(dev) for k, v in tensors.items()})
        test_acc = meta["test_acc"]
    else:
        idx = real_init_indices(dataset, pool, seed) if pool is not None else torch.arange(len(dataset.x_train))
        x = dataset.x_train[idx.to(dataset.x_train.device)]
        y = dataset.y_train[idx.to(dataset.y_train.device)]
        train_model(model, x, y, epochs=epochs, regime="hl", optimizer="sgd", lr=lr, momentum=0.9,
                    weight_decay=5e-4, batch_size=batch_size, schedule="cosine", dsa=dsa, seed=seed, device=dev,
                    progress=progress)
        test_acc = 100.0 * evaluate(model, dataset.x_test, dataset.y_test)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_tensor_file(path, state, {"config": config, "test_acc": test_acc}, FILE_KIND)
    model.eval().requires_grad_(False)
    model.ddnb_teacher = {"name": name, "key": key, "test_acc": test_acc,
                          **{k: v for k, v in config.items() if k != "data"}}
    return model


def get_teacher(name: str, dataset: Dataset, **overrides: Any) -> nn.Module:
    """A named teacher of the registry (TEACHERS) for `dataset`, trained or loaded; `overrides` go to train_teacher."""
    if name not in TEACHERS:
        raise ValueError(f"unknown teacher {name!r}; known: {', '.join(TEACHERS)}")
    return train_teacher(dataset, **{**TEACHERS[name], **overrides}, name=name)


def relabel(synset: SyntheticSet, teacher: nn.Module, batch_size: int = 512,
            device: str | torch.device | None = None) -> SyntheticSet:
    """The set with the teacher's logits as labels (label_kind "soft_logits"), one row per decoded image.

    The teacher runs in eval mode (its mode is restored). A factored (IDC) set comes back decoded
    (factor 1), since each decoded piece gets its own label. The set then carries the "sl" protocol,
    and its provenance records the teacher and the previous hard labels ("relabel"); note that HL
    evaluation of the relabeled set trains on the teacher's argmax, so evaluate HL on the original set.
    """
    require_synset(synset)
    if not isinstance(teacher, nn.Module):
        raise ValueError(f"teacher must be a torch nn.Module, got {type(teacher).__name__}")
    require("batch_size", batch_size, Int(1))
    dev = resolve_device(device) if device is not None else next(teacher.parameters()).device
    images, labels = synset.decoded()
    hard = labels if synset.label_kind == "hard" else labels.argmax(1)
    was_training = teacher.training
    teacher.to(dev).eval()
    with torch.inference_mode():
        logits = torch.cat([teacher(images[i:i + batch_size].to(dev)).float().cpu()
                            for i in range(0, images.shape[0], batch_size)])
    teacher.train(was_training)
    info = getattr(teacher, "ddnb_teacher", {"name": type(teacher).__name__})
    provenance = {**synset.provenance, "eval_protocol": {"name": "sl"},
                  "relabel": {"teacher": info, "from_label_kind": synset.label_kind,
                              "hard_labels": hard.cpu().tolist()}}
    return SyntheticSet(images.detach().cpu().clone(), logits, synset.dataset, synset.num_classes,
                        synset.image_shape, 1, provenance, "soft_logits")
