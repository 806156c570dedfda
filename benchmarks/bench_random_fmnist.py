"""Random real images, IPC 10, on Fashion-MNIST with ConvNet-3: the "Random" row of DANCE Tab. 1.

Seed s draws its own random subset (`ddnb.select("random", seed=s)`) and trains a fresh ConvNet-3
(init and batch order seeded s) under the "dc" protocol without DSA; the figure is the final-epoch
test accuracy, mean ± std over seeds, compared with the paper's 73.8 ± 0.7.

    python benchmarks/bench_random_fmnist.py [--seeds 3] [--epochs 300] [--device cpu] [--root DIR]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ddnb.data import load_dataset
from ddnb.methods import select
from ddnb.train import evaluate_synset
from ddnb.utils import resolve_device

PAPER_MEAN = 73.8  # DANCE (001) Tab. 1 and DREAM+ (002) Tab. 1: Random, Fashion-MNIST, IPC 10
TOLERANCE = 2.0


def main() -> None:
    """Evaluate random IPC-10 subsets over seeds and print the figure next to the paper's."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (subset + model), default 3")
    parser.add_argument("--epochs", type=int, default=300, help="training epochs (default 300, the dc protocol)")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda when present)")
    parser.add_argument("--root", default=None, help="folder with Fashion-MNIST (default: the usual places)")
    args = parser.parse_args()

    device = resolve_device(args.device)
    data = load_dataset("fashion_mnist", root=args.root, device=device)
    start = time.perf_counter()
    accs = []
    for seed in range(args.seeds):
        synset, _ = select("random", data, args.ipc, seed=seed)
        res = evaluate_synset(synset, data, arch="convnet3", seeds=[seed], epochs=args.epochs, dsa=False,
                              protocol="dc", device=device, progress=False)
        accs.append(res.per_seed[0])
        print(f"seed {seed}: {accs[-1]:.2f}%", flush=True)
    mean, std = float(np.mean(accs)), float(np.std(accs))
    print(f"device: {device}; torch {torch.__version__}; threads {torch.get_num_threads()}; "
          f"{time.perf_counter() - start:.0f} s")
    print(f"random real, fashion_mnist, IPC {args.ipc}, convnet3, dc protocol, {args.epochs} epochs, no DSA")
    print(f"accuracy: {mean:.2f} ± {std:.2f}% over {len(accs)} seeds; per seed: "
          + ", ".join(f"{a:.2f}" for a in accs))
    if args.ipc == 10:
        within = abs(mean - PAPER_MEAN) <= TOLERANCE
        print(f"paper: {PAPER_MEAN} ± 0.7; within {TOLERANCE} points: {'yes' if within else 'no'} "
              f"(difference {mean - PAPER_MEAN:+.2f})")


if __name__ == "__main__":
    main()
