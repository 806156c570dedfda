"""Coreset selection baselines: random real images, herding and k-center, class-balanced.

These are the "Random", "Herding" and "K-Center" rows of the comparison tables (DANCE Tab. 1,
DREAM+ Tab. 1). Herding and k-center work in a model's feature space: by default the `embed()`
of a freshly initialized ConvNet seeded with `seed`; pass `model=` (e.g. a trained network, which
is moved to `device`) to select in its feature space instead. Each selector picks `ipc` images
per class and returns the chosen real images as a SyntheticSet plus their indices into
`dataset.x_train` (grouped by class, class 0 first).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from ddnb.embedding import embed_images
from ddnb.methods import register
from ddnb.methods.base import check_ipc, real_init_indices
from ddnb.models import seeded_model
from ddnb.settings import Int, require
from ddnb.synset import SyntheticSet
from ddnb.utils import resolve_device

_PAPER = "DANCE (IJCAI 2024) Tab. 1 and DREAM+ Tab. 1: coreset baselines (Random, Herding, K-Center)"


def _check_features(features: Tensor, k: int) -> None:
    """Shared argument checks of the feature-level selectors."""
    if features.ndim != 2:
        raise ValueError(f"features must be 2-D (n, d), got shape {tuple(features.shape)}")
    n = features.shape[0]
    require("k", k, Int(1, n))


def herding_indices(features: Tensor, k: int) -> Tensor:
    """Greedy herding: k rows whose running mean tracks the mean of all rows as closely as possible.

    Step t adds the unchosen row i minimizing ||mu - (s + f_i) / t||, where mu is the mean of all
    rows and s the sum of the rows chosen so far (Welling 2009; the DC/DM baseline). Ties go to
    the lowest index. Returns the chosen row indices in the order they were picked.
    """
    _check_features(features, k)
    feats = features.detach().to(torch.float64)
    mu = feats.mean(0)
    running = torch.zeros_like(mu)
    available = torch.ones(len(feats), dtype=torch.bool, device=feats.device)
    chosen: list[int] = []
    for t in range(1, k + 1):
        dist = ((running + feats) / t - mu).pow(2).sum(1)
        dist[~available] = float("inf")
        i = int(torch.argmin(dist))
        chosen.append(i)
        available[i] = False
        running += feats[i]
    return torch.tensor(chosen, dtype=torch.long)


def kcenter_indices(features: Tensor, k: int) -> Tensor:
    """Greedy k-center (farthest-point): a 2-approximation of the smallest covering radius.

    Starts from the row nearest the mean of all rows (deterministic, and a central first centre),
    then repeatedly adds the row farthest from its nearest chosen centre (Gonzalez 1985). Ties go
    to the lowest index. Returns the chosen row indices in the order they were picked.
    """
    _check_features(features, k)
    feats = features.detach().to(torch.float64)
    first = int(torch.argmin((feats - feats.mean(0)).pow(2).sum(1)))
    chosen = [first]
    nearest = (feats - feats[first]).pow(2).sum(1)
    for _ in range(k - 1):
        i = int(torch.argmax(nearest))
        chosen.append(i)
        nearest = torch.minimum(nearest, (feats - feats[i]).pow(2).sum(1))
    return torch.tensor(chosen, dtype=torch.long)


def feature_model(dataset: Any, arch: str = "convnet3", seed: int = 0) -> nn.Module:
    """A freshly initialized model for `dataset`, seeded without touching the global RNG state."""
    return seeded_model(arch, dataset, seed)


def _select_by_features(name: str, dataset: Any, ipc: int, seed: int, device: Any, arch: str,
                        model: nn.Module | None, batch_size: int, pick: Callable[[Tensor, int], Tensor]
                        ) -> tuple[SyntheticSet, Tensor]:
    """Per class, embed the class's images and let `pick` choose `ipc` of them: the set and its global indices."""
    per_class = check_ipc(dataset, ipc)
    dev = resolve_device(device)
    net = (model if model is not None else feature_model(dataset, arch, seed)).to(dev)
    chosen = []
    for idx in per_class:
        feats = embed_images(net, dataset.x_train[idx.to(dataset.x_train.device)], batch_size).cpu()
        chosen.append(idx[pick(feats, ipc)])
    indices = torch.cat(chosen)
    feats_from = "given model" if model is not None else f"random-init {arch} (seed {seed})"
    return SyntheticSet.from_real(dataset, indices, name, seed=seed, ipc=ipc, features=feats_from), indices


@register("random", "select", paper=_PAPER)
def random_real(dataset: Any, ipc: int, seed: int = 0, device: Any = None,
                arch: str = "convnet3") -> tuple[SyntheticSet, Tensor]:
    """Random real images: `ipc` per class drawn uniformly without replacement (seeded).

    The same draw as the "real" initialization of the distillation methods with the same seed.

    `device` and `arch` are accepted so that every selector has one signature; random uses neither.
    """
    indices = real_init_indices(dataset, ipc, seed)
    return SyntheticSet.from_real(dataset, indices, "random", seed=seed, ipc=ipc), indices


@register("herding", "select", paper=_PAPER)
def herding(dataset: Any, ipc: int, seed: int = 0, device: Any = None, arch: str = "convnet3",
            model: nn.Module | None = None, batch_size: int = 512) -> tuple[SyntheticSet, Tensor]:
    """Herding per class in feature space (`model.embed`, default: a seeded random `arch`)."""
    return _select_by_features("herding", dataset, ipc, seed, device, arch, model, batch_size, herding_indices)


@register("kcenter", "select", paper=_PAPER)
def kcenter(dataset: Any, ipc: int, seed: int = 0, device: Any = None, arch: str = "convnet3",
            model: nn.Module | None = None, batch_size: int = 512) -> tuple[SyntheticSet, Tensor]:
    """Greedy k-center per class in feature space, first centre nearest the class mean."""
    return _select_by_features("kcenter", dataset, ipc, seed, device, arch, model, batch_size, kcenter_indices)
