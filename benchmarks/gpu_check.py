"""The GPU check of issue 12, one short script for a session that is lent a GPU (about 8 minutes on an H200).

Steps, each written to `--out`/gpu_check.json (atomically) as soon as it is done, so a timeout loses nothing:

1. `info`: torch, CUDA, cuDNN, the device's name, capability and memory.
2. `timings`: one iteration of every registered distillation method's `paper` budget on Fashion-MNIST
   IPC 10 (digits when Fashion-MNIST is absent): median seconds of `--timed` iterations after one warm-up,
   plus the set-up before the first iteration. Experts, teachers and scores are made at tiny sizes
   (`TINY`, recorded per method) because only the iteration is timed; CCFS's distilled start runs 2 DM
   iterations of the `cpu` budget. On CUDA the timed iterations run under
   `torch.cuda.set_sync_debug_mode("warn")` and each method records its host syncs per iteration
   (`syncs_per_iteration`, the first warnings' sources in `sync_sources`).
3. `dm_paper`: DM's `paper` budget for as many iterations as fit in `--dm-seconds` (the paper runs 20,000
   at 0.08 s/iteration on an A100, CIFAR-10), the set saved as dm_paper.safetensors, then evaluated: ConvNet-3,
   DSA, `--eval-epochs` epochs, 3 seeds (final-epoch test accuracy).

Getting Fashion-MNIST onto the GPU machine: the device tool carries the session's checkout (not
/usr/share, and the machine reaches no registry or apt), so copy the Debian files (30 MB, under the 64 MiB
limit) into a git-ignored folder of the checkout the session started in and carry it; ddnb finds them
through $DDNB_DATA (about 9 minutes in all: timings about 3, DM 240 s, evaluation under a minute):

    mkdir -p .data/FashionMNIST/raw && cp /usr/share/datasets/fashion-mnist/*.gz .data/FashionMNIST/raw/
    echo /.data/ >> .git/info/exclude
    run(command="set -o pipefail; DDNB_DATA=.data PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py "
                "--dm-seconds 240 --out $OUT 2>&1 | tee $OUT/log", carry=[".data"], timeout_s=600)

The machine's python3 has torch, numpy, scipy, scikit-learn, pandas, tqdm and safetensors, all that this
script imports of ddnb (run from the checkout's root, so `ddnb` is importable without installing it).
`--smoke` shrinks everything (smoke budgets, digits, a few seconds of DM, 2 evaluation epochs) to test the
script on a CPU: `python benchmarks/gpu_check.py --device cpu --smoke --out runs/gpu_check_smoke`.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing ddnb

import ddnb  # noqa: E402
from ddnb.data import DatasetNotFoundError  # noqa: E402
from ddnb.methods import get_method  # noqa: E402
from ddnb.methods.base import build_synset  # noqa: E402
from ddnb.utils import atomic_save_json, resolve_device  # noqa: E402

IPC = 10
_EXPERTS = dict(n_experts=1, expert_train_epochs=3, max_start_epoch=1)  # DATM's label expert needs all the data
# what each method's `paper` budget makes before its loop, shrunk: only the iteration is timed
TINY: dict[str, dict[str, Any]] = {
    "dance": dict(n_experts=1, expert_epochs=1, expert_images_per_class=100),
    "mtt": _EXPERTS, "datm": {**_EXPERTS, "current_max_start_epoch": 1},
    "selmatch": {**_EXPERTS, "score_budget": "smoke"},
    "sre2l": dict(teacher_epochs=1, teacher_pool=100), "dwa": dict(teacher_epochs=1, teacher_pool=100),
    "ccfs": dict(base_budget="cpu", base_iterations=2, score_budget="smoke", teacher_epochs=1),
}
SMOKE = {"datm": dict(expert_train_epochs=10)}  # at IPC 10 on digits DATM's 2-epoch smoke expert is too weak


class _Enough(Exception):
    """Raised from a run's callback to end it once the iterations needed are done."""


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a clock reading includes it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_info(device: torch.device) -> dict[str, Any]:
    """torch, CUDA and device facts, printed and returned."""
    info: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(),
                            "cuda": torch.version.cuda, "device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, capability=f"{props.major}.{props.minor}", memory_gib=props.total_memory / 2**30,
                    multiprocessors=props.multi_processor_count, cudnn=torch.backends.cudnn.version(),
                    bf16=torch.cuda.is_bf16_supported())
    else:
        info.update(name=platform.processor() or platform.machine())
    print("info:", info, flush=True)
    return info


def load_data(smoke: bool, device: torch.device) -> Any:
    """Fashion-MNIST on the device (digits under --smoke or when Fashion-MNIST is not found)."""
    if not smoke:
        try:
            return ddnb.load_dataset("fashion_mnist", device=device)
        except DatasetNotFoundError as exc:
            print(f"Fashion-MNIST not found, using digits: {str(exc).splitlines()[0]}", flush=True)
    return ddnb.load_dataset("digits", device=device)


def time_method(method: str, data: Any, budget: str, timed: int, cap: float, device: torch.device) -> dict[str, Any]:
    """Median seconds of `timed` iterations of `method` after one warm-up (fewer, at least one, once `cap`
    seconds have passed since the warm-up ended), its set-up time and host syncs."""
    setting = get_method(method).iterations_setting
    stamps: list[float] = []
    start = time.perf_counter()

    def tick(it: int, state: dict[str, Any]) -> None:
        _sync(device)
        stamps.append(time.perf_counter())
        if len(stamps) == 1 and device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")  # count the host syncs of the timed iterations
        if len(stamps) > timed or len(stamps) > 1 and stamps[-1] - stamps[0] > cap:
            raise _Enough

    overrides = {**(TINY if budget == "paper" else SMOKE).get(method, {}), setting: timed + 1}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ddnb.distill(method, data, IPC, budget=budget, seed=0, device=device, progress=False, callback=tick,
                         **overrides)
        except _Enough:
            pass
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    seconds = [b - a for a, b in zip(stamps, stamps[1:])]
    first = stamps[0] - start if stamps else None
    return {"method": method, "budget": budget, "overrides": overrides, "timed_iterations": len(seconds),
            "median_s": statistics.median(seconds) if seconds else None, "per_iteration_s": seconds,
            "setup_and_first_iteration_s": first,
            "syncs_per_iteration": len(syncs) / len(seconds) if seconds and device.type == "cuda" else None,
            "sync_sources": sorted({f"{Path(w.filename).name}:{w.lineno}" for w in syncs})[:10]}


def dm_for(seconds: float, data: Any, budget: str, device: torch.device, iterations: int) -> tuple[Any, dict]:
    """DM at `budget` for as many iterations as fit in `seconds` (at most `iterations`); the set and its record."""
    settings = dict(get_method("dm").budgets[budget])
    held: dict[str, Any] = {}
    start = time.perf_counter()

    def stop_when_due(it: int, state: dict[str, Any]) -> None:
        held["images"], held["done"] = state["images"], it + 1
        if time.perf_counter() - start > seconds:
            raise _Enough

    try:
        ddnb.distill("dm", data, IPC, budget=budget, seed=0, device=device, progress=False, callback=stop_when_due,
                     iterations=iterations)
    except _Enough:
        pass
    _sync(device)
    wall = time.perf_counter() - start
    labels = torch.arange(data.num_classes).repeat_interleave(IPC)
    synset = build_synset(held["images"], labels, data, method="dm", settings=settings, seed=0, budget=budget,
                          iterations_done=held["done"])
    return synset, {"budget": budget, "iterations_done": held["done"], "paper_iterations": settings["iterations"],
                    "wall_s": wall, "s_per_iteration": wall / held["done"],
                    "paper_reference": "0.08 s/iteration on an A100 (CIFAR-10)"}


def main() -> None:
    """Parse the options, run the three steps and write the JSON after each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default; an error if absent) or cpu")
    parser.add_argument("--out", default="runs/gpu_check", help="folder for gpu_check.json and dm_paper.safetensors")
    parser.add_argument("--dm-seconds", type=float, default=300.0, help="wall-clock budget of DM's paper run")
    parser.add_argument("--eval-epochs", type=int, default=1000, help="epochs of each evaluation training")
    parser.add_argument("--timed", type=int, default=3, help="timed iterations per method (after one warm-up)")
    parser.add_argument("--method-seconds", type=float, default=20.0,
                        help="stop timing a method after this long (past its warm-up and one timed iteration)")
    parser.add_argument("--methods", nargs="*", default=None, help="methods to time (default: every one)")
    parser.add_argument("--smoke", action="store_true", help="smoke budgets and tiny sizes: a CPU test in a minute")
    args = parser.parse_args()
    try:
        device = resolve_device(args.device)
    except ValueError as exc:  # no CUDA here: say so in one line (pass --device cpu to run on the CPU)
        parser.error(str(exc))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = "smoke" if args.smoke else "paper"
    dm_seconds, eval_epochs, timed = (3.0, 2, 1) if args.smoke else (args.dm_seconds, args.eval_epochs, args.timed)
    report: dict[str, Any] = {"args": vars(args), "info": device_info(device), "timings": []}
    data = load_data(args.smoke, device)
    report["dataset"] = data.name
    atomic_save_json(out / "gpu_check.json", report)
    methods = args.methods or [m["name"] for m in ddnb.list_methods() if m["kind"] == "distill"]
    for method in methods:
        try:
            row = time_method(method, data, budget, timed, args.method_seconds, device)
        except Exception as exc:  # noqa: BLE001 - one method's failure is recorded and the check goes on
            row = {"method": method, "error": f"{type(exc).__name__}: {exc}"}
        print("timing:", {k: v for k, v in row.items() if k != "per_iteration_s"}, flush=True)
        report["timings"].append(row)
        atomic_save_json(out / "gpu_check.json", report)
    synset, record = dm_for(dm_seconds, data, budget, device, get_method("dm").budgets[budget]["iterations"])
    synset.save(out / "dm_paper.safetensors")
    report["dm_paper"] = record
    print("dm:", record, flush=True)
    atomic_save_json(out / "gpu_check.json", report)
    start = time.perf_counter()
    result = ddnb.evaluate_synset(synset, data, arch="convnet3", seeds=3, epochs=eval_epochs, dsa=True, device=device,
                                  progress=False)
    record["eval"] = {"arch": "convnet3", "dsa": True, "epochs": eval_epochs, "seeds": 3, "mean": result.mean,
                      "std": result.std, "per_seed": result.per_seed, "path": result.path, "seconds":
                      time.perf_counter() - start}
    print("eval:", record["eval"], flush=True)
    atomic_save_json(out / "gpu_check.json", report)


if __name__ == "__main__":
    main()
