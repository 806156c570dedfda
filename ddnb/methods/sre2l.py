"""SRe2L (Yin et al., NeurIPS 2023) and DWA (Du et al., NeurIPS 2024): synthesize images against a
BatchNorm teacher trained on the real data (paper 004 §1.1, Eq. 1-2).

SRe2L "recover": images start from noise and minimize CE(teacher(x), y) + r_bn * L_BN(x), L_BN the
distance of the batch statistics at the input of every BN layer to the teacher's running statistics
(`ddnb.matching.bn_matching_loss`; the first layer weighed by `first_multiplier`, 10 in the SRe2L
code). As in SRe2L, each batch holds one image per class: the images of ipc index j form batch j and
are optimized on their own (one loss per batch, summed; Adam treats them independently), with
Adam (betas 0.5, 0.9), a cosine learning rate over the iterations, a random shift of up to `jitter`
pixels and a random horizontal flip per step, and pixels clipped to [0, 1] after each step.

DWA adds lambda_var (`var_weight`) on the variance term and a directed weight perturbation: before
synthesizing batch j, a copy of the teacher takes `perturb_steps` normalized gradient steps of total
length `rho` that lower its cross-entropy on `batch_real` random real images (a seeded draw per
batch). The supplement gives Eq. 2 only; the direction (descent on a random real subset) and the
defaults of rho, steps and lambda_var are ddnb's reading of the DWA paper and are settings. DWA also
starts from real images (`init="real"`).

The teacher comes from `ddnb.teachers` (cached); the sets keep hard labels: relabel them with the
same teacher (`ddnb.teachers.relabel`) for the SL regime, or pass it as `teacher=` for SL+KD.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddnb.matching import bn_matching_loss
from ddnb.methods import register
from ddnb.methods.base import build_synset, in_loop_eval, init_synthetic, pixel_bounds, variant_entry
from ddnb.methods.loop import History, RunOptions, run_loop, seed_iteration
from ddnb.settings import Bool, Choice, Float, Int, Positive, Text
from ddnb.teachers import TEACHERS, get_teacher
from ddnb.utils import resolve_device, to_device

_SRE2L = dict(teacher="convnet3_bn", teacher_epochs=None, teacher_pool=None, lr_img=0.1, r_bn=0.01,
              first_multiplier=10.0, var_weight=1.0, jitter=2, flip=True, init="noise", rho=0.0, perturb_steps=1,
              batch_real=100, eval_arch="convnet3", eval_seeds=1)
_DWA = {**_SRE2L, "var_weight": 2.0, "init": "real", "rho": 0.015, "perturb_steps": 12}
SPEC = dict(teacher=Choice(*TEACHERS), teacher_epochs=Int(1, optional=True), teacher_pool=Int(1, optional=True),
            lr_img=Positive(), r_bn=Float(0), first_multiplier=Float(0), var_weight=Float(0), jitter=Int(0),
            flip=Bool(), init=Choice("noise", "real"), rho=Float(0), perturb_steps=Int(1), batch_real=Int(1),
            eval_arch=Text(), eval_seeds=Int(1), iterations=Int(0))


def _budgets(base: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """smoke (seconds on digits), cpu (minutes on Fashion-MNIST, teacher on 500 images per class, not yet
    measured) and paper (SRe2L's recover: 1000 iterations at lr 0.25, a ResNet-10-BN teacher on all data)."""
    return {
        "smoke": {**base, "teacher_epochs": 1, "teacher_pool": 20, "jitter": 1, "batch_real": 20, "iterations": 20},
        "cpu": {**base, "teacher_pool": 500, "iterations": 500},
        "paper": {**base, "teacher": "resnet10_bn", "teacher_epochs": 200, "lr_img": 0.25, "jitter": 4,
                  "iterations": 1000},
    }


def jitter_flip(x: Tensor, jitter: int, flip: bool, generator: torch.Generator) -> Tensor:
    """SRe2L's per-step augmentation: roll by a random shift in [-jitter, jitter]^2, then flip half the time."""
    dx, dy = (torch.randint(-jitter, jitter + 1, (2,), generator=generator).tolist() if jitter else (0, 0))
    out = torch.roll(x, shifts=(dx, dy), dims=(2, 3)) if (dx or dy) else x
    if flip and float(torch.rand((), generator=generator)) < 0.5:
        out = torch.flip(out, dims=(3,))
    return out


def perturb_teacher(teacher: nn.Module, x: Tensor, y: Tensor, rho: float, steps: int) -> nn.Module:
    """DWA: a copy of the teacher moved by `steps` normalized gradient steps of length rho / steps on CE(x, y)."""
    net = copy.deepcopy(teacher).eval()
    params = list(net.parameters())
    for p in params:
        p.requires_grad_(True)
    for _ in range(steps):
        grads = torch.autograd.grad(F.cross_entropy(net(x), y), params)
        norm = torch.sqrt(sum((g * g).sum() for g in grads)).clamp_min(1e-12)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= (rho / steps) * g / norm
    return net.requires_grad_(False)


def _recover(name: str, dataset: Any, ipc: int, *, seed: int, device: Any, budget: str, settings: dict[str, Any],
             run: RunOptions) -> tuple[Any, History]:
    """The SRe2L / DWA recover loop (see the module docstring)."""
    s, dev = settings, resolve_device(device)
    data = dataset.to(dev)
    overrides = {k: v for k, v in (("epochs", s["teacher_epochs"]), ("pool", s["teacher_pool"])) if v is not None}
    teacher = get_teacher(s["teacher"], data, device=dev, progress=run.progress, **overrides)
    images, labels = init_synthetic(data, ipc, seed=seed, init=s["init"], device=dev)
    images.requires_grad_(True)
    opt = torch.optim.Adam([images], lr=s["lr_img"], betas=(0.5, 0.9))
    low, high = pixel_bounds(data, dev)
    k = data.num_classes
    batches = [torch.arange(k, device=dev) * ipc + j for j in range(ipc)]  # batch j: ipc index j of every class
    nets: dict[int, nn.Module] = {}

    def net_for(j: int) -> nn.Module:
        """The teacher batch j is matched against: the teacher itself, or (DWA, rho > 0) its perturbed copy."""
        if s["rho"] == 0:
            return teacher
        if j not in nets:  # a function of (seed, j) only: recomputed the same way after a resume
            g = torch.Generator().manual_seed(seed * 1_000_003 + 999_983 + j)
            idx = to_device(torch.randperm(len(data.x_train), generator=g)[:s["batch_real"]], dev)
            nets[j] = perturb_teacher(teacher, data.x_train[idx], data.y_train[idx], s["rho"], s["perturb_steps"])
        return nets[j]

    state: dict[str, Any] = {"images": images, "optimizer": opt}

    def step(it: int) -> Tensor:
        g = seed_iteration(seed, it)
        for group in opt.param_groups:
            group["lr"] = s["lr_img"] * 0.5 * (1 + math.cos(math.pi * it / max(s["iterations"], 1)))
        opt.zero_grad(set_to_none=True)
        total = torch.zeros((), dtype=torch.float64, device=dev)  # summed on the device, as Python's float sum
        for j, idx in enumerate(batches):
            x = jitter_flip(images[idx], s["jitter"], s["flip"], g)
            loss_bn, logits = bn_matching_loss(net_for(j), x, s["var_weight"], s["first_multiplier"])
            loss = F.cross_entropy(logits, labels[idx]) + s["r_bn"] * loss_bn
            loss.backward()
            total += loss.detach()
        opt.step()
        with torch.no_grad():
            images.copy_(torch.maximum(torch.minimum(images, high), low))
        return total / ipc

    def current(state: dict[str, Any] | None = None) -> Any:
        return build_synset(images, labels, data, method=name, settings=s, seed=seed, budget=budget,
                            teacher=teacher.ddnb_teacher)

    evaluate = in_loop_eval(current, data, dev, arch=s["eval_arch"], seeds=s["eval_seeds"])
    history = run_loop(step, state, method=name, settings=s, n_iters=s["iterations"], run=run, eval_fn=evaluate,
                       identity=dict(dataset=data.name, ipc=ipc, seed=seed, budget=budget))
    return current(), history


register("sre2l", "distill", budgets=_budgets(_SRE2L), spec=SPEC,
         paper="SRe2L (Yin et al., NeurIPS 2023) recover; 004 §1.1 Eq. 1",
         summary="SRe2L: match a BN teacher's running statistics plus cross-entropy (004 Eq. 1).")(
    variant_entry(_recover, "sre2l"))
register("dwa", "distill", budgets=_budgets(_DWA), spec=SPEC,
         paper="DWA (Du et al., NeurIPS 2024); 004 §1.1 Eq. 2",
         summary="DWA: SRe2L with weighted variance term and directed weight perturbation (004 Eq. 2).")(
    variant_entry(_recover, "dwa"))
