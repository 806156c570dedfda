"""Every notebook: committed clean with a proper parameters cell, and a smoke run on the embedded
digits dataset through run_notebook (status ok, a valid results.json, its PNG figures on disk)."""
from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import papermill
import pytest

from ddnb import runs

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
REQUIRED = {"dataset", "ipc", "seed", "budget", "device", "output_dir"}
# Smoke settings; each notebook gets those of its parameters that are here.
# ipc 2 keeps the smoke runs small: factor-2 methods train on ipc x 4 decoded images per class
SMOKE = {"dataset": "digits", "budget": "smoke", "ipc": 2, "eval_epochs": 10, "eval_seeds": 2}
# Per-notebook smoke settings that replace SMOKE's: CCFS needs IPC > curricula (ipc None: its study's, 8);
# notebook 05 uses its study's IPCs (smoke: 2)
SMOKE_OVERRIDES = {"04_ccfs_curriculum": {"ipc": None}, "05_soft_label_saturation": {"ipc": None}}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_committed_clean_with_a_parameters_cell(path):
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), "the first code cell must be tagged 'parameters'"
    assigned = [t.id for node in ast.parse(code[0].source).body for t in node.targets]
    assert REQUIRED <= set(assigned), f"parameters cell lacks {sorted(REQUIRED - set(assigned))}"
    inspected = papermill.inspect_notebook(str(path))
    assert sorted(inspected) == sorted(assigned), "papermill must read every parameter (one '=' per line)"
    assert all(p["help"] for p in inspected.values()), "every parameter needs a comment saying what it is"
    assert runs.notebook_parameters(path)["output_dir"].startswith("outputs/")
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, f"committed with outputs: {cell.source[:60]!r}"
    assert nb.metadata.kernelspec.name == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_smoke_run_on_digits(path, tmp_path):
    allowed = runs.notebook_parameters(path)
    params = {k: v for k, v in {**SMOKE, **SMOKE_OVERRIDES.get(path.stem, {})}.items() if k in allowed}
    res = runs.run_notebook(path, params, tmp_path)
    assert res["status"] == "ok", res["error"]
    assert res == runs.read_results(tmp_path)  # the schema holds
    assert res["notebook"] == path.stem
    assert {k: res["params"][k] for k in params} == params
    assert path.name in res["artifacts"]
    pngs = [tmp_path / a for a in res["artifacts"] if a.endswith(".png")]
    assert pngs, "a notebook saves its figures as PNG"
    for png in pngs:
        assert png.read_bytes().startswith(PNG_MAGIC), png
    for finding in res["findings"]:
        assert isinstance(finding["holds"], bool)
