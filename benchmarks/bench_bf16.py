"""bf16 autocast vs fp32 on this machine: speed of DM's real-image pass, and the accuracy it costs.

    python benchmarks/bench_bf16.py --out results/benchmarks/bf16-fashion_mnist.json   # Fashion-MNIST where present
    python benchmarks/bench_bf16.py --dataset digits --iters 2 --eval-epochs 2 --out /tmp/bf16.json   # seconds

Prints the CPU, its native-bf16 flags, torch's CPU capability and the path `precision="auto"` takes, then
(a) a ConvNet-3 embed of 256 Fashion-MNIST-sized images (1x28x28), fp32 as DM runs it (channels_last) vs
bf16 autocast as DM runs it (contiguous), and the relative error of the mean feature; (b) seconds per DM
iteration at the `cpu` budget in fp32 and in bf16 (the median of `--time-iters` iterations after the first);
(c) the same DM distillations (`cpu` budget, `--iters` iterations, IPC `--ipc`, distillation seeds
0..`--distill-seeds`-1) with the real pass in fp32 and in bf16, each set evaluated over `--seeds` seeds (protocol
"dc" with DSA, `--eval-epochs` epochs, fp32 training), plus the fp32 sets evaluated with bf16 training: per row
the mean ± std over the sets of each set's mean, and whether each difference from the fp32 row lies inside the
spread over distillation seeds (`ddnb.runs.compare_means`: "within noise"; long DSA evaluations of one set
agree to 0.01-0.02 points, so the evaluation seeds' spread says nothing about the precision).
Everything goes to the JSON at `--out` as well.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_eval import cpu_model  # noqa: E402 - after the path set-up

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def time_call(fn: Any, reps: int) -> float:
    """Median seconds of `reps` calls of fn after one untimed call."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def forward_check(reps: int) -> dict[str, float]:
    """(a): ConvNet-3 embed of 256 images of 1x28x28, fp32 channels_last vs bf16 autocast contiguous."""
    from ddnb.models import get_model
    from ddnb.precision import autocast

    torch.manual_seed(0)
    net = get_model("convnet3", 1, 10, 28).requires_grad_(False)
    x = torch.randn(256, 1, 28, 28)
    last = torch.channels_last
    net_cl, x_cl = get_model("convnet3", 1, 10, 28).requires_grad_(False), x.contiguous(memory_format=last)
    net_cl.load_state_dict(net.state_dict())
    net_cl = net_cl.to(memory_format=last)

    def bf16() -> torch.Tensor:
        with autocast("bf16", torch.device("cpu")):
            return net.embed(x)

    with torch.inference_mode():
        f32, f16 = net_cl.embed(x_cl).mean(0), bf16().float().mean(0)
        t32, t16 = time_call(lambda: net_cl.embed(x_cl), reps), time_call(bf16, reps)
    return {"fp32_s": t32, "bf16_s": t16, "speedup": t32 / t16,
            "mean_feature_rel_error": float((f16 - f32).norm() / f32.norm())}


def batch_real(data: Any) -> int:
    """The `cpu` budget's real images per class, at most the smallest class (digits has 119 in class 0)."""
    from ddnb.methods.dm import BUDGETS

    return min(BUDGETS["cpu"]["batch_real"], min(len(ix) for ix in data.class_indices()))


def dm_iteration(data: Any, ipc: int, precision: str, iters: int) -> float:
    """(b): median seconds of one DM iteration at the `cpu` budget (first iteration left out)."""
    import ddnb

    _, hist = ddnb.distill("dm", data, ipc, budget="cpu", seed=0, device="cpu", progress=False,
                           iterations=iters + 1, precision=precision, batch_real=batch_real(data))
    return statistics.median(hist.seconds[1:])


def distilled(data: Any, args: argparse.Namespace, real: str, seed: int) -> tuple[Any, float]:
    """(c): the DM set of distillation seed `seed` with its real pass in `real`, and its distillation seconds."""
    import ddnb

    start = time.perf_counter()
    syn, _ = ddnb.distill("dm", data, args.ipc, budget="cpu", seed=seed, device="cpu", progress=False,
                          iterations=args.iters, precision=real, batch_real=batch_real(data))
    return syn, time.perf_counter() - start


def accuracy_row(data: Any, args: argparse.Namespace, sets: dict[tuple[str, int], tuple[Any, float]], real: str,
                 train: str) -> dict[str, Any]:
    """(c): every distillation seed's set with its real pass in `real`, evaluated with training in `train`;
    `per_set` holds each set's mean over the evaluation seeds (the spread the comparison uses)."""
    from ddnb.train import evaluate_synset

    runs = []
    for seed in range(args.distill_seeds):
        syn, distill_s = sets[real, seed]
        res = evaluate_synset(syn, data, seeds=args.seeds, epochs=args.eval_epochs, dsa=True, protocol="dc",
                              device="cpu", progress=False, precision=train)
        runs.append({"distill_seed": seed, "distill_s": distill_s, "eval_s": res.seconds, "mean": res.mean,
                     "std": res.std, "per_seed": res.per_seed, "eval_path": res.path})
    per_set = [r["mean"] for r in runs]
    return {"real_pass": real, "eval_training": train, "per_set": per_set, "mean": statistics.mean(per_set),
            "std_over_sets": statistics.pstdev(per_set), "eval_std": statistics.mean(r["std"] for r in runs),
            "distill_s": statistics.mean(r["distill_s"] for r in runs),
            "eval_s": statistics.mean(r["eval_s"] for r in runs), "runs": runs}


def main() -> None:
    """Print the machine, (a), (b) and (c) as ratios and a table; write them all to --out."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion_mnist" if FMNIST.is_dir() else "digits")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--iters", type=int, default=500, help="DM iterations of each distillation in (c)")
    parser.add_argument("--eval-epochs", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=3, help="evaluation seeds per set")
    parser.add_argument("--distill-seeds", type=int, default=2, help="distillation seeds per precision")
    parser.add_argument("--time-iters", type=int, default=3, help="DM iterations timed in (b)")
    parser.add_argument("--reps", type=int, default=5, help="timed forwards in (a)")
    parser.add_argument("--out", required=True, help="JSON file for every figure printed")
    args = parser.parse_args()
    from ddnb.data import load_dataset
    from ddnb.precision import describe
    from ddnb.runs import compare_means
    from ddnb.utils import atomic_save_json, check_writable

    check_writable(args.out)
    machine = {"cpu": cpu_model(), "torch": torch.__version__, "threads": torch.get_num_threads(),
               **describe(torch.device("cpu"))}
    print(f"CPU: {machine['cpu']}; torch {machine['torch']}, {machine['threads']} threads; torch cpu capability "
          f"{machine['cpu_capability']}; native bf16 flags: {', '.join(machine['bf16_flags']) or 'none'}; "
          f"precision 'auto' runs {machine['auto']}"
          f"{'' if machine['native_bf16'] else ' (bf16 below is emulated, not native)'}")
    fwd = forward_check(args.reps)
    print(f"(a) ConvNet-3 embed, 256 x 1x28x28: fp32 {fwd['fp32_s']:.3f} s, bf16 {fwd['bf16_s']:.3f} s, "
          f"ratio {fwd['speedup']:.2f}x; relative error of the mean feature {fwd['mean_feature_rel_error']:.2e}")
    data = load_dataset(args.dataset)
    t32, t16 = (dm_iteration(data, args.ipc, p, args.time_iters) for p in ("fp32", "bf16"))
    print(f"(b) DM iteration, {data.name} IPC {args.ipc}, cpu budget, {batch_real(data)} real/class: "
          f"fp32 {t32:.3f} s, bf16 {t16:.3f} s, "
          f"ratio {t32 / t16:.2f}x")
    sets = {(real, seed): distilled(data, args, real, seed) for real in ("fp32", "bf16")
            for seed in range(args.distill_seeds)}
    rows = [accuracy_row(data, args, sets, real, train) for real, train in (("fp32", "fp32"), ("bf16", "fp32"),
                                                                            ("fp32", "bf16"))]
    print(f"(c) DM {args.iters} iterations, {data.name} IPC {args.ipc}, distillation seeds 0..{args.distill_seeds - 1}"
          f"; evaluation protocol dc + DSA, {args.eval_epochs} epochs, {args.seeds} seeds per set")
    print("    real pass | eval training | accuracy (%): mean ± std over sets | eval std | vs fp32/fp32 (gap, spread)"
          " | distill s | eval s")
    for row in rows:
        cmp = compare_means(row["per_set"], rows[0]["per_set"], names=("this", "fp32"))
        row["vs_fp32"] = cmp
        row["inside_spread"] = cmp["verdict"] == "within noise" if row is not rows[0] else None
        verdict = "-" if row is rows[0] else f"{cmp['verdict']} ({cmp['gap']:+.2f}, {cmp['spread'] or 0:.2f})"
        per_set = ", ".join(f"{m:.2f}" for m in row["per_set"])
        print(f"    {row['real_pass']:9s} | {row['eval_training']:13s} | {row['mean']:6.2f} ± "
              f"{row['std_over_sets']:4.2f} ({per_set}) | {row['eval_std']:4.2f} | {verdict:28s} | "
              f"{row['distill_s']:9.1f} | {row['eval_s']:6.1f}")
    atomic_save_json(args.out, {"machine": machine, "args": vars(args), "forward": fwd,
                                "batch_real": batch_real(data),
                                "dm_iteration": {"fp32_s": t32, "bf16_s": t16, "speedup": t32 / t16},
                                "accuracy": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
