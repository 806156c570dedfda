"""Real mini-batch samplers for matching methods: uniform random, and DREAM's representative
sampling (paper 002 §3.3, Liu et al.): per class, k-means on the distillation model's embeddings,
re-run every `interval` matching steps; the batch is the `per_cluster` samples nearest each centre.

A sampler is a plain object any matching loop can use:

    sampler.bind(model)          # the network whose embeddings drive the clustering (DREAM only)
    x = sampler.sample(c, step)  # real images of class c for matching step `step` (a counter)

`step` is a monotone counter of matching steps (e.g. iteration * inner_loops + inner step); the
DREAM sampler re-clusters class c when `step // interval` changes. Samplers carry
`state_dict()` / `load_state_dict()`, so `ddnb.methods.loop.run_loop` checkpoints them and a
resumed run reuses the same selection. Same seed, same model, same device -> same batches.

k-means (random seeding as DREAM's code, then Lloyd) runs in torch on the distillation device
("torch") or in scikit-learn on the CPU ("sklearn"); "auto", the default, takes torch on a GPU
(no host round trip) and scikit-learn on the CPU, where benchmarks/bench_kmeans.py measured it
faster: ConvNet-3 embeddings of a Fashion-MNIST class, k = 128, 2-core CPU shared with other
jobs: 6,000 x 2,048 torch 11.0 s, sklearn 3.7 s; 1,000 x 2,048 torch 0.87 s, sklearn 0.31 s.
(With the CPU oversubscribed about 5x, scikit-learn's OpenMP threads fell far behind instead:
13.7 s against 299 s at 6,000, so pass backend="torch" on a crowded machine.)

Notebook 03's measurements of these samplers are in `ddnb.analysis`, their figures in `ddnb.viz`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from ddnb.embedding import embed_images
from ddnb.settings import Choice, Int, Spec, require
from ddnb.utils import to_device

KMEANS_BACKENDS = ("auto", "torch", "sklearn")
KMEANS_INITS = ("random", "k-means++")
SAMPLERS = ("random", "dream")


@dataclass
class KMeansResult:
    """Centres (k, d), the cluster of every point (n,), the inertia (sum of squared distances), iterations run."""

    centres: Tensor
    labels: Tensor
    inertia: float
    n_iter: int


# ---------------------------------------------------------------- k-means

def _check_kmeans_args(x: Tensor, k: int, n_iter: int, tol: float) -> None:
    """ValueError for k-means arguments out of range."""
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"k-means needs a non-empty 2-D (n, d) tensor, got shape {tuple(x.shape)}")
    require("k (clusters)", k, Int(1, x.shape[0]))
    require("n_iter", n_iter, Int(1))
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")


def squared_distances(x: Tensor, c: Tensor, x_sq: Tensor | None = None) -> Tensor:
    """(n, k) squared Euclidean distances between rows of x and rows of c (matmul form, clamped at 0).

    `x_sq` = (x * x).sum(1) when the caller has it (k-means reuses it across iterations).
    """
    x_sq = (x * x).sum(1) if x_sq is None else x_sq
    return torch.addmm(x_sq.unsqueeze(1) + (c * c).sum(1), x, c.T, alpha=-2).clamp_min_(0)


def _kmeans_pp(x: Tensor, k: int, gen: torch.Generator, x_sq: Tensor) -> Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each new centre drawn with prob. ~ D(x)^2."""
    n = x.shape[0]
    idx = int(torch.randint(n, (1,), generator=gen))
    chosen = [idx]
    d2 = squared_distances(x, x[idx:idx + 1], x_sq).squeeze(1)
    for _ in range(1, k):
        total = float(d2.sum())
        if total <= 0:  # fewer distinct points than k: any point will do
            idx = int(torch.randint(n, (1,), generator=gen))
        else:
            idx = int(torch.multinomial((d2 / total).double().cpu(), 1, generator=gen))
        chosen.append(idx)
        d2 = torch.minimum(d2, squared_distances(x, x[idx:idx + 1], x_sq).squeeze(1))
    return x[chosen].clone()


def _lloyd_update(x: Tensor, labels: Tensor, centres: Tensor, d2min: Tensor) -> Tensor:
    """New centres = cluster means; an empty cluster takes the point farthest from its centre."""
    k = centres.shape[0]
    sums = torch.nn.functional.one_hot(labels, k).T.to(x.dtype) @ x  # a matmul: faster than index_add_ on CPU
    counts = torch.bincount(labels, minlength=k).to(x.dtype)
    new = sums / counts.clamp_min(1).unsqueeze(1)
    empty = (counts == 0).nonzero().flatten()
    if empty.numel():
        far = torch.topk(d2min, empty.numel()).indices
        new[empty] = x[far]
    return new


def _init_centres(x: Tensor, k: int, init: str, gen: torch.Generator, x_sq: Tensor) -> Tensor:
    """Initial centres: k distinct random points ("random") or k-means++ seeding."""
    if init == "random":
        return x[torch.randperm(x.shape[0], generator=gen)[:k].to(x.device)].clone()
    if init == "k-means++":
        return _kmeans_pp(x, k, gen, x_sq)
    raise ValueError(f"k-means init must be one of {KMEANS_INITS}, got {init!r}")


def kmeans_torch(x: Tensor, k: int, *, n_iter: int = 100, tol: float = 1e-4, seed: int = 0,
                 init: str = "random") -> KMeansResult:
    """k-means (random or k-means++ seeding, Lloyd iterations) in torch on x's device; why: no host round trip.

    Stops when the summed squared centre shift falls to tol * mean per-feature variance (the
    scikit-learn criterion) or after n_iter iterations.
    """
    _check_kmeans_args(x, k, n_iter, tol)
    x = x.detach().float()
    gen = torch.Generator().manual_seed(seed)
    x_sq = (x * x).sum(1)
    centres = _init_centres(x, k, init, gen, x_sq)
    threshold = tol * float(x.var(0, unbiased=False).mean())
    it = 0
    for it in range(1, n_iter + 1):
        d2 = squared_distances(x, centres, x_sq)
        d2min, labels = d2.min(1)
        new = _lloyd_update(x, labels, centres, d2min)
        shift = float(((new - centres) ** 2).sum())
        centres = new
        if shift <= threshold:
            break
    d2min, labels = squared_distances(x, centres, x_sq).min(1)
    return KMeansResult(centres, labels, float(d2min.sum()), it)


def kmeans_sklearn(x: Tensor, k: int, *, n_iter: int = 100, tol: float = 1e-4, seed: int = 0,
                   init: str = "random") -> KMeansResult:
    """k-means with scikit-learn on the CPU (one init, Lloyd); results back on x's device."""
    from sklearn.cluster import KMeans

    _check_kmeans_args(x, k, n_iter, tol)
    if init not in KMEANS_INITS:
        raise ValueError(f"k-means init must be one of {KMEANS_INITS}, got {init!r}")
    arr = x.detach().float().cpu().numpy()
    km = KMeans(n_clusters=k, init=init, n_init=1, max_iter=n_iter, tol=tol,
                random_state=seed % 2**32, algorithm="lloyd").fit(arr)
    centres = torch.from_numpy(km.cluster_centers_.astype(np.float32)).to(x.device)
    labels = torch.from_numpy(km.labels_.astype(np.int64)).to(x.device)
    return KMeansResult(centres, labels, float(km.inertia_), int(km.n_iter_))


def kmeans(x: Tensor, k: int, *, backend: str = "auto", n_iter: int = 100, tol: float = 1e-4,
           seed: int = 0, init: str = "random") -> KMeansResult:
    """k-means of the rows of x into k clusters: backend "torch", "sklearn", or "auto" (torch on a GPU, else sklearn).

    init "random" (k distinct data points) is what DREAM's code gets from fast_pytorch_kmeans;
    "k-means++" favours far-out points as seeds, which leaves outliers as their own clusters, so
    their nearest samples make a less representative batch: on ConvNet-3 embeddings of 1,000
    Fashion-MNIST images per class, 32 centres, the squared MMD of the centre batch to its class
    was 0.057 with random seeding, 0.10 with k-means++, and 0.090 for a random batch.
    """
    if backend == "auto":
        backend = "torch" if x.device.type == "cuda" else "sklearn"
    if backend == "torch":
        return kmeans_torch(x, k, n_iter=n_iter, tol=tol, seed=seed, init=init)
    if backend == "sklearn":
        return kmeans_sklearn(x, k, n_iter=n_iter, tol=tol, seed=seed, init=init)
    raise ValueError(f"kmeans backend must be one of {KMEANS_BACKENDS}, got {backend!r}")


def nearest_to_centres(x: Tensor, centres: Tensor, n: int = 1) -> Tensor:
    """(k, n) row indices of x: for each centre, its n nearest points, nearest first (DREAM's query)."""
    require("n (nearest points)", n, Int(1, x.shape[0]))
    d2 = squared_distances(centres.float(), x.float())
    return torch.topk(d2, n, dim=1, largest=False).indices


# ---------------------------------------------------------------- representatives

def representatives(model: nn.Module, images: Tensor, k: int, per_cluster: int = 1, *, backend: str = "auto",
                    n_iter: int = 100, seed: int = 0) -> Tensor:
    """Indices into `images` of the per_cluster images nearest each of k k-means centres (centre-major)."""
    feats = embed_images(model, images)
    result = kmeans(feats, k, backend=backend, n_iter=n_iter, seed=seed)
    return nearest_to_centres(feats, result.centres, per_cluster).flatten()


# ---------------------------------------------------------------- samplers

def _check_positive(name: str, value: Any) -> int:
    """The value as an int, or ValueError unless it is a positive int."""
    return require(name, value, Int(1))


def _mix_seed(*parts: int) -> int:
    """A deterministic 31-bit seed from integer parts (for per-class, per-block random choices)."""
    s = 0
    for p in parts:
        s = (s * 1_000_003 + int(p)) % (2**31 - 1)
    return s


class RandomSampler:
    """Uniform random real mini-batch per class (the default of DC, DSA, DM and IDC)."""

    name = "random"

    def __init__(self, dataset: Any, batch_size: int = 128, seed: int = 0) -> None:
        self.dataset, self.seed = dataset, seed
        self.batch_size = _check_positive("batch_size", batch_size)
        smallest = min(len(i) for i in dataset.class_indices())
        if batch_size > smallest:
            raise ValueError(f"batch_size={batch_size} exceeds the smallest class ({smallest} images); "
                             f"allowed: 1..{smallest}")

    def bind(self, model: nn.Module) -> None:
        """Random sampling ignores the model (kept so loops can bind any sampler)."""

    def select(self, cls: int, step: int) -> Tensor:
        """Indices into dataset.x_train of the batch of class `cls` at `step` (seeded by seed, class, step)."""
        idx = self.dataset.class_indices()[cls]
        gen = torch.Generator().manual_seed(_mix_seed(self.seed, step, cls))
        return idx[to_device(torch.randperm(len(idx), generator=gen)[:self.batch_size], idx.device)]

    def sample(self, cls: int, step: int) -> Tensor:
        """Real images of class `cls` for matching step `step`."""
        return self.dataset.x_train[self.select(cls, step)]

    def state_dict(self) -> dict[str, Any]:
        """Nothing evolves: the batch is a function of (seed, class, step)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""


class DreamSampler:
    """DREAM representative sampling: per class, the samples nearest k-means centres of the model's embeddings.

    batch_size = k * per_cluster (k sub-clusters, per_cluster samples nearest each centre; DREAM
    uses k = 128, per_cluster = 1, Tab. 5 varies both). Class c is re-clustered with the bound
    model when `step // interval` changes. `pool` (None = the whole class, as the paper) caps
    the number of class images embedded and clustered: a fresh random subset at every clustering,
    for CPU budgets.
    """

    name = "dream"

    def __init__(self, dataset: Any, batch_size: int = 128, *, per_cluster: int = 1, interval: int = 10,
                 pool: int | None = None, backend: str = "auto", kmeans_iters: int = 100, seed: int = 0) -> None:
        self.dataset, self.seed, self.backend = dataset, seed, backend
        self.batch_size = _check_positive("batch_size", batch_size)
        self.per_cluster = _check_positive("per_cluster", per_cluster)
        self.interval = _check_positive("interval", interval)
        self.kmeans_iters = _check_positive("kmeans_iters", kmeans_iters)
        if backend not in KMEANS_BACKENDS:
            raise ValueError(f"kmeans backend must be one of {KMEANS_BACKENDS}, got {backend!r}")
        if batch_size % per_cluster:
            raise ValueError(f"batch_size={batch_size} must be a multiple of per_cluster={per_cluster} "
                             f"(batch = sub-clusters x samples per sub-cluster)")
        self.k = batch_size // per_cluster
        smallest = min(len(i) for i in dataset.class_indices())
        self.pool = None if pool is None else _check_positive("pool", pool)
        if self.k > min(self.pool or smallest, smallest):
            raise ValueError(f"{self.k} sub-clusters need at least {self.k} images per class to cluster, "
                             f"but pool={pool!r} and the smallest class has {smallest}; lower batch_size or "
                             f"raise pool")
        k_cls = dataset.num_classes
        self.indices = torch.full((k_cls, batch_size), -1, dtype=torch.long)
        self.block = torch.full((k_cls,), -1, dtype=torch.long)
        self.model: nn.Module | None = None

    def bind(self, model: nn.Module) -> None:
        """Use `model` (its `.embed`) for the next clusterings; DREAM binds the current distillation model."""
        self.model = model

    def _pool_indices(self, cls: int, block: int) -> Tensor:
        """Class indices clustered at this block: the whole class, or a seeded random subset of `pool`."""
        idx = self.dataset.class_indices()[cls]
        if self.pool is None or self.pool >= len(idx):
            return idx
        gen = torch.Generator().manual_seed(_mix_seed(self.seed, cls, block, 1))
        return idx[to_device(torch.randperm(len(idx), generator=gen)[:self.pool], idx.device)]

    def cluster_seed(self, cls: int, block: int) -> int:
        """The k-means seed of class `cls` at clustering block `block` (a function of the sampler seed)."""
        return _mix_seed(self.seed, cls, block)

    def recluster(self, cls: int, block: int) -> Tensor:
        """Cluster class `cls` with the bound model now; store and return the selected x_train indices."""
        if self.model is None:
            raise ValueError("DreamSampler has no model: call sampler.bind(model) before sampling")
        idx = self._pool_indices(cls, block)
        local = representatives(self.model, self.dataset.x_train[idx], self.k, self.per_cluster,
                                backend=self.backend, n_iter=self.kmeans_iters, seed=self.cluster_seed(cls, block))
        chosen = idx[local.to(idx.device)].cpu()
        self.indices[cls] = chosen
        self.block[cls] = block
        return chosen

    def select(self, cls: int, step: int) -> Tensor:
        """Indices into dataset.x_train of the batch of class `cls` at `step` (re-clustering when due)."""
        if not 0 <= cls < self.dataset.num_classes:
            raise ValueError(f"class {cls!r} out of range; allowed: 0..{self.dataset.num_classes - 1}")
        require("step", step, Int(0))
        block = step // self.interval
        if int(self.block[cls]) != block:
            return self.recluster(cls, block)
        return self.indices[cls]

    def sample(self, cls: int, step: int) -> Tensor:
        """Real images of class `cls` for matching step `step`."""
        idx = self.select(cls, step)
        return self.dataset.x_train[to_device(idx, self.dataset.x_train.device)]

    def state_dict(self) -> dict[str, Any]:
        """The current selection per class and the clustering block it belongs to (for exact resume)."""
        return {"indices": self.indices.clone(), "block": self.block.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a selection saved by state_dict()."""
        for key in ("indices", "block"):
            saved = state[key]
            if saved.shape != getattr(self, key).shape:
                raise ValueError(f"DreamSampler state {key!r} has shape {tuple(saved.shape)}, "
                                 f"expected {tuple(getattr(self, key).shape)}")
            getattr(self, key).copy_(saved)


# The settings a matching method adds to its budgets to take a sampler (`make_sampler` reads them), and their spec.
SAMPLER_SETTINGS: dict[str, Any] = dict(sampler="random", per_cluster=1, interval=10, pool=None,
                                        kmeans_backend="auto", kmeans_iters=100)
SAMPLER_SPEC: dict[str, Spec] = dict(sampler=Choice(*SAMPLERS), per_cluster=Int(1), interval=Int(1),
                                     pool=Int(1, optional=True), kmeans_backend=Choice(*KMEANS_BACKENDS),
                                     kmeans_iters=Int(1))


def make_sampler(settings: Mapping[str, Any], dataset: Any, batch_size: int, seed: int = 0
                 ) -> RandomSampler | DreamSampler:
    """The sampler a method's settings ask for: `sampler` "random", or "dream" with the other SAMPLER_SETTINGS."""
    name = settings["sampler"]
    if name == "random":
        return RandomSampler(dataset, batch_size, seed=seed)
    if name == "dream":
        return DreamSampler(dataset, batch_size, per_cluster=settings["per_cluster"], interval=settings["interval"],
                            pool=settings["pool"], backend=settings["kmeans_backend"],
                            kmeans_iters=settings["kmeans_iters"], seed=seed)
    raise ValueError(f"unknown sampler {name!r}; allowed: {', '.join(SAMPLERS)}")

