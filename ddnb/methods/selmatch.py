"""SelMatch: selection-based initialization and partial updates for high IPC (Lee et al., ICML 2024);
paper 000 §3.1, Eq. 1.

Each class is ranked hardest first by a difficulty score (`score`, computed by
`ddnb.scores.compute_scores` at `score_budget`, cached). A window of `ipc` images starts at rank
int(ipc * beta) (`ddnb.methods.selection.window_split`, the official rule); its first
ipc - int(ipc * alpha) images (the harder ones) are D_real and stay real and frozen, the next
int(ipc * alpha) (D_pre-distill) initialize the images that are updated (D_distill). The matching
loss is computed on the union D_real ∪ D_distill (Eq. 1) and its gradient reaches the D_distill
rows only: they are two tensors, and only the D_distill one is a leaf the optimizer updates.
`match_real=False` distills D_pre-distill alone (000 §3.2 setting 3); D_real is still returned.

Base distillers: `base="mtt"` as the paper (trajectories from `ddnb.experts.train_experts`, the
functional student of `ddnb.methods.mtt`); `base="dm"` (distribution matching, `ddnb.methods.dm`)
for the `smoke` and `cpu` budgets, a documented deviation: MTT's unrolled student costs minutes per
iteration at high IPC on a CPU. `lr_img` / `iterations` None take the base's value at the budget.

`paper` follows the official SelMatch distill.py (Yongalls/SelMatch): 10,000 iterations, image lr
1000, syn_steps 55, expert_epochs 2, max_start_epoch 80, syn_lr initialized at 0.001, batch_syn 125,
100 experts x 100 epochs; alpha / beta None take the official scripts' values for the IPC whose
share of its class is nearest (`official_window`). Deviations: the official code distills with
ConvNetBN and evaluates with ResNet-18-BN; ddnb distills with ConvNet-3 (instance norm) and evaluates
with whatever `evaluate_synset` is given. The set lists each class's D_real rows first, then its
D_distill rows; provenance holds `real_rows`, `real_indices` and `distill_indices` (the D_pre-distill
images) and the window.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ddnb.methods import dm, mtt, register
from ddnb.methods.base import build_synset, check_ipc, in_loop_eval
from ddnb.methods.loop import History, RunOptions, run_loop, seed_iteration
from ddnb.methods.selection import window_split
from ddnb.models import get_model
from ddnb.scores import BUDGETS as SCORE_BUDGETS
from ddnb.scores import KINDS, class_ranking, compute_scores
from ddnb.settings import Bool, Choice, Float, Int, Positive
from ddnb.train import protocol_record
from ddnb.utils import resolve_device, to_device

# The official scripts' (alpha, beta) by IPC as a share of the class: CIFAR-10 (5,000 per class) IPC 250, 500,
# 1000, 1500 (scripts/distill/CIFAR10.sh); Fashion-MNIST IPC 300 and 600 (5 %, 10 %) take the first two.
OFFICIAL_WINDOW = {0.05: (0.6, 0.5), 0.10: (0.2, 0.3), 0.20: (0.1, 0.2), 0.30: (0.1, 0.2)}
# The base's own lr_img and iterations per budget (used when the setting is None)
BASE_DEFAULTS = {
    "mtt": {"smoke": (100.0, 4), "cpu": (1000.0, 50), "paper": (1000.0, 10_000)},
    "dm": {"smoke": (1.0, 5), "cpu": (1.0, 30), "paper": (1.0, 20_000)},
}
_OWN = dict(alpha=0.5, beta=0.5, score="forgetting", score_budget="cpu", score_seed=0, match_real=True,
            lr_img=None, iterations=None, batch_real=64, real_chunk=256, channels_last=True)
_OWN_SPEC = dict(base=Choice("mtt", "dm"), alpha=Float(0, 1, optional=True), beta=Float(0, 1, optional=True),
                 score=Choice(*KINDS), score_budget=Choice(*SCORE_BUDGETS), score_seed=Int(0), match_real=Bool(),
                 lr_img=Positive(optional=True), iterations=Int(0, optional=True), batch_real=Int(1),
                 real_chunk=Int(1), channels_last=Bool())
_MTT_KEYS = [k for k in mtt.MTT_SPEC if k not in ("init", "factor", "lr_img", "iterations")]
SPEC = {**{k: mtt.MTT_SPEC[k] for k in _MTT_KEYS}, **_OWN_SPEC}


def _budget(budget: str, **changes: Any) -> dict[str, Any]:
    """A SelMatch budget: MTT's settings of that budget (the mtt base), DM's few, SelMatch's own."""
    return {**{k: mtt.MTT_BUDGETS[budget][k] for k in _MTT_KEYS}, **_OWN, **changes}


BUDGETS = {
    "smoke": _budget("smoke", base="dm", score_budget="smoke", batch_real=16),  # seconds on digits
    "cpu": _budget("cpu", base="dm"),  # DM base: minutes on Fashion-MNIST at IPC 20-50 on 2 cores (estimate)
    "paper": _budget("paper", base="mtt", alpha=None, beta=None, score_budget="paper", n_experts=100,
                     expert_train_epochs=100, syn_steps=55, expert_epochs=2, max_start_epoch=80, lr_teacher=0.001,
                     batch_syn=125, batch_real=256),
}


def official_window(ipc: int, class_size: int) -> tuple[float, float]:
    """(alpha, beta) of the official script whose IPC share of its class is nearest ipc / class_size."""
    share = ipc / class_size
    return OFFICIAL_WINDOW[min(OFFICIAL_WINDOW, key=lambda s: abs(s - share))]


def _check(s: dict[str, Any]) -> None:
    """ValueError for MTT start epochs beyond the experts (base mtt only)."""
    if s["base"] == "mtt":
        mtt.check_start_epochs(s)


def _window(data: Any, ipc: int, s: dict[str, Any], dev: torch.device, progress: bool) -> tuple[Tensor, Tensor, Any]:
    """(D_real indices, D_pre-distill indices, the scores) of the window, class 0 first."""
    check_ipc(data, ipc)
    alpha, beta = s["alpha"], s["beta"]
    if alpha is None or beta is None:
        official = official_window(ipc, min(len(i) for i in data.class_indices()))
        alpha, beta = (official[0] if alpha is None else alpha), (official[1] if beta is None else beta)
        s.update(alpha=alpha, beta=beta)
    scores = compute_scores(data, s["score"], budget=s["score_budget"], seed=s["score_seed"], device=dev,
                            progress=progress)
    real, distill = window_split(class_ranking(scores, "hard"), ipc, alpha, beta)
    if distill.numel() == 0:
        raise ValueError(f"alpha={alpha} leaves no image to distill at ipc={ipc}; allowed: alpha >= 1/ipc "
                         f"({1 / ipc:.3g}); for the window alone use ddnb.select('window', ...)")
    return real, distill, scores


def _union(real: Tensor, distill: Tensor, k: int) -> list[Tensor]:
    """Per class, its D_real rows then its D_distill rows (both tensors class-sorted)."""
    return [torch.cat([r, d]) for r, d in zip(real.chunk(k), distill.chunk(k))]


def _mtt_step(data: Any, s: dict[str, Any], state: dict[str, Any], real: Tensor, y_real: Tensor, y_distill: Tensor,
              seed: int, dev: torch.device, progress: bool) -> Any:
    """The MTT iteration on D_real ∪ D_distill (D_real a constant): step(it) -> loss."""
    from ddnb.matching import trajectory_loss

    trajs = mtt.get_trajectories(data, s, dev, progress)
    c, size, _ = data.image_shape
    student = get_model(s["arch"], c, data.num_classes, size).to(dev).train()
    distill, syn_lr = state["images"], state["syn_lr"]
    optimizers = [state["opt_img"], state["opt_lr"]]

    def step(it: int) -> Tensor:
        g = seed_iteration(seed, it)
        traj = trajs[int(torch.randint(len(trajs), (1,), generator=g))]
        t = int(torch.randint(*mtt.start_epoch_bounds(s, it), (1,), generator=g))
        start, target = to_device(traj[t], dev), to_device(traj[t + s["expert_epochs"]], dev)
        x = torch.cat([distill, real]) if s["match_real"] else distill
        y = torch.cat([y_distill, y_real]) if s["match_real"] else y_distill
        batches = mtt.student_batches(x, y, s["syn_steps"], s["batch_syn"], s["dsa_strategy"] or None)
        loss = trajectory_loss(mtt.student_unroll(student, start, batches, syn_lr), start, target)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in optimizers:
            opt.step()
        return loss.detach()

    return step


def _dm_step(data: Any, s: dict[str, Any], state: dict[str, Any], real: Tensor, seed: int, dev: torch.device) -> Any:
    """The DM iteration: class-mean embeddings of D_real ∪ D_distill (D_real a constant) vs real batches."""
    fresh = dm.ReinitNet(s["arch"], data, dev, s["channels_last"], False)
    distill, opt, k = state["images"], state["opt_img"], data.num_classes
    strategy, fmt = s["dsa_strategy"], s["channels_last"]

    def step(it: int) -> Tensor:
        g = seed_iteration(seed, it)
        fresh.renew()
        seeds = dm.class_seeds(g, k)
        mean_real = dm.real_class_means(fresh.embed, dm.sample_real(data, s["batch_real"], g), seeds, strategy,
                                        s["real_chunk"], fmt)
        syn = _union(real, distill, k) if s["match_real"] else list(distill.chunk(k))
        loss = dm.dm_loss(mean_real, dm.syn_class_means(fresh.embed, syn, seeds, strategy, fmt))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


@register("selmatch", "distill", budgets=BUDGETS, spec=SPEC, check=_check,
          paper="SelMatch (Lee et al., ICML 2024) official distill.py and scripts/distill: MTT base, 10,000 "
                "iterations, lr_img 1000, syn_steps 55, expert_epochs 2, max_start_epoch 80, syn_lr init 0.001, "
                "batch_syn 125, 100 experts x 100 epochs, alpha/beta per IPC share (CIFAR-10 scripts); "
                "ConvNet-3 (instance norm) instead of ConvNetBN; 000 §3.1",
          summary="SelMatch: sliding-window init; the harder share stays real, the easier share is distilled")
def distill_selmatch(dataset: Any, ipc: int, *, seed: int, device: Any, budget: str, settings: dict[str, Any],
                     run: RunOptions) -> tuple[Any, History]:
    """SelMatch: window init by difficulty, D_real frozen, D_distill updated by MTT or DM on the union."""
    s, dev = dict(settings), resolve_device(device)
    data = dataset.to(dev)
    default_lr, default_its = BASE_DEFAULTS[s["base"]][budget]
    s.update(lr_img=s["lr_img"] or default_lr, iterations=default_its if s["iterations"] is None else s["iterations"])
    real_idx, distill_idx, scores = _window(data, ipc, s, dev, run.progress)
    k, n_distill = data.num_classes, int(ipc * s["alpha"])
    real = data.x_train[real_idx.to(data.x_train.device)].detach().clone().to(dev)
    distill = data.x_train[distill_idx.to(data.x_train.device)].detach().clone().to(dev)
    y_real = torch.arange(k, device=dev).repeat_interleave(ipc - n_distill)
    y_distill = torch.arange(k, device=dev).repeat_interleave(n_distill)
    if s["base"] == "mtt":
        state = mtt.learnable_state(distill, None, s)
        step = _mtt_step(data, s, state, real, y_real, y_distill, seed, dev, run.progress)
    else:
        distill.requires_grad_(True)
        state = {"images": distill, "opt_img": torch.optim.SGD([distill], lr=s["lr_img"], momentum=s["momentum"])}
        step = _dm_step(data, s, state, real, seed, dev)
    window = {"alpha": s["alpha"], "beta": s["beta"], "start": int(ipc * s["beta"]), "n_real": ipc - n_distill,
              "n_distill": n_distill}

    def current(st: dict[str, Any] | None = None) -> Any:
        extra: dict[str, Any] = {}
        if s["base"] == "mtt":
            syn_lr = state["syn_lr"].item()
            extra = {"syn_lr": syn_lr, "eval_protocol": protocol_record("dc", dsa=s["dsa_strategy"] or False,
                                                                        lr=syn_lr)}
        images = torch.cat(_union(real, distill.detach(), k))
        rows = [c * ipc + j for c in range(k) for j in range(ipc - n_distill)]
        return build_synset(images, torch.arange(k).repeat_interleave(ipc), data, method="selmatch", settings=s,
                            seed=seed, budget=budget, window=window, real_rows=rows, real_indices=real_idx.tolist(),
                            distill_indices=distill_idx.tolist(), scores=scores.summary(), **extra)

    evaluate = in_loop_eval(current, data, dev, arch=s["arch"], seeds=s["eval_seeds"])
    history = run_loop(step, state, method="selmatch", settings=s, n_iters=s["iterations"], run=run,
                       eval_fn=evaluate, identity=dict(dataset=data.name, ipc=ipc, seed=seed, budget=budget))
    return current(), history


def real_rows(synset: Any) -> Tensor:
    """Boolean mask of a SelMatch set's D_real rows (from its provenance); the others are D_distill."""
    if "real_rows" not in synset.provenance:
        raise ValueError(f"the set (method {synset.provenance.get('method')!r}) has no 'real_rows' in its provenance; "
                         "allowed: a set made by ddnb.distill('selmatch', ...) or ddnb.analysis_selmatch")
    mask = torch.zeros(synset.n_stored, dtype=torch.bool)
    mask[torch.as_tensor(synset.provenance["real_rows"], dtype=torch.long)] = True
    return mask
