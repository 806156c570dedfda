"""Helpers every distillation method shares: checking ipc, real-image and factored (IDC)
initialization, per-class views of the synthetic images, valid pixel bounds, the in-loop
evaluation, entry points of methods that share a loop, and the final SyntheticSet with provenance.
The loop itself (checkpoints, resume, NaN stop) is `ddnb.methods.loop`.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from ddnb.methods.loop import History, RunOptions
from ddnb.settings import Int, require


def check_ipc(dataset: Any, ipc: int, factor: int = 1) -> list[Tensor]:
    """Validate ipc (and factor) against the class sizes; returns the per-class index tensors."""
    require("ipc", ipc, Int(1))
    require("factor (1 = no factoring)", factor, Int(1))
    per_class = [idx.cpu() for idx in dataset.class_indices()]
    smallest = min(len(idx) for idx in per_class)
    need = ipc * factor * factor
    if need > smallest:
        raise ValueError(f"ipc={ipc} with factor={factor} needs {need} real images per class but the smallest "
                         f"class of {dataset.name!r} has {smallest}; allowed: ipc * factor**2 <= {smallest}")
    return per_class


def real_init_indices(dataset: Any, n_per_class: int, seed: int) -> Tensor:
    """Class-balanced seeded random indices into x_train: n_per_class per class, class 0 first."""
    per_class = check_ipc(dataset, n_per_class)
    g = torch.Generator().manual_seed(seed)
    return torch.cat([idx[torch.randperm(len(idx), generator=g)[:n_per_class]] for idx in per_class])


def init_synthetic(dataset: Any, ipc: int, *, seed: int, init: str = "real", factor: int = 1,
                   device: Any = "cpu") -> tuple[Tensor, Tensor]:
    """Initial stored images (ipc per class, class-sorted) and hard labels, on `device`.

    init "real": random real images of each class (seeded); with factor > 1 each stored image
    holds factor**2 downsampled real images (IDC, `encode_per_class`). init "noise": standard normal.
    """
    check_ipc(dataset, ipc, factor)
    k = dataset.num_classes
    labels = torch.arange(k).repeat_interleave(ipc)
    if init == "noise":
        g = torch.Generator().manual_seed(seed)
        images = torch.randn((k * ipc, *dataset.image_shape), generator=g)
    elif init == "real":
        idx = real_init_indices(dataset, ipc * factor * factor, seed).cpu()
        real = dataset.x_train[idx.to(dataset.x_train.device)].detach().cpu().float()
        images = encode_per_class(real, k, ipc, factor)
    else:
        raise ValueError(f"init must be 'real' or 'noise', got {init!r}")
    return images.to(device).contiguous(), labels.to(device)


def encode_per_class(real: Tensor, num_classes: int, ipc: int, factor: int) -> Tensor:
    """Stored images from class-sorted real images (ipc * factor**2 per class): IDC's factored init."""
    from ddnb.augment import factor_encode

    if factor == 1:
        return real
    ff = factor * factor
    parts = []
    for c in range(num_classes):
        block = real[c * ipc * ff:(c + 1) * ipc * ff]
        parts.append(factor_encode(block.reshape(ipc, ff, *block.shape[1:]).transpose(0, 1).flatten(0, 1), factor))
    return torch.cat(parts)


def class_images(images: Tensor, c: int, ipc: int, factor: int, image_size: int) -> Tensor:
    """The decoded synthetic images of class c from class-sorted stored images (factor > 1: IDC tiles upsampled)."""
    from ddnb.augment import factor_decode

    x = images[c * ipc:(c + 1) * ipc]
    return factor_decode(x, factor, image_size) if factor > 1 else x


def subsample(x: Tensor, max_n: int, generator: torch.Generator) -> Tensor:
    """At most `max_n` random rows of x (x itself, and no draw, when it has no more)."""
    if x.shape[0] <= max_n:
        return x
    return x[torch.randperm(x.shape[0], generator=generator)[:max_n].to(x.device)]


def real_subset(dataset: Any, per_class: int | None, seed: int) -> Any:
    """The dataset with its training split cut to `per_class` seeded random images per class (None: all of it)."""
    if per_class is None:
        return dataset
    return dataset.subset(real_init_indices(dataset, per_class, seed))


def pixel_bounds(dataset: Any, device: torch.device) -> tuple[Tensor, Tensor]:
    """Per-channel (low, high) of valid pixels [0, 1] in the dataset's normalized space, shaped (1,C,1,1)."""
    zeros = torch.zeros(1, dataset.channels, 1, 1, device=device)
    return dataset.normalize(zeros), dataset.normalize(zeros + 1)


def in_loop_eval(current: Callable[[dict[str, Any]], Any], dataset: Any, device: torch.device,
                 **eval_kw: Any) -> Callable[[dict[str, Any]], Any]:
    """run_loop's `eval_fn`: evaluate the set `current(state)` builds from the loop state (evaluate_synset)."""
    from ddnb.train import evaluate_synset

    def run(state: dict[str, Any]) -> Any:
        return evaluate_synset(current(state), dataset, device=device, progress=False, **eval_kw)

    return run


def variant_entry(loop: Callable[..., tuple[Any, History]], name: str) -> Callable[..., tuple[Any, History]]:
    """The registered entry point of variant `name` of a loop several methods share (dc/dsa, mtt/datm, idc/dream)."""

    def entry(dataset: Any, ipc: int, *, seed: int, device: Any, budget: str, settings: dict[str, Any],
              run: RunOptions) -> tuple[Any, History]:
        return loop(name, dataset, ipc, seed=seed, device=device, budget=budget, settings=settings, run=run)

    entry.__name__ = "distill_" + name.replace("+", "_plus")
    return entry


def build_synset(images: Tensor, labels: Tensor, dataset: Any, *, method: str, settings: dict[str, Any],
                 seed: int, budget: str, factor: int = 1, **extra: Any) -> Any:
    """The result SyntheticSet (on CPU, detached) with provenance: method, params, seed, budget, versions."""
    from ddnb.synset import SyntheticSet, make_provenance

    provenance = make_provenance(method, settings, seed, budget=budget, **extra)
    return SyntheticSet(images=images.detach().cpu().contiguous(), labels=labels.detach().cpu(),
                        dataset=dataset.name, num_classes=dataset.num_classes,
                        image_shape=tuple(dataset.image_shape), factor=factor, provenance=provenance)
