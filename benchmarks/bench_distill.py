"""Seconds per distillation iteration: ddnb's implementation vs a plain loop written like the original code.

    python benchmarks/bench_distill.py                    # DM, Fashion-MNIST, ConvNet-3, IPC 10, 256 real/class, DSA
    python benchmarks/bench_distill.py --iters 10 --ipc 50
    python benchmarks/bench_distill.py --precision fp32   # ddnb's real-image pass in fp32 (default: auto)

Every configuration runs in its own subprocess (glibc malloc settings are per process):
  ddnb           `ddnb.distill(...)` as a user calls it (malloc tuned by ddnb.alloc on import)
  ddnb default   the same with DDNB_MALLOC_TUNE=0 (glibc's default malloc), for the allocator's share
  plain          the reference code's loop (one class at a time, real features with autograd), default malloc
  plain+tuned    the same loop with MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ set to ddnb.alloc's values
The two ratios printed separate the allocator's share of the speed-up from the loop's. ddnb's real-image pass
runs at `--precision` (auto: bf16 where the CPU has avx512_bf16 / amx_bf16, see ddnb.precision); the CPU model,
its bf16 flags and the path taken are printed first. The plain loop stays fp32, as the reference code.
Add a method beside DM by adding an entry to METHODS (its ddnb worker and its plain worker).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def load_data(name: str) -> Any:
    """The dataset, falling back to digits (with a note) when it is not on this machine."""
    from ddnb.data import DatasetNotFoundError, load_dataset

    try:
        return load_dataset(name)
    except DatasetNotFoundError:
        print(f"note: {name} not found here; benchmarking on digits instead", file=sys.stderr)
        return load_dataset("digits")


# ------------------------------------------------------------------ DM workers

def dm_ddnb(data: Any, args: argparse.Namespace) -> dict[str, list[float]]:
    """Wall and CPU seconds of each iteration of ddnb.distill('dm', ...) with the benchmark's settings."""
    from ddnb.methods import distill

    cpu = [time.process_time()]
    _, hist = distill("dm", data, args.ipc, budget="paper", seed=0, device="cpu", progress=False,
                      iterations=args.warmup + args.iters, batch_real=args.batch_real, compile=args.compile,
                      precision=args.precision, callback=lambda it, state: cpu.append(time.process_time()))
    return {"seconds": hist.seconds, "cpu": [b - a for a, b in zip(cpu, cpu[1:])]}


def dm_plain(data: Any, args: argparse.Namespace) -> dict[str, list[float]]:
    """Seconds per iteration of DM written as the reference main_DM.py: a Python loop over classes."""
    from ddnb.augment import DSA_STRATEGY, dsa
    from ddnb.models import get_model

    torch.manual_seed(0)
    c, h, _ = data.image_shape
    k, idx = data.num_classes, data.class_indices()
    image_syn = torch.cat([data.x_train[i[:args.ipc]] for i in idx]).clone().requires_grad_(True)
    opt = torch.optim.SGD([image_syn], lr=1.0, momentum=0.5)
    seconds, cpu = [], []
    for _ in range(args.warmup + args.iters):
        t0, c0 = time.perf_counter(), time.process_time()
        net = get_model("convnet3", c, k, h)
        net.train()
        for p in net.parameters():
            p.requires_grad = False
        loss = torch.tensor(0.0)
        for cls in range(k):
            img_real = data.x_train[idx[cls][torch.randperm(len(idx[cls]))[:args.batch_real]]]
            img_syn = image_syn[cls * args.ipc:(cls + 1) * args.ipc].reshape(args.ipc, c, h, h)
            seed = int(time.time() * 1000) % 100000
            img_real, img_syn = dsa(img_real, DSA_STRATEGY, seed=seed), dsa(img_syn, DSA_STRATEGY, seed=seed)
            output_real = net.embed(img_real).detach()
            output_syn = net.embed(img_syn)
            loss = loss + torch.sum((torch.mean(output_real, dim=0) - torch.mean(output_syn, dim=0)) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seconds.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"seconds": seconds, "cpu": cpu}


# ------------------------------------------------------------------ DANCE workers (001 Tab. 4: about DM's cost)

# Experts only need the right shapes to be timed: one, trained one epoch on 100 images per class.
_DANCE_EXPERTS = dict(n_experts=1, expert_epochs=1, expert_images_per_class=100)


def dance_ddnb(data: Any, args: argparse.Namespace) -> dict[str, list[float]]:
    """Wall and CPU seconds of each iteration of ddnb.distill('dance', ...) (paper settings, small experts)."""
    from ddnb.methods import distill

    cpu = [time.process_time()]
    _, hist = distill("dance", data, args.ipc, budget="paper", seed=0, device="cpu", progress=False,
                      iterations=args.warmup + args.iters, batch_real=args.batch_real, compile=args.compile,
                      precision=args.precision, callback=lambda it, state: cpu.append(time.process_time()),
                      **_DANCE_EXPERTS)
    return {"seconds": hist.seconds, "cpu": [b - a for a, b in zip(cpu, cpu[1:])]}


def dance_plain(data: Any, args: argparse.Namespace) -> dict[str, list[float]]:
    """Seconds per iteration of DANCE written as the official DANCE.py: per-class steps, then calibration."""
    import random

    import torch.nn.functional as F

    from ddnb.augment import dsa, factor_decode
    from ddnb.methods.base import init_synthetic
    from ddnb.methods.dance import BUDGETS, load_experts
    from ddnb.models import get_model

    torch.manual_seed(0)
    s = {**BUDGETS["paper"], **_DANCE_EXPERTS}
    c, h, _ = data.image_shape
    k, idx, f = data.num_classes, data.class_indices(), s["factor"]
    inits, finals = load_experts(data, s, "cpu", progress=False)
    images, _ = init_synthetic(data, args.ipc, seed=0, factor=f)
    images.requires_grad_(True)
    opt = torch.optim.SGD([images], lr=s["lr_img_per_ipc"] * args.ipc, momentum=s["momentum"])
    mid, expert = get_model("convnet3", c, k, h), get_model("convnet3", c, k, h)
    for p in (*mid.parameters(), *expert.parameters()):
        p.requires_grad = False
    seconds, cpu = [], []
    for _ in range(args.warmup + args.iters):
        t0, c0 = time.perf_counter(), time.process_time()
        n, lam = random.randrange(len(inits)), float(torch.rand(1))
        torch.nn.utils.vector_to_parameters(lam * inits[n] + (1 - lam) * finals[n], mid.parameters())
        torch.nn.utils.vector_to_parameters(finals[n].clone(), expert.parameters())
        for cls in range(k):  # inner-class view: one step per class
            real = data.x_train[idx[cls][torch.randperm(len(idx[cls]))[:args.batch_real]]]
            syn = factor_decode(images[cls * args.ipc:(cls + 1) * args.ipc], f, h)
            both = dsa(torch.cat([real, syn]), s["dsa_strategy"], seed=random.randrange(2**31))
            with torch.no_grad():
                feat_real = mid.embed(both[:len(real)])
            loss = ((mid.embed(both[len(real):]).mean(0) - feat_real.mean(0)) ** 2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        for cls in range(k):  # inter-class view: calibration, one step per class
            syn = factor_decode(images[cls * args.ipc:(cls + 1) * args.ipc], f, h)
            loss = F.cross_entropy(expert(dsa(syn, s["dsa_strategy"], seed=random.randrange(2**31))),
                                   torch.full((len(syn),), cls))
            opt.zero_grad()
            loss.backward()
            opt.step()
        seconds.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"seconds": seconds, "cpu": cpu}


# name -> (ddnb worker, plain worker); each returns wall and CPU seconds per iteration (warm-up included)
METHODS: dict[str, tuple[Callable[..., dict[str, list[float]]], Callable[..., dict[str, list[float]]]]] = {
    "dm": (dm_ddnb, dm_plain), "dance": (dance_ddnb, dance_plain)}


# ------------------------------------------------------------------ driver

def tuned_env() -> dict[str, str]:
    """The MALLOC_* environment variables with the values ddnb.alloc sets through mallopt."""
    from ddnb.alloc import SETTINGS

    return {env: str(value) for _, value, env in SETTINGS}


def run_worker(which: str, alloc: str, args: argparse.Namespace) -> tuple[float, float]:
    """Run one configuration in a fresh subprocess; returns median (wall, CPU) seconds per iteration."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "DDNB_MALLOC_TUNE"}
    if alloc == "default":
        env["DDNB_MALLOC_TUNE"] = "0"
    elif which == "plain":
        env.update(tuned_env())  # ddnb tunes itself through mallopt on import
    cmd = [sys.executable, __file__, "--worker", which, "--method", args.method, "--dataset", args.dataset,
           "--ipc", str(args.ipc), "--batch-real", str(args.batch_real), "--iters", str(args.iters),
           "--warmup", str(args.warmup), "--precision", args.precision, *(["--compile"] if args.compile else [])]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    times = json.loads(out.stdout.strip().splitlines()[-1])
    return tuple(statistics.median(times[k][args.warmup:]) for k in ("seconds", "cpu"))  # type: ignore[return-value]


def worker(args: argparse.Namespace) -> None:
    """Subprocess body: time one implementation and print its per-iteration seconds as JSON."""
    data = load_data(args.dataset)
    fn = METHODS[args.method][0 if args.worker == "ddnb" else 1]
    print(json.dumps(fn(data, args)))


def main() -> None:
    """Time ddnb and the plain loop (default and tuned malloc) and print both ratios."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--method", default="dm", choices=sorted(METHODS))
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--batch-real", type=int, default=256)
    p.add_argument("--iters", type=int, default=5, help="timed iterations per configuration (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--compile", action="store_true", help="ddnb with torch.compile (the first iteration compiles)")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                   help="ddnb's real-image pass (auto: bf16 where the CPU does it natively)")
    p.add_argument("--worker", choices=("ddnb", "plain"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    from bench_eval import cpu_model
    from ddnb.precision import describe, resolve_precision

    print(f"CPU {cpu_model()}; {describe(torch.device('cpu'))}; ddnb path: real-image pass "
          f"{resolve_precision(args.precision, torch.device('cpu'))} (--precision {args.precision})")
    print(f"{args.method} on {args.dataset}, ConvNet-3 width 128, IPC {args.ipc}, {args.batch_real} real/class, "
          f"DSA, CPU threads {torch.get_num_threads()}, median of {args.iters} iterations, "
          f"load average {os.getloadavg()[0]:.1f}")
    configs = (("ddnb", "tuned"), ("ddnb", "default"), ("plain", "default"), ("plain", "tuned"))
    t = {cfg: run_worker(*cfg, args) for cfg in configs}
    for (which, alloc), (wall, cpu) in t.items():
        print(f"  {which:5s} malloc {alloc:7s}: {wall:.3f} s/iteration  ({cpu:.3f} CPU s)")
    for label, ref in (("default malloc", ("plain", "default")), ("both tuned    ", ("plain", "tuned"))):
        wall, cpu = (t[ref][i] / t["ddnb", "tuned"][i] for i in (0, 1))
        print(f"speed-up vs plain loop, {label}: {wall:.2f}x wall ({cpu:.2f}x CPU time)")
    print(f"load average at the end {os.getloadavg()[0]:.1f} (timings on a busy machine are noisy)")


if __name__ == "__main__":
    main()
