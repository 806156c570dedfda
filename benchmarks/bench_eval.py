"""Seconds to evaluate a set over 5 seeds: all seeds in one batched step vs one after another.

    python benchmarks/bench_eval.py                 # digits, ConvNet-3, DSA: about 2 minutes on 2 cores
    python benchmarks/bench_eval.py --arch mlp --scale 2
    python benchmarks/bench_eval.py --dataset fashion_mnist --scale 0.25   # 28 px: far slower (10,000 test images)
    python benchmarks/bench_eval.py --precision bf16   # the third path in bf16 autocast even without native support

Sets: real images at IPC 1, 10 and 50, and an IPC-10 set with IDC factor 2 (4 tiles per stored image,
400 training images). Each configuration is evaluated with `evaluate_synset(batched=False)` and
`batched=True` at the same settings (protocol "dc" with DSA, few epochs so the whole run takes minutes),
after one untimed 1-epoch call of each path, and a third time batched with `--precision` (default auto: bf16
autocast where the CPU has it natively, see ddnb.precision; fp32 elsewhere, then it repeats the batched path).
Prints the CPU, its bf16 verdict, the paths that ran, the times, the ratios to the sequential fp32 path and the
largest per-seed accuracy difference to it (the fp32 paths train the same models; bf16 rounds differently), then
each path's seconds split into training and testing (`EvalResult.test_seconds`: testing runs the same fp32 passes
on every path, so the training ratio is what batching and bf16 change).
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (label, ipc, factor, epochs at scale 1)
CONFIGS = (("IPC 1", 1, 1, 60), ("IPC 10", 10, 1, 12), ("IPC 50", 50, 1, 4), ("IPC 10 factor 2", 10, 2, 4))


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_set(data: Any, ipc: int, factor: int) -> Any:
    """Real training images, ipc stored images per class; with factor f each holds f*f real images."""
    from ddnb.augment import factor_encode
    from ddnb.synset import SyntheticSet

    g = torch.Generator().manual_seed(0)
    per = ipc * factor * factor
    picks = [ix[torch.randperm(len(ix), generator=g)[:per]] for ix in data.class_indices()]
    if factor == 1:
        return SyntheticSet.from_real(data, torch.cat(picks), "random", seed=0)
    images = torch.cat([factor_encode(data.x_train[ix], factor) for ix in picks])
    labels = torch.arange(data.num_classes).repeat_interleave(ipc)
    return SyntheticSet(images, labels, data.name, data.num_classes, tuple(data.image_shape), factor)


def timed(synset: Any, data: Any, args: argparse.Namespace, epochs: int, batched: bool,
          precision: str = "fp32") -> tuple[Any, float]:
    """evaluate_synset over args.seeds seeds on the CPU, forced onto one path; (result, seconds)."""
    from ddnb.train import evaluate_synset

    start = time.perf_counter()
    res = evaluate_synset(synset, data, arch=args.arch, seeds=args.seeds, epochs=epochs, dsa=True, protocol="dc",
                          device="cpu", progress=False, batched=batched, precision=precision)
    return res, time.perf_counter() - start


def main() -> None:
    """Run every configuration on both paths and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--arch", default="convnet3")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every configuration's epochs")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                        help="the third path's precision (auto: bf16 where the CPU does it natively)")
    args = parser.parse_args()
    from ddnb.data import load_dataset
    from ddnb.precision import describe, resolve_precision

    data = load_dataset(args.dataset)
    fast = resolve_precision(args.precision, torch.device("cpu"))
    print(f"CPU: {cpu_model()}; {describe(torch.device('cpu'))}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {data.name}, {args.arch}, {args.seeds} seeds, protocol dc with DSA; "
          f"third path: batched, {fast}")
    totals, trains = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
    for label, ipc, factor, epochs in CONFIGS:
        synset = make_set(data, ipc, factor)
        epochs = max(1, round(epochs * args.scale))
        for batched, precision in ((False, "fp32"), (True, "fp32"), (True, fast)):
            timed(synset, data, args, 1, batched, precision)
        (seq, seq_s), (bat, bat_s), (low, low_s) = (timed(synset, data, args, epochs, b, p)
                                                    for b, p in ((False, "fp32"), (True, "fp32"), (True, fast)))
        totals = [a + b for a, b in zip(totals, (seq_s, bat_s, low_s))]
        train = [r.seconds - r.test_seconds for r in (seq, bat, low)]
        trains = [a + b for a, b in zip(trains, train)]
        diff = [max(abs(a - b) for a, b in zip(seq.per_seed, r.per_seed)) for r in (bat, low)]
        print(f"{label:16s} {synset.n_decoded:4d} images, {epochs:3d} epochs: {seq.path} {seq_s:6.2f} s, "
              f"{bat.path} {bat_s:6.2f} s ({seq_s / bat_s:.2f}x), {low.path}/{low.precision} {low_s:6.2f} s "
              f"({seq_s / low_s:.2f}x); max per-seed accuracy difference to sequential {diff[0]:.2f} / "
              f"{diff[1]:.2f} points")
        print(f"{'':16s} training {train[0]:6.2f} / {train[1]:6.2f} ({train[0] / train[1]:.2f}x) / {train[2]:6.2f} s "
              f"({train[0] / train[2]:.2f}x); testing {seq.test_seconds:6.2f} / {bat.test_seconds:6.2f} / "
              f"{low.test_seconds:6.2f} s")
    print(f"all: sequential {totals[0]:.2f} s, batched {totals[1]:.2f} s ({totals[0] / totals[1]:.2f}x), "
          f"batched {fast} {totals[2]:.2f} s ({totals[0] / totals[2]:.2f}x); training only: sequential "
          f"{trains[0]:.2f} s, batched {trains[1]:.2f} s ({trains[0] / trains[1]:.2f}x), batched {fast} "
          f"{trains[2]:.2f} s ({trains[0] / trains[2]:.2f}x)")


if __name__ == "__main__":
    main()
