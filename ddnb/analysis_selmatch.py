"""The incompatibility of real and distilled data in SelMatch (paper 000 §3.2, Fig. 2): three settings.

1. SelMatch: the window's D_real (harder share, frozen) and D_distill (easier share, distilled on the union).
2. Two-shot selection: D_real is chosen instead by `two_shot_selection` against D_pre-distill (train a
   model on it, add the simplest misclassified training images, twice), then merged with setting 1's
   D_distill (only the selection of D_real changes).
3. Reverse: distill D_pre-distill alone first (`match_real=False`), then the two-shot selection against
   that D_distill, merged with it.

Every set lists each class's D_real rows first; `ddnb.methods.selmatch.real_rows` gives the mask.
The settings and the window are compared on a validation split carved from the training set
(`validation_view`), never on the test set.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
from torch import Tensor

from ddnb.methods.selmatch import real_rows
from ddnb.scores import Scores, compute_scores
from ddnb.settings import Int, require
from ddnb.synset import SyntheticSet, make_provenance

Predictor = Callable[[Tensor], Tensor]
Trainer = Callable[[Tensor, Tensor], Predictor]
SETTINGS = ("setting1", "setting2", "setting3")


def conv_trainer(arch: str = "convnet3", epochs: int = 300, seed: int = 0, device: Any = None,
                 batch: int = 1024) -> Trainer:
    """A Trainer: fit a fresh `arch` on (x, y) under the "dc" protocol; the Predictor gives class ids."""
    from ddnb.models import get_model
    from ddnb.train import resolve_protocol, train_model
    from ddnb.utils import resolve_device

    dev = resolve_device(device)
    p = resolve_protocol("dc", epochs, False, {})
    train_kw = {k: p[k] for k in ("optimizer", "lr", "momentum", "weight_decay", "batch_size", "schedule")}

    def train(x: Tensor, y: Tensor) -> Predictor:
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(seed)
            model = get_model(arch, x.shape[1], int(y.max()) + 1 if y.numel() else 1, x.shape[-1])
        model = model.to(dev)
        train_model(model, x.to(dev), y.to(dev), epochs=epochs, seed=seed, device=dev, **train_kw)
        model.eval()

        def predict(images: Tensor) -> Tensor:
            with torch.inference_mode():
                return torch.cat([model(images[i:i + batch].to(dev)).argmax(1).cpu()
                                  for i in range(0, len(images), batch)])

        return predict

    return train


def _shot_sizes(n: int, shots: int) -> list[int]:
    """n split into `shots` near-equal parts, the larger ones first."""
    return [n // shots + (i < n % shots) for i in range(shots)]


def two_shot_selection(dataset: Any, x: Tensor, y: Tensor, scores: Scores, n_per_class: int, train: Trainer,
                       shots: int = 2, exclude: Tensor | None = None) -> Tensor:
    """Indices (class 0 first) of n_per_class scored training images per class, chosen in `shots` rounds.

    Each round trains a model (`train`) on (x, y) plus the images chosen so far, predicts every scored
    image not yet chosen nor in `exclude`, and takes per class its share of the simplest (least
    difficult) misclassified ones. A class with too few misclassified images is filled with its
    hardest correctly classified ones (nearest to being misclassified).
    """
    require("n_per_class", n_per_class, Int(0))
    require("shots", shots, Int(1))
    scores.check_dataset(dataset)
    pool, labels, difficulty = scores.indices, scores.labels, scores.difficulty()
    k = dataset.num_classes
    excluded = torch.isin(pool, torch.as_tensor([] if exclude is None else exclude, dtype=torch.long).cpu())
    taken = excluded.clone()
    room = min(int(((labels == c) & ~taken).sum()) for c in range(k))
    if n_per_class > room:
        raise ValueError(f"two-shot selection needs {n_per_class} candidate images per class but a class has only "
                         f"{room} scored images outside `exclude`; allowed: n_per_class <= {room}")
    picks: list[list[Tensor]] = [[] for _ in range(k)]
    for size in _shot_sizes(n_per_class, shots):
        if size == 0:
            continue
        chosen = pool[taken & ~excluded].to(dataset.x_train.device)
        predict = train(torch.cat([x, dataset.x_train[chosen].to(x.device)]),
                        torch.cat([y, dataset.y_train[chosen].to(y.device)]))
        wrong = predict(dataset.x_train[pool.to(dataset.x_train.device)]).cpu() != labels
        for c in range(k):
            free = torch.nonzero((labels == c) & ~taken).view(-1)
            order = _simplest_wrong_first(difficulty[free], wrong[free])
            pos = free[order[:size]]
            taken[pos] = True
            picks[c].append(pool[pos])
    return torch.cat([torch.cat(p) if p else pool[:0] for p in picks])


def _simplest_wrong_first(difficulty: Tensor, wrong: Tensor) -> Tensor:
    """An order: misclassified ones easiest first, then correctly classified ones hardest first (stable)."""
    wrong_pos = torch.nonzero(wrong).view(-1)
    right_pos = torch.nonzero(~wrong).view(-1)
    wrong_pos = wrong_pos[torch.sort(difficulty[wrong_pos], stable=True).indices]
    right_pos = right_pos[torch.sort(-difficulty[right_pos], stable=True).indices]
    return torch.cat([wrong_pos, right_pos])


def _merge(dataset: Any, real_idx: Tensor, distilled: SyntheticSet, name: str, **record: Any) -> SyntheticSet:
    """A set of the real images x_train[real_idx] and the D_distill rows of `distilled`, class by class."""
    k = dataset.num_classes
    d = distilled.images[~real_rows(distilled)]
    real = dataset.x_train[real_idx.to(dataset.x_train.device)].detach().cpu()
    n_real, n_distill = len(real_idx) // k, len(d) // k
    images = torch.cat([real.reshape(k, n_real, *real.shape[1:]), d.reshape(k, n_distill, *d.shape[1:])], 1)
    images = images.flatten(0, 1)
    ipc = n_real + n_distill
    rows = [c * ipc + j for c in range(k) for j in range(n_real)]
    p = distilled.provenance
    keep = {key: p[key] for key in ("window", "distill_indices", "eval_protocol", "syn_lr", "scores") if key in p}
    provenance = make_provenance(name, p.get("params"), p.get("seed"), **keep, real_rows=rows,
                                 real_indices=real_idx.tolist(), **record)
    return SyntheticSet(images, torch.arange(k).repeat_interleave(ipc), dataset.name, k, tuple(dataset.image_shape),
                        1, provenance)


def _scores_of(dataset: Any, synset: SyntheticSet, device: Any) -> Scores:
    """The scores the SelMatch run windowed on (compute_scores with its settings: a cache hit)."""
    p = synset.provenance["params"]
    return compute_scores(dataset, p["score"], budget=p["score_budget"], seed=p["score_seed"], device=device,
                          progress=False)


def setting1(dataset: Any, ipc: int, alpha: float, beta: float, *, budget: str = "cpu", seed: int = 0,
             device: Any = None, **overrides: Any) -> SyntheticSet:
    """Setting 1: SelMatch (ddnb.distill("selmatch", ...)) with this window."""
    from ddnb.methods import distill

    return distill("selmatch", dataset, ipc, budget=budget, seed=seed, device=device, alpha=alpha, beta=beta,
                   progress=False, **overrides)[0]


def setting2(dataset: Any, selmatch_set: SyntheticSet, train: Trainer, shots: int = 2,
             device: Any = None) -> SyntheticSet:
    """Setting 2: D_real by two-shot selection against D_pre-distill, merged with setting 1's D_distill."""
    pre = torch.as_tensor(selmatch_set.provenance["distill_indices"])
    n_real = int(real_rows(selmatch_set).sum()) // dataset.num_classes
    x, y = dataset.x_train[pre.to(dataset.x_train.device)], dataset.y_train[pre.to(dataset.y_train.device)]
    real = two_shot_selection(dataset, x, y, _scores_of(dataset, selmatch_set, device), n_real, train, shots,
                              exclude=pre)
    return _merge(dataset, real, selmatch_set, "selmatch_setting2", shots=shots, selected_against="D_pre-distill")


def setting3(dataset: Any, ipc: int, alpha: float, beta: float, train: Trainer, *, shots: int = 2,
             budget: str = "cpu", seed: int = 0, device: Any = None, **overrides: Any) -> SyntheticSet:
    """Setting 3: distill D_pre-distill alone, then two-shot selection of D_real against that D_distill."""
    distilled = setting1(dataset, ipc, alpha, beta, budget=budget, seed=seed, device=device, match_real=False,
                         **overrides)
    pre = torch.as_tensor(distilled.provenance["distill_indices"])
    mask = real_rows(distilled)
    n_real = int(mask.sum()) // dataset.num_classes
    real = two_shot_selection(dataset, distilled.images[~mask], distilled.labels[~mask],
                              _scores_of(dataset, distilled, device), n_real, train, shots, exclude=pre)
    return _merge(dataset, real, distilled, "selmatch_setting3", shots=shots, selected_against="D_distill")


def three_settings(dataset: Any, ipc: int, alpha: float, beta: float, train: Trainer, *, shots: int = 2,
                   budget: str = "cpu", seed: int = 0, device: Any = None, **overrides: Any) -> dict[str, SyntheticSet]:
    """The sets of settings 1, 2 and 3 for one window (alpha, beta), keyed "setting1" .. "setting3"."""
    s1 = setting1(dataset, ipc, alpha, beta, budget=budget, seed=seed, device=device, **overrides)
    return {"setting1": s1, "setting2": setting2(dataset, s1, train, shots, device),
            "setting3": setting3(dataset, ipc, alpha, beta, train, shots=shots, budget=budget, seed=seed,
                                 device=device, **overrides)}


def validation_view(dataset: Any) -> Any:
    """The dataset with its validation split in the place of the test split (for evaluate_synset)."""
    if dataset.x_val is None:
        raise ValueError(f"dataset {dataset.name!r} has no validation split; allowed: one loaded with "
                         "load_dataset(..., val_fraction=...) (carved from the training set)")
    return dataclasses.replace(dataset, x_test=dataset.x_val, y_test=dataset.y_val)


def beats(mean_a: float, std_a: float, mean_b: float, std_b: float) -> bool:
    """Whether a is ahead of b by more than the spread over seeds (the larger of the two stds)."""
    return mean_a - mean_b > max(std_a, std_b)


def settings_grid(part: Any, ipc: int, alphas: list[float], betas: list[float], train: Trainer, *, val_seeds: int,
                  val_epochs: int, budget: str = "cpu", seed: int = 0, device: Any = None,
                  **overrides: Any) -> tuple[Any, dict[tuple[int, float, float, str], SyntheticSet]]:
    """The three settings for every (alpha, beta), scored on `part`'s validation split: (table, sets by key)."""
    import pandas as pd

    from ddnb.train import evaluate_synset

    view = validation_view(part)
    rows, sets = [], {}
    for alpha in alphas:
        for beta in betas:
            made = three_settings(part, ipc, alpha, beta, train, budget=budget, seed=seed, device=device, **overrides)
            for name, synset in made.items():
                res = evaluate_synset(synset, view, seeds=val_seeds, epochs=val_epochs, device=device, progress=False)
                rows.append({"ipc": ipc, "alpha": alpha, "beta": beta, "setting": name, "val_mean": res.mean,
                             "val_std": res.std})
                sets[(ipc, alpha, beta, name)] = synset
    return pd.DataFrame(rows), sets


def best_per_setting(table: Any) -> Any:
    """The row of the best validation accuracy per (ipc, setting) of a `settings_grid` table (ties: first)."""
    return table.loc[table.groupby(["ipc", "setting"], sort=True)["val_mean"].idxmax()].reset_index(drop=True)
