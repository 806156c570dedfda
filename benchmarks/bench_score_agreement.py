"""How well `cpu`-budget difficulty scores rank images like a longer run (issue 13): Spearman over the pool.

Both runs score the same seeded pool of images per class; the longer one uses the full-width ConvNet-3,
more epochs and more seeds. Prints the CPU, each run's seconds and the rank agreement, overall and the mean
over classes, per score kind.

    python benchmarks/bench_score_agreement.py --dataset fashion_mnist
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from ddnb.data import load_dataset
from ddnb.scores import BUDGETS, compute_scores

LONGER = {"forgetting": dict(epochs=20, seeds=2), "el2n": dict(epochs=4, seeds=4)}


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    """Score the pool at `cpu` and longer, print seconds and Spearman per kind."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--pool", type=int, default=None, help="images per class (default: the cpu budget's)")
    parser.add_argument("--kinds", nargs="+", default=list(LONGER), choices=list(LONGER))
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    data = load_dataset(args.dataset)
    pool = args.pool or BUDGETS["cpu"]["pool"]
    print(f"CPU: {cpu_name()}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {args.dataset}, pool {pool} per class")
    out = {}
    for kind in args.kinds:
        t0 = time.perf_counter()
        short = compute_scores(data, kind, budget="cpu", pool=pool, progress=False)
        t1 = time.perf_counter()
        long = compute_scores(data, kind, budget="cpu", pool=pool, model_kw={}, progress=False, **LONGER[kind])
        t2 = time.perf_counter()
        assert torch.equal(short.indices, long.indices)
        a, b, y = short.values.numpy(), long.values.numpy(), short.labels.numpy()
        overall = float(spearmanr(a, b).statistic)
        per_class = [float(spearmanr(a[y == c], b[y == c]).statistic) for c in range(data.num_classes)]
        out[kind] = dict(cpu_seconds=t1 - t0, longer_seconds=t2 - t1, spearman=overall,
                         spearman_class_mean=float(np.nanmean(per_class)), longer=LONGER[kind],
                         cpu=dict(epochs=short.config["epochs"], seeds=short.config["seeds"],
                                  model_kw=short.config.get("model_kw")))
        print(f"{kind:<10} cpu {t1 - t0:6.1f} s, longer {t2 - t1:6.1f} s ({LONGER[kind]}, full width): "
              f"Spearman {overall:.3f} overall, {np.nanmean(per_class):.3f} mean over classes")
    if args.json:
        record = {"command": "python benchmarks/bench_score_agreement.py --dataset " + args.dataset, "cpu": cpu_name(),
                  "threads": torch.get_num_threads(), "dataset": args.dataset, "pool_per_class": pool, "kinds": out}
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
