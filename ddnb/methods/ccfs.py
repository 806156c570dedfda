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
it already has. Per phase, the History (`records`) and the set's provenance (`phases`) hold the filter's
train/test accuracy, |D_mis|, the selected indices and their scores.

The phases are the iterations of the checkpointed loop (`run_loop`): the distilled start comes
first, then iteration it runs phase it + 1 (`ddnb.methods.ccfs_phases`) and returns the filter's
cross-entropy on the scored images as its loss. The state holds the set pre-allocated at IPC per
class (rows filled as phases complete), its labels, the mask of chosen training images, the number
of rows filled and the phase records (JSON), so a run resumed from a phase's checkpoint ends with
the set an uninterrupted run makes; in-loop evaluation trains on the set as far as it is filled.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ddnb.methods import get_method, register, resolve_budget
from ddnb.methods.base import build_synset, in_loop_eval
from ddnb.methods.ccfs_phases import (FitFilter, PhaseContext, cache_dir, curriculum, digest, run_phase,
                                      teacher_config, teacher_correct)
from ddnb.methods.loop import History, RunOptions, run_loop
from ddnb.settings import Bool, Choice, Float, Int, Text
from ddnb.utils import resolve_device

COARSE = ("misclassified", "classified")
FINE = ("simple", "hard", "random")
SCORES = ("forgetting", "logits", "cscore")
_PAPER = "CCFS (Chen et al., CVPR 2025): 000 §4 Alg. 1, §5; official code CYDaaa30/CCFS"
_COMMON = dict(base="dm", alpha=0.2, curricula=3, score="forgetting", coarse="misclassified", fine="simple",
               teacher_correct=True, protocol="sl+kd", arch="convnet3", base_iterations=None)
SPEC = dict(base=Text(), base_budget=Choice("smoke", "cpu", "paper"), alpha=Float(0, 1), curricula=Int(1),
            score=Choice(*SCORES), coarse=Choice(*COARSE), fine=Choice(*FINE), teacher_correct=Bool(),
            protocol=Choice("sl+kd", "hl"), arch=Text(), epochs=Int(1), teacher_epochs=Int(1),
            score_budget=Choice("smoke", "cpu", "paper"), base_iterations=Int(1, optional=True))
BUDGETS = {
    "smoke": {**_COMMON, "base_budget": "smoke", "score_budget": "smoke", "epochs": 2, "teacher_epochs": 2},
    # Fashion-MNIST on 2 cores: DM's cpu settings cut to 50 iterations (about 75 s a start), filters and evaluations
    # of 20 epochs on at most a few hundred images, a teacher of 2 epochs over the whole training set
    "cpu": {**_COMMON, "base_budget": "cpu", "score_budget": "cpu", "epochs": 20, "teacher_epochs": 2,
            "base_iterations": 50},
    # 000 §5.1 / official scripts: filter = evaluation epochs (500 at 5-10 %), teacher 200 epochs, forgetting
    "paper": {**_COMMON, "base_budget": "paper", "score_budget": "paper", "epochs": 500, "teacher_epochs": 200},
}


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


def teacher(dataset: Any, settings: dict[str, Any], device: Any = None) -> nn.Module:
    """The teacher of a run's settings: a model trained on the whole training set (cached as an expert)."""
    from ddnb.experts import load_params, train_experts
    from ddnb.models import get_model

    dev = resolve_device(device)
    traj = train_experts(dataset, device=dev, progress=False, **teacher_config(settings))[0]
    c, h, _ = dataset.image_shape
    model = load_params(get_model(settings["arch"], c, dataset.num_classes, h), traj[-1]).to(dev)
    return model.eval().requires_grad_(False)


def eval_kwargs(dataset: Any, settings: dict[str, Any], device: Any = None) -> dict[str, Any]:
    """evaluate_synset arguments of a run's protocol: protocol, epochs and (sl+kd) the teacher."""
    extra = {"teacher": teacher(dataset, settings, device)} if settings["protocol"] == "sl+kd" else {}
    return {"protocol": settings["protocol"], "epochs": settings["epochs"], **extra}


def pre_scores(dataset: Any, settings: dict[str, Any], device: Any = None) -> Any:
    """The pre-computed scores a run ranks by (seed 0, the score budget): forgetting for score "logits"
    (its pool is the candidate set; the ranking itself then comes from each filter)."""
    from ddnb.scores import compute_scores

    kind = "forgetting" if settings["score"] == "logits" else settings["score"]
    return compute_scores(dataset, kind, budget=settings["score_budget"], seed=0, device=device, progress=False)


def context(dataset: Any, settings: dict[str, Any], seed: int, device: Any, fit_filter: FitFilter | None = None,
            scores: Any = None, teacher_model: nn.Module | None = None) -> PhaseContext:
    """Everything a run's phases share: scores (ranking key and raw values per training image), the teacher
    (given, else the cached one when the protocol or teacher_correct needs it); fit_filter(x, y, phase)
    replaces the cached filter training (a stub in tests)."""
    from ddnb.evalcache import tensor_digest
    from ddnb.experts import data_fingerprint

    dev = resolve_device(device)
    sc = scores if scores is not None else pre_scores(dataset, settings, dev)
    n = len(dataset.x_train)
    key, raw = torch.full((n,), float("nan"), dtype=torch.float64), torch.full((n,), float("nan"), dtype=torch.float64)
    key[sc.indices], raw[sc.indices] = sc.difficulty().double(), sc.values.double()
    needs = settings["protocol"] == "sl+kd" or settings["teacher_correct"]
    built = teacher_model is None and needs
    model = teacher(dataset, settings, dev) if built else teacher_model
    teacher_key = digest(json.dumps({"data": data_fingerprint(dataset), **teacher_config(settings)},
                                    sort_keys=True)) if built else None
    test_key = tensor_digest(dataset.x_test, dataset.y_test)[:20]
    return PhaseContext(dataset, settings, seed, dev, sc, sc.indices.cpu(), key, raw, model, fit_filter, teacher_key,
                        test_key)


def base_overrides(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings for the base distiller: its iteration count replaced by `base_iterations` when that is set."""
    if settings["base_iterations"] is None:
        return {}
    return {get_method(settings["base"], "distill").iterations_setting: settings["base_iterations"]}


def distilled_start(dataset: Any, settings: dict[str, Any], n: int, seed: int, device: Any) -> Any:
    """D_distill: `base` at `base_budget` with n images per class, cached on disk (None when n = 0)."""
    import ddnb
    from ddnb.experts import data_fingerprint
    from ddnb.synset import SyntheticSet

    if n == 0:
        return None
    config = {"base": settings["base"], "budget": settings["base_budget"], "ipc": n, "seed": seed,
              "data": data_fingerprint(dataset), "version": ddnb.__version__, **base_overrides(settings)}
    path = cache_dir("distilled") / f"{dataset.name}_{digest(json.dumps(config, sort_keys=True))}.safetensors"
    if path.is_file():
        found = SyntheticSet.load(path)
        if found.provenance.get("ccfs_cache") == config:
            return found
    syn, _ = ddnb.distill(settings["base"], dataset, n, budget=settings["base_budget"], seed=seed, device=device,
                          progress=False, **base_overrides(settings))
    syn.provenance["ccfs_cache"] = config
    syn.save(path)
    return syn


@register("ccfs", "distill", budgets=BUDGETS, spec=SPEC, check=_check, paper=_PAPER, iterations_setting="curricula")
def distill_ccfs(dataset: Any, ipc: int, *, seed: int, device: Any, budget: str, settings: dict[str, Any],
                 run: RunOptions) -> tuple[Any, History]:
    """CCFS: a distilled start, then J phases adding the simplest misclassified real images per class."""
    from ddnb.train import protocol_record

    s, dev, k = settings, resolve_device(device), dataset.num_classes
    n_distill, ks = phase_sizes(ipc, s["alpha"], s["curricula"])
    base = distilled_start(dataset, s, n_distill, seed, dev)
    ctx = context(dataset, s, seed, dev)
    allowed = teacher_correct(ctx) if s["teacher_correct"] else None
    images = torch.zeros(ipc * k, *dataset.image_shape, dtype=dataset.x_train.dtype)
    labels = torch.zeros(ipc * k, dtype=torch.long)
    if base is not None:
        images[:n_distill * k], labels[:n_distill * k] = base.decoded()[0].detach().cpu(), base.hard_labels.cpu()
    taken = torch.zeros(len(dataset.y_train), dtype=torch.bool)
    state: dict[str, Any] = {"images": images, "labels": labels, "taken": taken, "filled": n_distill * k,
                             "records": "[]"}

    def step(it: int) -> float:
        n = state["filled"]
        if not bool(torch.isfinite(images[:n]).all()):  # no filter trains on NaN/inf: the loop stops here
            return float("nan")
        picks, record, loss = run_phase(ctx, it + 1, ks[it], images[:n], labels[:n], taken, allowed)
        idx = picks.to(dataset.x_train.device)
        taken[picks] = True
        images[n:n + len(picks)], labels[n:n + len(picks)] = dataset.x_train[idx].cpu(), dataset.y_train[idx].cpu()
        state["filled"], state["records"] = n + len(picks), json.dumps([*json.loads(state["records"]), record])
        return loss

    def current(st: dict[str, Any] | None = None) -> Any:
        n, records = state["filled"], json.loads(state["records"])
        return build_synset(images[:n].clone(), labels[:n].clone(), dataset, method="ccfs", settings=s, seed=seed,
                            budget=budget, phases=records, real_indices=[i for r in records for i in r["indices"]],
                            n_distill=n_distill, scores=_summary(ctx),
                            base={"method": s["base"], "budget": s["base_budget"], "ipc": n_distill,
                                  "iterations": s["base_iterations"]},
                            eval_protocol=protocol_record(s["protocol"], epochs=s["epochs"]))

    kd = {"teacher": ctx.teacher} if s["protocol"] == "sl+kd" else {}
    evaluate = in_loop_eval(current, dataset, dev, arch=s["arch"], seeds=1, protocol=s["protocol"],
                            epochs=s["epochs"], **kd)
    history = run_loop(step, state, method="ccfs", settings=s, n_iters=s["curricula"], run=run, eval_fn=evaluate,
                       identity=dict(dataset=dataset.name, ipc=ipc, seed=seed, budget=budget))
    history.records = json.loads(state["records"])
    if run.out_dir is not None:
        history.save(Path(run.out_dir) / "history.json")
    return current(), history


def _summary(ctx: PhaseContext) -> dict[str, Any]:
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
                                    scores=_summary(ctx),
                                    eval_protocol=protocol_record(s["protocol"], epochs=s["epochs"]))
    return synset, chosen
