"""DANCE: Dual-View Distribution Alignment for Dataset Condensation (Zhang et al., IJCAI 2024; paper 001).

DM with expert models trained on real data (each kept with its initialization), used twice per
iteration (001 Alg. 1):

* inner-class view, Pseudo Long-Term Distribution Alignment (Eq. 3-4): draw an expert n and
  lambda ~ U(0, 1), form the mid encoder lambda * phi_0^n + (1 - lambda) * phi_expert^n and match
  the class-wise mean embeddings of real and synthetic images under it (DM's loss, with the same
  DSA parameters for both batches of a class); one SGD step on the images.
* inter-class view, Distribution Calibration (Eq. 5): every `calib_interval` iterations,
  `iter_calib` times, the cross-entropy of the (augmented) synthetic images under that expert;
  one SGD step each.

Synthetic images are initialized from real ones, IDC-factored (`factor` l: each stored image holds
l x l tiles that are upsampled for matching and training). As in the official code
(Hansong-Zhang/DANCE `DANCE.py`): the images are optimized in the reference's [0, 1] pixel units
(SGD lr 0.01 x IPC, momentum 0.5; ddnb keeps them in the normalized space and scales the
gradient by 1 / std**2 per channel, which is the same step) and clamped to valid pixels at the
start of every iteration; matching augmentation the IDC composition "idc:color_crop_cutout" (color,
crop and cutout on every call, `ddnb.augment`); per class at most
`batch_syn_max` decoded synthetic images. Where the official code steps once per class, ddnb
steps once per loss on the sum over classes, as DM does (the per-row gradient is the same).
Experts (001 §4.1, official `pretrain.py`): SGD lr 0.01, momentum 0.9, weight decay 5e-4, 60 epochs,
the IDC composition "idc:color_crop" per sample; at `paper` as the official pre-training: batch 64,
lr x0.2 at 2/3 and 5/6 of training, CutMix with probability 0.5; cached by `ddnb.experts`, shared
by all IPCs and seeds (`expert_seed`). The `cpu` budget trains 3 experts for 2 epochs on 500
images per class at batch 128, constant lr, no CutMix. The sets carry IDC's evaluation protocol
(`ddnb.train.PROTOCOLS["idc"]`), 1,500 epochs at `paper` (001 §4.1), 300 at `cpu`.

What changed vs before (issue 11): matching, calibration and expert augmentation are the IDC
composition (three transforms per call instead of one piece); the `paper` experts train at batch 64
with the x0.2 multistep schedule and CutMix 0.5 (were batch 128, constant lr, no CutMix); the sets
carry the "idc" evaluation protocol (were evaluated with DC's protocol and DSA); the pixel-unit
hook moved to `ddnb.methods.base` (shared with the IDC family).

`pltda=False` (Tab. 5 ablation) matches under a fresh random network each iteration, as DM;
`precision` ("auto": bf16 where native; or "bf16", "fp32") runs the real-image embed under bf16 autocast, as
DM's (ddnb.methods.dm);
`iter_calib=0` turns calibration off; `factor=1` turns factoring off; `dsa_strategy=None` turns
augmentation off.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ddnb.augment import dsa
from ddnb.experts import Trajectory, load_params, train_experts
from ddnb.matching import calibration_loss
from ddnb.methods import register
from ddnb.methods.base import (build_synset, in_loop_eval, init_synthetic, pixel_bounds, pixel_unit_hook, real_subset,
                               subsample)
from ddnb.methods.loop import History, RunOptions, run_loop, seed_iteration
from ddnb.methods.dm import (ReinitNet, class_seeds, dm_loss, real_class_means, run_layout, sample_real,
                             syn_by_class, syn_class_means)
from ddnb.precision import PRECISIONS, resolve_precision
from ddnb.settings import Bool, Choice, Float, Int, Positive, Strategy, Text
from ddnb.train import PROTOCOLS, protocol_record
from ddnb.utils import resolve_device

_EXPERTS = dict(expert_lr=0.01, expert_momentum=0.9, expert_weight_decay=5e-4, expert_batch=128,
                expert_schedule="constant", expert_cutmix_prob=0.0, expert_dsa="idc:color_crop", expert_seed=0,
                expert_images_per_class=None)
_COMMON = dict(arch="convnet3", lr_img_per_ipc=0.01, momentum=0.5, dsa_strategy="idc:color_crop_cutout",
               init="real", factor=2, batch_syn_max=200, pltda=True, iter_calib=1, calib_interval=1, clip=True,
               channels_last=True, compile=False, real_chunk=1280, eval_seeds=1, eval_protocol="idc", precision="auto",
               **_EXPERTS)
BUDGETS = {
    "smoke": {**_COMMON, "iterations": 10, "batch_real": 16, "n_experts": 2, "expert_epochs": 1, "eval_epochs": 4},
    "cpu": {**_COMMON, "iterations": 100, "batch_real": 64, "n_experts": 3, "expert_epochs": 2,
            "expert_images_per_class": 500, "eval_epochs": 300},
    "paper": {**_COMMON, "iterations": 10_000, "batch_real": 128, "n_experts": 5, "expert_epochs": 60,
              "expert_batch": 64, "expert_schedule": "multistep", "expert_cutmix_prob": 0.5, "eval_epochs": 1500},
}
SPEC = dict(arch=Text(), lr_img_per_ipc=Positive(), momentum=Float(0, 1, high_open=True),
            dsa_strategy=Strategy(), init=Choice("real", "noise"), factor=Int(1), batch_syn_max=Int(1),
            pltda=Bool(), iter_calib=Int(0), calib_interval=Int(1), clip=Bool(), channels_last=Bool(),
            compile=Bool(), real_chunk=Int(1), eval_seeds=Int(1), expert_lr=Positive(),
            expert_momentum=Float(0, 1, high_open=True), expert_weight_decay=Float(0), expert_batch=Int(1),
            expert_schedule=Choice("constant", "multistep"), expert_cutmix_prob=Float(0, 1),
            eval_protocol=Choice(*PROTOCOLS), eval_epochs=Int(1, optional=True),
            expert_dsa=Strategy(optional=False, bool_ok=True), expert_seed=Int(0),
            expert_images_per_class=Int(1, optional=True), iterations=Int(0), batch_real=Int(1), n_experts=Int(1),
            expert_epochs=Int(1), precision=Choice(*PRECISIONS))


# ---------------------------------------------------------------- the two views

def mid_params(init_params: Tensor, expert_params: Tensor, lam: float) -> Tensor:
    """The mid encoder of Eq. 3: lambda * init + (1 - lambda) * expert (exactly init at 1, expert at 0)."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must be in [0, 1], got {lam!r}")
    if init_params.shape != expert_params.shape:
        raise ValueError(f"init and expert parameters differ in shape: {tuple(init_params.shape)} vs "
                         f"{tuple(expert_params.shape)}")
    return lam * init_params + (1.0 - lam) * expert_params


def calibration_term(logits: Tensor, num_classes: int) -> Tensor:
    """Eq. 5 as the official code sums it: per class, the mean cross-entropy of its synthetic images
    under the expert, summed over classes (`logits` are class-sorted, the same count per class)."""
    if logits.shape[0] % num_classes:
        raise ValueError(f"{logits.shape[0]} logits cannot be split into {num_classes} equal classes")
    per_class = logits.reshape(num_classes, -1, logits.shape[-1])
    labels = torch.arange(num_classes, device=logits.device)
    return sum(calibration_loss(per_class[c], labels[c].expand(per_class.shape[1])) for c in range(num_classes))


def sample_syn(images: Tensor, ipc: int, num_classes: int, factor: int, image_size: int, max_n: int,
               generator: torch.Generator) -> list[Tensor]:
    """The decoded synthetic images of each class, at most `max_n` of them drawn at random (official sample())."""
    return [subsample(x, max_n, generator) for x in syn_by_class(images, ipc, num_classes, factor, image_size)]


def _augment_all(syn: list[Tensor], seeds: list[int], strategy: str | None) -> Tensor:
    """The synthetic images of all classes, each class augmented with its own DSA seed, concatenated."""
    return torch.cat([dsa(s, strategy, seed=seeds[c]) if strategy else s for c, s in enumerate(syn)])


# ---------------------------------------------------------------- experts

def expert_kwargs(settings: dict[str, Any]) -> dict[str, Any]:
    """The `train_experts` arguments of a DANCE run (same settings -> same cached experts)."""
    s = settings
    return dict(arch=s["arch"], n=s["n_experts"], epochs=s["expert_epochs"], lr=s["expert_lr"],
                momentum=s["expert_momentum"], weight_decay=s["expert_weight_decay"], batch_size=s["expert_batch"],
                schedule=s["expert_schedule"], cutmix_prob=s["expert_cutmix_prob"], dsa=s["expert_dsa"],
                seed=s["expert_seed"])


def load_experts(dataset: Any, settings: dict[str, Any], device: Any = None,
                 progress: bool = True) -> tuple[Tensor, Tensor]:
    """The (init, trained) flat parameters of every expert, stacked (N, P): trained or loaded from the cache."""
    data = real_subset(dataset, settings["expert_images_per_class"], settings["expert_seed"])
    trajectories: list[Trajectory] = train_experts(data, device=device,
                                                   progress=progress, **expert_kwargs(settings))
    return torch.stack([t[0] for t in trajectories]), torch.stack([t[-1] for t in trajectories])


# ---------------------------------------------------------------- the entry point

@register("dance", "distill", budgets=BUDGETS, spec=SPEC,
          paper="DANCE (IJCAI 2024) 001 §4.1 and the official code (Hansong-Zhang/DANCE)")
def distill_dance(dataset: Any, ipc: int, *, seed: int, device: Any, budget: str, settings: dict[str, Any],
                  run: RunOptions) -> tuple[Any, History]:
    """DANCE: DM under mid encoders between experts and their inits, plus expert calibration (CE)."""
    s, dev = settings, resolve_device(device)
    data = dataset.to(dev)
    inits, finals = (t.to(dev) for t in load_experts(data, s, dev, run.progress))
    precision = resolve_precision(s["precision"], dev)
    layout = run_layout(s["channels_last"], precision)
    images, labels = init_synthetic(data, ipc, seed=seed, init=s["init"], factor=s["factor"], device=dev)
    fmt = torch.channels_last if layout else torch.contiguous_format
    images = images.contiguous(memory_format=fmt).requires_grad_(True)
    images.register_hook(pixel_unit_hook(data, dev))
    opt = torch.optim.SGD([images], lr=s["lr_img_per_ipc"] * ipc, momentum=s["momentum"])
    encoder = ReinitNet(s["arch"], data, dev, layout, s["compile"])
    expert = ReinitNet(s["arch"], data, dev, layout, compile=False)
    low, high = pixel_bounds(data, dev)
    strategy = s["dsa_strategy"]
    k, size = data.num_classes, data.image_size

    def calibrate(g: torch.Generator) -> Tensor:
        syn = sample_syn(images, ipc, k, s["factor"], size, s["batch_syn_max"], g)
        x = _augment_all(syn, class_seeds(g, k), strategy).contiguous(memory_format=fmt)
        loss = calibration_term(expert.net(x), k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    def step(it: int) -> Tensor:
        g = seed_iteration(seed, it)
        n, lam = int(torch.randint(len(inits), (1,), generator=g)), float(torch.rand((), generator=g))
        if s["pltda"]:
            load_params(encoder.net, mid_params(inits[n], finals[n], lam))
        else:
            encoder.renew()
        if s["clip"]:
            with torch.no_grad():
                images.clamp_(min=low, max=high)
        real = sample_real(data, s["batch_real"], g)
        seeds = class_seeds(g, k)
        mean_real = real_class_means(encoder.embed, real, seeds, strategy, s["real_chunk"], layout, precision)
        syn = sample_syn(images, ipc, k, s["factor"], size, s["batch_syn_max"], g)
        loss = dm_loss(mean_real, syn_class_means(encoder.embed, syn, seeds, strategy, layout))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if not (s["iter_calib"] and (it + 1) % s["calib_interval"] == 0):
            return loss.detach()
        load_params(expert.net, finals[n])
        calib = sum(calibrate(g).double() for _ in range(s["iter_calib"]))  # float64 on the device, as a float sum
        return loss.detach().double() + calib

    def current(state: dict[str, Any] | None = None) -> Any:
        return build_synset(images, labels, data, method="dance", settings=s, seed=seed, budget=budget,
                            factor=s["factor"], ipc=ipc, real_precision=precision,
                            eval_protocol=protocol_record(s["eval_protocol"], epochs=s["eval_epochs"]))

    evaluate = in_loop_eval(current, data, dev, arch=s["arch"], seeds=s["eval_seeds"])
    history = run_loop(step, {"images": images, "optimizer": opt}, method="dance", settings=s,
                       n_iters=s["iterations"], run=run, eval_fn=evaluate,
                       identity=dict(dataset=data.name, ipc=ipc, seed=seed, budget=budget))
    return current(), history
