"""Accuracy and wall time of distillation methods at one budget: the "must show" runs of the method issues.

Each method distills once (seed 0 unless --distill-seed), with checkpoints in OUT/METHOD so an
interrupted run resumes; the set is then evaluated under the "dc" protocol (ConvNet-3, 300 epochs,
no DSA: the protocol of benchmarks/bench_random_fmnist.py) over --seeds training seeds. Final-epoch
test accuracy, mean ± std; seconds per iteration (median) and wall times. Appends one JSON line per
method to OUT/results.jsonl.

    python benchmarks/bench_methods.py dm dance --budget cpu --dataset fashion_mnist --ipc 10 --seeds 3
    python benchmarks/bench_methods.py random --seeds 3          # a coreset method: selection + evaluation
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from ddnb.data import load_dataset
from ddnb.methods import distill, get_method, select
from ddnb.synset import SyntheticSet
from ddnb.train import evaluate_synset


def run_one(name: str, data, args: argparse.Namespace, out: Path) -> dict:
    """Distill (or select) with `name`, evaluate over seeds, and return the figures as a dict."""
    start = time.perf_counter()
    set_path = out / name / "synset.safetensors"
    sec_per_it = None
    if get_method(name).kind == "select":
        synset, _ = select(name, data, args.ipc, seed=args.distill_seed)
    elif set_path.exists():
        synset = SyntheticSet.load(set_path)
        print(f"{name}: reusing {set_path}", flush=True)
    else:
        synset, hist = distill(name, data, args.ipc, budget=args.budget, seed=args.distill_seed,
                               out_dir=out / name, resume=(out / name).exists(), progress=True)
        synset.save(set_path)
        sec_per_it = statistics.median(hist.seconds) if hist.seconds else None
    distill_s = time.perf_counter() - start
    res = evaluate_synset(synset, data, arch="convnet3", seeds=args.seeds, epochs=args.epochs, dsa=False,
                          protocol="dc", progress=False)
    row = dict(method=name, dataset=data.name, ipc=args.ipc, budget=args.budget, distill_seed=args.distill_seed,
               eval_seeds=args.seeds, eval_epochs=args.epochs, mean=res.mean, std=res.std, per_seed=res.per_seed,
               distill_wall_s=round(distill_s, 1), eval_wall_s=round(time.perf_counter() - start - distill_s, 1),
               sec_per_iteration=sec_per_it, threads=torch.get_num_threads())
    print(f"{name}: {res.mean:.2f} ± {res.std:.2f}% ({', '.join(f'{a:.2f}' for a in res.per_seed)}); "
          f"distill {distill_s:.0f} s" + (f" ({sec_per_it:.2f} s/it)" if sec_per_it else "")
          + f", eval {row['eval_wall_s']:.0f} s", flush=True)
    return row


def main() -> None:
    """Run each named method in turn and append its row to OUT/results.jsonl."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("methods", nargs="+", help="registry names, e.g. dm dance dream+ random")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--budget", default="cpu", choices=("smoke", "cpu", "paper"))
    p.add_argument("--seeds", type=int, default=3, help="evaluation seeds (default 3)")
    p.add_argument("--epochs", type=int, default=300, help="evaluation epochs (default 300, the dc protocol)")
    p.add_argument("--distill-seed", type=int, default=0)
    p.add_argument("--out", default="outputs/bench_methods")
    args = p.parse_args()
    for name in args.methods:
        get_method(name)  # an unknown name fails before anything runs
    data = load_dataset(args.dataset)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.methods:
        row = run_one(name, data, args, out)
        with open(out / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
