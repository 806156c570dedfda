"""Score-based selection, class-balanced: the easiest or hardest `ipc` images of each class by a
difficulty score (forgetting, EL2N, GraNd, logits, c-score), SelMatch's sliding window, and the
oracle window (the window start chosen on a validation split carved from the training set).

Every selector takes `scores=` (a `ddnb.scores.Scores` computed for this dataset) or computes them
with `ddnb.scores.compute_scores(dataset, kind, budget=budget, seed=seed)` (cached on disk).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ddnb.methods import register
from ddnb.scores import KINDS, Scores, class_ranking, compute_scores
from ddnb.settings import Choice, Float, Int, require
from ddnb.synset import SyntheticSet

_PAPERS = {
    "forgetting": "Toneva et al. (ICLR 2019): forgetting events; 000 §5.1 Forgetting baseline",
    "el2n": "Paul et al. (NeurIPS 2021): EL2N", "grand": "Paul et al. (NeurIPS 2021): GraNd",
    "logits": "000 Tab. 4: true-class logit of a trained model", "cscore": "Jiang et al. (ICML 2021): c-score",
}
_WINDOW_PAPER = "SelMatch (Lee et al., ICML 2024) sliding window; 000 §3.1 and the oracle window of 000 Tab. 1"
ORACLE_BETAS = tuple(round(0.1 * i, 1) for i in range(10))  # the official sliding-window scripts sweep 0 .. 0.9


def resolve_scores(dataset: Any, kind: str, scores: Scores | None, budget: str, seed: int, device: Any) -> Scores:
    """The given scores (checked: this kind, this dataset) or freshly computed / cached ones."""
    require("score", kind, Choice(*KINDS))
    if scores is None:
        return compute_scores(dataset, kind, budget=budget, seed=seed, device=device)
    if not isinstance(scores, Scores):
        raise ValueError(f"scores must be None or a ddnb.scores.Scores, got {type(scores).__name__}")
    if scores.kind != kind:
        raise ValueError(f"scores of kind {scores.kind!r} given where {kind!r} scores are needed; allowed: "
                         f"{kind!r} scores (compute_scores(dataset, {kind!r}))")
    scores.check_dataset(dataset)
    return scores


def _check_room(ranking: Sequence[Tensor], need: int, what: str) -> None:
    """ValueError when a class has fewer scored images than `need`."""
    smallest = min(len(r) for r in ranking)
    if need > smallest:
        raise ValueError(f"{what} needs {need} scored images per class but the smallest class has {smallest}; "
                         f"allowed: at most {smallest}")


def _ranked(name: str) -> Callable[..., tuple[SyntheticSet, Tensor]]:
    """The registered entry point of selection by score `name`: the first `ipc` of each class in `order`."""

    def entry(dataset: Any, ipc: int, seed: int = 0, device: Any = None, order: str = "hard",
              scores: Scores | None = None, budget: str = "cpu") -> tuple[SyntheticSet, Tensor]:
        require("order", order, Choice("easy", "hard"))
        s = resolve_scores(dataset, name, scores, budget, seed, device)
        ranking = class_ranking(s, order)
        _check_room(ranking, ipc, f"ipc={ipc}")
        indices = torch.cat([r[:ipc] for r in ranking])
        return SyntheticSet.from_real(dataset, indices, name, seed=seed, ipc=ipc, order=order,
                                      scores=s.summary()), indices

    entry.__name__ = f"select_{name}"
    entry.__doc__ = f"The hardest (order='hard') or easiest `ipc` images of each class by their {name} score."
    return entry


for _kind in _PAPERS:
    register(_kind, "select", paper=_PAPERS[_kind],
             summary=f"{_kind} score: the hardest (order='hard') or easiest ipc images per class")(_ranked(_kind))


def window_split(ranking: Sequence[Tensor], ipc: int, alpha: float, beta: float) -> tuple[Tensor, Tensor]:
    """SelMatch's window over per-class hardest-first rankings: (real part, distillation part), class 0 first.

    As the official code: the window starts at rank int(ipc * beta) of each class (beta in [0, 1] moves
    it by at most one window length, not across the class); its first ipc - int(ipc * alpha) images are
    the real part (D_real, the harder ones), the next int(ipc * alpha) the part to distill (D_pre-distill).
    """
    require("ipc", ipc, Int(1))
    require("alpha", alpha, Float(0, 1))
    require("beta", beta, Float(0, 1))
    start, n_distill = int(ipc * beta), int(ipc * alpha)
    _check_room(ranking, start + ipc, f"ipc={ipc} with beta={beta} (a window over ranks {start}..{start + ipc - 1})")
    n_real = ipc - n_distill
    real = torch.cat([r[start:start + n_real] for r in ranking])
    distill = torch.cat([r[start + n_real:start + ipc] for r in ranking])
    return real, distill


def class_window(scores: Scores, cls: int, ipc: int, alpha: float, beta: float) -> tuple[Tensor, Tensor]:
    """The window of one class: (D_real, D_pre-distill) training indices, each hardest first."""
    ranking = class_ranking(scores, "hard")
    require("cls", cls, Int(0, len(ranking) - 1))
    return window_split([ranking[cls]], ipc, alpha, beta)


def _window_parts(ipc: int, beta: float, alpha: float, s: Scores) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """The window's real and distillation indices and its record for provenance."""
    real, distill = window_split(class_ranking(s, "hard"), ipc, alpha, beta)
    record = {"beta": beta, "alpha": alpha, "start": int(ipc * beta), "n_real": ipc - int(ipc * alpha),
              "n_distill": int(ipc * alpha)}
    return real, distill, record


@register("window", "select", paper=_WINDOW_PAPER)
def window(dataset: Any, ipc: int, seed: int = 0, device: Any = None, beta: float = 0.5, alpha: float = 0.0,
           score: str = "forgetting", scores: Scores | None = None,
           budget: str = "cpu") -> tuple[SyntheticSet, Tensor]:
    """SelMatch's sliding window: per class, ranks int(ipc * beta) .. of the hardest-first order; the real part.

    beta in [0, 1] is read as the official code reads it: the window starts at rank int(ipc * beta) of
    each class sorted hardest first (forgetting descending, c-score ascending), so beta = 0 takes the
    ipc hardest and beta = 1 the next ipc. alpha in [0, 1): the share of the window left for distillation;
    the set holds the first (1 - alpha) share (real images) and its provenance records the distillation
    part's indices ("distill_indices"). alpha = 0 is the selection-only window of the official eval.py.
    """
    s = resolve_scores(dataset, score, scores, budget, seed, device)
    real, distill, record = _window_parts(ipc, beta, alpha, s)
    if real.numel() == 0:
        raise ValueError(f"alpha={alpha} leaves no real images in the window; allowed for selection: alpha in [0, 1)")
    synset = SyntheticSet.from_real(dataset, real, "window", seed=seed, ipc=ipc, window=record,
                                    distill_indices=distill.tolist(), scores=s.summary())
    return synset, real


def validation_split(dataset: Any, val_fraction: float, seed: int) -> tuple[Any, Tensor]:
    """(training part with x_val / y_val set, its indices into dataset.x_train): the dataset's own
    validation split when it has one, else a stratified `val_fraction` of its training set (never the test set)."""
    import dataclasses

    from ddnb.data import stratified_split

    if dataset.x_val is not None:
        return dataset, torch.arange(len(dataset.x_train))
    require("val_fraction", val_fraction, Float(0, 1, low_open=True, high_open=True))
    kept, held = stratified_split(dataset.y_train, val_fraction, seed)
    dev = dataset.x_train.device
    part = dataclasses.replace(dataset.subset(kept), x_val=dataset.x_train[held.to(dev)],
                               y_val=dataset.y_train[held.to(dev)])
    return part, kept


def oracle_window(dataset: Any, ipc: int, betas: Sequence[float] = ORACLE_BETAS, score: str = "forgetting",
                  scores: Scores | None = None, budget: str = "cpu", val_fraction: float = 0.2, seed: int = 0,
                  eval_seeds: int = 2, epochs: int = 300, arch: str = "convnet3", device: Any = None,
                  progress: bool = True) -> tuple[float, pd.DataFrame]:
    """The window start beta with the best validation accuracy, and the sweep as a table (one row per beta).

    The validation split is the dataset's own (load_dataset(val_fraction=...)) or a stratified
    `val_fraction` carved from its training set by `seed`; the scores (given or computed) must be
    those of the remaining training part. Each beta's window (alpha 0) trains `eval_seeds` fresh `arch`
    models under the "dc" protocol for `epochs` epochs; ties go to the smallest beta.
    """
    from ddnb.models import get_model
    from ddnb.train import evaluate, resolve_protocol, train_model
    from ddnb.utils import resolve_device

    train_part, _ = validation_split(dataset, val_fraction, seed)
    s = resolve_scores(train_part, score, scores, budget, seed, device)
    betas = [require("beta", b, Float(0, 1)) for b in betas]
    require("eval_seeds", eval_seeds, Int(1))
    ranking = class_ranking(s, "hard")
    for b in betas:  # every window fits before any training starts
        window_split(ranking, ipc, 0.0, b)
    settings = resolve_protocol("dc", epochs, False, {})
    train_kw = {k: settings[k] for k in ("optimizer", "lr", "momentum", "weight_decay", "batch_size", "schedule")}
    dev = resolve_device(device)
    c, h, _ = train_part.image_shape
    rows = []
    for b in betas:
        idx = window_split(ranking, ipc, 0.0, b)[0].to(train_part.x_train.device)
        x, y = train_part.x_train[idx].to(dev), train_part.y_train[idx].to(dev)
        accs = []
        for e in range(eval_seeds):
            with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
                torch.manual_seed(e)
                model = get_model(arch, c, train_part.num_classes, h).to(dev)
            train_model(model, x, y, epochs=epochs, seed=e, device=dev, progress=progress, **train_kw)
            accs.append(100.0 * evaluate(model, train_part.x_val, train_part.y_val))
        rows.append({"beta": b, "start": int(ipc * b), "val_acc_mean": float(np.mean(accs)),
                     "val_acc_std": float(np.std(accs)), **{f"val_acc_seed{e}": a for e, a in enumerate(accs)}})
    table = pd.DataFrame(rows)
    best = float(table.loc[table["val_acc_mean"].idxmax(), "beta"])
    return best, table


@register("oracle_window", "select", paper=_WINDOW_PAPER)
def oracle_window_select(dataset: Any, ipc: int, seed: int = 0, device: Any = None,
                         betas: Sequence[float] = ORACLE_BETAS, score: str = "forgetting", scores: Scores | None = None,
                         budget: str = "cpu", val_fraction: float = 0.2, eval_seeds: int = 2,
                         epochs: int = 300) -> tuple[SyntheticSet, Tensor]:
    """The window at the beta with the best validation accuracy (oracle_window); the sweep in provenance."""
    beta, table = oracle_window(dataset, ipc, betas, score, scores, budget, val_fraction, seed, eval_seeds, epochs,
                                device=device, progress=False)
    train_part, kept = validation_split(dataset, val_fraction, seed)
    s = resolve_scores(train_part, score, scores, budget, seed, device)
    real, _, record = _window_parts(ipc, beta, 0.0, s)
    indices = kept[real]
    synset = SyntheticSet.from_real(dataset, indices, "oracle_window", seed=seed, ipc=ipc, window=record,
                                    sweep=table.to_dict("records"), scores=s.summary())
    return synset, indices
