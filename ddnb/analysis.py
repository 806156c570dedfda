"""Measurements the notebooks plot and test claims on.

Notebook 02 (DANCE): how far a synthetic set's feature distribution is from the real one under the
checkpoints of a model trained on real data (001 Fig. 3a), how well the DANCE mid models
lambda * init + (1 - lambda) * expert classify (Fig. 3b), how an expert classifies a synthetic set
(Fig. 3c), and 2-D t-SNE coordinates of embeddings.
Notebook 03 (DREAM): the matching terms and accuracy of a run over its iterations (002 Fig. 6c-d,
Tab. 3), random vs DREAM real batches along a network's training (`sampler_trace`, Fig. 2b),
per-sample gradient norms of class centre and boundary samples (Fig. 1a, 5) and how well a
synthetic set covers its classes.

Distances are class-wise and averaged over classes, as DM and DANCE match them: the squared
distance between the mean embeddings of real and synthetic images of a class, and the squared MMD
between the two samples with a multi-bandwidth Gaussian kernel whose bandwidths come from the real
features only (the median squared distance between real features of the class times 1/4 ... 4),
so every synthetic set is measured with the same kernel at a checkpoint. Accuracies are in percent.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ddnb.embedding import embed_images, project_2d
from ddnb.experts import load_params
from ddnb.matching import mmd2
from ddnb.sampling import DreamSampler, RandomSampler
from ddnb.settings import Int, require
from ddnb.utils import resolve_device

BANDWIDTH_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)
Checkpoints = nn.Module | Sequence[nn.Module] | Sequence[Tensor]


# ---------------------------------------------------------------- inputs

def as_xy(data: Any) -> tuple[Tensor, Tensor]:
    """(images, hard labels) from an (x, y) pair, a SyntheticSet (decoded) or a Dataset (training split)."""
    if hasattr(data, "decoded"):
        x, y = data.decoded()
    elif hasattr(data, "x_train"):
        x, y = data.x_train, data.y_train
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
    else:
        raise ValueError(f"expected an (images, labels) pair, a SyntheticSet or a Dataset, got {type(data).__name__}")
    y = y.argmax(1) if y.dim() == 2 else y
    if x.dim() != 4 or x.shape[0] != y.shape[0]:
        raise ValueError(f"images must be (N,C,H,W) with one label each, got {tuple(x.shape)} and {tuple(y.shape)}")
    return x, y


def subsample_per_class(x: Tensor, y: Tensor, num_classes: int, n: int | None, seed: int = 0) -> list[Tensor]:
    """The images of each class, at most n of them drawn at random (seeded) when n is given."""
    require("max images per class", n, Int(2, optional=True))
    g = torch.Generator().manual_seed(seed)
    out = []
    for c in range(num_classes):
        idx = torch.nonzero(y.cpu() == c).flatten()
        if len(idx) == 0:
            raise ValueError(f"class {c} has no images; every class 0..{num_classes - 1} needs some")
        if n is not None and len(idx) > n:
            idx = idx[torch.randperm(len(idx), generator=g)[:n]]
        out.append(x[idx.to(x.device)])
    return out


def _models(checkpoints: Checkpoints, template: nn.Module | None) -> Iterator[nn.Module]:
    """Modules one at a time: a module, a list of modules, or flat vectors loaded in turn into a template copy."""
    if isinstance(checkpoints, nn.Module):
        yield checkpoints
        return
    items = list(checkpoints)
    if not items:
        raise ValueError("no checkpoints given; pass a model, a list of models or a list of flat parameter vectors")
    if all(isinstance(m, nn.Module) for m in items):
        yield from items
        return
    if not all(isinstance(m, Tensor) for m in items):
        raise ValueError("checkpoints must be all models or all flat parameter vectors, not a mix")
    if template is None:
        raise ValueError("flat parameter checkpoints need template=<a model of the same architecture>")
    model = copy.deepcopy(template)  # the caller's template keeps its own parameters
    for flat in items:
        yield load_params(model, flat)


# ---------------------------------------------------------------- distances

def real_bandwidths(feats_real: Tensor, scales: Sequence[float] = BANDWIDTH_SCALES) -> list[float]:
    """Gaussian kernel bandwidths from real features: median off-diagonal squared distance times `scales`."""
    d2 = torch.cdist(feats_real, feats_real) ** 2
    off = d2[~torch.eye(len(d2), dtype=torch.bool, device=d2.device)]
    med = float(off.median().clamp_min(1e-12))
    return [med * s for s in scales]


def class_distance(feats_real: Tensor, feats_syn: Tensor) -> tuple[float, float]:
    """(squared mean-embedding distance, squared MMD) between one class's real and synthetic features."""
    fr, fs = feats_real.double(), feats_syn.double()
    mean_d = float(((fr.mean(0) - fs.mean(0)) ** 2).sum())
    return mean_d, float(mmd2(fr, fs, bandwidths=real_bandwidths(fr)))


def _class_feats(model: nn.Module, per_class: list[Tensor]) -> list[Tensor]:
    """Embeddings of each class's images under `model`, on its device (inference, CPU float64 results)."""
    return [embed_images(model, x).cpu().double() for x in per_class]


def distribution_distance(model_or_checkpoints: Checkpoints, real: Any, syn: Any, *,
                          template: nn.Module | None = None, max_real_per_class: int | None = 500,
                          seed: int = 0, device: Any = None) -> pd.DataFrame:
    """Class-averaged mean-embedding distance and MMD between real and synthetic features per checkpoint.

    `model_or_checkpoints`: a model, a list of models, or a list of flat parameter vectors (e.g. an
    expert trajectory from initialization to the end) loaded in turn into a copy of `template`. `syn` is
    one set or a mapping name -> set (each an (x, y) pair or a SyntheticSet); `real` an (x, y)
    pair or a Dataset (training split, at most `max_real_per_class` images per class, seeded).
    Returns one row per (checkpoint, set): checkpoint, set, mean_distance, mmd.
    """
    sets = dict(syn) if isinstance(syn, Mapping) else {"syn": syn}
    models = _models(model_or_checkpoints, template)
    dev = resolve_device(device)
    xr, yr = as_xy(real)
    k = int(yr.max()) + 1
    real_pc = subsample_per_class(xr, yr, k, max_real_per_class, seed)
    syn_pc = {name: subsample_per_class(*as_xy(s), k, None) for name, s in sets.items()}
    rows = []
    for i, model in enumerate(models):
        model = model.to(dev)
        fr = _class_feats(model, real_pc)
        for name, per_class in syn_pc.items():
            d = np.array([class_distance(a, b) for a, b in zip(fr, _class_feats(model, per_class))])
            rows.append({"checkpoint": i, "set": name, "mean_distance": float(d[:, 0].mean()),
                         "mmd": float(d[:, 1].mean())})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- accuracies

def expert_accuracy_on(expert: nn.Module, x: Tensor, y: Tensor) -> float:
    """Accuracy (%) of a model on (x, y): is a synthetic set inside the expert's class regions? (Fig. 3c)."""
    from ddnb.train import evaluate

    y = y.argmax(1) if y.dim() == 2 else y
    return 100.0 * evaluate(expert, x, y)


def _test_split(dataset: Any, max_test: int | None, seed: int) -> tuple[Tensor, Tensor]:
    """The test images and labels, at most `max_test` of them drawn at random (seeded)."""
    x, y = dataset.x_test, dataset.y_test
    if max_test is not None and max_test < len(y):
        idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:max_test]
        x, y = x[idx.to(x.device)], y[idx.to(y.device)]
    return x, y


def _mid_model(template: nn.Module, init_params: Tensor, expert_params: Tensor, lam: float) -> nn.Module:
    """The mid model lambda * init + (1 - lambda) * expert in `template` (loaded in place)."""
    from ddnb.methods.dance import mid_params

    return load_params(template, mid_params(init_params, expert_params, lam))


def _template(dataset: Any, arch: str, model_kw: dict[str, Any] | None, device: torch.device) -> nn.Module:
    """A model of `arch` for `dataset` on `device` to load parameter vectors into."""
    from ddnb.models import get_model

    c, h, _ = dataset.image_shape
    return get_model(arch, c, dataset.num_classes, h, **(model_kw or {})).to(device)


def mid_model_accuracy(init_params: Tensor, expert_params: Tensor, lambdas: Sequence[float], dataset: Any, *,
                       arch: str = "convnet3", model_kw: dict[str, Any] | None = None, max_test: int | None = None,
                       seed: int = 0, device: Any = None) -> pd.DataFrame:
    """Test accuracy (%) of the mid model lambda * init + (1 - lambda) * expert for each lambda (Fig. 3b)."""
    dev = resolve_device(device)
    net = _template(dataset, arch, model_kw, dev)
    x, y = _test_split(dataset, max_test, seed)
    accs = [expert_accuracy_on(_mid_model(net, init_params, expert_params, float(lam)), x, y) for lam in lambdas]
    return pd.DataFrame({"lambda": [float(lam) for lam in lambdas], "accuracy": accs})


def lambda_panel(lambda_: float, *, init_params: Tensor, expert_params: Tensor, dataset: Any, syn: Any,
                 arch: str = "convnet3", model_kw: dict[str, Any] | None = None, max_test: int | None = 2000,
                 max_real_per_class: int | None = 256, seed: int = 0,
                 device: Any = None) -> tuple[float, float | dict[str, float]]:
    """What the lambda slider shows: (mid model test accuracy %, class-averaged mean-embedding distance
    between `syn` and the real training data under the mid encoder); a mapping of sets gives a dict."""
    dev = resolve_device(device)
    net = _mid_model(_template(dataset, arch, model_kw, dev), init_params, expert_params, float(lambda_))
    acc = expert_accuracy_on(net, *_test_split(dataset, max_test, seed))
    table = distribution_distance(net, dataset, syn, max_real_per_class=max_real_per_class, seed=seed, device=dev)
    dist = dict(zip(table["set"], table["mean_distance"].astype(float)))
    return acc, (dist if isinstance(syn, Mapping) else dist["syn"])


# ---------------------------------------------------------------- embeddings

def tsne_embedding(model: nn.Module, sets: Mapping[str, Any], *, max_per_class: int = 50, perplexity: float = 30.0,
                   seed: int = 0, device: Any = None) -> pd.DataFrame:
    """2-D t-SNE of the embeddings of several sets (e.g. real, DM, DANCE) fitted jointly: x, y, set, label."""
    model = model.to(resolve_device(device))
    feats, names, labels = [], [], []
    for name, data in sets.items():
        x, y = as_xy(data)
        k = int(y.max()) + 1
        for c, xc in enumerate(subsample_per_class(x, y, k, max_per_class, seed)):
            feats.append(embed_images(model, xc).cpu())
            names += [name] * len(xc)
            labels += [c] * len(xc)
    xy = project_2d(torch.cat(feats), "tsne", perplexity=perplexity, seed=seed)
    return pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "set": names, "label": labels})


# ---------------------------------------------------------------- distillation progress (notebook 03)

class MatchingTerms:
    """A run_loop callback keeping the mean gradient and feature term of every iteration (002 Fig. 6c-d)."""

    def __init__(self) -> None:
        self.grad: list[float] = []
        self.feature: list[float] = []

    def __call__(self, it: int, state: dict[str, Any]) -> None:
        self.grad.append(float(state["grad_term"]))
        self.feature.append(float(state["feature_term"]))


def iterations_to_reach(evals: list[dict[str, Any]], target: float) -> int | None:
    """The first evaluated iteration whose mean accuracy is >= target (002 Tab. 3 "Iter"), None if none."""
    for record in sorted(evals, key=lambda r: r["iteration"]):
        if record["mean"] >= target:
            return int(record["iteration"])
    return None


# ---------------------------------------------------------------- representative sampling (notebook 03)

def per_sample_grad_norms(model: nn.Module, x: Tensor, y: Tensor, chunk: int = 64) -> Tensor:
    """L2 norm of the gradient of cross-entropy w.r.t. all parameters, per sample (002 Fig. 1a / 5)."""
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return torch.nn.functional.cross_entropy(out, yi.unsqueeze(0))

    grads = vmap(grad(loss), in_dims=(None, 0, 0), chunk_size=chunk)(params, x, y)
    return torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads.values())).detach()


def centre_boundary_split(feats: Tensor, frac: float = 0.25) -> tuple[Tensor, Tensor]:
    """Row indices of the `frac` of points nearest the mean of feats (centre) and the `frac` farthest (boundary)."""
    if not 0 < frac <= 0.5:
        raise ValueError(f"frac must be in (0, 0.5], got {frac!r}")
    order = torch.argsort(((feats - feats.mean(0)) ** 2).sum(1))
    m = max(1, int(round(frac * feats.shape[0])))
    return order[:m], order[-m:]


def coverage(real_feats: Tensor, syn_feats: Tensor) -> float:
    """Mean Euclidean distance from each real point to its nearest synthetic point (lower = better covered)."""
    if real_feats.shape[0] == 0 or syn_feats.shape[0] == 0:
        raise ValueError("coverage needs at least one real and one synthetic point")
    return float(torch.cdist(real_feats.float(), syn_feats.float()).min(1).values.mean())


def class_coverages(net: nn.Module, pool: Any, synset: Any) -> list[float]:
    """`coverage` per class: distance from each real pool image to the nearest synthetic one of its class."""
    images, labels = synset.decoded()
    real_feats, syn_feats = embed_images(net, pool.x_train), embed_images(net, images)
    labels, real_labels = labels.to(syn_feats.device), pool.y_train.to(real_feats.device)
    return [coverage(real_feats[real_labels == c], syn_feats[labels == c]) for c in range(pool.num_classes)]


def class_coverage(net: nn.Module, pool: Any, synset: Any) -> float:
    """Mean over classes of `class_coverages`."""
    return float(np.mean(class_coverages(net, pool, synset)))


def pool_dataset(dataset: Any, n_per_class: int, seed: int = 0) -> tuple[Any, Tensor]:
    """The dataset restricted to n random training images per class (class-sorted), and their x_train indices."""
    from ddnb.methods.base import real_init_indices

    idx = real_init_indices(dataset, n_per_class, seed)
    return dataset.subset(idx), idx.to(dataset.x_train.device)


@dataclass
class SamplerTrace:
    """What `sampler_trace` recorded: per step and class, each sampler's batch and its MMD to the class."""

    pool: Any
    pool_indices: Tensor
    mmd: dict[str, np.ndarray]
    selections: dict[str, Tensor]
    features: Tensor
    net: nn.Module
    interval: int


def sampler_trace(dataset: Any, *, steps: int = 20, batch_size: int = 32, interval: int = 5, pool: int = 200,
                  arch: str = "convnet3", warmup_data: int = 1000, net_data: int = 256, seed: int = 0,
                  device: Any = None) -> SamplerTrace:
    """Random vs DREAM batches along a network's training on real data, with their MMD to the whole class (Fig. 2b).

    A fresh network trains on `warmup_data` real images, then for each step: every class's pool
    (`pool` images per class) is embedded, each sampler picks its batch from the pool (DREAM
    re-clusters every `interval` steps), the squared MMD between batch and pool embeddings is
    recorded (Gaussian kernels at the class's median distance x 0.25..4), and the network trains
    on `net_data` more real images, as IDC's inner loop does.
    """
    from ddnb.methods.dream import _COMMON, network_and_optimizer, train_on_real

    dev = resolve_device(device)
    data = dataset.to(dev)
    sub, idx = pool_dataset(data, pool, seed)
    samplers = {"random": RandomSampler(sub, batch_size, seed=seed),
                "dream": DreamSampler(sub, batch_size, interval=interval, seed=seed)}
    s = {**_COMMON, "arch": arch}
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net, opt = network_and_optimizer(arch, data, s, dev)
    train_on_real(net, opt, data, warmup_data, s["net_batch"], s["cutmix_prob"], g)
    k = data.num_classes
    mmd = {name: np.zeros((steps, k)) for name in samplers}
    selections = {name: torch.zeros((steps, k, batch_size), dtype=torch.long) for name in samplers}
    for t in range(steps):
        feats = embed_images(net, sub.x_train)
        for sampler in samplers.values():
            sampler.bind(net)
        for c, cls_idx in enumerate(sub.class_indices()):
            fc = feats[cls_idx.to(feats.device)].double()
            bandwidths = real_bandwidths(fc)
            for name, sampler in samplers.items():
                sel = sampler.select(c, t).cpu()
                selections[name][t, c] = sel
                mmd[name][t, c] = float(mmd2(feats[sel.to(feats.device)].double(), fc, bandwidths=bandwidths))
        train_on_real(net, opt, data, net_data, s["net_batch"], s["cutmix_prob"], g)
    return SamplerTrace(sub, idx.cpu(), mmd, selections, embed_images(net, sub.x_train).cpu(), net, interval)


def gradient_norm_groups(trace: SamplerTrace, frac: float = 0.25, classes: list[int] | None = None
                         ) -> dict[str, np.ndarray]:
    """Per-sample gradient norms under the trace's final network: class centre vs boundary, DREAM vs random batch.

    centre / boundary: the `frac` of each class's pool nearest / farthest from the class mean
    embedding; dream / random: the samples each sampler picked at the last step (002 Fig. 1a, 5).
    """
    pool, groups = trace.pool, {"centre": [], "boundary": [], "dream": [], "random": []}
    last = trace.selections["dream"].shape[0] - 1
    for c in classes if classes is not None else range(pool.num_classes):
        cls_idx = pool.class_indices()[c].cpu()
        y = pool.y_train[cls_idx.to(pool.y_train.device)]
        norms = per_sample_grad_norms(trace.net, pool.x_train[cls_idx.to(pool.x_train.device)], y).cpu()
        by_global = dict(zip(cls_idx.tolist(), norms.tolist()))
        centre, boundary = centre_boundary_split(trace.features[cls_idx], frac)
        groups["centre"] += norms[centre].tolist()
        groups["boundary"] += norms[boundary].tolist()
        for name in ("dream", "random"):
            groups[name] += [by_global[i] for i in trace.selections[name][last, c].tolist()]
    return {name: np.asarray(v) for name, v in groups.items()}
