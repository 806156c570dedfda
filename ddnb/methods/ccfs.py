"""CCFS: curriculum coarse-to-fine selection for high-IPC distillation (paper 000 §4, Alg. 1), and
self-evolved selection (000 §5.2).

CCFS distills ceil(alpha * IPC) images per class with a registered distiller (`base`, default DM),
then runs J curriculum phases. Phase j trains a filter model from scratch on S_{j-1} (the set so
far), keeps the scored training images it misclassifies that were not selected before (D_mis^j),
and adds per class the k_j simplest of them by a pre-computed difficulty score. k_j is
floor((IPC - n_distill) / J); the remainder goes one image each to the first phases, as the official
code's `curriculum_arrangement` does, so the set ends with exactly IPC images per class.

Choices the paper leaves open follow the official code (CYDaaa30/CCFS `ccfs_cifar10.py`):
  * `teacher_correct` (on by default, as the official code): a candidate must also be classified
    correctly by the teacher, a model trained on the whole training set (`ddnb.experts`, cached).
  * The filter trains under the run's evaluation protocol (`protocol`): "sl+kd" (the official code:
    KL to the teacher's logits at T = 20) or "hl"; filter epochs = evaluation epochs (`epochs`).
  * Fine stage "simple" ranks by the score ascending in difficulty (forgetting ascending, c-score
    descending); score "logits" ranks by the current filter's true-class logit (higher = simpler),
    as the paper's Tab. 4 and the official `selection_logits`. Ties keep ascending index order.
  * A class with fewer than k_j candidates gives all of them; the rest is filled with its next
    unselected scored images in the same order (the official code would leave the set unbalanced);
    the fill is recorded per phase ("filled").
Candidates are the scored images (the score budget's pool; the whole training set at smoke/paper);
the filter's training accuracy is measured on them. Filter outputs, the teacher, the distilled start
and the scores are cached on disk ($DDNB_CACHE), so re-running with another ablation retrains nothing
it already has. Per phase, the History (`evals`) and the set's provenance (`phases`) hold the filter's
train/test accuracy, |D_mis|, the selected indices and their scores.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ddnb.methods import get_method, register, resolve_budget
from ddnb.methods.base import build_synset
from ddnb.methods.loop import History, RunOptions, iteration_seed
from ddnb.settings import Bool, Choice, Float, Int, Text
from ddnb.utils import resolve_device

COARSE = ("misclassified", "classified")
FINE = ("simple", "hard", "random")
SCORES = ("forgetting", "logits", "cscore")
FILE_KIND = "ddnb.CCFSFilter"
_PAPER = "CCFS (Chen et al., CVPR 2025): 000 §4 Alg. 1, §5; official code CYDaaa30/CCFS"
_COMMON = dict(base="dm", alpha=0.2, curricula=3, score="forgetting", coarse="misclassified", fine="simple",
               teacher_correct=True, protocol="sl+kd", arch="convnet3")
SPEC = dict(base=Text(), base_budget=Choice("smoke", "cpu", "paper"), alpha=Float(0, 1), curricula=Int(1),
            score=Choice(*SCORES), coarse=Choice(*COARSE), fine=Choice(*FINE), teacher_correct=Bool(),
            protocol=Choice("sl+kd", "hl"), arch=Text(), epochs=Int(1), teacher_epochs=Int(1),
            score_budget=Choice("smoke", "cpu", "paper"))
BUDGETS = {
    "smoke": {**_COMMON, "base_budget": "smoke", "score_budget": "smoke", "epochs": 2, "teacher_epochs": 2},
    # a guess for Fashion-MNIST on 2 cores (not measured): filters of 30 epochs on a few hundred images per class
    "cpu": {**_COMMON, "base_budget": "cpu", "score_budget": "cpu", "epochs": 30, "teacher_epochs": 10},
    # 000 §5.1 / official scripts: filter = evaluation epochs (500 at 5-10 %), teacher 200 epochs, forgetting
    "paper": {**_COMMON, "base_budget": "paper", "score_budget": "paper", "epochs": 500, "teacher_epochs": 200},
}
FitFilter = Callable[[Tensor, Tensor, int], nn.Module]


def _check(settings: dict[str, Any]) -> None:
    """ValueError for a base that is no registered distiller (or lacks the base budget)."""
    from ddnb.methods import list_methods

    allowed = [m["name"] for m in list_methods() if m["kind"] == "distill" and m["name"] != "ccfs"]
    base = settings["base"]
    if base not in allowed:
        raise ValueError(f"ccfs setting base={base!r} is not a registered distiller; allowed: {', '.join(allowed)}")
    budgets = get_method(base, "distill").budgets
    if settings["base_budget"] not in budgets:
        raise ValueError(f"ccfs setting base_budget={settings['base_budget']!r} is not a budget of {base!r}; "
                         f"allowed: {', '.join(budgets)}")


def phase_sizes(ipc: int, alpha: float, curricula: int) -> tuple[int, list[int]]:
    """(distilled images per class ceil(alpha * IPC), k_j per phase); ValueError when a k_j would be 0."""
    n_distill = math.ceil(round(alpha * ipc, 9))
    real = ipc - n_distill
    if real // curricula == 0:
        raise ValueError(f"ipc={ipc} with alpha={alpha} leaves {real} real images per class for curricula="
                         f"{curricula} phases: k_j = floor({real}/{curricula}) = 0, so phases "
                         f"{real + 1}..{curricula} would select nothing; allowed: curricula <= {real} "
                         f"(or a larger ipc / smaller alpha)")
    return n_distill, [real // curricula + (j < real % curricula) for j in range(curricula)]


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
class _Context:
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


def curriculum(ctx: _Context, x0: Tensor, y0: Tensor, taken0: Tensor, ks: list[int],
               progress: bool = False) -> tuple[Tensor, list[dict[str, Any]]]:
    """Alg. 1's loop from S_0 = (x0, y0) with `taken0` already chosen: all chosen indices and per-phase records."""
    from tqdm.auto import tqdm

    data, s = ctx.dataset, ctx.settings
    y = data.y_train.cpu()
    taken = torch.zeros(len(y), dtype=torch.bool)
    taken[taken0] = True
    allowed = _teacher_correct(ctx) if s["teacher_correct"] else None
    selected, records = [taken0], []
    x_s, y_s = x0, y0
    for j, k in enumerate(tqdm(ks, desc="ccfs phases", disable=not progress), start=1):
        start = time.perf_counter()
        logits, test_acc, loss = _filter_outputs(ctx, x_s, y_s, j)
        pred = torch.full_like(y, -1)
        pred[ctx.universe] = logits.argmax(1)
        key, raw = ctx.base_key.clone(), ctx.raw.clone()
        if s["score"] == "logits":
            raw[ctx.universe] = logits.gather(1, y[ctx.universe].view(-1, 1)).view(-1).double()
            key = -raw
        gen = torch.Generator().manual_seed(iteration_seed(ctx.seed, j))
        picks, rec = select_phase(pred, y, ctx.universe, key, taken, k, data.num_classes, coarse=s["coarse"],
                                  fine=s["fine"], allowed=allowed, generator=gen)
        taken[picks] = True
        selected.append(picks)
        dev_idx = picks.to(data.x_train.device)
        x_s = torch.cat([x_s, data.x_train[dev_idx].to(x_s.device)])
        y_s = torch.cat([y_s, data.y_train[dev_idx].to(y_s.device)])
        train_acc = 100.0 * float((pred[ctx.universe] == y[ctx.universe]).double().mean())
        records.append({"phase": j, "k": k, "n_train_set": int(len(y_s) - len(picks)), "filter_train_acc": train_acc,
                        "filter_test_acc": test_acc, "filter_loss": loss, **rec, "indices": picks.tolist(),
                        "scores": raw[picks].tolist(), "seconds": time.perf_counter() - start})
    return torch.cat(selected), records


def module_outputs(model: nn.Module, dataset: Any, universe: Tensor) -> tuple[Tensor, float]:
    """A filter's logits on the training images `universe` (CPU) and its test accuracy (%)."""
    from ddnb.score_kinds import logits_of

    dev = next(model.parameters()).device
    logits = logits_of(model, dataset.x_train[universe.to(dataset.x_train.device)].to(dev)).float().cpu()
    test = logits_of(model, dataset.x_test.to(dev)).argmax(1).cpu()
    return logits, 100.0 * float((test == dataset.y_test.cpu()).double().mean())


def _filter_outputs(ctx: _Context, x_s: Tensor, y_s: Tensor, phase: int) -> tuple[Tensor, float, float]:
    """(logits on the universe, test accuracy, final training loss) of phase `phase`'s filter, cached on disk."""
    if ctx.fit_filter is not None:
        return (*module_outputs(ctx.fit_filter(x_s, y_s, phase), ctx.dataset, ctx.universe), float("nan"))
    from ddnb.synset import load_tensor_file, save_tensor_file

    s = ctx.settings
    config = {"set": _digest(x_s, y_s), "universe": _digest(ctx.universe), "seed": iteration_seed(ctx.seed, phase),
              "teacher": _teacher_config(s) if s["protocol"] == "sl+kd" else None,
              **{k: s[k] for k in ("protocol", "arch", "epochs")}}
    path = cache_dir("filters") / f"{ctx.dataset.name}_{_digest(json.dumps(config, sort_keys=True))}.safetensors"
    if path.is_file():
        tensors, meta = load_tensor_file(path, FILE_KIND)
        if meta.get("config") == config:
            return tensors["logits"], meta["test_acc"], meta["loss"]
    model, loss = _train_filter(ctx, x_s, y_s, config["seed"])
    logits, test_acc = module_outputs(model, ctx.dataset, ctx.universe)
    save_tensor_file(path, {"logits": logits}, {"config": config, "test_acc": test_acc, "loss": loss}, FILE_KIND)
    return logits, test_acc, loss


def _train_filter(ctx: _Context, x_s: Tensor, y_s: Tensor, seed: int) -> tuple[nn.Module, float]:
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
    """Where CCFS caches `what` (filters, distilled): $DDNB_CACHE/ccfs/<what>, else ~/.cache/ddnb/ccfs/<what>."""
    root = os.environ.get("DDNB_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "ddnb") / "ccfs" / what


def _digest(*parts: Any) -> str:
    """A short SHA-256 of tensors (their float32 bytes) and strings."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes() if isinstance(p, Tensor) else str(p).encode())
    return h.hexdigest()[:20]


def _teacher_config(s: dict[str, Any]) -> dict[str, Any]:
    """The training settings of the teacher (one expert on the whole training set, seed 0)."""
    return dict(arch=s["arch"], n=1, epochs=s["teacher_epochs"], lr=0.01, momentum=0.9, weight_decay=5e-4,
                dsa=True, seed=0, schedule="multistep")


def teacher(dataset: Any, settings: dict[str, Any], device: Any = None) -> nn.Module:
    """The teacher of a run's settings: a model trained on the whole training set (cached as an expert)."""
    from ddnb.experts import load_params, train_experts
    from ddnb.models import get_model

    dev = resolve_device(device)
    traj = train_experts(dataset, device=dev, progress=False, **_teacher_config(settings))[0]
    c, h, _ = dataset.image_shape
    model = load_params(get_model(settings["arch"], c, dataset.num_classes, h), traj[-1]).to(dev)
    return model.eval().requires_grad_(False)


def eval_kwargs(dataset: Any, settings: dict[str, Any], device: Any = None) -> dict[str, Any]:
    """evaluate_synset arguments of a run's protocol: protocol, epochs and (sl+kd) the teacher."""
    extra = {"teacher": teacher(dataset, settings, device)} if settings["protocol"] == "sl+kd" else {}
    return {"protocol": settings["protocol"], "epochs": settings["epochs"], **extra}


def _teacher_correct(ctx: _Context) -> Tensor:
    """Per training image: whether the teacher classifies it correctly (universe images only; others False)."""
    logits, _ = module_outputs(ctx.teacher, ctx.dataset, ctx.universe)
    y = ctx.dataset.y_train.cpu()
    ok = torch.zeros(len(y), dtype=torch.bool)
    ok[ctx.universe] = logits.argmax(1) == y[ctx.universe]
    return ok


def pre_scores(dataset: Any, settings: dict[str, Any], device: Any = None) -> Any:
    """The pre-computed scores a run ranks by (seed 0, the score budget): forgetting for score "logits"
    (its pool is the candidate set; the ranking itself then comes from each filter)."""
    from ddnb.scores import compute_scores

    kind = "forgetting" if settings["score"] == "logits" else settings["score"]
    return compute_scores(dataset, kind, budget=settings["score_budget"], seed=0, device=device, progress=False)


def context(dataset: Any, settings: dict[str, Any], seed: int, device: Any, fit_filter: FitFilter | None = None,
            scores: Any = None, teacher_model: nn.Module | None = None) -> _Context:
    """Everything a run's phases share: scores (ranking key and raw values per training image), the teacher
    (given, else the cached one when the protocol or teacher_correct needs it); fit_filter(x, y, phase)
    replaces the cached filter training (a stub in tests)."""
    dev = resolve_device(device)
    sc = scores if scores is not None else pre_scores(dataset, settings, dev)
    n = len(dataset.x_train)
    key, raw = torch.full((n,), float("nan"), dtype=torch.float64), torch.full((n,), float("nan"), dtype=torch.float64)
    key[sc.indices], raw[sc.indices] = sc.difficulty().double(), sc.values.double()
    needs = settings["protocol"] == "sl+kd" or settings["teacher_correct"]
    model = teacher_model if teacher_model is not None or not needs else teacher(dataset, settings, dev)
    return _Context(dataset, settings, seed, dev, sc, sc.indices.cpu(), key, raw, model, fit_filter)


def distilled_start(dataset: Any, settings: dict[str, Any], n: int, seed: int, device: Any) -> Any:
    """D_distill: `base` at `base_budget` with n images per class, cached on disk (None when n = 0)."""
    import ddnb
    from ddnb.experts import data_fingerprint
    from ddnb.synset import SyntheticSet

    if n == 0:
        return None
    config = {"base": settings["base"], "budget": settings["base_budget"], "ipc": n, "seed": seed,
              "data": data_fingerprint(dataset), "version": ddnb.__version__}
    path = cache_dir("distilled") / f"{dataset.name}_{_digest(json.dumps(config, sort_keys=True))}.safetensors"
    if path.is_file():
        found = SyntheticSet.load(path)
        if found.provenance.get("ccfs_cache") == config:
            return found
    syn, _ = ddnb.distill(settings["base"], dataset, n, budget=settings["base_budget"], seed=seed, device=device,
                          progress=False)
    syn.provenance["ccfs_cache"] = config
    syn.save(path)
    return syn


@register("ccfs", "distill", budgets=BUDGETS, spec=SPEC, check=_check, paper=_PAPER)
def distill_ccfs(dataset: Any, ipc: int, *, seed: int, device: Any, budget: str, settings: dict[str, Any],
                 run: RunOptions) -> tuple[Any, History]:
    """CCFS: a distilled start, then J phases adding the simplest misclassified real images per class."""
    from ddnb.train import protocol_record

    s, dev = settings, resolve_device(device)
    n_distill, ks = phase_sizes(ipc, s["alpha"], s["curricula"])
    base = distilled_start(dataset, s, n_distill, seed, dev)
    ctx = context(dataset, s, seed, dev)
    x0, y0 = (base.decoded()[0], base.hard_labels) if base is not None else (dataset.x_train[:0], dataset.y_train[:0])
    chosen, records = curriculum(ctx, x0.detach().cpu(), y0.cpu(), torch.zeros(0, dtype=torch.long), ks, run.progress)
    x_real = dataset.x_train[chosen.to(dataset.x_train.device)].cpu()
    images = torch.cat([x0.detach().cpu(), x_real])
    labels = torch.cat([y0.cpu(), dataset.y_train[chosen.to(dataset.y_train.device)].cpu()])
    synset = build_synset(images, labels, dataset, method="ccfs", settings=s, seed=seed, budget=budget, phases=records,
                          real_indices=chosen.tolist(), n_distill=n_distill, scores=_summary(ctx),
                          base={"method": s["base"], "budget": s["base_budget"], "ipc": n_distill},
                          eval_protocol=protocol_record(s["protocol"], epochs=s["epochs"]))
    history = History("ccfs", dict(s), loss=[r["filter_loss"] for r in records],
                      seconds=[r["seconds"] for r in records], evals=records)
    if run.out_dir is not None:
        history.save(Path(run.out_dir) / "history.json")
    return synset, history


def _summary(ctx: _Context) -> dict[str, Any]:
    """The provenance record of the scores a run ranked by."""
    return {**ctx.scores.summary(), "ranked_by": ctx.settings["score"]}


@register("self_evolved", "select", paper=_PAPER + " §5.2 (self-evolved selection)")
def self_evolved(dataset: Any, ipc: int, seed: int = 0, device: Any = None, budget: str = "cpu", beta: float = 0.5,
                 settings: dict[str, Any] | None = None) -> tuple[Any, Tensor]:
    """Self-evolved selection: the sliding-window coreset (alpha share) expanded by CCFS's phases; real images only.

    `settings` override the CCFS budget's (alpha: the window's share of IPC; base is not used); the
    window is `ddnb.select("window", ipc=ceil(alpha * IPC), beta=beta)` on the run's pre-computed scores.
    """
    from ddnb.methods.selection import window
    from ddnb.synset import SyntheticSet
    from ddnb.train import protocol_record

    s = resolve_budget(get_method("ccfs"), budget, dict(settings or {}))
    n_start, ks = phase_sizes(ipc, s["alpha"], s["curricula"])
    ctx = context(dataset, s, seed, device)
    start = torch.zeros(0, dtype=torch.long)
    if n_start:
        start = window(dataset, n_start, seed=seed, beta=beta, score=ctx.scores.kind, scores=ctx.scores)[1].cpu()
    idx = start.to(dataset.x_train.device)
    chosen, records = curriculum(ctx, dataset.x_train[idx].cpu(), dataset.y_train[idx].cpu(), start, ks)
    synset = SyntheticSet.from_real(dataset, chosen, "self_evolved", seed=seed, ipc=ipc, params=s, budget=budget,
                                    window={"beta": beta, "ipc": n_start, "indices": start.tolist()}, phases=records,
                                    scores=_summary(ctx), eval_protocol=protocol_record(s["protocol"], epochs=s["epochs"]))
    return synset, chosen
