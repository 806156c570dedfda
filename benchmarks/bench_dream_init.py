"""What IDC / DREAM / DREAM+ owe to their start: each method's starting set (`iterations=0`: random
real images for IDC, the real images nearest cluster centres for DREAM and DREAM+) against its
distilled set, both trained under notebook 03's final protocol (DSA + CutMix, final-epoch accuracy).

Prints one JSON line per method: distillation seconds (no in-loop evaluation), how far the images
moved (relative L2 change, max absolute change) and both accuracies (mean, std, per seed).

    python benchmarks/bench_dream_init.py [--dataset fashion_mnist] [--methods idc dream+] [--budget cpu]
        [--iterations N] [--ipc 10] [--epochs 100] [--seeds 3]
"""
from __future__ import annotations

import argparse
import json
import time

import ddnb
from ddnb.data import Dataset
from ddnb.methods import dream as D


def measure(name: str, data: Dataset, args: argparse.Namespace) -> dict:
    """Distill `name`, rebuild its starting set and evaluate both under the same protocol."""
    extra = {} if args.iterations is None else {"iterations": args.iterations}
    t0 = time.perf_counter()
    final, _ = ddnb.distill(name, data, args.ipc, budget=args.budget, seed=0, progress=False, **extra)
    seconds = time.perf_counter() - t0
    start, _ = ddnb.distill(name, data, args.ipc, budget=args.budget, seed=0, iterations=0, progress=False)
    moved = final.images - start.images
    row = {"method": name, "budget": args.budget, "iterations": final.provenance["params"]["iterations"],
           "distill_seconds": round(seconds, 1),
           "relative_change": float(moved.norm() / start.images.norm()), "max_abs_change": float(moved.abs().max())}
    kw = D.eval_settings(D.BUDGETS[name][args.budget])
    for label, syn in (("start", start), ("final", final)):
        r = ddnb.evaluate_synset(syn, data, seeds=args.seeds, epochs=args.epochs, progress=False, **kw)
        row[label] = {"mean": r.mean, "std": r.std, "per_seed": r.per_seed}
    return row


def main() -> None:
    """Parse the options and print one JSON line per method."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--methods", nargs="+", default=["idc", "dream+"], choices=["idc", "dream", "dream+"])
    p.add_argument("--budget", default="cpu", choices=["smoke", "cpu", "paper"])
    p.add_argument("--iterations", type=int, default=None, help="override the budget's iterations")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--epochs", type=int, default=100, help="training epochs of each evaluation")
    p.add_argument("--seeds", type=int, default=3, help="evaluation seeds")
    args = p.parse_args()
    data = ddnb.load_dataset(args.dataset)
    for name in args.methods:
        print(json.dumps(measure(name, data, args)), flush=True)


if __name__ == "__main__":
    main()
