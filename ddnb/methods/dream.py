"""IDC, DREAM and DREAM+ (paper 002, Liu et al.): gradient matching on the IDC base, with
representative sampling, bidirectional matching and cluster-centre initialization.

The IDC base (Kim et al., ICML 2022; snu-mllab/Efficient-Dataset-Condensation `condense.py`):
every iteration draws a fresh ConvNet (DREAM+ only: trained first on `warmup_data` real images,
one epoch of real data in the paper); then `inner_loops` times: for every class c, a real batch and the decoded
synthetic images of c (factor x factor tiles per stored image, upsampled) get the same
differentiable augmentation and the images take one SGD step on the matching loss; then the
network trains on `net_data` random real images (per-sample augmentation, CutMix with p 0.5).
The matching loss sums, over conv weights only (biases, norms and the classifier are skipped),
the distance D between the gradients of cross-entropy on the real and synthetic batch.
D is the summed squared error ("mse") or summed absolute error ("mae"; MNIST-like data, 002 §4.1).

DREAM (002 §3.3) changes where the real batch comes from: `ddnb.sampling.DreamSampler` (k-means
of the class in the network's embedding, the samples nearest the centres, re-clustered every
`interval` inner steps) and initializes each class with the real images nearest the centres of
ipc * factor**2 clusters. DREAM+ adds the feature term: D between the mean embeddings of the
real and synthetic batch, taken from the same forward pass as the gradient term.
Registered as "idc" (random sampling, gradient term, random real init), "dream" and "dream+";
every piece is a setting, so `distill("idc", ..., sampler="dream")` is DREAM without cluster init.
The images live in the normalized space, but the reference optimizes [0, 1] pixels: a 1/std**2
gradient hook (`base.pixel_unit_hook`, as DANCE) makes ddnb's step the reference's step.
Augmentation is the IDC composition (`ddnb.augment`, "idc:" strategies: color and cutout on every
call plus crop) for matching and, without cutout, for the network updates (CutMix with p 0.5).
The sets carry IDC's evaluation protocol (`ddnb.train.PROTOCOLS["idc"]`, `eval_epochs` of the budget).
Budgets: `paper` = 002 §4.1 with the official code's values; `cpu` and `smoke` shrink the loop
(iterations, inner loops, sub-clusters, clustering pool, network training) and enlarge the image
step to match (`lr_img_factor`). Notebook 03's measurements of these methods are in `ddnb.analysis`.

What changed vs before (issue 11): the image step is in [0, 1]-pixel units (the `paper` step was
std**2, about 1/8 on Fashion-MNIST, of the reference's; `cpu`/`smoke` `lr_img_factor` 20 -> 2.5
keeps their step, 20 x 0.353**2); augmentation is the IDC composition (three transforms per matching
step instead of one; the network updates get color and crop instead of one of them); only DREAM+
warms the network up (`warmup_data` 0 for idc and dream, which also cluster the k-means init under an
untrained network); DREAM's and DREAM+'s network update batch is 128 (IDC's 64); IDC's image lr size
scaling uses base 28 for MNIST-like data (was 32: x1.31 on 28x28 images); sets carry the "idc"
evaluation protocol (1000 epochs at `paper`, 120 at `cpu`; was DC's protocol with DSA and CutMix).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddnb.augment import dsa
from ddnb.methods import register
from ddnb.methods.base import (build_synset, check_ipc, class_images, encode_per_class, in_loop_eval, init_synthetic,
                               pixel_bounds, pixel_unit_hook, subsample, variant_entry)
from ddnb.methods.loop import History, RunOptions, run_loop, seed_iteration
from ddnb.models import get_model
from ddnb.sampling import SAMPLER_SPEC, make_sampler, representatives
from ddnb.settings import Choice, Float, Int, Positive, Strategy, Text
from ddnb.train import PROTOCOLS, RegimeLoss, protocol_record, run_epoch
from ddnb.utils import resolve_device

METRICS = ("mse", "mae")
MATCHES = ("grad", "bidirectional")
INITS = ("kmeans", "real", "noise")
MNIST_LIKE = ("digits", "mnist", "fashion_mnist")  # MAE, the small image lr and its size base 28 (IDC argument.py)
LR_IMG = {"mse": 5e-3, "mae": 1e-4}  # IDC / DREAM reproduce settings, before IDC's ipc and size scaling
INIT_SEED_OFFSET = 7_777_777  # seeds the network of the k-means init apart from every iteration's
NET_AUG = "idc:color_crop"  # IDC's network-update augmentation (its matching strategy minus cutout, CutMix on)

_COMMON: dict[str, Any] = dict(
    arch="convnet3", factor=2, batch_real=128, batch_syn_max=128, per_cluster=1, interval=10, pool=None,
    kmeans_backend="auto", kmeans_iters=100, feature_weight=1.0, metric=None, lr_img=None, lr_img_factor=1.0,
    momentum_img=0.5,
    aug="idc:color_crop_cutout", lr_net=0.01, momentum_net=0.9, weight_decay_net=5e-4, net_batch=64,
    net_data=500, cutmix_prob=0.5, eval_seeds=1, eval_protocol="idc", eval_epochs=1000, curve_epochs=None)
_SCALE: dict[str, dict[str, Any]] = {
    "smoke": dict(iterations=2, inner_loops=1, batch_real=16, interval=1, pool=64, kmeans_iters=20,
                  net_data=64, eval_epochs=4, lr_img_factor=2.5),
    # cpu: 32 inner steps instead of 120,000, so larger image steps: 2.5x (in [0, 1]-pixel units; 20x
    # before the 1/std**2 correction: at IDC's lr, 20 steps changed Fashion-MNIST images by 0.05 %);
    # Tab. 5's N = 32 sub-clusters, clustered in a random pool of 1,024 images per class (32 per
    # sub-cluster, near the paper's 6,000 / 128 = 47); IDC's evaluation at 120 epochs instead of 1,000, and
    # in-loop evaluations (accuracy curves) at 30 epochs, so that notebook 03 fits its hour: with 300 and 50
    # its Fashion-MNIST run had 3 of its 5 evaluations (3 seeds each) still to do after 47 minutes (now 47 in all).
    "cpu": dict(iterations=8, inner_loops=4, batch_real=32, interval=4, pool=1024, kmeans_iters=50,
                net_data=128, eval_epochs=120, curve_epochs=30, lr_img_factor=2.5),
    "paper": dict(iterations=1200, inner_loops=100),
}
_VARIANTS = {
    "idc": dict(sampler="random", match="grad", init="real"),
    "dream": dict(sampler="dream", match="grad", init="kmeans", net_batch=128),
    "dream+": dict(sampler="dream", match="bidirectional", init="kmeans", net_batch=128),
}
# Real images the network trains on before matching, every iteration: only DREAM+ warms up (one
# epoch of real data in the paper: None = the whole training set); IDC and DREAM match at once.
_WARMUP: dict[str, dict[str, int | None]] = {
    "idc": dict.fromkeys(_SCALE, 0), "dream": dict.fromkeys(_SCALE, 0),
    "dream+": {"smoke": 128, "cpu": 1000, "paper": None},
}
BUDGETS = {name: {b: {**_COMMON, **scale, **variant, "warmup_data": _WARMUP[name][b]} for b, scale in _SCALE.items()}
           for name, variant in _VARIANTS.items()}
# warmup_data: 0 = no warm-up, n = n random real images, None = the whole training set (one epoch).
SPEC = dict(arch=Text(), factor=Int(1), batch_real=Int(1), batch_syn_max=Int(1),
            feature_weight=Float(0), metric=Choice(*METRICS, optional=True), lr_img=Positive(optional=True),
            lr_img_factor=Positive(), momentum_img=Float(0, 1, high_open=True), aug=Strategy(optional=False),
            lr_net=Positive(), momentum_net=Float(0, 1, high_open=True), weight_decay_net=Float(0),
            net_batch=Int(1), net_data=Int(0), warmup_data=Int(0, optional=True), cutmix_prob=Float(0, 1),
            eval_seeds=Int(1), eval_protocol=Choice(*PROTOCOLS), eval_epochs=Int(1, optional=True),
            curve_epochs=Int(1, optional=True), iterations=Int(0), inner_loops=Int(1),
            match=Choice(*MATCHES), init=Choice(*INITS), **SAMPLER_SPEC)


# ---------------------------------------------------------------- settings

def resolve_metric(metric: str | None, dataset_name: str) -> str:
    """The distance D: the given one, else MAE for MNIST-like data and MSE otherwise (002 §4.1)."""
    if metric is None:
        return "mae" if dataset_name in MNIST_LIKE else "mse"
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS} or None (by dataset), got {metric!r}")
    return metric


def resolve_lr_img(lr_img: float | None, metric: str, ipc: int, image_size: int, dataset_name: str) -> float:
    """Image lr: the given one, else IDC's (5e-3 MSE, 1e-4 MAE) scaled as IDC's tune_lr_img: x ipc/10 x
    (size/base)^2, base 28 for MNIST-like data and 32 otherwise."""
    if lr_img is not None:
        return float(lr_img)
    base = 28 if dataset_name in MNIST_LIKE else 32
    return LR_IMG[metric] * (ipc / 10) * (image_size / base) ** 2


def eval_settings(s: dict[str, Any]) -> dict[str, Any]:
    """The method's evaluation (its architecture and protocol, IDC's by default) as `evaluate_synset` keywords."""
    return dict(arch=s["arch"], protocol=s["eval_protocol"])


# ---------------------------------------------------------------- the loss

def distance(a: Tensor, b: Tensor, metric: str) -> Tensor:
    """IDC's D: summed squared error ("mse") or summed absolute error ("mae") between two tensors."""
    if metric == "mse":
        return ((a - b) ** 2).sum()
    if metric == "mae":
        return (a - b).abs().sum()
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def matched_parameters(net: nn.Module) -> list[nn.Parameter]:
    """The parameters IDC matches gradients of: conv weights (bias, norm and linear layers skipped)."""
    convs = [p for p in net.parameters() if p.dim() > 2]
    return convs or [p for p in net.parameters() if p.dim() == 2]


def bidirectional_loss(net: nn.Module, real: Tensor, syn: Tensor, y_real: Tensor, y_syn: Tensor, *,
                       metric: str = "mse", feature_weight: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """DREAM+ loss of one class: (grad term + feature_weight * feature term, grad term, feature term).

    Gradient term: D between the conv-weight gradients of CE on the real and synthetic batch.
    Feature term: D between the mean embeddings of the two batches, from the same forward pass.
    Differentiable in `syn`; the network's own .grad fields are left untouched.
    """
    params = matched_parameters(net)
    f_real = net.embed(real)
    g_real = torch.autograd.grad(F.cross_entropy(net.classifier(f_real), y_real), params)
    f_syn = net.embed(syn)
    g_syn = torch.autograd.grad(F.cross_entropy(net.classifier(f_syn), y_syn), params, create_graph=True)
    grad_term = sum(distance(gr.detach(), gs, metric) for gr, gs in zip(g_real, g_syn))
    feat_term = distance(f_real.detach().mean(0), f_syn.mean(0), metric)
    return grad_term + feature_weight * feat_term, grad_term, feat_term


# ---------------------------------------------------------------- initialization

def kmeans_init_indices(dataset: Any, model: nn.Module, n_per_class: int, *, backend: str = "auto",
                        pool: int | None = None, seed: int = 0) -> Tensor:
    """Per class, the x_train indices of the real images nearest the centres of n_per_class k-means clusters.

    Clusters the model's embeddings of the class (or of a seeded random `pool` of it) with k-means seed
    seed * 1009 + c for class c; class 0 first.
    """
    per_class = check_ipc(dataset, n_per_class)
    g = torch.Generator().manual_seed(seed)
    out = []
    for c, idx in enumerate(per_class):
        if pool is not None and pool < len(idx):
            idx = idx[torch.randperm(len(idx), generator=g)[:pool]]
        local = representatives(model, dataset.x_train[idx.to(dataset.x_train.device)], n_per_class,
                                backend=backend, seed=seed * 1009 + c)
        out.append(idx[local.cpu()])
    return torch.cat(out)


# ---------------------------------------------------------------- the network

def network_and_optimizer(arch: str, dataset: Any, s: dict[str, Any], device: torch.device
                          ) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A new randomly initialized network (global RNG) and its SGD optimizer (IDC: lr 0.01, mom 0.9, wd 5e-4)."""
    c, h, _ = dataset.image_shape
    net = get_model(arch, c, dataset.num_classes, h).to(device)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=s["lr_net"], momentum=s["momentum_net"],
                          weight_decay=s["weight_decay_net"])
    return net, opt


def train_on_real(net: nn.Module, opt: torch.optim.Optimizer, dataset: Any, n: int | None, batch_size: int,
                  cutmix_prob: float, generator: torch.Generator) -> None:
    """One pass of SGD over n random real images (None: all; 0: none, no draw), IDC's per-sample augmentation
    and CutMix."""
    if n == 0:
        return
    total = dataset.x_train.shape[0]
    order = torch.randperm(total, generator=generator)[:total if n is None else min(n, total)]
    run_epoch(net, opt, dataset.x_train, RegimeLoss("hl", dataset.y_train, "hard", 1.0, None), batch_size, NET_AUG,
              1.0, cutmix_prob, generator, order)


# ---------------------------------------------------------------- the loop

def initial_images(data: Any, ipc: int, s: dict[str, Any], seed: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Stored images and labels: k-means centres under a warmed-up network (DREAM), or base.init_synthetic."""
    if s["init"] != "kmeans":
        return init_synthetic(data, ipc, seed=seed, init=s["init"], factor=s["factor"], device=device)
    g = torch.Generator().manual_seed(seed + INIT_SEED_OFFSET)
    torch.manual_seed(seed + INIT_SEED_OFFSET)
    net, opt = network_and_optimizer(s["arch"], data, s, device)
    train_on_real(net, opt, data, s["warmup_data"], s["net_batch"], s["cutmix_prob"], g)
    idx = kmeans_init_indices(data, net, ipc * s["factor"] ** 2, backend=s["kmeans_backend"], pool=s["pool"],
                              seed=seed)
    real = data.x_train[idx.to(data.x_train.device)].detach().float()
    images = encode_per_class(real, data.num_classes, ipc, s["factor"])
    labels = torch.arange(data.num_classes).repeat_interleave(ipc)
    return images.to(device).contiguous(), labels.to(device)


def _distill(name: str, dataset: Any, ipc: int, *, seed: int, device: Any, budget: str, settings: dict[str, Any],
             run: RunOptions) -> tuple[Any, History]:
    """The IDC/DREAM/DREAM+ loop shared by the three entry points."""
    s = settings
    check_ipc(dataset, ipc, s["factor"])
    dev = resolve_device(device)
    data = dataset.to(dev)
    metric = resolve_metric(s["metric"], data.name)
    images, labels = initial_images(data, ipc, s, seed, dev)
    images.requires_grad_(True)
    images.register_hook(pixel_unit_hook(data, dev))
    lr_img = resolve_lr_img(s["lr_img"], metric, ipc, data.image_size, data.name) * s["lr_img_factor"]
    opt_img = torch.optim.SGD([images], lr=lr_img, momentum=s["momentum_img"])
    sampler = make_sampler(s, data, s["batch_real"], seed)
    lo, hi = pixel_bounds(data, dev)
    k, size, inner = data.num_classes, data.image_size, s["inner_loops"]
    weight = s["feature_weight"] if s["match"] == "bidirectional" else 0.0
    state: dict[str, Any] = {"images": images, "optimizer": opt_img, "sampler": sampler,
                             "grad_term": 0.0, "feature_term": 0.0}

    def step(it: int) -> float:
        g = seed_iteration(seed, it)
        net, opt_net = network_and_optimizer(s["arch"], data, s, dev)
        train_on_real(net, opt_net, data, s["warmup_data"], s["net_batch"], s["cutmix_prob"], g)
        sampler.bind(net)
        with torch.no_grad():
            images.copy_(torch.maximum(torch.minimum(images, hi), lo))
        sums = torch.zeros(3, dtype=torch.float64, device=dev)  # loss, grad term, feature term: summed on the device
        for ot in range(inner):
            for c in range(k):
                real = sampler.sample(c, it * inner + ot)
                syn = subsample(class_images(images, c, ipc, s["factor"], size), s["batch_syn_max"], g)
                x = dsa(torch.cat([real, syn]), s["aug"], seed=int(torch.randint(2**31 - 1, (1,), generator=g)))
                y = torch.full((x.shape[0],), c, dtype=torch.long, device=dev)
                n = real.shape[0]
                loss, grad_term, feat_term = bidirectional_loss(net, x[:n], x[n:], y[:n], y[n:], metric=metric,
                                                                feature_weight=weight)
                opt_img.zero_grad(set_to_none=True)
                loss.backward(inputs=[images])
                opt_img.step()
                sums += torch.stack([loss.detach(), grad_term.detach(), feat_term.detach()])
            if s["net_data"]:
                train_on_real(net, opt_net, data, s["net_data"], s["net_batch"], s["cutmix_prob"], g)
        total, grad_sum, feat_sum = sums.tolist()  # the iteration's one host sync
        state["grad_term"], state["feature_term"] = grad_sum / (k * inner), feat_sum / (k * inner)
        return total / (k * inner)

    def current(state: dict[str, Any] | None = None) -> Any:
        return build_synset(images, labels, data, method=name, settings=s, seed=seed, budget=budget,
                            factor=s["factor"], metric=metric, lr_img=lr_img,
                            eval_protocol=protocol_record(s["eval_protocol"], epochs=s["eval_epochs"]))

    # in-loop evaluations: the set's own protocol, at curve_epochs when set (None: the protocol's eval_epochs)
    curve = {} if s["curve_epochs"] is None else {"epochs": s["curve_epochs"]}
    evaluate = in_loop_eval(current, data, dev, arch=s["arch"], seeds=s["eval_seeds"], **curve)
    history = run_loop(step, state, method=name, settings=s, n_iters=s["iterations"], run=run, eval_fn=evaluate,
                       identity=dict(dataset=data.name, ipc=ipc, seed=seed, budget=budget))
    return current(), history


_PAPER = ("002 §4.1 (ConvNet-3, IDC base with factor 2, 1,200 iterations x 100 inner loops, SGD image lr 5e-3 "
          "[1e-4 with MAE on MNIST/Fashion-MNIST], 128 sub-clusters, clustering every 10 inner loops); "
          "hyperparameters of Yanqing0327/DREAM condense_improve.py and IDC reproduce.py")
register("idc", "distill", BUDGETS["idc"], spec=SPEC, paper=_PAPER,
         summary="IDC: gradient matching of factored images, network trained on real data, random real batches")(
    variant_entry(_distill, "idc"))
register("dream", "distill", BUDGETS["dream"], spec=SPEC, paper=_PAPER,
         summary="DREAM: IDC with real batches of k-means representatives and cluster-centre initialization")(
    variant_entry(_distill, "dream"))
register("dream+", "distill", BUDGETS["dream+"], spec=SPEC, paper=_PAPER,
         summary="DREAM+: DREAM with bidirectional (gradient + mean-feature) matching")(
    variant_entry(_distill, "dream+"))

