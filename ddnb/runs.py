"""Notebook runs: execute a notebook headlessly with papermill, record what it found in one
`results.json` schema.

Every notebook ends by calling `write_results(...)`; `run_notebook` adds the executed notebook to
the record and, when the notebook dies, marks the run failed (writing a record if it had none).
A finding that compares two means decides with `compare_means` (the gap must exceed the spread).
Tables over many runs and the committed record of reference runs are `ddnb.records`.
"""
from __future__ import annotations

import ast
import json
import math
import platform
import re
import time
import warnings
from importlib import metadata
from numbers import Real
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ddnb.speedups import speedups_on
from ddnb.utils import TEMP_RE, atomic_save_json, check_writable

RESULTS_NAME = "results.json"
STATUSES = ("ok", "failed")
RESULT_KEYS = ("notebook", "status", "params", "metrics", "findings", "artifacts", "versions",
               "duration_s", "error")
FINDING_KEYS = ("id", "claim", "holds", "values")
VERDICTS = ("holds", "fails", "within noise", "no spread")
SPREADS = ("std", "sem")
_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def finding(id: str, claim: str, holds: bool, values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One checked claim of a notebook (`holds` is a real bool), in the form results.json stores."""
    if not isinstance(id, str) or not _ID.match(id):
        raise ValueError(f"finding id must be an identifier (letters, digits, _), got {id!r}")
    if not isinstance(claim, str) or not claim.strip():
        raise ValueError(f"finding {id!r}: claim must be a non-empty sentence, got {claim!r}")
    if not isinstance(holds, (bool, np.bool_)):
        raise ValueError(f"finding {id!r}: holds must be a bool (True/False), got {type(holds).__name__} {holds!r}")
    if values is not None and not isinstance(values, Mapping):
        raise ValueError(f"finding {id!r}: values must be a dict of name -> value, got {type(values).__name__}")
    return {"id": id, "claim": claim, "holds": bool(holds), "values": _plain(dict(values or {}))}


def compare_means(a: Iterable[float], b: Iterable[float], *, spread: str = "std",
                  names: tuple[str, str] = ("a", "b")) -> dict[str, Any]:
    """Is mean(a) above mean(b) by more than the larger spread of the two? Means, stds, gap, spread, verdict.

    `spread="std"`: the larger population std (ddof 0, as `EvalResult.std`), for values over seeds;
    `"sem"`: the larger standard error of the mean (ddof 1 / sqrt(n)), for a population of samples,
    steps or classes. Only a side with at least 2 values has a spread. Verdict: "holds" (gap > spread),
    "fails" (gap < -spread), "within noise" (|gap| <= spread) or "no spread" (neither side has 2 values).
    """
    if spread not in SPREADS:
        raise ValueError(f"spread must be one of {SPREADS}, got {spread!r}")
    if len(names) != 2 or names[0] == names[1] or not all(isinstance(n, str) and _ID.match(n) for n in names):
        raise ValueError(f"names must be two different identifiers, got {names!r}")
    sides = [np.asarray(list(v), dtype=float) for v in (a, b)]
    for name, v in zip(names, sides):
        if v.ndim != 1 or not len(v) or not np.isfinite(v).all():
            raise ValueError(f"{name}: need a non-empty list of finite numbers, got {v.tolist()!r}")
    stds = [float(v.std()) for v in sides]
    spreads = [float(v.std(ddof=1) / math.sqrt(len(v))) if spread == "sem" else sd
               for v, sd in zip(sides, stds) if len(v) >= 2]
    used = max(spreads) if spreads else None
    gap = float(sides[0].mean() - sides[1].mean())
    verdict = ("no spread" if used is None else "holds" if gap > used else "fails" if gap < -used
               else "within noise")
    out: dict[str, Any] = {}
    for name, v, sd in zip(names, sides, stds):
        out.update({f"mean_{name}": float(v.mean()), f"std_{name}": sd, f"n_{name}": len(v)})
    return {**out, "gap": gap, "spread": used, "spread_kind": spread, "verdict": verdict}


def versions() -> dict[str, str | None]:
    """Versions of Python and the libraries a result depends on (for provenance), and whether issue 12's
    speedups were on (ddnb.speedups)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("torch", "ddnb", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    out["speedups"] = "on" if speedups_on() else "off"
    return out


def write_results(output_dir: str | Path, notebook: str, params: Mapping[str, Any],
                  metrics: Mapping[str, Any], findings: Iterable[Mapping[str, Any]],
                  artifacts: Iterable[str | Path] | None = None, started: float | None = None, *,
                  status: str = "ok", error: str | None = None) -> Path:
    """Validate and atomically write `output_dir/results.json`, the one record every notebook leaves.

    `artifacts` are files beside it (None: every file under output_dir); `started` is the
    `time.time()` the run began at (None: duration 0).
    """
    out = Path(output_dir)
    if not out.is_dir():
        raise ValueError(f"output_dir {str(out)!r} is not an existing folder")
    results = {
        "notebook": notebook,
        "status": status,
        "params": _plain(dict(params)),
        "metrics": _metrics(metrics),
        "findings": [finding(**_finding_fields(f)) for f in findings],
        "artifacts": _artifacts(out, artifacts),
        "versions": versions(),
        "duration_s": round(time.time() - started, 3) if started is not None else 0.0,
        "error": error,
    }
    validate_results(results)
    return atomic_save_json(out / RESULTS_NAME, results)


def validate_results(results: Mapping[str, Any]) -> None:
    """Raise ValueError unless `results` follows the results.json schema."""
    keys = tuple(results)
    if set(keys) != set(RESULT_KEYS):
        raise ValueError(f"results keys must be {RESULT_KEYS}, got {keys}")
    if not isinstance(results["notebook"], str) or not results["notebook"]:
        raise ValueError(f"notebook must be a non-empty name, got {results['notebook']!r}")
    if results["status"] not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {results['status']!r}")
    if (results["status"] == "failed") != bool(results["error"]):
        raise ValueError(f"a failed run needs an error message and an ok run has none; got status "
                         f"{results['status']!r} with error {results['error']!r}")
    if not isinstance(results["params"], dict):
        raise ValueError(f"params must be a dict, got {type(results['params']).__name__}")
    _metrics(results["metrics"])
    ids = [finding(**_finding_fields(f))["id"] for f in results["findings"]]
    if len(ids) != len(set(ids)):
        raise ValueError(f"finding ids must be unique, got {ids}")
    if not all(isinstance(a, str) for a in results["artifacts"]):
        raise ValueError(f"artifacts must be file names, got {results['artifacts']!r}")
    if not isinstance(results["duration_s"], Real) or results["duration_s"] < 0:
        raise ValueError(f"duration_s must be a non-negative number, got {results['duration_s']!r}")


def read_results(path: str | Path) -> dict[str, Any]:
    """Load and validate one results.json (a file, or the folder that holds it)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no results file at {str(path)!r}")
    try:
        results = json.loads(path.read_text())
        validate_results(results)
    except (ValueError, UnicodeDecodeError) as exc:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{path}: {exc}") from exc
    return results


def notebook_parameters(notebook: str | Path) -> dict[str, Any]:
    """The names and default values of a notebook's `parameters` cell."""
    import papermill

    path = _existing_notebook(notebook)
    found = {name: _literal(info["default"]) for name, info in papermill.inspect_notebook(str(path)).items()}
    unparsed = sorted(set(_assigned_parameters(path)) - set(found))
    if unparsed:
        raise ValueError(f"papermill cannot read parameter(s) {unparsed} of notebook {path.name}: keep each to "
                         "one line `name = literal  # comment` with no other '=' on the line (also not in the comment)")
    return found


def _assigned_parameters(path: Path) -> list[str]:
    """Names assigned at top level of the notebook's `parameters`-tagged cell (none without one)."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if not cells:
        return []
    tree = ast.parse(cells[0].source)
    return [t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)]


def run_notebook(notebook: str | Path, params: Mapping[str, Any] | None, out_dir: str | Path, *,
                 kernel: str = "python3", cell_timeout: float | None = None,
                 progress: bool = False, overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """Execute a notebook headlessly into `out_dir` (executed copy, figures, results.json) and
    return its results. Bad arguments raise; a run that dies is reported (status "failed").

    `out_dir` must be empty or new, so an earlier run is never mixed with or lost to this one;
    `overwrite=True` first removes an earlier run's files (those its results.json lists); `resume=True`
    runs into the folder of an interrupted (or finished) run as it is, keeping its files, so that a
    notebook's on-disk caches skip the work already done. The folder is locked for the run (a second
    run into it is refused, see ddnb.locks).
    """
    import papermill

    from ddnb.locks import output_lock

    path = _existing_notebook(notebook)
    params = dict(params or {})
    out = Path(out_dir).resolve()
    defaults = notebook_parameters(path)
    _check_params(path, params, defaults, out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder {str(out)!r} is a file; give a folder (new or empty)")
    if overwrite and resume:
        raise ValueError("overwrite and resume exclude each other: overwrite removes the earlier run, resume "
                         "continues it; allowed: one of them")
    check_writable(out, "output folder")
    with output_lock(out):
        if not resume:
            _clear_output(out, overwrite)
        out.mkdir(parents=True, exist_ok=True)
        before = _snapshot(out)
        executed = out / path.name
        started = time.time()
        error = None
        try:
            papermill.execute_notebook(
                str(path), str(executed), parameters={**params, "output_dir": str(out)}, kernel_name=kernel,
                cwd=str(path.parent), progress_bar=progress, execution_timeout=cell_timeout)
        except Exception as exc:  # noqa: BLE001 -- recorded in results.json and returned, not hidden
            error = _describe(exc)
        return _finish(path, out, {**defaults, **params, "output_dir": str(out)}, before, started, error)


def _clear_output(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty output folder, or with `overwrite` remove the earlier run in it: the files its
    results.json lists, that record, and temp files of interrupted writes; any other file is refused."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder {str(out)!r} is a file; give a folder (new or empty)")
    files = sorted(p for p in out.rglob("*") if p.is_file()) if out.is_dir() else []
    if not files:
        return
    names = [str(p.relative_to(out)) for p in files]
    if not overwrite:
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        raise ValueError(f"output folder {str(out)!r} is not empty (holds {shown}); pass overwrite=True "
                         f"(ddnb run --overwrite) to replace the earlier run in it, or choose a new folder")
    try:
        listed = {RESULTS_NAME, *read_results(out)["artifacts"]}
    except (FileNotFoundError, ValueError, json.JSONDecodeError):
        listed = {RESULTS_NAME}
    unknown = [n for n in names if n not in listed and not TEMP_RE.match(Path(n).name)]
    if unknown:
        raise ValueError(f"output folder {str(out)!r} holds files no results.json of an earlier run lists "
                         f"({', '.join(unknown[:4])}); overwrite replaces only a ddnb run folder: move them or "
                         f"choose a new folder")
    for p in files:
        p.unlink()
    for folder in sorted((p for p in out.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()


def _finish(path: Path, out: Path, params: dict[str, Any], before: dict[str, int], started: float,
            error: str | None) -> dict[str, Any]:
    """Complete the run's results.json: add the executed notebook, mark failure, or write a
    failure record when the notebook died before writing its own."""
    record = out / RESULTS_NAME
    if record.is_file():
        res = read_results(record)
        notebook, params, metrics, findings, artifacts = (
            res["notebook"], res["params"], res["metrics"], res["findings"], res["artifacts"])
    else:
        if error is None:
            error = f"notebook {path.name} finished without writing {RESULTS_NAME} (it must call write_results)"
        notebook, metrics, findings = path.stem, {}, []
        artifacts = [str(p.relative_to(out)) for p in _changed(out, before)]
    if (out / path.name).is_file() and path.name not in artifacts:
        artifacts = [*artifacts, path.name]
    write_results(out, notebook, params, metrics, findings, artifacts, started,
                  status="failed" if error else "ok", error=error)
    return read_results(record)


def _check_params(path: Path, params: Mapping[str, Any], defaults: Mapping[str, Any], out: Path) -> None:
    """Unknown parameter names, a notebook without output_dir, or a conflicting output_dir are errors."""
    allowed = sorted(defaults)
    if "output_dir" not in defaults:
        raise ValueError(f"notebook {path.name} has no 'output_dir' parameter (its parameters: {allowed}); "
                         "run_notebook needs one to put the run's files in the output folder")
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for notebook {path.name}; allowed: {allowed}")
    if "output_dir" in params and Path(params["output_dir"]).resolve() != out:
        raise ValueError(f"params output_dir {params['output_dir']!r} differs from out_dir {str(out)!r}; "
                         "give the folder once, as out_dir")


def _existing_notebook(notebook: str | Path) -> Path:
    """The resolved path of a readable, valid notebook; FileNotFoundError or ValueError naming it otherwise."""
    import nbformat

    path = Path(notebook).resolve()
    if not path.exists():
        raise FileNotFoundError(f"notebook {str(notebook)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"notebook {str(notebook)!r} is a folder, not a .ipynb file")
    if path.suffix != ".ipynb":
        raise ValueError(f"notebook {str(notebook)!r} is not a .ipynb file")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"notebook {str(notebook)!r} is not a notebook: not JSON ({exc})") from exc
    cells = doc.get("cells") if isinstance(doc, dict) else None
    if not isinstance(cells, list) or not all(isinstance(c, dict) for c in cells):
        raise ValueError(f"notebook {str(notebook)!r} is not a notebook: it needs a list of cells")
    try:
        with warnings.catch_warnings():  # nbformat's advice on cell ids is no concern of the user's
            warnings.simplefilter("ignore")
            nbformat.validate(nbformat.reads(json.dumps(doc), as_version=4))
    except (ValueError, nbformat.ValidationError) as exc:
        reason = str(getattr(exc, "message", exc)).splitlines()[0]
        raise ValueError(f"notebook {str(notebook)!r} is not a valid notebook: {reason}") from exc
    return path


def _literal(source: str) -> Any:
    """A parameter default as a value when it is a Python literal, else its source text."""
    try:
        return ast.literal_eval(source)
    except (ValueError, SyntaxError):
        return source


def _describe(exc: Exception) -> str:
    """A one-paragraph description of why a run died."""
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if ename is not None:
        cell = getattr(exc, "cell_index", None)
        return f"{ename}: {evalue}" + (f" (cell {cell})" if cell is not None else "")
    return f"{type(exc).__name__}: {exc}"


def _snapshot(out: Path) -> dict[str, int]:
    """Every file under `out` with its modification time, to tell later which ones a run wrote."""
    return {str(p): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def _changed(out: Path, before: Mapping[str, int]) -> list[Path]:
    """Files under `out` that are new or modified since `before`."""
    return sorted(p for p in out.rglob("*") if p.is_file() and p.name != RESULTS_NAME
                  and before.get(str(p)) != p.stat().st_mtime_ns)


def _artifacts(out: Path, artifacts: Iterable[str | Path] | None) -> list[str]:
    """Artifact paths relative to `out`; each must be an existing file inside it, given as a path
    (absolute or from the working folder, as save_figure returns it) or as a name inside `out`."""
    root = out.resolve()
    if artifacts is None:
        return sorted(str(p.relative_to(out)) for p in out.rglob("*")
                      if p.is_file() and p.name != RESULTS_NAME and not p.name.startswith("."))
    names = []
    for a in artifacts:
        found = [p.resolve() for p in (Path(a), out / a) if p.is_file() and p.resolve().is_relative_to(root)]
        if not found:
            raise ValueError(f"artifact {str(a)!r} is not an existing file inside output_dir {str(out)!r}")
        names.append(str(found[0].relative_to(root)))
    return list(dict.fromkeys(names))


def _metrics(metrics: Mapping[str, Any]) -> dict[str, float | int | None]:
    """Metrics as name -> finite number, or None for one never reached (numpy / 0-d torch scalars become
    Python numbers)."""
    if not isinstance(metrics, Mapping):
        raise ValueError(f"metrics must be a dict of name -> number, got {type(metrics).__name__}")
    out = {}
    for name, value in metrics.items():
        value = value.item() if hasattr(value, "item") and getattr(value, "ndim", 1) == 0 else value
        if not isinstance(name, str) or (value is not None and (
                isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value))):
            raise ValueError(f"metric {name!r} must be a finite number or None (not reached), got {value!r}")
        out[name] = value
    return out


def _finding_fields(f: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a finding dict, which must be exactly id, claim, holds, values."""
    if not isinstance(f, Mapping) or set(f) != set(FINDING_KEYS):
        raise ValueError(f"a finding must be a dict with keys {FINDING_KEYS} (use ddnb.runs.finding), got {f!r}")
    return dict(f)


def _plain(obj: Any) -> Any:
    """Turn numpy / torch scalars and arrays, tuples and paths into JSON values."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return obj
