"""Measurements of notebook 05 (paper 004, soft labels): a class-balanced test subset, degenerate sets
that repeat each image, DM's loss of a set (for DCS, §7), per-seed spreads between sets, and where a
curve flattens (compression-extraction, §8.3).

DM's loss of a set is the distribution-matching objective itself, without augmentation: for each of
`nets` freshly initialized networks (seeds seed, seed + 1, ...), the sum over classes of the squared
distance between the mean embedding of `real_per_class` random real images of the class (a seeded
draw per network) and the mean embedding of the set's images of that class; averaged over networks.
Every set is measured against the same networks and real images, so differences come from the sets.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ddnb.embedding import embed_images
from ddnb.methods.base import real_init_indices
from ddnb.models import seeded_model
from ddnb.settings import Float, Int, require
from ddnb.synset import SyntheticSet, make_provenance, require_synset


def test_subset(dataset: Any, per_class: int | None, seed: int = 0) -> Any:
    """The dataset with its test split cut to `per_class` seeded random test images per class (None: as is)."""
    if per_class is None:
        return dataset
    require("per_class", per_class, Int(1))
    y = dataset.y_test.cpu()
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(dataset.num_classes):
        members = torch.nonzero(y == c).view(-1)
        if len(members) < per_class:
            raise ValueError(f"per_class={per_class} but class {c} has {len(members)} test images; allowed: "
                             f"at most {len(members)}")
        picks.append(members[torch.randperm(len(members), generator=g)[:per_class]])
    idx = torch.cat(picks)
    return dataclasses.replace(dataset, x_test=dataset.x_test[idx.to(dataset.x_test.device)],
                               y_test=dataset.y_test[idx.to(dataset.y_test.device)])


def duplicate_each(synset: SyntheticSet, per_class: int, copies: int = 2) -> SyntheticSet:
    """A degenerate set: the first `per_class` images of each class of `synset`, each repeated `copies` times."""
    require_synset(synset)
    require("per_class", per_class, Int(1))
    require("copies", copies, Int(2))
    images, labels = synset.decoded()
    hard = labels if synset.label_kind == "hard" else labels.argmax(1)
    keep = []
    for c in range(synset.num_classes):
        members = torch.nonzero(hard.cpu() == c).view(-1)
        if len(members) < per_class:
            raise ValueError(f"per_class={per_class} but class {c} of the set has {len(members)} images; allowed: "
                             f"at most {len(members)}")
        keep.append(members[:per_class])
    idx = torch.cat(keep).repeat_interleave(copies).to(images.device)
    record = make_provenance("duplicate_each", source=synset.provenance.get("method"), per_class=per_class,
                             copies=copies)
    return SyntheticSet(images[idx].detach().clone(), labels[idx].detach().clone(), synset.dataset,
                        synset.num_classes, synset.image_shape, 1, record, synset.label_kind)


def dm_loss(sets: Mapping[str, SyntheticSet], dataset: Any, *, nets: int = 10, real_per_class: int = 128,
            seed: int = 0, arch: str = "convnet3", device: Any = "cpu") -> dict[str, float]:
    """DM's loss of each set (see the module docstring): name -> mean over `nets` random networks."""
    require("nets", nets, Int(1))
    require("real_per_class", real_per_class, Int(1))
    if not sets:
        raise ValueError("sets must name at least one SyntheticSet")
    k = dataset.num_classes
    totals = {name: 0.0 for name in sets}
    for j in range(nets):
        net = seeded_model(arch, dataset, seed + j, device)
        idx = real_init_indices(dataset, real_per_class, seed + j).to(dataset.x_train.device)
        real = embed_images(net, dataset.x_train[idx]).reshape(k, real_per_class, -1).mean(1)
        for name, synset in sets.items():
            images, labels = require_synset(synset).decoded()
            hard = (labels if synset.label_kind == "hard" else labels.argmax(1)).to(device)
            feats = embed_images(net, images)
            means = torch.stack([feats[hard == c].mean(0) for c in range(k)])
            totals[name] += float(((real.to(means.device) - means) ** 2).sum())
    return {name: total / nets for name, total in totals.items()}


def spread_per_seed(accs: Mapping[str, Sequence[float]]) -> list[float]:
    """Per seed, the best minus the worst set's accuracy (accs: set -> per-seed accuracies, seeds aligned)."""
    table = np.asarray(list(accs.values()), dtype=float)
    if table.ndim != 2 or table.shape[0] < 2:
        raise ValueError(f"accs must map at least 2 sets to equally many per-seed accuracies, got shape {table.shape}")
    return (table.max(0) - table.min(0)).tolist()


def flatten_epoch(epochs: Sequence[int], curve: Sequence[float], tol: float) -> int:
    """The first curve epoch from which the curve stays within `tol` of its final value (the last epoch at worst)."""
    require("tol", tol, Float(0))
    e, y = np.asarray(epochs), np.asarray(curve, dtype=float)
    if e.ndim != 1 or e.shape != y.shape or e.size < 2 or np.any(np.diff(e) <= 0):
        raise ValueError(f"epochs must increase and match curve in length (>= 2), got {list(e)} and {list(y)}")
    close = np.abs(y - y[-1]) <= tol
    first = e.size - 1
    while first > 0 and close[first - 1]:
        first -= 1
    return int(e[first])


def curve_gain(curve: Mapping[int, Sequence[float]], start: int) -> list[float]:
    """Per seed, the accuracy gained from epoch `start` to the curve's last epoch."""
    last = max(curve)
    if start not in curve:
        raise ValueError(f"start={start} is not a curve epoch; allowed: {sorted(curve)}")
    return (np.asarray(curve[last], dtype=float) - np.asarray(curve[start], dtype=float)).tolist()


def fit_gap(a: Mapping[str, Any], b: Mapping[str, Any], param: str) -> dict[str, Any]:
    """Two bootstrap fits (ddnb.scaling.bootstrap_fit) compared on one parameter: the gap of the mean-curve fits,
    the larger bootstrap std, and "differ" when |gap| exceeds it, else "similar"."""
    if param not in ("a", "b", "tau", "delta", "d"):
        raise ValueError(f"param must be one of a, b, tau, delta, d, got {param!r}")
    gap = float(a["fit"][param] - b["fit"][param])
    spread = float(max(a[param]["std"], b[param]["std"]))
    return {"value_a": float(a["fit"][param]), "value_b": float(b["fit"][param]), "gap": gap, "spread": spread,
            "interval_a": [a[param]["low"], a[param]["high"]], "interval_b": [b[param]["low"], b[param]["high"]],
            "verdict": "differ" if abs(gap) > spread else "similar"}
