"""DREAM's clustering step: k-means in torch (ddnb.sampling.kmeans_torch) against scikit-learn.

The data are what DREAM clusters: ConvNet-3 embeddings (random init, as at the start of a
distillation) of the training images of one class. Both backends run what DREAM runs: one
random seeding (k data points), at most 100 Lloyd iterations, tol 1e-4; each is timed
`--repeats` times (median) after one warm-up. Prints both timings, their ratio, both inertias
(lower = better clustering) and the Lloyd iterations each ran.

    python benchmarks/bench_kmeans.py [--dataset fashion_mnist] [--n 6000 1000] [--k 128] [--device cpu]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from ddnb.data import load_dataset
from ddnb.embedding import embed_images
from ddnb.models import get_model
from ddnb.sampling import kmeans
from ddnb.utils import resolve_device


def _sync(device: torch.device) -> None:
    """Wait for queued CUDA work so the clock measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_backend(feats: torch.Tensor, k: int, backend: str, repeats: int) -> tuple[float, float, int]:
    """Median seconds of one k-means run, its inertia and iterations (one untimed warm-up first)."""
    kmeans(feats, k, backend=backend, seed=0)
    times, result = [], None
    for r in range(repeats):
        _sync(feats.device)
        t0 = time.perf_counter()
        result = kmeans(feats, k, backend=backend, seed=r)
        _sync(feats.device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result.inertia, result.n_iter


def class_embeddings(dataset: str, n: int, device: torch.device) -> torch.Tensor:
    """ConvNet-3 (seed 0) embeddings of the first n training images of class 0."""
    data = load_dataset(dataset)
    torch.manual_seed(0)
    model = get_model("convnet3", data.channels, data.num_classes, data.image_size).to(device)
    return embed_images(model, data.real_by_class(0)[:n]).to(device)


def main() -> None:
    """Parse arguments, time both backends for each n, print a table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--n", type=int, nargs="+", default=[6000, 1000], help="images of the class clustered")
    ap.add_argument("--k", type=int, default=128, help="clusters (DREAM: the real batch size)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    device = resolve_device(args.device)
    print(f"k-means, k={args.k}, {args.dataset} class 0, ConvNet-3 embeddings, device {device}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'n':>6} {'dim':>5} {'torch s':>9} {'sklearn s':>10} {'sklearn/torch':>14} "
          f"{'inertia torch':>14} {'inertia skl':>12} {'iters t/s':>10}")
    for n in args.n:
        feats = class_embeddings(args.dataset, n, device)
        t_torch, in_torch, it_torch = time_backend(feats, args.k, "torch", args.repeats)
        t_skl, in_skl, it_skl = time_backend(feats, args.k, "sklearn", args.repeats)
        print(f"{feats.shape[0]:>6} {feats.shape[1]:>5} {t_torch:>9.3f} {t_skl:>10.3f} {t_skl / t_torch:>14.2f} "
              f"{in_torch:>14.4g} {in_skl:>12.4g} {it_torch:>4}/{it_skl:<4}")


if __name__ == "__main__":
    main()
