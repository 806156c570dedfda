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
start of every iteration; matching augmentation "color_crop_cutout"; per class at most
`batch_syn_max` decoded synthetic images. Where the official code steps once per class, ddnb
steps once per loss on the sum over classes, as DM does (the per-row gradient is the same).
Experts (001 §4.1): SGD lr 0.01, momentum 0.9, weight decay 5e-4, 60 epochs, batch 128, DSA
"color_crop"; ddnb trains them at a constant lr without CutMix (the official pre-training decays
lr x0.2 at 2/3 and 5/6 of training and uses CutMix), cached by `ddnb.experts`, shared by all IPCs
and seeds (`expert_seed`). The `cpu` budget trains 3 experts for 2 epochs on 500 images per class.

`pltda=False` (Tab. 5 ablation) matches under a fresh random network each iteration, as DM;
`iter_calib=0` turns calibration off; `factor=1` turns factoring off.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
from torch import Tensor

from ddnb.experts import Trajectory, load_params, train_experts
from ddnb.matching import calibration_loss
from ddnb.methods import register
from ddnb.methods.base import (History, build_synset, in_loop_eval, init_synthetic, real_init_indices, run_loop,
                              seed_iteration)
from ddnb.methods.dm import (FreshNet, class_seeds, dm_loss, real_class_means, sample_real, syn_by_class,
                             syn_class_means)
from ddnb.utils import resolve_device

_EXPERTS = dict(expert_lr=0.01, expert_momentum=0.9, expert_weight_decay=5e-4, expert_batch=128,
                expert_dsa="color_crop", expert_seed=0, expert_images_per_class=None)
_COMMON = dict(arch="convnet3", lr_img_per_ipc=0.01, momentum=0.5, dsa=True, dsa_strategy="color_crop_cutout",
               init="real", factor=2, batch_syn_max=200, pltda=True, iter_calib=1, calib_interval=1, clip=True,
               channels_last=True, compile=False, real_chunk=1280, eval_seeds=1, **_EXPERTS)
BUDGETS = {
    "smoke": {**_COMMON, "iterations": 10, "batch_real": 16, "n_experts": 2, "expert_epochs": 1},
    "cpu": {**_COMMON, "iterations": 100, "batch_real": 64, "n_experts": 3, "expert_epochs": 2,
            "expert_images_per_class": 500},
    "paper": {**_COMMON, "iterations": 10_000, "batch_real": 128, "n_experts": 5, "expert_epochs": 60},
}


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


def sample_syn(images: Tensor, labels: Tensor, num_classes: int, factor: int, image_size: int, max_n: int,
               generator: torch.Generator) -> list[Tensor]:
    """The decoded synthetic images of each class, at most `max_n` of them drawn at random (official sample())."""
    per_class = syn_by_class(images, labels, num_classes, factor, image_size)
    if per_class[0].shape[0] <= max_n:
        return per_class
    return [s[torch.randperm(s.shape[0], generator=generator)[:max_n].to(s.device)] for s in per_class]


def _augment_all(syn: list[Tensor], seeds: list[int], strategy: str | None) -> Tensor:
    """The synthetic images of all classes, each class augmented with its own DSA seed, concatenated."""
    from ddnb.augment import dsa

    return torch.cat([dsa(s, strategy, seed=seeds[c]) if strategy else s for c, s in enumerate(syn)])


def pixel_bounds(dataset: Any, device: torch.device) -> tuple[Tensor, Tensor]:
    """Per-channel (low, high) of valid pixels [0, 1] in the dataset's normalized space, shaped (1,C,1,1)."""
    c = dataset.channels
    zeros = torch.zeros(1, c, 1, 1, device=device)
    return dataset.normalize(zeros), dataset.normalize(zeros + 1)


def pixel_unit_hook(dataset: Any, device: torch.device) -> Callable[[Tensor], Tensor]:
    """Gradient hook that turns an SGD step in normalized space into the reference's step in [0, 1] units."""
    std2 = torch.tensor(dataset.std, device=device).view(1, -1, 1, 1) ** 2
    return lambda grad: grad / std2


# ---------------------------------------------------------------- experts

def expert_kwargs(settings: dict[str, Any]) -> dict[str, Any]:
    """The `train_experts` arguments of a DANCE run (same settings -> same cached experts)."""
    s = settings
    return dict(arch=s["arch"], n=s["n_experts"], epochs=s["expert_epochs"], lr=s["expert_lr"],
                momentum=s["expert_momentum"], weight_decay=s["expert_weight_decay"], batch_size=s["expert_batch"],
                dsa=s["expert_dsa"], seed=s["expert_seed"])


def expert_data(dataset: Any, settings: dict[str, Any]) -> Any:
    """The real data experts train on: the training set, or `expert_images_per_class` random images per class."""
    n = settings["expert_images_per_class"]
    if n is None:
        return dataset
    idx = real_init_indices(dataset, n, settings["expert_seed"]).to(dataset.y_train.device)
    return dataclasses.replace(dataset, x_train=dataset.x_train[idx], y_train=dataset.y_train[idx])


def load_experts(dataset: Any, settings: dict[str, Any], device: Any = None,
                 progress: bool = True) -> tuple[Tensor, Tensor]:
    """The (init, trained) flat parameters of every expert, stacked (N, P): trained or loaded from the cache."""
    trajectories: list[Trajectory] = train_experts(expert_data(dataset, settings), device=device,
                                                   progress=progress, **expert_kwargs(settings))
    return torch.stack([t[0] for t in trajectories]), torch.stack([t[-1] for t in trajectories])


# ---------------------------------------------------------------- the entry point

def _check_settings(s: dict[str, Any]) -> None:
    """ValueError for out-of-range DANCE settings."""
    for key in ("iterations", "batch_real", "batch_syn_max", "real_chunk", "factor", "eval_seeds", "n_experts",
                "expert_epochs", "expert_batch", "iter_calib", "calib_interval", "expert_seed"):
        v, low = s[key], (0 if key in ("iterations", "iter_calib", "expert_seed") else 1)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"DANCE setting {key} must be an int >= {low}, got {v!r}")
    if not s["lr_img_per_ipc"] > 0 or not 0 <= s["momentum"] < 1:
        raise ValueError(f"DANCE needs lr_img_per_ipc > 0 and 0 <= momentum < 1, got {s['lr_img_per_ipc']!r}, "
                         f"{s['momentum']!r}")
    n = s["expert_images_per_class"]
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"DANCE setting expert_images_per_class must be a positive int or None (all), got {n!r}")
    for key in ("pltda", "clip", "dsa"):
        if not isinstance(s[key], bool):
            raise ValueError(f"DANCE setting {key} must be True or False, got {s[key]!r}")


@register("dance", "distill", budgets=BUDGETS,
          paper="DANCE (IJCAI 2024) 001 §4.1 and the official code (Hansong-Zhang/DANCE)")
def dance(dataset: Any, ipc: int, *, seed: int, device: Any, budget: str, settings: dict[str, Any],
          out_dir: Any = None, resume: bool = False, progress: bool = True, checkpoint_every: int | None = None,
          eval_every: int = 0, callback: Callable[[int, dict[str, Any]], None] | None = None
          ) -> tuple[Any, History]:
    """DANCE: DM under mid encoders between experts and their inits, plus expert calibration (CE)."""
    _check_settings(settings)
    s, dev = settings, resolve_device(device)
    data = dataset.to(dev) if dataset.x_train.device != dev else dataset
    inits, finals = (t.to(dev) for t in load_experts(data, s, dev, progress))
    images, labels = init_synthetic(data, ipc, seed=seed, init=s["init"], factor=s["factor"], device=dev)
    fmt = torch.channels_last if s["channels_last"] else torch.contiguous_format
    images = images.contiguous(memory_format=fmt).requires_grad_(True)
    images.register_hook(pixel_unit_hook(data, dev))
    opt = torch.optim.SGD([images], lr=s["lr_img_per_ipc"] * ipc, momentum=s["momentum"])
    encoder = FreshNet(s["arch"], data, dev, s["channels_last"], s["compile"])
    expert = FreshNet(s["arch"], data, dev, s["channels_last"], compile=False)
    low, high = pixel_bounds(data, dev)
    strategy = s["dsa_strategy"] if s["dsa"] else None
    k, size = data.num_classes, data.image_size

    def calibrate(g: torch.Generator) -> float:
        syn = sample_syn(images, labels, k, s["factor"], size, s["batch_syn_max"], g)
        x = _augment_all(syn, class_seeds(g, k), strategy).contiguous(memory_format=fmt)
        loss = calibration_term(expert.net(x), k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    def step(it: int) -> float:
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
        mean_real = real_class_means(encoder.embed, real, seeds, strategy, s["real_chunk"], s["channels_last"])
        syn = sample_syn(images, labels, k, s["factor"], size, s["batch_syn_max"], g)
        loss = dm_loss(mean_real, syn_class_means(encoder.embed, syn, seeds, strategy, s["channels_last"]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        calib = 0.0
        if s["iter_calib"] and (it + 1) % s["calib_interval"] == 0:
            load_params(expert.net, finals[n])
            calib = sum(calibrate(g) for _ in range(s["iter_calib"]))
        return loss.item() + calib

    def current(state: dict[str, Any] | None = None) -> Any:
        return build_synset(images, labels, data, method="dance", settings=s, seed=seed, budget=budget,
                            factor=s["factor"], ipc=ipc)

    evaluate = in_loop_eval(current, data, dev, arch=s["arch"], seeds=s["eval_seeds"], dsa=s["dsa"])
    history = run_loop(step, {"images": images, "optimizer": opt}, method="dance", settings=s,
                       n_iters=s["iterations"], out_dir=out_dir, checkpoint_every=checkpoint_every, resume=resume,
                       progress=progress, eval_fn=evaluate, eval_every=eval_every,
                       callback=callback)
    return current(), history
