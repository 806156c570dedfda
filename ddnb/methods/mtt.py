"""MTT: Dataset Distillation by Matching Training Trajectories (Cazenavette et al., CVPR 2022) and
DATM: Difficulty-Aligned Trajectory Matching (Guo et al., ICLR 2024); paper 004 §1.2 Eq. 4.

Each iteration picks an expert trajectory (`ddnb.experts.train_experts`, cached on disk) and a
start epoch t, starts a student at the expert's parameters theta*_t, trains it `syn_steps` SGD
steps on the synthetic set with a learnable learning rate (syn_lr), and matches the result to
theta*_{t+M}, M = `expert_epochs`, with the normalized distance ||theta_N - theta*_{t+M}||^2 /
||theta*_t - theta*_{t+M}||^2 (`ddnb.matching.trajectory_loss`). The student steps are done
functionally on one flat parameter vector (`torch.func.functional_call`, as the reference's
ReparamModule), so the loss back-propagates through every step into the pixels and syn_lr, each
updated by its own SGD (momentum 0.5). MTT draws t uniformly from [0, max_start_epoch).

DATM adds (1) a lower bound min_start_epoch and an upper bound that grows linearly from
current_max_start_epoch to max_start_epoch over the first expansion_end_epoch iterations, and
(2) learnable soft labels: logits initialized as the experts' logits on the real init images
(only images the label expert classifies correctly are used; each image's logits are averaged
over the experts that classify it correctly), trained with their own SGD (lr_y, momentum_y)
against a soft cross-entropy; an update is skipped when the loss exceeds `threshold`
(reference: NUS-HPC-AI-Lab/DATM distill/DATM.py).

As the reference evaluates its sets with the learned learning rate (`args.lr_net = syn_lr`), every
set carries DC's evaluation protocol with lr = syn_lr and the run's DSA (`synset.eval_protocol`,
used by `evaluate_synset` unless told otherwise).

What changed vs before (issue 11): sets are evaluated at the learned syn_lr (was the protocol's 0.01);
syn_lr was already in the provenance.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ddnb.augment import DSA_STRATEGY, dsa, factor_decode, factor_encode, factor_labels
from ddnb.matching import trajectory_loss
from ddnb.methods import register
from ddnb.methods.base import build_synset, check_ipc, in_loop_eval, init_synthetic, real_subset, variant_entry
from ddnb.methods.loop import History, RunOptions, run_loop, seed_iteration
from ddnb.models import get_model
from ddnb.settings import Choice, Float, Int, Positive, Strategy, Text
from ddnb.train import protocol_record
from ddnb.utils import resolve_device, to_device

LossFn = Callable[[Tensor, Tensor], Tensor]

# Experts (MTT buffer.py defaults). expert_subset: real images per class the experts train on (None =
# the whole training set; the cpu budget uses a subset so that experts take minutes). expert_seed is
# fixed, so runs with different seeds share one cached set of experts, as MTT shares one buffer.
_EXPERTS = dict(n_experts=100, expert_train_epochs=50, expert_lr=0.01, expert_batch=256, expert_dsa=True,
                expert_subset=None, expert_seed=0, expert_cache_dir=None)
_MTT_COMMON = dict(arch="convnet3", momentum=0.5, lr_teacher=0.01, batch_syn=None, dsa_strategy=DSA_STRATEGY,
                   init="real", factor=1, eval_seeds=1)
_SMOKE_EXPERTS = dict(_EXPERTS, n_experts=1, expert_train_epochs=2)
_CPU_EXPERTS = dict(_EXPERTS, n_experts=2, expert_train_epochs=5, expert_subset=300)
MTT_BUDGETS = {
    "smoke": {**_MTT_COMMON, **_SMOKE_EXPERTS, "iterations": 4, "syn_steps": 4, "expert_epochs": 1,
              "max_start_epoch": 1, "lr_img": 100.0, "lr_lr": 1e-5},
    "cpu": {**_MTT_COMMON, **_CPU_EXPERTS, "iterations": 50, "syn_steps": 10, "expert_epochs": 2,
            "max_start_epoch": 3, "lr_img": 1000.0, "lr_lr": 1e-5},
    "paper": {**_MTT_COMMON, **_EXPERTS, "iterations": 5000, "syn_steps": 30, "expert_epochs": 2,
              "max_start_epoch": 20, "lr_img": 1000.0, "lr_lr": 1e-5},
}
_DATM_EXTRA = dict(min_start_epoch=0, expansion_end_epoch=1000, lr_y=2.0, momentum_y=0.9, threshold=1.0,
                   label_expert_epoch=-1)


def _datm(budget: str, **changes: Any) -> dict[str, Any]:
    """A DATM budget: the MTT one plus DATM's settings (DATM always inits from correctly classified reals)."""
    return {k: v for k, v in {**MTT_BUDGETS[budget], **_DATM_EXTRA, **changes}.items() if k != "init"}


MTT_SPEC = dict(arch=Text(), momentum=Float(0, 1, high_open=True), lr_teacher=Positive(),
                batch_syn=Int(1, optional=True), dsa_strategy=Strategy(), init=Choice("real", "noise"), factor=Int(1),
                eval_seeds=Int(1),
                n_experts=Int(1), expert_train_epochs=Int(1), expert_lr=Positive(), expert_batch=Int(1),
                expert_dsa=Strategy(optional=False, bool_ok=True), expert_subset=Int(1, optional=True),
                expert_seed=Int(0), expert_cache_dir=Text(optional=True), iterations=Int(0), syn_steps=Int(1),
                expert_epochs=Int(1), max_start_epoch=Int(1), lr_img=Positive(), lr_lr=Float(0))
DATM_SPEC = {**{k: v for k, v in MTT_SPEC.items() if k != "init"}, "min_start_epoch": Int(0),
             "current_max_start_epoch": Int(1), "expansion_end_epoch": Int(1), "lr_y": Positive(),
             "momentum_y": Float(0, 1, high_open=True), "threshold": Positive(), "label_expert_epoch": Int(None)}
DATM_BUDGETS = {
    "smoke": _datm("smoke", current_max_start_epoch=1, expansion_end_epoch=4),
    "cpu": _datm("cpu", current_max_start_epoch=2, expansion_end_epoch=25),
    "paper": _datm("paper", expert_train_epochs=100, iterations=10_000, syn_steps=80, lr_img=100.0, batch_syn=100,
                   current_max_start_epoch=10),
}


# ---------------------------------------------------------------- the functional student

def unflatten_params(model: nn.Module, flat: Tensor) -> dict[str, Tensor]:
    """Views of a flat vector shaped as `model`'s named parameters (the order of ddnb.experts.flatten_params)."""
    named = list(model.named_parameters())
    total = sum(p.numel() for _, p in named)
    if flat.dim() != 1 or flat.numel() != total:
        raise ValueError(f"flat parameters have shape {tuple(flat.shape)}, but the model has {total} parameters; "
                         f"expected a 1-D vector of {total} values")
    out, offset = {}, 0
    for name, p in named:
        out[name] = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    return out


def student_unroll(model: nn.Module, start: Tensor, batches: Iterable[tuple[Tensor, Tensor]], lr: Tensor,
                   loss_fn: LossFn = F.cross_entropy, create_graph: bool = True) -> Tensor:
    """Flat parameters after one SGD step per batch from `start`, differentiable in the data, labels and lr."""
    w = start if start.requires_grad else start.detach().clone().requires_grad_(True)
    for x, y in batches:
        loss = loss_fn(functional_call(model, unflatten_params(model, w), (x,)), y)
        (grad,) = torch.autograd.grad(loss, w, create_graph=create_graph)
        w = w - lr * grad
    return w


def student_batches(x: Tensor, y: Tensor, steps: int, batch_size: int | None,
                    strategy: str | None) -> Iterator[tuple[Tensor, Tensor]]:
    """`steps` minibatches drawn as the reference (reshuffle when a pass is used up), DSA per sample."""
    chunks: list[Tensor] = []
    for _ in range(steps):
        if not chunks:
            chunks = list(torch.randperm(x.shape[0], device=x.device).split(batch_size or x.shape[0]))
        idx = chunks.pop()
        xb = dsa(x[idx], strategy) if strategy else x[idx]
        yield xb, y[idx]


def soft_cross_entropy(logits: Tensor, target_logits: Tensor) -> Tensor:
    """DATM's loss: cross-entropy against softmax(target_logits), averaged over the batch."""
    return -(F.softmax(target_logits, -1) * F.log_softmax(logits, -1)).sum(-1).mean()


# ---------------------------------------------------------------- start epochs and experts

def start_epoch_bounds(s: dict[str, Any], it: int) -> tuple[int, int]:
    """[low, high) of the start epoch at iteration `it`: MTT [0, max); DATM's lower and growing upper bound."""
    if "current_max_start_epoch" not in s:
        return 0, s["max_start_epoch"]
    grown = s["current_max_start_epoch"] + int(
        (s["max_start_epoch"] - s["current_max_start_epoch"]) * it / s["expansion_end_epoch"])
    return s["min_start_epoch"], min(grown, s["max_start_epoch"])


def get_trajectories(data: Any, s: dict[str, Any], device: torch.device, progress: bool) -> list[list[Tensor]]:
    """The expert trajectories (train_experts, cached; kept on the CPU, one epoch moved to the device at a time)."""
    from ddnb.experts import train_experts

    return train_experts(real_subset(data, s["expert_subset"], s["expert_seed"]), arch=s["arch"],
                         n=s["n_experts"], epochs=s["expert_train_epochs"], lr=s["expert_lr"],
                         batch_size=s["expert_batch"], dsa=s["expert_dsa"], seed=s["expert_seed"],
                         cache_dir=s["expert_cache_dir"], device=device, progress=progress)


# ---------------------------------------------------------------- DATM initialization

@torch.no_grad()
def _expert_logits(model: nn.Module, flat: Tensor, x: Tensor, batch: int = 512) -> Tensor:
    """Logits of the expert with parameters `flat` on x (eval mode, in batches)."""
    model.eval()
    params = unflatten_params(model, flat)
    return torch.cat([functional_call(model, params, (x[i:i + batch],)) for i in range(0, x.shape[0], batch)])


def correct_real_init(data: Any, model: nn.Module, expert: Tensor, n_per_class: int, seed: int) -> Tensor:
    """Indices of n_per_class random real images per class that `expert` classifies correctly (DATM)."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([_correct_of_class(data, model, expert, c, idx.cpu()[torch.randperm(len(idx), generator=g)],
                                        n_per_class) for c, idx in enumerate(data.class_indices())])


def _correct_of_class(data: Any, model: nn.Module, expert: Tensor, c: int, candidates: Tensor, n: int,
                      chunk: int = 256) -> Tensor:
    """The first n candidates (indices of class c, in order) that the expert classifies as c."""
    good: list[Tensor] = []
    for lo in range(0, len(candidates), chunk):
        idx = candidates[lo:lo + chunk]
        pred = _expert_logits(model, expert, data.x_train[idx.to(data.x_train.device)]).argmax(1).cpu()
        good.append(idx[pred == c])
        if sum(len(t) for t in good) >= n:
            return torch.cat(good)[:n]
    found = sum(len(t) for t in good)
    raise ValueError(f"the label expert classifies only {found} training images of class {c} correctly, "
                     f"but DATM needs {n}; train the experts longer or lower ipc/factor")


def averaged_correct_logits(model: nn.Module, experts: list[Tensor], x: Tensor, y: Tensor) -> Tensor:
    """Per image, the mean logits over the experts that classify it correctly (DATM's label init)."""
    total, count = 0.0, torch.zeros(x.shape[0], 1, device=x.device)
    for flat in experts:
        logits = _expert_logits(model, flat, x)
        ok = (logits.argmax(1) == y).unsqueeze(1).float()
        total = total + logits * ok
        count += ok
    if bool((count == 0).any()):
        raise ValueError("some init images are classified correctly by no expert; cannot initialize soft labels")
    return total / count


def datm_init(data: Any, ipc: int, s: dict[str, Any], trajs: list[list[Tensor]], seed: int,
              device: torch.device) -> tuple[Tensor, Tensor]:
    """Stored images from correctly classified real images and their soft labels (logits), DATM-style."""
    f = s["factor"]
    check_ipc(data, ipc, f)
    c, h, _ = data.image_shape
    model = get_model(s["arch"], c, data.num_classes, h).to(device)
    finals = [t[s["label_expert_epoch"]].to(device) for t in trajs]
    n = ipc * f * f
    idx = correct_real_init(data, model, finals[0], n, seed)
    real = data.x_train[idx.to(data.x_train.device)].to(device)
    y = data.y_train[idx.to(data.y_train.device)].to(device)
    logits = averaged_correct_logits(model, finals, real, y)
    if f == 1:
        return real.clone(), logits
    k = data.num_classes
    images = torch.cat([factor_encode(real[i * n:(i + 1) * n], f) for i in range(k)])
    labels = torch.cat([logits[i * n:(i + 1) * n].reshape(f * f, ipc, -1).mean(0) for i in range(k)])
    return images, labels


# ---------------------------------------------------------------- the loop

def check_start_epochs(s: dict[str, Any]) -> None:
    """ValueError for MTT/DATM start epochs that leave no room for expert_epochs in the experts' trajectories."""
    n_epochs = s["expert_train_epochs"]
    if s["max_start_epoch"] + s["expert_epochs"] > n_epochs:
        raise ValueError(f"max_start_epoch ({s['max_start_epoch']}) + expert_epochs ({s['expert_epochs']}) "
                         f"must be <= the experts' epochs ({n_epochs}); raise expert_train_epochs or lower them")
    if "current_max_start_epoch" not in s:
        return
    if not 0 <= s["min_start_epoch"] < s["current_max_start_epoch"] <= s["max_start_epoch"]:
        raise ValueError(f"datm needs 0 <= min_start_epoch < current_max_start_epoch <= max_start_epoch, got "
                         f"{s['min_start_epoch']}, {s['current_max_start_epoch']}, {s['max_start_epoch']}")
    if not -(n_epochs + 1) <= s["label_expert_epoch"] <= n_epochs:
        raise ValueError(f"datm setting label_expert_epoch must index the expert trajectory "
                         f"(-{n_epochs + 1}..{n_epochs}), got {s['label_expert_epoch']!r}")


def _result(images: Tensor, labels: Tensor, data: Any, s: dict[str, Any], name: str, seed: int, budget: str,
            state: dict[str, Any], label_kind: str) -> Any:
    """The SyntheticSet with the learned syn_lr in its provenance and its evaluation protocol (DC's
    with lr = syn_lr and the run's DSA, as the reference evaluates); soft logits for DATM."""
    syn_lr = state["syn_lr"].item()
    protocol = protocol_record("dc", dsa=s["dsa_strategy"] or False, lr=syn_lr)
    synset = build_synset(images, labels, data, method=name, settings=s, seed=seed, budget=budget,
                          factor=s["factor"], syn_lr=syn_lr, eval_protocol=protocol)
    return dataclasses.replace(synset, label_kind=label_kind) if synset.label_kind != label_kind else synset


def learnable_state(images: Tensor, soft_labels: Tensor | None, s: dict[str, Any]) -> dict[str, Any]:
    """What the loop learns, each with its own SGD: pixels, syn_lr (init lr_teacher) and DATM's soft labels."""
    images.requires_grad_(True)
    syn_lr = torch.tensor(float(s["lr_teacher"]), device=images.device, requires_grad=True)
    state: dict[str, Any] = {"images": images, "syn_lr": syn_lr,
                             "opt_img": torch.optim.SGD([images], lr=s["lr_img"], momentum=s["momentum"]),
                             "opt_lr": torch.optim.SGD([syn_lr], lr=s["lr_lr"], momentum=s["momentum"])}
    if soft_labels is not None:
        soft_labels.requires_grad_(True)
        state.update(labels=soft_labels, opt_y=torch.optim.SGD([soft_labels], lr=s["lr_y"], momentum=s["momentum_y"]))
    return state


def _trajectory_matching(name: str, dataset: Any, ipc: int, *, seed: int, device: Any, budget: str,
                         settings: dict[str, Any], run: RunOptions) -> tuple[Any, History]:
    """The MTT/DATM loop shared by both entry points (DATM = settings with soft labels and bounds)."""
    s, datm = settings, name == "datm"
    dev = resolve_device(device)
    data = dataset.to(dev)
    check_ipc(data, ipc, s["factor"])
    trajs = get_trajectories(data, s, dev, run.progress)
    if datm:
        images, labels = datm_init(data, ipc, s, trajs, seed, dev)
    else:
        images, labels = init_synthetic(data, ipc, seed=seed, init=s["init"], factor=s["factor"], device=dev)
    state = learnable_state(images, labels if datm else None, s)
    syn_lr = state["syn_lr"]
    c, size, _ = data.image_shape
    student = get_model(s["arch"], c, data.num_classes, size).to(dev)
    student.train()
    loss_fn = soft_cross_entropy if datm else F.cross_entropy
    strategy = s["dsa_strategy"] or None
    optimizers = [state[k] for k in ("opt_img", "opt_lr", "opt_y") if k in state]

    def step(it: int) -> Tensor | float:
        g = seed_iteration(seed, it)
        traj = trajs[int(torch.randint(len(trajs), (1,), generator=g))]
        low, high = start_epoch_bounds(s, it)
        t = int(torch.randint(low, high, (1,), generator=g))
        start, target = to_device(traj[t], dev), to_device(traj[t + s["expert_epochs"]], dev)
        x = factor_decode(images, s["factor"], size) if s["factor"] > 1 else images
        y = factor_labels(labels, s["factor"]) if s["factor"] > 1 else labels
        batches = student_batches(x, y, s["syn_steps"], s["batch_syn"], strategy)
        loss = trajectory_loss(student_unroll(student, start, batches, syn_lr, loss_fn), start, target)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        if not datm:
            for opt in optimizers:
                opt.step()
            return loss.detach()
        value = loss.item()  # DATM's threshold decides on the host: the iteration's one sync
        if value <= s["threshold"]:
            for opt in optimizers:
                opt.step()
        return value

    kind = "soft_logits" if datm else "hard"
    evaluate = in_loop_eval(lambda st: _result(images, labels, data, s, name, seed, budget, st, kind), data, dev,
                            arch=s["arch"], seeds=s["eval_seeds"])
    history = run_loop(step, state, method=name, settings=s, n_iters=s["iterations"], run=run, eval_fn=evaluate,
                       identity=dict(dataset=data.name, ipc=ipc, seed=seed, budget=budget))
    return _result(images, labels, data, s, name, seed, budget, state, kind), history


register("mtt", "distill", budgets=MTT_BUDGETS, spec=MTT_SPEC, check=check_start_epochs,
         paper="MTT (Cazenavette et al., CVPR 2022) CIFAR-10 IPC 10 (hyperparameter table of the appendix; "
               "mtt-distillation distill.py/buffer.py): syn_steps 30, expert_epochs 2, max_start_epoch 20, "
               "lr_img 1000, lr_lr 1e-5, lr_teacher 0.01, 100 experts x 50 epochs; the paper also uses ZCA, "
               "which ddnb does not apply",
         summary="MTT: make N student steps on the synthetic set land where M expert epochs on real data land")(
    variant_entry(_trajectory_matching, "mtt"))
register("datm", "distill", budgets=DATM_BUDGETS, spec=DATM_SPEC, check=check_start_epochs,
         paper="DATM (Guo et al., ICLR 2024) configs/CIFAR-10/ConvIN/IPC10.yaml: syn_steps 80, expert_epochs 2, "
               "start epoch in [0, 10 -> 20 over 1000 its), lr_img 100, lr_y 2 (momentum 0.9), batch_syn 100, "
               "threshold 1, 10000 its, 100 experts x 100 epochs (the reference trains experts with FTD's SAM; "
               "ddnb uses plain SGD) and ZCA (not applied); paper 004 Tab. 2 uses N=80, M=2, T- 20, T+ 35 on "
               "TinyImageNet",
         summary="DATM: trajectory matching with bounded, growing start epochs and learnable soft labels")(
    variant_entry(_trajectory_matching, "datm"))
