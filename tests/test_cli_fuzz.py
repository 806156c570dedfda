"""Fuzz-style table over the CLI: every subcommand with bad values (types, ranges, paths, devices,
seeds, ipc, budgets, --set values, crafted files) exits 2 with exactly one `ddnb: error:` line
naming the value, no traceback and no progress bar (nothing was trained), and writes nothing."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ddnb.cli import main
from ddnb.synset import FILE_KIND, SyntheticSet, save_tensor_file

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "00_quickstart.ipynb"

SELECT = ["select", "random", "--dataset", "digits", "--ipc", "1", "--seed", "0", "--device", "cpu"]
DISTILL = ["distill", "dm", "--dataset", "digits", "--ipc", "1", "--budget", "smoke", "--seed", "0",
           "--device", "cpu"]
EVAL = ["--seeds", "1", "--epochs", "1", "--device", "cpu"]

# Values that break select and distill alike: (option, value, what the error line must name).
RUN_OPTIONS = [
    ("--ipc", "0", "ipc"), ("--ipc", "-1", "ipc"), ("--ipc", "abc", "'abc'"), ("--ipc", "1.5", "'1.5'"),
    ("--ipc", "", "--ipc"), ("--ipc", "100000", "ipc=100000"),
    ("--seed", "-1", "-1"), ("--seed", str(2**70), str(2**70)), ("--seed", str(2**63), str(2**63)),
    ("--seed", "abc", "'abc'"), ("--seed", "1e3", "'1e3'"),
    ("--device", "tpu", "'tpu'"), ("--device", "cuda:99", "'cuda:99'"), ("--device", "meta", "'meta'"),
    ("--device", "", "--device"), ("--device", "cpu:x", "'cpu:x'"),
    ("--dataset", "nosuch", "'nosuch'"), ("--dataset", "", "''"), ("--dataset", "../etc/passwd", "passwd"),
    ("--root", "{notes}", "notes.txt"),
]
BAD_OUT = [("{folder}", "is a folder"), ("{notes}/x.safetensors", "is a file, not a folder"), ("", "empty"),
           ("{notes}", "not a ddnb set"), ("{pipe}", "not a regular file"),
           ("/proc/ddnb_fuzz/x.safetensors", "cannot be written")]
BAD_SETS = ["lr_img=nan", "lr_img=NaN", "lr_img=Infinity", "lr_img=-1", "lr_img=abc", "lr_img=true", "lr_img=null",
            "momentum=abc", "momentum=2", "iterations=-1", "iterations=1.5", "iterations=abc", "factor=1.5", "factor=0",
            "init=nosuch", "dsa_strategy=nosuch", "channels_last=yes", "batch_real=0", "nosuch=1",
            "callback=1", "out_dir={tmp}/ckpts", "resume=true", "checkpoint_every=0", "eval_every=-1"]


def _row(argv: list[str], names: str, out: str | None = None) -> tuple[list[str], str, str | None]:
    """One table row: the argv (placeholders filled in by the test), what the line names, what it must not make."""
    return argv, names, out


TABLE = [
    _row(["nosuch"], "'nosuch'"),
    _row(["--nosuch"], "--nosuch"),
    _row(["datasets", "extra"], "extra"),
    _row(["datasets", "--nosuch"], "--nosuch"),
    _row(["datasets", "--root", "{notes}"], "notes.txt"),
    _row(["datasets", "--json", "--root"], "--root"),
    _row(["methods", "extra"], "extra"),
    _row(["methods", "--nosuch"], "--nosuch"),
    *[_row([*SELECT, opt, val, "--out", "{tmp}/s.safetensors"], names, "{tmp}/s.safetensors")
      for opt, val, names in RUN_OPTIONS],
    *[_row([*SELECT, "--out", out], names) for out, names in BAD_OUT],
    _row([*SELECT[:2], "--ipc", "1", "--out", "{tmp}/s.safetensors"], "--dataset"),
    _row([*SELECT], "--out"),
    _row(["select", "dm", "--dataset", "digits", "--ipc", "1", "--out", "{tmp}/s.safetensors"], "'dm'"),
    *[_row([*DISTILL, opt, val, "--out", "{tmp}/d.safetensors"], names, "{tmp}/d.safetensors")
      for opt, val, names in RUN_OPTIONS],
    *[_row([*DISTILL, "--out", out], names) for out, names in BAD_OUT],
    *[_row([*DISTILL, "--set", item, "--out", "{tmp}/d.safetensors"], item.partition("=")[0], "{tmp}/d.safetensors")
      for item in BAD_SETS],
    _row([*DISTILL, "--set", "noequals", "--out", "{tmp}/d.safetensors"], "'noequals'"),
    _row([*DISTILL, "--budget", "nosuch", "--out", "{tmp}/d.safetensors"], "'nosuch'", "{tmp}/d.safetensors"),
    _row([*DISTILL, "--budget", "SMOKE", "--out", "{tmp}/d.safetensors"], "'SMOKE'", "{tmp}/d.safetensors"),
    _row(["distill", "random", "--dataset", "digits", "--ipc", "1", "--out", "{tmp}/d.safetensors"], "'random'"),
    _row([*DISTILL, "--checkpoint-dir", "{notes}", "--out", "{tmp}/d.safetensors"], "--checkpoint-dir",
         "{tmp}/d.safetensors"),
    _row(["eval", "{tmp}/missing.safetensors", *EVAL], "missing.safetensors"),
    _row(["eval", "{folder}", *EVAL], "is a folder"),
    _row(["eval", "{notes}", *EVAL], "notes.txt"),
    _row(["eval", "{empty_file}", *EVAL], "0 bytes"),
    *[_row(["eval", f"{{sets}}/{name}.safetensors", *EVAL], names) for name, names in [
        ("nan", "NaN or inf"), ("inf", "NaN or inf"), ("no_images", "0 images"), ("float64", "float64"),
        ("int_pixels", "int64"), ("shape_2", "image_shape"), ("shape_float", "8.5"), ("shape_none", "image_shape"),
        ("shape_text", "'abc'"), ("classes_11", "11 classes")]],
    _row(["eval", "{good}", *EVAL[:2], "--seeds", "0"], "--seeds"),
    _row(["eval", "{good}", *EVAL[:2], "--seeds", "-2"], "-2"),
    _row(["eval", "{good}", *EVAL[:2], "--seeds", "abc"], "'abc'"),
    _row(["eval", "{good}", "--seeds", "1", "--epochs", "-1"], "--epochs"),
    _row(["eval", "{good}", "--seeds", "1", "--epochs", "0"], "--epochs"),
    _row(["eval", "{good}", *EVAL, "--arch", "convnet4"], "convnet4"),
    _row(["eval", "{good}", *EVAL, "--arch", "nosuch"], "'nosuch'"),
    _row(["eval", "{good}", *EVAL, "--protocol", "nosuch"], "'nosuch'"),
    _row(["eval", "{good}", "--seeds", "1", "--device", "tpu"], "'tpu'"),
    _row(["eval", "{good}", "--seeds", "1", "--device", "cuda:99"], "'cuda:99'"),
    _row(["eval"], "file"),
    _row(["run", "{tmp}/missing.ipynb", "--out", "{tmp}/r"], "missing.ipynb", "{tmp}/r"),
    _row(["run", "{folder}", "--out", "{tmp}/r"], "is a folder", "{tmp}/r"),
    _row(["run", "{notes}", "--out", "{tmp}/r"], "not a .ipynb", "{tmp}/r"),
    _row(["run", "{text_nb}", "--out", "{tmp}/r"], "not JSON", "{tmp}/r"),
    _row(["run", "{bad_nb}", "--out", "{tmp}/r"], "cells", "{tmp}/r"),
    _row(["run", str(NOTEBOOK), "--out", "{notes}"], "is a file"),
    _row(["run", str(NOTEBOOK), "--out", "{notes}/r"], "is a file, not a folder"),
    _row(["run", str(NOTEBOOK), "--out", "{folder}"], "not empty"),
    _row(["run", str(NOTEBOOK), "-p", "nosuch", "1", "--out", "{tmp}/r"], "'nosuch'", "{tmp}/r"),
    _row(["run", str(NOTEBOOK), "-p", "ipc"], "-p"),
    _row(["report", "{tmp}/missing"], "missing"),
    _row(["report", "{notes}"], "notes.txt"),
    _row(["report", "{folder}"], "no records"),
    _row(["report", "{tmp}/rec", "--record", "{tmp}/missing_run"], "missing_run", "{tmp}/rec"),
    _row(["report", "{tmp}/rec", "--record", "{notes}"], "notes.txt", "{tmp}/rec"),
]


def _craft(path: Path, images: torch.Tensor, labels: torch.Tensor, **meta: object) -> None:
    """A set file with a valid checksum and the given (bad) content."""
    record = {"dataset": "digits", "num_classes": 10, "image_shape": [1, 8, 8], "factor": 1, "label_kind": "hard",
              "provenance": {}, **meta}
    save_tensor_file(path, {"images": images, "labels": labels}, record, FILE_KIND)


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, str]:
    """The files the table points at: a good set, crafted bad sets, a text file, a folder, a pipe, bad notebooks."""
    root = tmp_path_factory.mktemp("fuzz")
    sets = root / "sets"
    sets.mkdir()
    good = root / "good.safetensors"
    images, labels = torch.randn(10, 1, 8, 8), torch.arange(10)
    SyntheticSet(images, labels, "digits", 10, (1, 8, 8)).save(good)
    for name, x, y, meta in [
        ("nan", torch.full_like(images, float("nan")), labels, {}),
        ("inf", torch.full_like(images, float("inf")), labels, {}),
        ("no_images", images[:0], labels[:0], {}),
        ("float64", images.double(), labels, {}),
        ("int_pixels", images.long(), labels, {}),
        ("shape_2", images, labels, {"image_shape": [1, 8]}),
        ("shape_float", images, labels, {"image_shape": [1, 8, 8.5]}),
        ("shape_none", images, labels, {"image_shape": None}),
        ("shape_text", images, labels, {"image_shape": "abc"}),
        ("classes_11", images, labels, {"num_classes": 11}),
    ]:
        _craft(sets / f"{name}.safetensors", x, y, **meta)
    notes = root / "notes.txt"
    notes.write_text("my notes\n")
    folder = root / "folder"
    folder.mkdir()
    (folder / "keep.txt").write_text("keep")
    pipe = root / "pipe"
    os.mkfifo(pipe)
    (root / "empty.safetensors").write_bytes(b"")
    (root / "text.ipynb").write_text("not json")
    (root / "bad.ipynb").write_text('{"cells": 5}')
    return {"tmp": str(root), "sets": str(sets), "good": str(good), "notes": str(notes), "folder": str(folder),
            "pipe": str(pipe), "empty_file": str(root / "empty.safetensors"), "text_nb": str(root / "text.ipynb"),
            "bad_nb": str(root / "bad.ipynb")}


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every regular file under root with its bytes (locks excepted)."""
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.name.endswith(".lock")}


@pytest.mark.parametrize("argv, names, out", TABLE, ids=[" ".join(r[0])[:90] for r in TABLE])
def test_bad_value_is_one_line_error_before_any_work(capsys, places, argv, names, out):
    argv = [a.format(**places) for a in argv]
    before = _snapshot(Path(places["tmp"]))
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    stdout, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("ddnb: error: "), err
    assert "Traceback" not in err and stdout == ""
    assert names.format(**places) in lines[0]
    assert _snapshot(Path(places["tmp"])) == before  # nothing written, nothing replaced
    if out is not None:
        assert not Path(out.format(**places)).exists()


def test_the_table_covers_every_subcommand():
    commands = {row[0][0] for row in TABLE}
    assert {"datasets", "methods", "select", "eval", "distill", "run", "report"} <= commands
