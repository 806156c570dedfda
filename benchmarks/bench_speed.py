"""Speed of ConvNet-3 (width 128) on 28x28 one-channel images: training and inference images/s.

Training = forward + backward + SGD step on a batch; inference = forward under no_grad in eval
mode. Warm-up iterations first, then N timed iterations (CUDA synchronized around the clock).

    python benchmarks/bench_speed.py [--device cpu] [--batch-size 256] [--iters 20] [--warmup 3]
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from typing import Callable

import torch
import torch.nn.functional as F

from ddnb.models import get_model
from ddnb.utils import resolve_device


def _sync(device: torch.device) -> None:
    """Wait for queued CUDA work so the clock measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def images_per_second(step: Callable[[], None], batch_size: int, iters: int, warmup: int,
                      device: torch.device) -> float:
    """Run `step` `warmup` times untimed, then `iters` times timed; images per second."""
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    return batch_size * iters / (time.perf_counter() - start)


def main() -> None:
    """Measure and print training and inference throughput on the chosen device."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda when present)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--iters", type=int, default=20, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    args = parser.parse_args()

    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = get_model("convnet3", in_channels=1, num_classes=10, image_size=28, width=128).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(args.batch_size, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    @torch.no_grad()
    def infer_step() -> None:
        model(x)

    model.train()
    train_ips = images_per_second(train_step, args.batch_size, args.iters, args.warmup, device)
    model.eval()
    infer_ips = images_per_second(infer_step, args.batch_size, args.iters, args.warmup, device)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"device: {device} ({name}); torch {torch.__version__}; threads {torch.get_num_threads()}; "
          f"{os.cpu_count()} CPUs, load average {load}")
    print(f"ConvNet-3 width 128, 1x28x28, batch {args.batch_size}, {args.iters} timed iterations "
          f"after {args.warmup} warm-up")
    print(f"train (fwd+bwd+SGD step): {train_ips:,.0f} images/s")
    print(f"inference (fwd, no_grad): {infer_ips:,.0f} images/s")


if __name__ == "__main__":
    main()
