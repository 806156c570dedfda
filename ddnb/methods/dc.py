"""DC and DSA: Dataset Condensation with Gradient Matching (Zhao et al., ICLR 2021) and with
Differentiable Siamese Augmentation (Zhao & Bilen, ICML 2021); paper 004 §1.2 Eq. 6.

Each iteration draws a fresh randomly initialized network and alternates `outer_loop` times:
(1) for every class c, the layer-wise distance (`ddnb.matching.gradient_distance`, the reference
"ours" metric) between the gradient of the loss on a real batch of c and on the synthetic images
of c, summed over classes, takes one SGD step on the images (lr 0.1, momentum 0.5); (2) the
network trains `inner_loop` epochs on the current synthetic set (SGD lr 0.01). The loop counts
follow the reference `get_loops(ipc)`. DSA augments the real and synthetic batch of a class with
the same DSA parameters (siamese, one seed per class per outer step) and trains the inner network
on per-sample DSA views, as the reference code (VICO-UoE/DatasetCondensation main.py) does.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddnb.augment import DSA_STRATEGY, dsa, factor_decode, factor_labels
from ddnb.matching import gradient_distance
from ddnb.methods import register
from ddnb.methods.base import build_synset, class_images, in_loop_eval, init_synthetic, variant_entry
from ddnb.methods.loop import History, RunOptions, run_loop, seed_iteration
from ddnb.models import get_model
from ddnb.sampling import SAMPLER_SETTINGS, SAMPLER_SPEC, make_sampler
from ddnb.settings import Choice, Float, Int, Positive, Strategy, Text
from ddnb.utils import resolve_device, to_device

# Reference get_loops (DatasetCondensation utils.py): ipc -> (outer_loop, inner_loop).
REFERENCE_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
METRICS = ("ours", "mse", "cos")  # ddnb.matching.gradient_distance metrics
BN_IMAGES_PER_CLASS = 16  # reference BNSizePC: real images per class that set frozen BatchNorm statistics

_COMMON = dict(arch="convnet3", lr_img=0.1, momentum=0.5, lr_net=0.01, batch_train=256, metric="ours",
               outer_loop=None, inner_loop=None, factor=1, eval_seeds=1, **SAMPLER_SETTINGS)
DC_BUDGETS = {
    "smoke": {**_COMMON, "iterations": 2, "batch_real": 16, "init": "real", "outer_loop": 2, "inner_loop": 1},
    "cpu": {**_COMMON, "iterations": 20, "batch_real": 64, "init": "real", "outer_loop": 5, "inner_loop": 10},
    "paper": {**_COMMON, "iterations": 1000, "batch_real": 256, "init": "noise"},
}
DSA_BUDGETS = {name: {**b, "dsa_strategy": DSA_STRATEGY, "init": "real"} for name, b in DC_BUDGETS.items()}
DC_SPEC = dict(arch=Text(), lr_img=Positive(), momentum=Float(0, 1, high_open=True), lr_net=Positive(),
               batch_train=Int(1), metric=Choice(*METRICS), outer_loop=Int(1, optional=True),
               inner_loop=Int(0, optional=True), factor=Int(1), eval_seeds=Int(1), iterations=Int(0),
               batch_real=Int(1), init=Choice("real", "noise"), **SAMPLER_SPEC)
DSA_SPEC = {**DC_SPEC, "dsa_strategy": Strategy(optional=False)}


def get_loops(ipc: int, outer_loop: int | None = None, inner_loop: int | None = None) -> tuple[int, int]:
    """(outer_loop, inner_loop) for `ipc`: the given values, else the reference table."""
    if outer_loop is None or inner_loop is None:
        if ipc not in REFERENCE_LOOPS:
            raise ValueError(f"the DC reference defines outer/inner loops only for ipc in {sorted(REFERENCE_LOOPS)}, "
                             f"got ipc={ipc}; pass the settings outer_loop and inner_loop")
        ref_outer, ref_inner = REFERENCE_LOOPS[ipc]
        outer_loop = ref_outer if outer_loop is None else outer_loop
        inner_loop = ref_inner if inner_loop is None else inner_loop
    return outer_loop, inner_loop


# ---------------------------------------------------------------- the loss

def class_gradient_distance(net: nn.Module, real: Tensor, syn: Tensor, c: int, metric: str = "ours") -> Tensor:
    """DC loss of one class: distance between the weight gradients of CE on real and synthetic images of c."""
    params = [p for p in net.parameters() if p.requires_grad]
    y_real = torch.full((real.shape[0],), c, dtype=torch.long, device=real.device)
    y_syn = torch.full((syn.shape[0],), c, dtype=torch.long, device=syn.device)
    g_real = [g.detach() for g in torch.autograd.grad(F.cross_entropy(net(real), y_real), params)]
    g_syn = torch.autograd.grad(F.cross_entropy(net(syn), y_syn), params, create_graph=True)
    return gradient_distance(g_real, g_syn, metric)


def dc_loss(net: nn.Module, real: list[Tensor], syn: list[Tensor], metric: str = "ours",
            strategy: str | None = None, seeds: list[int] | None = None) -> Tensor:
    """Sum over classes of the DC distance; with a DSA strategy both batches of class c use seeds[c]."""
    if strategy and (seeds is None or len(seeds) != len(real)):
        raise ValueError(f"DSA needs one seed per class ({len(real)}), got {seeds!r}")
    total = syn[0].new_zeros(())
    for c, (r, s) in enumerate(zip(real, syn)):
        if strategy:
            r, s = dsa(r, strategy, seed=seeds[c]), dsa(s, strategy, seed=seeds[c])
        total = total + class_gradient_distance(net, r, s, c, metric)
    return total


def real_per_class(dataset: Any, n: int, generator: torch.Generator) -> list[Tensor]:
    """Up to n random real images of each class (the whole class when it is smaller, as the reference)."""
    sizes = [len(idx) for idx in dataset.class_indices()]
    return [dataset.sample_class(c, min(n, sizes[c]), generator) for c in range(dataset.num_classes)]


# ---------------------------------------------------------------- the network

def freeze_batchnorm(net: nn.Module, dataset: Any, generator: torch.Generator) -> None:
    """Set BatchNorm statistics from a real batch and freeze them (reference; no-op without BatchNorm)."""
    bns = [m for m in net.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d))]
    if not bns:
        return
    net.train()
    with torch.no_grad():
        net(torch.cat(real_per_class(dataset, BN_IMAGES_PER_CLASS, generator)))
    for m in bns:
        m.eval()


def train_on_synthetic(net: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, epochs: int,
                       batch_size: int, strategy: str | None = None) -> None:
    """The inner loop: `epochs` passes of SGD on the (detached) synthetic set, shuffled by the global RNG."""
    for _ in range(epochs):
        perm = to_device(torch.randperm(x.shape[0]), x.device)
        for lo in range(0, x.shape[0], batch_size):
            idx = perm[lo:lo + batch_size]
            xb = dsa(x[idx], strategy) if strategy else x[idx]
            loss = F.cross_entropy(net(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


# ---------------------------------------------------------------- the entry points

def _gradient_matching(name: str, dataset: Any, ipc: int, *, seed: int, device: Any, budget: str,
                       settings: dict[str, Any], run: RunOptions) -> tuple[Any, History]:
    """The DC/DSA loop shared by both entry points (DC: no `dsa_strategy` setting)."""
    s = settings
    strategy = s.get("dsa_strategy")
    outer, inner = get_loops(ipc, s["outer_loop"], s["inner_loop"])
    dev = resolve_device(device)
    data = dataset.to(dev)
    images, labels = init_synthetic(data, ipc, seed=seed, init=s["init"], factor=s["factor"], device=dev)
    images.requires_grad_(True)
    opt_img = torch.optim.SGD([images], lr=s["lr_img"], momentum=s["momentum"])
    k, (ch, size, _) = data.num_classes, data.image_shape
    # DC draws its own uniform batches; sampler="dream" plugs in DREAM's representative batches
    sampler = make_sampler(s, data, s["batch_real"], seed) if s["sampler"] != "random" else None
    state: dict[str, Any] = {"images": images, "optimizer": opt_img, **({"sampler": sampler} if sampler else {})}
    y_train = factor_labels(labels, s["factor"]) if s["factor"] > 1 else labels

    def x_train() -> Tensor:
        """The decoded synthetic set in factor_labels order, detached for the inner loop."""
        x = images.detach()
        return factor_decode(x, s["factor"], size) if s["factor"] > 1 else x

    def step(it: int) -> Tensor:
        g = seed_iteration(seed, it)
        net = get_model(s["arch"], ch, k, size).to(dev)
        net.train()
        opt_net = torch.optim.SGD(net.parameters(), lr=s["lr_net"])
        total = torch.zeros((), dtype=torch.float64, device=dev)  # summed on the device, as Python's float sum
        for ol in range(outer):
            freeze_batchnorm(net, data, g)
            if sampler:
                sampler.bind(net)
                real = [sampler.sample(c, it * outer + ol) for c in range(k)]
            else:
                real = real_per_class(data, s["batch_real"], g)
            seeds = torch.randint(0, 2**31 - 1, (k,), generator=g).tolist() if strategy else None
            syn = [class_images(images, c, ipc, s["factor"], size) for c in range(k)]
            loss = dc_loss(net, real, syn, s["metric"], strategy, seeds)
            opt_img.zero_grad(set_to_none=True)
            loss.backward(inputs=[images])
            opt_img.step()
            total += loss.detach()
            if ol < outer - 1:
                train_on_synthetic(net, opt_net, x_train(), y_train, inner, s["batch_train"], strategy)
        return total / (k * outer)

    def current(state: dict[str, Any] | None = None) -> Any:
        return build_synset(images, labels, data, method=name, settings=s, seed=seed, budget=budget,
                            factor=s["factor"])

    evaluate = in_loop_eval(current, data, dev, arch=s["arch"], seeds=s["eval_seeds"], dsa=strategy or False)
    history = run_loop(step, state, method=name, settings=s, n_iters=s["iterations"], run=run, eval_fn=evaluate,
                       identity=dict(dataset=data.name, ipc=ipc, seed=seed, budget=budget))
    return current(), history


register("dc", "distill", budgets=DC_BUDGETS, spec=DC_SPEC,
         paper="DC (Zhao et al., ICLR 2021) Tab. 1 / VICO-UoE/DatasetCondensation main.py defaults "
               "(Iteration 1000, lr_img 0.1, lr_net 0.01, batch_real 256, get_loops(ipc), init noise)",
         summary="DC: match per-class weight gradients of real and synthetic batches along a network's training")(
    variant_entry(_gradient_matching, "dc"))
register("dsa", "distill", budgets=DSA_BUDGETS, spec=DSA_SPEC,
         paper="DSA (Zhao & Bilen, ICML 2021) Tab. 1 / DatasetCondensation main.py --method DSA "
               "--init real --dsa_strategy color_crop_cutout_flip_scale_rotate (other settings as DC)",
         summary="DSA: DC with the same (siamese) differentiable augmentation on the real and synthetic batch "
                 "of a class")(variant_entry(_gradient_matching, "dsa"))
