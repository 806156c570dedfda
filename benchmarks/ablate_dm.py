"""Issue 11's DM ablation: does one of the reference's DSA behaviours explain DM's gap to main_DM.py?

    python benchmarks/ablate_dm.py --eval-epochs 300 --out results/benchmarks/ablate_dm-fashion_mnist.json  # ~2 h
    python benchmarks/ablate_dm.py --dataset digits --iters 2 --eval-epochs 2 --seeds 1 --out /tmp/ablate.json

At equal iterations, each variant of DM's settings (baseline = ddnb's defaults; `dsa_draws="reference"`;
`class_seeds="shared"`; `dsa_align_corners=False`; all three) distils with the `cpu` budget, IPC `--ipc`,
`--batch-real` real images per class (at most the smallest class), DSA, `--iters` iterations, for
distillation seeds 0..`--seeds`-1; every set is evaluated by the same `evaluate_synset` (ConvNet-3, protocol
"dc" with DSA, `--eval-epochs` epochs, `--eval-seeds` evaluation seeds). Each finished variant/seed goes to
`--runs` (default: `--out` with suffix .runs.json), keyed by its configuration, and a re-run skips it.
After each run it prints the time the runs left will take at the mean pace so far. The table (printed, and
written to `--out` as JSON with its Markdown) gives per variant the mean ± std over distillation seeds of each
set's mean accuracy, the mean std over evaluation seeds, and the gap to the baseline with its verdict
(ddnb.runs.compare_means over the per-set means: the spread over distillation seeds).
On square images align_corners changes scale and rotate only by float rounding (ddnb.augment), so that row
shows how far rounding alone moves a run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_eval import cpu_model  # noqa: E402 - after the path set-up

FMNIST = Path("/usr/share/datasets/fashion-mnist")
REFERENCE = dict(dsa_draws="reference", class_seeds="shared", dsa_align_corners=False)
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "reference_draws": {"dsa_draws": "reference"},
    "shared_class_seeds": {"class_seeds": "shared"},
    "align_corners_false": {"dsa_align_corners": False},
    "all_three": REFERENCE,
}


def batch_real(data: Any, wanted: int) -> int:
    """Real images per class: `wanted`, at most the smallest class."""
    return min(wanted, min(len(ix) for ix in data.class_indices()))


def run_key(args: argparse.Namespace, data: Any, variant: str, seed: int) -> str:
    """The JSON key of one run: everything that decides its result."""
    return json.dumps({"dataset": data.name, "ipc": args.ipc, "batch_real": batch_real(data, args.batch_real),
                       "iters": args.iters, "budget": "cpu", "settings": VARIANTS[variant], "seed": seed,
                       "eval_epochs": args.eval_epochs, "eval_seeds": args.eval_seeds, "device": args.device},
                      sort_keys=True)


def distil(data: Any, args: argparse.Namespace, settings: dict[str, Any], seed: int, iters: int) -> tuple[Any, Any]:
    """The DM set and history of one variant and distillation seed."""
    import ddnb

    return ddnb.distill("dm", data, args.ipc, budget="cpu", seed=seed, device=args.device, progress=False,
                        iterations=iters, batch_real=batch_real(data, args.batch_real), **settings)


def evaluate(syn: Any, data: Any, args: argparse.Namespace, epochs: int) -> Any:
    """The one evaluation every set gets: ConvNet-3, protocol dc with DSA, `epochs` epochs, --eval-seeds seeds."""
    from ddnb.train import evaluate_synset

    return evaluate_synset(syn, data, arch="convnet3", seeds=args.eval_seeds, epochs=epochs, dsa=True,
                           protocol="dc", device=args.device, progress=False)


def run_one(data: Any, args: argparse.Namespace, variant: str, seed: int) -> dict[str, Any]:
    """Distil and evaluate one variant/seed; its accuracies and seconds."""
    start = time.perf_counter()
    syn, _ = distil(data, args, VARIANTS[variant], seed, args.iters)
    distill_s = time.perf_counter() - start
    res = evaluate(syn, data, args, args.eval_epochs)
    return {"variant": variant, "seed": seed, "settings": VARIANTS[variant], "mean": res.mean, "std": res.std,
            "per_seed": res.per_seed, "distill_s": distill_s, "eval_s": res.seconds, "eval_path": res.path}


def table(done: dict[str, dict[str, Any]], keys: dict[tuple[str, int], str], seeds: int) -> list[dict[str, Any]]:
    """One row per variant: per-set means, their mean and std over distillation seeds, the verdict vs baseline."""
    from ddnb.runs import compare_means

    runs = {v: [done[keys[v, s]] for s in range(seeds)] for v in VARIANTS}
    base = [r["mean"] for r in runs["baseline"]]
    rows = []
    for variant, rs in runs.items():
        means = [r["mean"] for r in rs]
        cmp = None if variant == "baseline" else compare_means(means, base, names=("variant", "baseline"))
        rows.append({"variant": variant, "settings": VARIANTS[variant], "set_means": means,
                     "mean": statistics.fmean(means), "std_over_distill_seeds": statistics.pstdev(means),
                     "mean_std_over_eval_seeds": statistics.fmean(r["std"] for r in rs), "vs_baseline": cmp,
                     "distill_s": statistics.fmean(r["distill_s"] for r in rs),
                     "eval_s": statistics.fmean(r["eval_s"] for r in rs)})
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table in Markdown."""
    lines = ["| variant | accuracy (%) mean ± std over distillation seeds | per set | eval-seed std | "
             "vs baseline (gap, spread, verdict) | distill s | eval s |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        cmp = r["vs_baseline"]
        vs = "-" if cmp is None else f"{cmp['gap']:+.2f}, {cmp['spread'] or 0:.2f}, {cmp['verdict']}"
        sets = ", ".join(f"{m:.2f}" for m in r["set_means"])
        lines.append(f"| {r['variant']} | {r['mean']:.2f} ± {r['std_over_distill_seeds']:.2f} | {sets} | "
                     f"{r['mean_std_over_eval_seeds']:.2f} | {vs} | {r['distill_s']:.0f} | {r['eval_s']:.0f} |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    """The command line; parser.error (exit 2, one line) for a count below its minimum."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion_mnist" if FMNIST.is_dir() else "digits")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--batch-real", type=int, default=256, help="real images per class per iteration")
    parser.add_argument("--iters", type=int, default=400, help="DM iterations of every distillation")
    parser.add_argument("--seeds", type=int, default=2, help="distillation seeds per variant (0..seeds-1)")
    parser.add_argument("--eval-epochs", type=int, default=1000)
    parser.add_argument("--eval-seeds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", required=True, help="JSON file for the table")
    parser.add_argument("--runs", help="JSON file of finished runs (default: --out with suffix .runs.json)")
    args = parser.parse_args()
    for name in ("ipc", "batch_real", "iters", "seeds", "eval_epochs", "eval_seeds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    args.runs = args.runs or str(Path(args.out).with_suffix(".runs.json"))
    return args


def main() -> None:
    """Estimate, run what is not in --runs yet (saving after each), print and write the table."""
    args = parse_args()
    from ddnb.data import load_dataset
    from ddnb.utils import atomic_save_json, check_writable

    check_writable(args.out)
    check_writable(args.runs, "runs file")
    done: dict[str, dict[str, Any]] = json.loads(Path(args.runs).read_text()) if Path(args.runs).is_file() else {}
    data = load_dataset(args.dataset)
    keys = {(v, s): run_key(args, data, v, s) for v in VARIANTS for s in range(args.seeds)}
    left = [vs for vs, key in keys.items() if key not in done]
    machine = {"cpu": cpu_model(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    print(f"{machine['cpu']}; torch {machine['torch']}, {machine['threads']} threads; {data.name} IPC {args.ipc}, "
          f"{batch_real(data, args.batch_real)} real/class, {args.iters} iterations, {args.seeds} distillation "
          f"seed(s), evaluation {args.eval_epochs} epochs x {args.eval_seeds} seeds; {len(keys) - len(left)} of "
          f"{len(keys)} runs already in {args.runs}")
    spent = []
    for n, (variant, seed) in enumerate(left, 1):
        done[keys[variant, seed]] = run = run_one(data, args, variant, seed)
        atomic_save_json(args.runs, done)
        spent.append(run["distill_s"] + run["eval_s"])
        print(f"[{n}/{len(left)}] {variant} seed {seed}: {run['mean']:.2f} ± {run['std']:.2f} "
              f"(distill {run['distill_s']:.0f} s, eval {run['eval_s']:.0f} s); the {len(left) - n} left: about "
              f"{statistics.fmean(spent) * (len(left) - n) / 3600:.2f} h at the mean pace so far", flush=True)
    rows = table(done, keys, args.seeds)
    text = markdown(rows)
    print(text)
    atomic_save_json(args.out, {"machine": machine, "args": vars(args), "rows": rows, "markdown": text})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
