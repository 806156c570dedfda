"""CCFS's curriculum phases (paper 000 Alg. 1): one phase's coarse-to-fine selection, the filter it
trains on the set so far (cached on disk), and the loop over phases that self-evolved selection runs.

`ddnb.methods.ccfs` runs the same phases (`run_phase`) as the iterations of the checkpointed loop.
Phase j's randomness comes from `seed_iteration(seed, j)` (a function of seed and phase only), so a
resumed run selects what an uninterrupted one does.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ddnb.methods.loop import iteration_seed, seed_iteration

FILE_KIND = "ddnb.CCFSFilter"
CORRECT_KIND = "ddnb.CCFSTeacherCorrect"
FitFilter = Callable[[Tensor, Tensor, int], nn.Module]


def select_phase(pred: Tensor, y: Tensor, universe: Tensor, key: Tensor, taken: Tensor, k: int, num_classes: int,
                 *, coarse: str = "misclassified", fine: str = "simple", allowed: Tensor | None = None,
                 generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Any]]:
    """One phase's coarse-to-fine selection: per class, k images (class 0 first) and a record.

    pred / y / taken / allowed are per training image (taken: selected before; allowed: the teacher
    classifies it correctly, None: no condition); universe the candidate indices and key their
    difficulty (lower = simpler). The coarse group is the misclassified (or classified) untaken
    universe images that are allowed; fine "simple" takes the lowest keys, "hard" the highest, "random"
    a draw from `generator`. A class short of k candidates is filled from its other untaken images.
    """
    mis = pred[universe] != y[universe]
    free = ~taken[universe]
    group = (mis if coarse == "misclassified" else ~mis) & free
    if allowed is not None:
        group &= allowed[universe]
    chosen, filled = [], []
    for c in range(num_classes):
        of_c = y[universe] == c
        picks = _ordered(torch.nonzero(group & of_c).view(-1), key, fine, generator)[:k]
        filled.append(k - len(picks))
        if filled[-1]:
            rest = torch.nonzero(free & of_c & ~group).view(-1)
            picks = torch.cat([picks, _ordered(rest, key, fine, generator)[:filled[-1]]])
        chosen.append(universe[picks])
    return torch.cat(chosen), {"n_mis": int((mis & free).sum()), "n_candidates": int(group.sum()), "filled": filled}


def _ordered(members: Tensor, key: Tensor, fine: str, generator: torch.Generator | None) -> Tensor:
    """Positions `members` in the fine stage's order: key ascending (simple), descending (hard) or random."""
    if fine == "random":
        return members[torch.randperm(len(members), generator=generator)]
    k = key[members] if fine == "simple" else -key[members]
    return members[torch.sort(k, stable=True).indices]


@dataclass
class PhaseContext:
    """What every phase of one run shares."""

    dataset: Any
    settings: dict[str, Any]
    seed: int
    device: torch.device
    scores: Any
    universe: Tensor
    base_key: Tensor
    raw: Tensor
    teacher: nn.Module | None
    fit_filter: FitFilter | None
    teacher_key: str | None = None  # what the teacher was trained from (its cache entry); None: given, not cached
    test_key: str = ""  # a digest of the test split the filters are tested on (part of their cache key)


def run_phase(ctx: PhaseContext, j: int, k: int, x_s: Tensor, y_s: Tensor, taken: Tensor,
              allowed: Tensor | None) -> tuple[Tensor, dict[str, Any], float]:
    """Phase j on S_{j-1} = (x_s, y_s): the k picks per class, its record, and the filter's cross-entropy on
    the scored images (finite even for an untrained filter: the loop's loss)."""
    data, s = ctx.dataset, ctx.settings
    start = time.perf_counter()
    gen = seed_iteration(ctx.seed, j)
    logits, test_acc, loss = filter_outputs(ctx, x_s, y_s, j)
    y = data.y_train.cpu()
    pred = torch.full_like(y, -1)
    pred[ctx.universe] = logits.argmax(1)
    key, raw = ctx.base_key.clone(), ctx.raw.clone()
    if s["score"] == "logits":
        raw[ctx.universe] = logits.gather(1, y[ctx.universe].view(-1, 1)).view(-1).double()
        key = -raw
    picks, rec = select_phase(pred, y, ctx.universe, key, taken, k, data.num_classes, coarse=s["coarse"],
                              fine=s["fine"], allowed=allowed, generator=gen)
    train_acc = 100.0 * float((pred[ctx.universe] == y[ctx.universe]).double().mean())
    record = {"phase": j, "k": k, "n_train_set": len(y_s), "filter_train_acc": train_acc, "filter_test_acc": test_acc,
              "filter_loss": loss, **rec, "indices": picks.tolist(), "scores": raw[picks].tolist(),
              "seconds": time.perf_counter() - start}
    return picks, record, float(nn.functional.cross_entropy(logits.double(), y[ctx.universe]))


def curriculum(ctx: PhaseContext, x0: Tensor, y0: Tensor, taken0: Tensor, ks: list[int],
               progress: bool = False) -> tuple[Tensor, list[dict[str, Any]]]:
    """Alg. 1's loop from S_0 = (x0, y0) with `taken0` already chosen: all chosen indices and per-phase records."""
    from tqdm.auto import tqdm

    data = ctx.dataset
    taken = torch.zeros(len(data.y_train), dtype=torch.bool)
    taken[taken0] = True
    allowed = teacher_correct(ctx) if ctx.settings["teacher_correct"] else None
    selected, records = [taken0], []
    x_s, y_s = x0, y0
    for j, k in enumerate(tqdm(ks, desc="ccfs phases", disable=not progress), start=1):
        picks, record, _ = run_phase(ctx, j, k, x_s, y_s, taken, allowed)
        taken[picks] = True
        selected.append(picks)
        dev_idx = picks.to(data.x_train.device)
        x_s = torch.cat([x_s, data.x_train[dev_idx].to(x_s.device)])
        y_s = torch.cat([y_s, data.y_train[dev_idx].to(y_s.device)])
        records.append(record)
    return torch.cat(selected), records


def universe_logits(model: nn.Module, dataset: Any, universe: Tensor) -> Tensor:
    """A model's logits on the training images `universe` (float32, CPU)."""
    from ddnb.score_kinds import logits_of

    dev = next(model.parameters()).device
    return logits_of(model, dataset.x_train[universe.to(dataset.x_train.device)].to(dev)).float().cpu()


def test_accuracy(model: nn.Module, dataset: Any) -> float:
    """A model's accuracy (%) on the dataset's test split (a notebook may have cut it to a subset)."""
    from ddnb.score_kinds import logits_of

    test = logits_of(model, dataset.x_test.to(next(model.parameters()).device)).argmax(1).cpu()
    return 100.0 * float((test == dataset.y_test.cpu()).double().mean())


def teacher_correct(ctx: PhaseContext) -> Tensor:
    """Per training image: whether the teacher classifies it correctly (universe images only; others False).
    Cached on disk for a teacher trained from settings (every run of a notebook shares it); a given one is not."""
    from ddnb.synset import load_tensor_file, save_tensor_file

    config = {"teacher": ctx.teacher_key, "universe": digest(ctx.universe)}
    path = cache_dir("teacher_correct") / f"{ctx.dataset.name}_{digest(json.dumps(config, sort_keys=True))}.safetensors"
    if ctx.teacher_key is not None and path.is_file():
        tensors, meta = load_tensor_file(path, CORRECT_KIND)
        if meta.get("config") == config:
            return tensors["correct"].cpu()  # on the host, as a computed mask (a no-op: files load on the CPU)
    y = ctx.dataset.y_train.cpu()
    ok = torch.zeros(len(y), dtype=torch.bool)
    ok[ctx.universe] = universe_logits(ctx.teacher, ctx.dataset, ctx.universe).argmax(1) == y[ctx.universe]
    if ctx.teacher_key is not None:
        save_tensor_file(path, {"correct": ok}, {"config": config}, CORRECT_KIND)
    return ok


def filter_outputs(ctx: PhaseContext, x_s: Tensor, y_s: Tensor, phase: int) -> tuple[Tensor, float, float]:
    """(logits on the universe, test accuracy, final training loss) of phase `phase`'s filter, cached on disk."""
    if ctx.fit_filter is not None:
        model = ctx.fit_filter(x_s, y_s, phase)
        return universe_logits(model, ctx.dataset, ctx.universe), test_accuracy(model, ctx.dataset), float("nan")
    from ddnb.synset import load_tensor_file, save_tensor_file

    s = ctx.settings
    config = {"set": digest(x_s, y_s), "universe": digest(ctx.universe), "seed": iteration_seed(ctx.seed, phase),
              "test": ctx.test_key,
              "teacher": teacher_config(s) if s["protocol"] == "sl+kd" else None,
              **{k: s[k] for k in ("protocol", "arch", "epochs")}}
    path = cache_dir("filters") / f"{ctx.dataset.name}_{digest(json.dumps(config, sort_keys=True))}.safetensors"
    if path.is_file():
        tensors, meta = load_tensor_file(path, FILE_KIND)
        if meta.get("config") == config:
            return tensors["logits"].cpu(), meta["test_acc"], meta["loss"]
    model, loss = _train_filter(ctx, x_s, y_s, config["seed"])
    logits, test_acc = universe_logits(model, ctx.dataset, ctx.universe), test_accuracy(model, ctx.dataset)
    save_tensor_file(path, {"logits": logits}, {"config": config, "test_acc": test_acc, "loss": loss}, FILE_KIND)
    return logits, test_acc, loss


def _train_filter(ctx: PhaseContext, x_s: Tensor, y_s: Tensor, seed: int) -> tuple[nn.Module, float]:
    """A filter trained from scratch on (x_s, y_s) under the run's protocol; with its final loss."""
    from ddnb.models import get_model
    from ddnb.train import resolve_protocol, train_model

    s, data = ctx.settings, ctx.dataset
    settings = resolve_protocol(s["protocol"], s["epochs"], None, {"teacher": ctx.teacher} if ctx.teacher else {})
    c, h, _ = data.image_shape
    with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
        torch.manual_seed(seed)
        model = get_model(s["arch"], c, data.num_classes, h).to(ctx.device)
    if len(x_s) == 0:  # alpha = 0: S_0 is empty, the first filter is the untrained network
        return model, float("nan")
    train_kw = {k: v for k, v in settings.items() if k != "name"}  # every other entry is a train_model argument
    hist = train_model(model, x_s.to(ctx.device), y_s.to(ctx.device), seed=seed, device=ctx.device, **train_kw)
    return model, hist["train_loss"][-1]


def cache_dir(what: str) -> Path:
    """Where CCFS caches `what` (filters, distilled, teacher_correct): $DDNB_CACHE/ccfs/<what>, else
    ~/.cache/ddnb/ccfs/<what>."""
    root = os.environ.get("DDNB_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "ddnb") / "ccfs" / what


def digest(*parts: Any) -> str:
    """A short SHA-256 of tensors (their float32 bytes) and strings."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes() if isinstance(p, Tensor) else str(p).encode())
    return h.hexdigest()[:20]


def teacher_config(s: dict[str, Any]) -> dict[str, Any]:
    """The training settings of the teacher (one expert on the whole training set, seed 0)."""
    return dict(arch=s["arch"], n=1, epochs=s["teacher_epochs"], lr=0.01, momentum=0.9, weight_decay=5e-4,
                dsa=True, seed=0, schedule="multistep")
