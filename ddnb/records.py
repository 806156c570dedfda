"""Results across runs: a sweep's results.json files as one table (`collect`), and the committed record
of reference runs under `results/NN_slug/<budget>-<dataset>-ipcN-seedS.json` (`record_result`) with the
README's "Measured here" table made from it (`report_table`, `ddnb report`).
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ddnb.runs import RESULTS_NAME, read_results
from ddnb.utils import atomic_save_json, check_writable

if TYPE_CHECKING:
    import pandas as pd

RECORD_PARAMS = ("budget", "dataset", "ipc", "seed")  # the params that name a recorded run's file
NOTEBOOK_FOLDER = re.compile(r"^\d\d_")  # results/NN_slug/ holds notebook runs; other folders (benchmarks/) are not


def collect(root: str | Path) -> pd.DataFrame:
    """Gather every results.json under `root` (recursively) into one table, one row per run:
    params as `param.<name>`, metrics as `metric.<name>` (a None metric is NaN, so means skip it),
    findings as `finding.<id>` (bool)."""
    import pandas as pd

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no folder {str(root)!r} to collect results from")
    files = sorted(root.rglob(RESULTS_NAME))
    if not files:
        raise FileNotFoundError(f"no {RESULTS_NAME} under {str(root)!r}")
    return pd.DataFrame([_row(root, f) for f in files])


def _row(root: Path, path: Path) -> dict[str, Any]:
    """One table row from one results.json."""
    res = read_results(path)
    row: dict[str, Any] = {"run": str(path.parent.relative_to(root)), "notebook": res["notebook"],
                           "status": res["status"], "duration_s": res["duration_s"], "error": res["error"]}
    row.update({f"param.{k}": v for k, v in res["params"].items()})
    row.update({f"metric.{k}": math.nan if v is None else v for k, v in res["metrics"].items()})
    row.update({f"finding.{f['id']}": f["holds"] for f in res["findings"]})
    return row


def record_path(results: Mapping[str, Any], results_root: str | Path, ipc: str | None = None) -> Path:
    """Where a run's record goes: `results_root/<notebook>/<budget>-<dataset>-ipcN-seedS.json`; a run over
    several IPCs (param ipc None, params["ipcs"] the list it studied) is named ipcA+B+...; `ipc` names a run
    whose params left both unset (the notebook's default IPCs; the record's content stays as the run wrote it).
    A run made with DDNB_SPEEDUPS=off (versions["speedups"]) gets the suffix `-speedups_off`, so that it sits
    beside the same run with them on instead of replacing it."""
    p = dict(results["params"])
    if p.get("ipc") is None and p.get("ipcs"):
        p["ipc"] = "+".join(str(i) for i in p["ipcs"])
    if ipc is not None:
        if p.get("ipc") is not None:
            raise ValueError(f"the run names its IPC already (ipc={p['ipc']!r}); drop the ipc argument ({ipc!r})")
        p["ipc"] = ipc
    missing = [k for k in RECORD_PARAMS if p.get(k) is None]
    if missing:
        raise ValueError(f"run of {results['notebook']} lacks param(s) {missing} that name its record "
                         f"(<budget>-<dataset>-ipcN-seedS.json)")
    off = "-speedups_off" if (results.get("versions") or {}).get("speedups") == "off" else ""
    name = f"{p['budget']}-{p['dataset']}-ipc{p['ipc']}-seed{p['seed']}{off}.json"
    return Path(results_root) / results["notebook"] / name


def record_result(run_dir: str | Path, results_root: str | Path, *, overwrite: bool = False,
                  ipc: str | None = None) -> Path:
    """Copy a finished (status ok) run's results.json to its `record_path` under `results_root`; return it.

    The record is the results.json alone (names of the run's files, none of the files). An existing
    record is kept unless `overwrite`. `ipc` names a run whose params have no IPC (see record_path).
    """
    results = read_results(run_dir)
    if results["status"] != "ok":
        raise ValueError(f"run {str(run_dir)!r} failed ({results['error']}); record only finished runs")
    dest = record_path(results, results_root, ipc)
    if dest.exists() and not overwrite:
        raise ValueError(f"{str(dest)!r} already holds a record of this run; pass overwrite to replace it")
    check_writable(dest.parent, "results folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    return atomic_save_json(dest, results)


def report_table(results_root: str | Path) -> str:
    """The README's "Measured here" Markdown table from every record under `results_root`.

    Only the notebook folders (`NN_slug/`) are read; `results/benchmarks/` holds benchmark figures.
    One row per accuracy a run reports (a metric pair `<set>_mean`, `<set>_std`), described by the
    run's `params["evaluated"][<set>]` ({"set": ..., "evaluation": ...}) where the notebook gave one.
    """
    root = Path(results_root)
    if not root.is_dir():
        raise FileNotFoundError(f"no results folder {str(root)!r}")
    files = sorted(p for p in root.glob("*/*.json") if NOTEBOOK_FOLDER.match(p.parent.name))
    if not files:
        raise FileNotFoundError(f"no records (<notebook>/<run>.json) under {str(root)!r}; "
                                f"add one with `ddnb report {root} --record RUN_DIR`")
    lines = ["| notebook | run | evaluation | set | accuracy (%) | wall time |",
             "| --- | --- | --- | --- | --- | --- |"]
    for path in files:
        res = read_results(path)
        described = res["params"].get("evaluated") or {}
        metrics = res["metrics"]
        wall = f"{res['duration_s'] / 60:.0f} min"
        for name in (m[:-len("_mean")] for m in metrics if m.endswith("_mean")):
            mean, std = metrics[f"{name}_mean"], metrics.get(f"{name}_std")
            if mean is None or std is None:
                continue
            about = described.get(name, {})
            lines.append(f"| {res['notebook'].split('_')[0]} | {path.stem} | {about.get('evaluation', '-')} | "
                         f"{about.get('set', name)} | {mean:.2f} ± {std:.2f} | {wall} |")
    return "\n".join(lines)
