"""results.json (schema, validation, atomic writes), collecting runs into a table, and
run_notebook on tiny generated notebooks (failure reporting, parameter validation)."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from ddnb import records, runs, utils


def _write_ok(out: Path, **kw) -> Path:
    """A valid results.json in `out` with one figure-like artifact."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "fig.png").write_bytes(b"png")
    args = dict(notebook="nb", params={"ipc": 1, "dataset": "digits"}, metrics={"acc": 50.0},
                findings=[runs.finding("a_beats_b", "a beats b", True, {"a": 2, "b": 1})],
                artifacts=["fig.png"], started=time.time())
    args.update(kw)
    return runs.write_results(out, **args)


def _notebook(path: Path, *sources: str, params: str = 'output_dir = "out"  # folder\nx = 1  # a number') -> Path:
    """Write a notebook whose first code cell is the tagged parameters cell."""
    cells = [new_code_cell(params, metadata={"tags": ["parameters"]}), *(new_code_cell(s) for s in sources)]
    nbformat.write(new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "language": "python",
                                                                      "display_name": "Python 3"}}), str(path))
    return path


# ------------------------------------------------------------------ findings and the schema

def test_finding_accepts_bools_only():
    assert runs.finding("x", "claim", np.bool_(True))["holds"] is True
    assert runs.finding("x", "claim", False, {"v": np.float32(1.5)}) == {
        "id": "x", "claim": "claim", "holds": False, "values": {"v": 1.5}}
    for bad in (1, "yes", None):
        with pytest.raises(ValueError, match="holds must be a bool"):
            runs.finding("x", "claim", bad)
    with pytest.raises(ValueError, match="identifier"):
        runs.finding("has space", "claim", True)


def test_write_results_schema(tmp_path):
    started = time.time() - 5.0
    path = _write_ok(tmp_path, started=started, metrics={"acc": np.float64(50.0), "n": 3})
    res = json.loads(path.read_text())
    assert list(res) == list(runs.RESULT_KEYS)
    assert res["status"] == "ok" and res["error"] is None
    assert res["params"] == {"ipc": 1, "dataset": "digits"}
    assert res["metrics"] == {"acc": 50.0, "n": 3}
    assert res["findings"] == [{"id": "a_beats_b", "claim": "a beats b", "holds": True, "values": {"a": 2, "b": 1}}]
    assert res["artifacts"] == ["fig.png"]
    assert set(res["versions"]) == {"python", "torch", "ddnb", "numpy", "speedups"}
    assert 5.0 <= res["duration_s"] < 60.0
    assert runs.read_results(tmp_path) == res


def test_artifacts_as_paths_or_names_or_all(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _write_ok(out, artifacts=[out / "fig.png", "fig.png"])
    assert runs.read_results(out)["artifacts"] == ["fig.png"]
    monkeypatch.chdir(tmp_path)  # a relative output_dir, as in a notebook: save_figure returns run/fig.png
    _write_ok(Path("run"), artifacts=[Path("run") / "fig.png"])
    assert runs.read_results(out)["artifacts"] == ["fig.png"]
    (out / "sub").mkdir()
    (out / "sub" / "x.txt").write_text("x")
    _write_ok(out, artifacts=None)
    assert runs.read_results(out)["artifacts"] == ["fig.png", "sub/x.txt"]
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(b"x")
    for bad in ("missing.png", outside):
        with pytest.raises(ValueError, match="not an existing file inside output_dir"):
            _write_ok(out, artifacts=[bad])


@pytest.mark.parametrize("change, match", [
    ({"metrics": {"acc": "50"}}, "metric 'acc' must be a finite number"),
    ({"metrics": {"acc": float("nan")}}, "finite number"),
    ({"metrics": {"ok": True}}, "finite number"),
    ({"metrics": {"acc": float("inf")}}, "finite number or None"),
    ({"findings": [{"id": "a", "claim": "c", "holds": 1, "values": {}}]}, "holds must be a bool"),
    ({"findings": [{"id": "a", "claim": "c"}]}, "a finding must be a dict with keys"),
    ({"findings": [runs.finding("a", "c", True), runs.finding("a", "d", False)]}, "unique"),
    ({"status": "done"}, "status must be one of"),
    ({"status": "failed"}, "failed run needs an error"),
    ({"error": "boom"}, "ok run has none"),
])
def test_write_results_rejects_bad_records_and_keeps_the_old_one(tmp_path, change, match):
    path = _write_ok(tmp_path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=match):
        _write_ok(tmp_path, **change)
    assert path.read_bytes() == before


def test_write_results_is_atomic_when_the_write_crashes(tmp_path, monkeypatch):
    path = _write_ok(tmp_path)
    before = path.read_bytes()

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(utils.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        _write_ok(tmp_path, metrics={"acc": 99.0})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png", "results.json"]


def test_write_results_needs_an_existing_folder(tmp_path):
    with pytest.raises(ValueError, match="not an existing folder"):
        runs.write_results(tmp_path / "nope", "nb", {}, {}, [], [], None)


# ------------------------------------------------------------------ collect

def test_collect_two_runs_into_one_table(tmp_path):
    _write_ok(tmp_path / "sweep" / "ipc1", params={"ipc": 1, "method": "dm"}, metrics={"acc": 50.0})
    _write_ok(tmp_path / "sweep" / "deeper" / "ipc10", params={"ipc": 10, "method": "dm"},
              metrics={"acc": 80.0, "seconds": 3.0},
              findings=[runs.finding("a_beats_b", "a beats b", False), runs.finding("fast", "fast", True)])
    table = records.collect(tmp_path / "sweep").set_index("run")
    assert len(table) == 2
    assert table.loc["ipc1", "param.ipc"] == 1 and table.loc["deeper/ipc10", "param.ipc"] == 10
    assert table.loc["deeper/ipc10", "metric.acc"] == 80.0
    assert math.isnan(table.loc["ipc1", "metric.seconds"])  # a metric one run lacks
    assert table.loc["ipc1", "finding.a_beats_b"] == True  # noqa: E712 (numpy bool)
    assert table.loc["deeper/ipc10", "finding.a_beats_b"] == False  # noqa: E712
    assert set(table["status"]) == {"ok"}
    assert {"notebook", "duration_s", "error"} <= set(table.columns)


def test_collect_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no folder"):
        records.collect(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no results.json"):
        records.collect(tmp_path)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text(json.dumps({"notebook": "x"}))
    with pytest.raises(ValueError, match="bad/results.json"):
        records.collect(tmp_path)


def test_a_metric_never_reached_is_null_and_collect_skips_it(tmp_path):
    path = _write_ok(tmp_path / "runs" / "a", metrics={"iterations_to_base": None, "acc": 50.0})
    assert json.loads(path.read_text())["metrics"]["iterations_to_base"] is None
    _write_ok(tmp_path / "runs" / "b", metrics={"iterations_to_base": 4, "acc": 60.0})
    table = records.collect(tmp_path / "runs").set_index("run")
    assert math.isnan(table.loc["a", "metric.iterations_to_base"])
    assert table["metric.iterations_to_base"].mean() == 4.0  # not (4 + -1) / 2, not an error


# ------------------------------------------------------------------ compare_means

@pytest.mark.parametrize("a, b, spread, gap, used, verdict", [
    # means 81 and 78.25, population stds 1 and 0.25: gap 2.75 > 1
    ([80.0, 82.0], [78.0, 78.5], "std", 2.75, 1.0, "holds"),
    # gap 0.5 <= larger std 1
    ([80.0, 82.0], [80.5, 80.5], "std", 0.5, 1.0, "within noise"),
    # a below b by 3 > 1
    ([78.0, 78.0], [80.0, 82.0], "std", -3.0, 1.0, "fails"),
    # gap exactly the spread does not exceed it
    ([80.0, 82.0], [79.0, 81.0], "std", 1.0, 1.0, "within noise"),
    # [1, 2, 3]: population std sqrt(2/3) = 0.8165 > gap 0.5; sample std 1, sem 1/sqrt(3) = 0.5774 > 0.5
    ([1.0, 2.0, 3.0], [1.5, 1.5, 1.5], "std", 0.5, math.sqrt(2 / 3), "within noise"),
    ([1.0, 2.0, 3.0], [1.5, 1.5, 1.5], "sem", 0.5, 1 / math.sqrt(3), "within noise"),
    # [1, 2, 3] vs [1.4, 1.4]: gap 0.6 > sem 0.5774 (the single-valued side has none of its own)
    ([1.0, 2.0, 3.0], [1.4], "sem", 0.6, 1 / math.sqrt(3), "holds"),
    # one value a side: no spread to exceed
    ([90.0], [10.0], "std", 80.0, None, "no spread"),
])
def test_compare_means_by_hand(a, b, spread, gap, used, verdict):
    out = runs.compare_means(a, b, spread=spread, names=("new", "old"))
    assert out["gap"] == pytest.approx(gap)
    assert out["spread"] == (None if used is None else pytest.approx(used))
    assert out["verdict"] == verdict and out["spread_kind"] == spread
    assert out["mean_new"] == pytest.approx(np.mean(a)) and out["mean_old"] == pytest.approx(np.mean(b))
    assert out["std_new"] == pytest.approx(np.std(a)) and (out["n_new"], out["n_old"]) == (len(a), len(b))
    assert runs.finding("x", "claim", out["verdict"] == "holds", out)["values"]["verdict"] == verdict


def test_compare_means_rejects_bad_input():
    for a, b, kw, match in [([], [1.0], {}, "non-empty"), ([1.0, float("nan")], [1.0], {}, "finite"),
                            ([1.0], [2.0], {"spread": "var"}, "spread must be"),
                            ([1.0], [2.0], {"names": ("x", "x")}, "names")]:
        with pytest.raises(ValueError, match=match):
            runs.compare_means(a, b, **kw)


# ------------------------------------------------------------------ records under results/ and the report

def _run(out: Path, notebook: str = "02_dance", **params) -> Path:
    """A finished run folder of `notebook` with two accuracies, one described by params["evaluated"]."""
    params = {"budget": "cpu", "dataset": "fashion_mnist", "ipc": 10, "seed": 0,
              "evaluated": {"dm": {"set": "DM, 500 iterations", "evaluation": "dc, 300 epochs"}}, **params}
    _write_ok(out, notebook=notebook, params=params,
              metrics={"dm_mean": 81.084, "dm_std": 0.081, "random_mean": 76.4, "random_std": 0.07, "rho": -0.9,
                       "dance_mean": 80.0},  # no std: not a table row
              started=time.time() - 6300)
    return out


def test_record_result_files_the_run_by_notebook_budget_dataset_ipc_seed(tmp_path):
    run = _run(tmp_path / "outputs" / "x", seed=1)
    path = records.record_result(run, tmp_path / "results")
    assert path == tmp_path / "results" / "02_dance" / "cpu-fashion_mnist-ipc10-seed1.json"
    assert runs.read_results(path) == runs.read_results(run)
    with pytest.raises(ValueError, match="already holds"):
        records.record_result(run, tmp_path / "results")
    assert records.record_result(run, tmp_path / "results", overwrite=True) == path
    study = _run(tmp_path / "outputs" / "study", ipc=None, ipcs=[1, 10])  # a run over several IPCs
    assert records.record_result(study, tmp_path / "results").name == "cpu-fashion_mnist-ipc1+10-seed0.json"
    default = _run(tmp_path / "outputs" / "default", ipc=None)  # the notebook's default IPCs, not in params
    with pytest.raises(ValueError, match=r"lacks param\(s\) \['ipc'\]"):
        records.record_result(default, tmp_path / "results")
    named = records.record_result(default, tmp_path / "results", ipc="10+20")
    assert named.name == "cpu-fashion_mnist-ipc10+20-seed0.json"
    assert runs.read_results(named) == runs.read_results(default)
    with pytest.raises(ValueError, match=r"names its IPC already \(ipc=10\); drop the ipc argument \('20'\)"):
        records.record_result(run, tmp_path / "results", ipc="20")
    bare = tmp_path / "bare"
    _write_ok(bare, params={"ipc": 1, "dataset": "digits"})
    with pytest.raises(ValueError, match=r"\['budget', 'seed'\]"):
        records.record_result(bare, tmp_path / "results")
    failed = tmp_path / "failed"
    _write_ok(failed, params={}, status="failed", error="boom")
    with pytest.raises(ValueError, match="boom"):
        records.record_result(failed, tmp_path / "results")


def test_a_run_with_speedups_off_is_recorded_beside_the_same_run_with_them_on(tmp_path, monkeypatch):
    on = records.record_result(_run(tmp_path / "on"), tmp_path / "results")
    monkeypatch.setenv("DDNB_SPEEDUPS", "off")  # read when the run writes its results.json
    off = records.record_result(_run(tmp_path / "off"), tmp_path / "results")
    assert off == on.with_name("cpu-fashion_mnist-ipc10-seed0-speedups_off.json")
    assert runs.read_results(off)["versions"]["speedups"] == "off" and on.is_file()
    assert "| 02 | cpu-fashion_mnist-ipc10-seed0-speedups_off | dc, 300 epochs |" in records.report_table(
        tmp_path / "results")


def test_report_table_rows_from_records(tmp_path):
    for seed in (1, 0):
        records.record_result(_run(tmp_path / f"run{seed}", seed=seed), tmp_path / "results")
    lines = records.report_table(tmp_path / "results").splitlines()
    assert lines[0] == "| notebook | run | evaluation | set | accuracy (%) | wall time |"
    assert lines[2:] == [
        "| 02 | cpu-fashion_mnist-ipc10-seed0 | dc, 300 epochs | DM, 500 iterations | 81.08 ± 0.08 | 105 min |",
        "| 02 | cpu-fashion_mnist-ipc10-seed0 | - | random | 76.40 ± 0.07 | 105 min |",
        "| 02 | cpu-fashion_mnist-ipc10-seed1 | dc, 300 epochs | DM, 500 iterations | 81.08 ± 0.08 | 105 min |",
        "| 02 | cpu-fashion_mnist-ipc10-seed1 | - | random | 76.40 ± 0.07 | 105 min |"]
    with pytest.raises(FileNotFoundError, match="no records"):
        records.report_table(tmp_path / "run0")
    with pytest.raises(FileNotFoundError, match="no results folder"):
        records.report_table(tmp_path / "missing")


# ------------------------------------------------------------------ run_notebook

def test_notebook_parameters_reads_literal_defaults(tmp_path):
    nb = _notebook(tmp_path / "p.ipynb", params='output_dir = "o"  # folder\nipc = 10  # n\ndevice = None  # d')
    assert runs.notebook_parameters(nb) == {"output_dir": "o", "ipc": 10, "device": None}


def test_unreadable_parameter_line_is_an_error(tmp_path):
    nb = _notebook(tmp_path / "p.ipynb", params='output_dir = "o"  # folder\nepochs = None  # None = default')
    with pytest.raises(ValueError, match=r"cannot read parameter\(s\) \['epochs'\]"):
        runs.notebook_parameters(nb)


def test_run_notebook_validates_before_running(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ipynb"):
        runs.run_notebook(tmp_path / "nope.ipynb", {}, tmp_path / "out")
    nb = _notebook(tmp_path / "p.ipynb", "1")
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['ipcc'\].*allowed: \['output_dir', 'x'\]"):
        runs.run_notebook(nb, {"ipcc": 1}, tmp_path / "out")
    with pytest.raises(ValueError, match="differs from out_dir"):
        runs.run_notebook(nb, {"output_dir": str(tmp_path / "other")}, tmp_path / "out")
    no_out = _notebook(tmp_path / "q.ipynb", "1", params="x = 1  # a number")
    with pytest.raises(ValueError, match="no 'output_dir' parameter"):
        runs.run_notebook(no_out, {}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, words", [
    ("not json", "is not a notebook: not JSON"), ("", "not JSON"), ('{"cells": 5}', "needs a list of cells"),
    ("[]", "needs a list of cells"), ("{}", "needs a list of cells"),
    ('{"cells": [{}], "nbformat": 4, "nbformat_minor": 5, "metadata": {}}', "is not a valid notebook"),
])
def test_a_file_that_is_no_notebook_is_named_before_running(tmp_path, content, words):
    path = tmp_path / "bad.ipynb"
    path.write_text(content)
    with pytest.raises(ValueError, match=words):
        runs.run_notebook(path, {}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_folder_as_notebook_and_an_unwritable_output_folder(tmp_path):
    (tmp_path / "dir.ipynb").mkdir()
    with pytest.raises(ValueError, match="is a folder, not a .ipynb file"):
        runs.run_notebook(tmp_path / "dir.ipynb", {}, tmp_path / "out")
    nb = _notebook(tmp_path / "p.ipynb", "1")
    (tmp_path / "file").write_text("mine")
    with pytest.raises(ValueError, match="'.*file' is a file, not a folder"):
        runs.run_notebook(nb, {}, tmp_path / "file" / "out")
    with pytest.raises(ValueError, match="'/proc' is not writable"):
        runs.run_notebook(nb, {}, "/proc/ddnb_test_run")
    assert (tmp_path / "file").read_text() == "mine"


def test_run_notebook_that_dies_before_writing_results(tmp_path):
    nb = _notebook(tmp_path / "dies.ipynb",
                   "from pathlib import Path\n(Path(output_dir) / 'partial.txt').write_text(str(x))",
                   "raise RuntimeError(f'broken at x={x}')")
    out = tmp_path / "out"
    _write_ok(out)  # an earlier run: overwrite replaces it, so its record and figure do not survive as this run's
    (out / ".fig.png.k9abcdef.tmp").write_bytes(b"partial")  # left by a killed atomic write: removed too
    res = runs.run_notebook(nb, {"x": 7}, out, overwrite=True)
    assert res["status"] == "failed"
    assert "RuntimeError: broken at x=7" in res["error"]
    assert res["params"] == {"output_dir": str(out.resolve()), "x": 7}
    assert res["metrics"] == {} and res["findings"] == []
    assert sorted(res["artifacts"]) == ["dies.ipynb", "partial.txt"]
    assert (out / "partial.txt").read_text() == "7"
    assert sorted(p.name for p in out.iterdir()) == ["dies.ipynb", "partial.txt", "results.json"]
    assert runs.read_results(out) == res
    executed = nbformat.read(str(out / "dies.ipynb"), as_version=4)
    assert any(o.get("ename") == "RuntimeError" for c in executed.cells if c.cell_type == "code" for o in c.outputs)


def test_run_notebook_that_dies_after_writing_results_keeps_them(tmp_path):
    nb = _notebook(tmp_path / "late.ipynb",
                   "import time\nfrom ddnb.runs import finding, write_results\n"
                   "write_results(output_dir, 'late', {'x': x}, {'acc': 12.5}, [finding('f', 'c', True)], [], "
                   "time.time())",
                   "1 / 0")
    res = runs.run_notebook(nb, {}, tmp_path / "out")
    assert res["status"] == "failed" and res["error"].startswith("ZeroDivisionError")
    assert res["notebook"] == "late" and res["params"] == {"x": 1}
    assert res["metrics"] == {"acc": 12.5} and res["findings"][0]["holds"] is True
    assert res["artifacts"] == ["late.ipynb"]


def test_failed_run_into_a_good_run_folder_keeps_it(tmp_path):
    nb = _notebook(tmp_path / "dies.ipynb", "raise RuntimeError('broken')")
    out = tmp_path / "out"
    _write_ok(out)
    record = (out / "results.json").read_bytes()
    with pytest.raises(ValueError, match=r"output folder .*out' is not empty \(holds fig\.png, results\.json\); "
                                         r"pass overwrite=True \(ddnb run --overwrite\)"):
        runs.run_notebook(nb, {}, out)
    assert (out / "results.json").read_bytes() == record and sorted(p.name for p in out.iterdir()) == [
        "fig.png", "results.json"]


def test_overwrite_replaces_only_a_run_folder(tmp_path):
    nb = _notebook(tmp_path / "ok.ipynb", "from ddnb.runs import write_results\n"
                   "write_results(output_dir, 'ok', {'x': x}, {}, [])")
    out = tmp_path / "out"
    _write_ok(out)
    (out / "thesis.tex").write_text("mine")  # not listed by the earlier run's results.json
    with pytest.raises(ValueError, match=r"holds files no results\.json of an earlier run lists \(thesis\.tex\)"):
        runs.run_notebook(nb, {}, out, overwrite=True)
    assert (out / "thesis.tex").read_text() == "mine" and (out / "fig.png").is_file()
    (out / "thesis.tex").unlink()
    res = runs.run_notebook(nb, {"x": 2}, out, overwrite=True)
    assert res["status"] == "ok" and res["params"]["x"] == 2
    assert sorted(p.name for p in out.iterdir()) == sorted([*res["artifacts"], "results.json"])


def test_report_table_reads_notebook_folders_only(tmp_path):
    records.record_result(_run(tmp_path / "run0", seed=0), tmp_path / "results")
    (tmp_path / "results" / "benchmarks").mkdir()
    (tmp_path / "results" / "benchmarks" / "bench.json").write_text('{"forgetting": {"spearman": 0.8}}')
    assert len(records.report_table(tmp_path / "results").splitlines()) == 2 + 2  # header + the run's two rows


def test_resume_runs_into_the_folder_of_an_interrupted_run_and_keeps_its_files(tmp_path):
    nb = _notebook(tmp_path / "ok.ipynb", "from ddnb.runs import write_results\n"
                   "write_results(output_dir, 'ok', {'x': x}, {}, [])")
    out = tmp_path / "out"
    out.mkdir()
    (out / "ok.ipynb").write_text("{}")  # what a killed run leaves: its executed copy, no results.json
    (out / "cache.json").write_text("kept")
    with pytest.raises(ValueError, match="overwrite and resume exclude each other"):
        runs.run_notebook(nb, {}, out, overwrite=True, resume=True)
    res = runs.run_notebook(nb, {"x": 3}, out, resume=True)
    assert res["status"] == "ok" and res["params"]["x"] == 3
    assert (out / "cache.json").read_text() == "kept"
