"""ddnb's 2x2 average pooling (ddnb.models.AvgPool2x2) vs torch's nn.AvgPool2d, on this CPU.

    python benchmarks/bench_pool.py [--threads 2] [--reps 5] [--out results/benchmarks/pool-<cpu>.json]

Times, in one run, (1) the pooling op alone on a ConvNet-3 layer-1 activation (256 x 128 x 32 x 32), forward and
forward+backward, and (2) the ConvNet-3 embed of 256 Fashion-MNIST-sized images under inference mode (DM's
real-image pass) and a training step on 256 images (evaluation), each with either pooling, in fp32 and under bf16
autocast, contiguous and channels_last. Prints the CPU, its bf16 flags, the threads and every figure as
milliseconds and as the ratio torch / ddnb (above 1: ddnb's is faster). AvgPool2x2 is a depthwise convolution
without autograd on contiguous input and torch's pooling otherwise, so the training rows show that nothing got
slower. Both give the same numbers (tests/test_models.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_bf16 import time_call  # noqa: E402 - after the path set-up
from bench_eval import cpu_model  # noqa: E402

from ddnb.alloc import tune_malloc  # noqa: E402
from ddnb.models import AvgPool2x2, get_model  # noqa: E402
from ddnb.precision import describe  # noqa: E402

LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def median_ms(fn: Callable[[], object], reps: int) -> float:
    """Median wall time of fn() in milliseconds over `reps` calls after one warm-up call (bench_bf16.time_call)."""
    return 1000.0 * time_call(fn, reps)


def with_pooling(model: nn.Module, torch_pool: bool) -> nn.Module:
    """The model with every AvgPool2x2 replaced by nn.AvgPool2d(2, 2) when `torch_pool` (the old layer)."""
    for i, m in enumerate(model.features):
        if isinstance(m, AvgPool2x2) and torch_pool:
            model.features[i] = nn.AvgPool2d(2, 2)
    return model


def autocast(precision: str) -> torch.autocast:
    """bf16 autocast on the CPU for "bf16", disabled for "fp32" (forced: this benchmark measures both)."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def op_times(layout: str, precision: str, reps: int) -> dict[str, float]:
    """The pooling op alone, forward and forward+backward, old and new (ms)."""
    x = torch.randn(256, 128, 32, 32, dtype=torch.bfloat16 if precision == "bf16" else torch.float32)
    x = x.contiguous(memory_format=LAYOUTS[layout])
    out = {}
    for name, pool in (("torch", nn.AvgPool2d(2, 2)), ("ddnb", AvgPool2x2())):
        with torch.inference_mode():
            out[f"op_forward_{name}"] = median_ms(lambda: pool(x), reps)
        xg = x.detach().requires_grad_(True)
        out[f"op_forward_backward_{name}"] = median_ms(lambda: pool(xg).sum().backward(), reps)
    return out


def model_times(layout: str, precision: str, reps: int) -> dict[str, float]:
    """ConvNet-3's embed of 256 images (inference) and a training step on 256 images, old and new pooling (ms)."""
    fmt = LAYOUTS[layout]
    x = torch.randn(256, 1, 28, 28).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (256,))
    out = {}
    for name, torch_pool in (("torch", True), ("ddnb", False)):
        torch.manual_seed(0)
        net = with_pooling(get_model("convnet3", 1, 10, 28), torch_pool).to(memory_format=fmt)
        opt = torch.optim.SGD(net.parameters(), lr=0.01)

        def embed() -> None:
            with torch.inference_mode(), autocast(precision):
                net.embed(x)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with autocast(precision):
                loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()

        out[f"embed_{name}"] = median_ms(embed, reps)
        out[f"train_step_{name}"] = median_ms(step, reps)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", help="JSON file for the figures")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tune_malloc()
    cpu = describe(torch.device("cpu"))
    print(f"CPU {cpu_model()}; {cpu}; torch {torch.__version__}; {args.threads} threads")
    rows = []
    for precision in ("fp32", "bf16"):
        for layout in LAYOUTS:
            t = {**op_times(layout, precision, args.reps), **model_times(layout, precision, args.reps)}
            row = {"precision": precision, "layout": layout, **{k: round(v, 2) for k, v in t.items()}}
            for what in ("op_forward", "op_forward_backward", "embed", "train_step"):
                row[f"{what}_ratio"] = round(t[f"{what}_torch"] / t[f"{what}_ddnb"], 2)
            rows.append(row)
            print(f"{precision:4} {layout:13} " + "  ".join(
                f"{what} {t[f'{what}_torch']:.1f} -> {t[f'{what}_ddnb']:.1f} ms ({row[f'{what}_ratio']:.2f}x)"
                for what in ("op_forward", "op_forward_backward", "embed", "train_step")), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"cpu": cpu_model(), **cpu, "torch": torch.__version__,
                                              "threads": args.threads, "reps": args.reps, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
