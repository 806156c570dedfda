"""A table of bad inputs against the `ddnb` CLI and the Python API, and what each one ends in.

Every input is a user mistake or a crafted file. Each is run in-process (the CLI through
`ddnb.cli.main`) on digits at the `smoke` budget, ipc 1, and classified:

- clear: the CLI exits 2 (3 for a NaN stop) with exactly one stderr line `ddnb: error: ...` and no
  traceback; the API raises ValueError / FileNotFoundError (or a ddnb subclass) with a one-line message;
- traceback: any other exception escapes (a raw TypeError, RuntimeError, OSError ...);
- silent corruption: the bad input is accepted (exit 0 / no exception) or a result is wrong;
- data loss: a file or folder that was there before the input is changed or gone;
- code execution: a crafted pickle ran (it would create a marker file).

Run: `PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bad_inputs.py` (about 10 s on one core);
`-v` prints every case. Exits 1 when any case is not a clear error.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ddnb import cli
from ddnb.data import load_dataset
from ddnb.methods import distill, select
from ddnb.methods.loop import _frame_checkpoint
from ddnb.synset import FILE_KIND, SyntheticSet, save_tensor_file
from ddnb.train import evaluate_synset

CLEAR_EXCEPTIONS = (ValueError, FileNotFoundError)
CLI_EXIT_CODES = (2, 3)  # 2: a user mistake; 3: a run stopped on NaN/inf
PROGRESS = re.compile(r"\d+%\|")  # a tqdm progress-bar line of a run that started (the NaN stop)


@dataclass
class Case:
    """One bad input: a CLI argv or an API call, and the files it must leave as they were."""

    name: str
    argv: list[str] | None = None
    call: Callable[[], Any] | None = None
    guard: list[Path] = field(default_factory=list)


@dataclass
class Outcome:
    """What one case ended in."""

    kind: str  # clear, traceback, silent, data_loss, code_exec
    detail: str


def _snapshot(paths: list[Path]) -> dict[Path, str | None]:
    """A digest of each guarded file or folder (None when absent)."""
    out: dict[Path, str | None] = {}
    for p in paths:
        if p.is_file():
            out[p] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            out[p] = "|".join(sorted(f"{q.relative_to(p)}:{hashlib.sha256(q.read_bytes()).hexdigest()}"
                                     for q in p.rglob("*") if q.is_file() and not q.name.startswith(".")))
        else:
            out[p] = None
    return out


def _run_cli(argv: list[str]) -> Outcome:
    """main(argv) in-process: clear, traceback or silent."""
    err, out = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = cli.main(argv)
            except SystemExit as exc:
                code = exc.code
    except Exception as exc:  # noqa: BLE001 -- the point of the table: what escapes main()
        return Outcome("traceback", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ddnb: error:")]
    if code in CLI_EXIT_CODES and len(errors) == 1 and "Traceback" not in err.getvalue():
        noise = [line for line in lines if not line.startswith("ddnb: error:") and not PROGRESS.search(line)]
        if not noise:
            return Outcome("clear", errors[0])
        return Outcome("traceback", f"exit {code} with {len(lines)} stderr lines: {lines[0][:100]}")
    if code == 0:
        return Outcome("silent", f"exit 0: {out.getvalue().strip()[:120]}")
    return Outcome("traceback", f"exit {code}: {' | '.join(lines)[:160]}")


def _run_api(call: Callable[[], Any]) -> Outcome:
    """call(): clear (ValueError / FileNotFoundError on one line), traceback or silent."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            call()
    except CLEAR_EXCEPTIONS as exc:
        text = str(exc)
        if "\n" in text.strip() or not text:
            return Outcome("traceback", f"{type(exc).__name__} over several lines: {text[:100]!r}")
        return Outcome("clear", f"{type(exc).__name__}: {text}")
    except FloatingPointError as exc:
        return Outcome("clear", f"FloatingPointError: {exc}")
    except Exception as exc:  # noqa: BLE001
        return Outcome("traceback", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    return Outcome("silent", "accepted")


class Evil:
    """A pickle that would create the marker file when unpickled."""

    def __init__(self, marker: Path) -> None:
        """Remember the marker path."""
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        """Unpickling calls os.system("touch MARKER")."""
        return (os.system, (f"touch {self.marker}",))


def _craft_set(path: Path, images: torch.Tensor, labels: torch.Tensor, **meta: Any) -> Path:
    """A set file with a valid checksum but arbitrary content (what a buggy writer or an attacker makes)."""
    record = {"dataset": "digits", "num_classes": 10, "image_shape": [1, 8, 8], "factor": 1,
              "label_kind": "hard", "provenance": {}}
    record.update(meta)
    return save_tensor_file(path, {"images": images, "labels": labels}, record, FILE_KIND)


def _with(argv: list[str], flag: str, value: str) -> list[str]:
    """argv with the value of `flag` replaced, or `flag value` appended."""
    if flag not in argv:
        return [*argv, flag, value]
    i = argv.index(flag)
    return [*argv[:i + 1], value, *argv[i + 2:]]


def build_cases(tmp: Path) -> list[Case]:
    """The table: every case of issue 16 and more."""
    data = load_dataset("digits", device="cpu")
    good = tmp / "good.safetensors"
    select("random", data, 1, seed=0)[0].save(good)
    syn = SyntheticSet.load(good)
    x, y = syn.images, syn.labels
    notes = tmp / "notes.txt"
    notes.write_text("my notes\n")
    marker = tmp / "PWNED"
    fifo = tmp / "a_pipe"  # a special file as --out (never /dev/null itself: a bug would replace it)
    os.mkfifo(fifo)
    folder = tmp / "a_folder"
    folder.mkdir()
    (folder / "keep.txt").write_text("keep")
    sets = {
        "nan": _craft_set(tmp / "nan.safetensors", x.clone().fill_(float("nan")), y),
        "inf": _craft_set(tmp / "inf.safetensors", x.clone().fill_(float("inf")), y),
        "one_nan": _craft_set(tmp / "one_nan.safetensors", torch.cat([x[:1] * float("nan"), x[1:]]), y),
        "empty": _craft_set(tmp / "empty.safetensors", x[:0], y[:0]),
        "float64": _craft_set(tmp / "f64.safetensors", x.double(), y),
        "float16": _craft_set(tmp / "f16.safetensors", x.half(), y),
        "int_pixels": _craft_set(tmp / "int.safetensors", (x * 10).long(), y),
        "shape_2": _craft_set(tmp / "s2.safetensors", x, y, image_shape=[1, 8]),
        "shape_zero": _craft_set(tmp / "s0.safetensors", x, y, image_shape=[0, 8, 8]),
        "shape_text": _craft_set(tmp / "st.safetensors", x, y, image_shape="abc"),
        "shape_float": _craft_set(tmp / "sf.safetensors", x, y, image_shape=[1, 8, 8.5]),
        "shape_bool": _craft_set(tmp / "sb.safetensors", x, y, image_shape=[True, 8, 8]),
        "shape_nested": _craft_set(tmp / "sn.safetensors", x, y, image_shape=[[1], 8, 8]),
        "shape_none": _craft_set(tmp / "snone.safetensors", x, y, image_shape=None),
        "shape_int": _craft_set(tmp / "si.safetensors", x, y, image_shape=64),
        "shape_wrong": _craft_set(tmp / "sw.safetensors", x, y, image_shape=[1, 16, 16]),
        "classes_0": _craft_set(tmp / "k0.safetensors", x, y, num_classes=0),
        "classes_text": _craft_set(tmp / "kt.safetensors", x, y, num_classes="ten"),
        "classes_11": _craft_set(tmp / "k11.safetensors", x, y, num_classes=11),
        "factor_0": _craft_set(tmp / "f0.safetensors", x, y, factor=0),
        "factor_text": _craft_set(tmp / "ft.safetensors", x, y, factor="2"),
        "dataset_unknown": _craft_set(tmp / "du.safetensors", x, y, dataset="nosuch"),
        "dataset_int": _craft_set(tmp / "di.safetensors", x, y, dataset=5),
        "dataset_missing": _craft_set(tmp / "dm.safetensors", x, y, dataset="tinyimagenet"),
        "labels_range": _craft_set(tmp / "lr.safetensors", x, y + 10),
        "labels_count": _craft_set(tmp / "lc.safetensors", x, y[:3]),
        "labels_float": _craft_set(tmp / "lf.safetensors", x, y.float()),
        "labels_nan_soft": _craft_set(tmp / "ls.safetensors", x, torch.full((10, 10), float("nan")),
                                      label_kind="soft_logits"),
        "label_kind": _craft_set(tmp / "lk.safetensors", x, y, label_kind="fuzzy"),
        "provenance_list": _craft_set(tmp / "pl.safetensors", x, y, provenance=[1, 2]),
        "images_3d": _craft_set(tmp / "i3.safetensors", x[:, 0], y),
        "channels": _craft_set(tmp / "ch.safetensors", x.repeat(1, 3, 1, 1), y),
    }
    raw = good.read_bytes()
    files = {
        "empty_file": tmp / "zero.safetensors",
        "text_file": notes,
        "truncated": tmp / "trunc.safetensors",
        "flipped": tmp / "flip.safetensors",
        "pickle": tmp / "evil.safetensors",
        "torch_save": tmp / "torch.safetensors",
        "missing": tmp / "nope.safetensors",
        "folder": folder,
        "json": tmp / "x.json",
        "devnull": Path("/dev/null"),
    }
    files["empty_file"].write_bytes(b"")
    files["truncated"].write_bytes(raw[: len(raw) // 2])
    flipped = bytearray(raw)
    flipped[-5] ^= 0x01
    files["flipped"].write_bytes(bytes(flipped))
    files["meta_flip"] = tmp / "meta_flip.safetensors"
    files["meta_flip"].write_bytes(raw.replace(b'num_classes\\": 10', b'num_classes\\": 11', 1))
    files["pickle"].write_bytes(pickle.dumps(Evil(marker)))
    torch.save({"images": x}, files["torch_save"])
    files["json"].write_text("{}")

    cases: list[Case] = []
    add = cases.append
    sel = ["select", "random", "--dataset", "digits", "--ipc", "1"]
    dis = ["distill", "dm", "--dataset", "digits", "--ipc", "1", "--budget", "smoke"]
    out_of = iter(range(10_000))

    def out() -> str:
        """A fresh output path."""
        return str(tmp / "outs" / f"o{next(out_of)}.safetensors")

    # ---- top level and listings
    for argv in (["nosuch"], ["--nosuch"], ["datasets", "extra"], ["datasets", "--nosuch"], ["methods", "extra"],
                 ["methods", "--json", "x"],
                 ["datasets", "--root", str(notes)]):
        add(Case(f"cli {' '.join(argv)}", argv))

    # ---- select: names, ranges, types, seeds, devices, paths
    bad_common = [
        ("--ipc", "0"), ("--ipc", "-1"), ("--ipc", "abc"), ("--ipc", "1.5"), ("--ipc", "100000"), ("--ipc", ""),
        ("--seed", "-1"), ("--seed", str(2**70)), ("--seed", "abc"), ("--seed", "1e3"), ("--seed", str(2**63)),
        ("--device", "tpu"), ("--device", "cuda:99"), ("--device", "meta"), ("--device", "cuda"),
        ("--device", "cpu:1x"), ("--device", ""), ("--device", "mps"), ("--device", "-1"),
        ("--dataset", "nosuch"), ("--dataset", ""), ("--dataset", "tinyimagenet"), ("--dataset", "../etc/passwd"),
        ("--root", str(notes)),
    ]
    for opt, val in bad_common:
        add(Case(f"cli select {opt} {val!r}", [*_with(sel, opt, val), "--out", out()]))
    for method in ("nosuch", "dm", ""):
        add(Case(f"cli select method {method!r}", ["select", method, "--dataset", "digits", "--ipc", "1",
                                                    "--out", out()]))
    for label, path in (("a folder", str(folder)), ("under a file", str(notes / "x.safetensors")),
                        ("in /proc", "/proc/ddnb_x/x.safetensors"), ("a pipe", str(fifo)),
                        ("a text file", str(notes)), ("empty", ""), ("in /sys", "/sys/x.safetensors")):
        add(Case(f"cli select --out {label}", [*sel, "--out", path], guard=[notes, folder]))
        if label != "a text file":  # --overwrite replaces a text file by request: not a mistake
            add(Case(f"cli select --overwrite --out {label}", [*sel, "--overwrite", "--out", path],
                     guard=[notes, folder]))
    add(Case("cli select without --out", sel))
    add(Case("cli select without --dataset", ["select", "random", "--ipc", "1", "--out", out()]))
    for method in ("herding", "kcenter"):
        add(Case(f"cli select {method} --device meta", ["select", method, "--dataset", "digits", "--ipc", "1",
                                                        "--device", "meta", "--out", out()]))

    # ---- distill: the same, plus settings, budgets, resume, checkpoint folders
    for opt, val in bad_common:
        add(Case(f"cli distill {opt} {val!r}", [*_with(dis, opt, val), "--out", out()]))
    for method in ("nosuch", "random", ""):
        add(Case(f"cli distill method {method!r}", ["distill", method, "--dataset", "digits", "--ipc", "1",
                                                     "--out", out()]))
    for budget in ("nosuch", "", "SMOKE"):
        add(Case(f"cli distill --budget {budget!r}", ["distill", "dm", "--dataset", "digits", "--ipc", "1",
                                                       "--budget", budget, "--out", out()]))
    bad_sets = ["lr_img=nan", "lr_img=NaN", "lr_img=Infinity", "lr_img=-1", "lr_img=0", "lr_img=abc", "lr_img=true",
                "lr_img=[1]", "lr_img=null", "momentum=abc", "momentum=2", "momentum=-0.1", "iterations=-1",
                "iterations=1.5", "iterations=abc", "iterations=1e3", "factor=1.5", "factor=0", "factor=true",
                "init=nosuch", "init=1", "dsa_strategy=nosuch", "dsa_strategy=1", "sampler=nosuch",
                "channels_last=yes", "batch_real=0", "real_chunk=-5", "eval_seeds=0", "nosuch=1", "noequals",
                "=1", "lr_img", "callback=1", "out_dir=/tmp/x", "resume=true", "progress=3", "eval_every=-1",
                "checkpoint_every=0", "arch=nosuch"]
    for item in bad_sets:
        add(Case(f"cli distill --set {item}", [*dis, "--set", item, "--out", out()]))
    for method, item in (("dc", "outer_loop=0"), ("dc", "metric=nosuch"), ("mtt", "syn_steps=0"),
                         ("mtt", "max_start_epoch=0"), ("dream", "cutmix_prob=2"), ("idc", "match=nosuch"),
                         ("dance", "momentum=abc"), ("datm", "lr_y=-1")):
        add(Case(f"cli distill {method} --set {item}", ["distill", method, "--dataset", "digits", "--ipc", "1",
                                                         "--budget", "smoke", "--set", item, "--out", out()]))
    for label, path in (("a folder", str(folder)), ("under a file", str(notes / "x.safetensors")),
                        ("in /proc", "/proc/ddnb_x/x.safetensors"), ("a text file", str(notes)),
                        ("empty", ""), ("in /sys", "/sys/x.safetensors")):
        add(Case(f"cli distill --out {label}", [*dis, "--out", path], guard=[notes, folder]))
    add(Case("cli distill --checkpoint-dir a file", [*dis, "--out", out(), "--checkpoint-dir", str(notes)],
             guard=[notes]))
    add(Case("cli distill --checkpoint-dir in /proc", [*dis, "--out", out(), "--checkpoint-dir", "/proc/ddnb_ck"]))
    evil_dir = tmp / "evil_ckpts"
    evil_dir.mkdir()
    (evil_dir / "ckpt_00000001.pt").write_bytes(_frame_checkpoint(pickle.dumps(Evil(marker))))
    add(Case("cli distill --resume from a malicious checkpoint", [*dis, "--out", out(), "--resume",
                                                                  "--checkpoint-dir", str(evil_dir)]))
    raw_dir = tmp / "raw_pickle_ckpts"
    raw_dir.mkdir()
    (raw_dir / "ckpt_00000001.pt").write_bytes(pickle.dumps(Evil(marker)))
    add(Case("cli distill --resume from an unframed pickle", [*dis, "--out", out(), "--resume",
                                                              "--checkpoint-dir", str(raw_dir)]))
    run_out = tmp / "run0.safetensors"
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        assert cli.main([*dis, "--set", "iterations=4", "checkpoint_every=2", "--device", "cpu",
                         "--out", str(run_out)]) == 0
    ckpts = run_out.with_suffix(".checkpoints")
    for flag, value in (("--seed", "7"), ("--ipc", "2"), ("--dataset", "mnist")):
        argv = [*dis, "--set", "iterations=4", "checkpoint_every=2", "--resume", "--out", str(tmp / "r.safetensors"),
                "--checkpoint-dir", str(ckpts)]
        add(Case(f"cli distill --resume with another {flag} {value}", _with(argv, flag, value), guard=[ckpts]))
    other = [*dis, "--set", "iterations=4", "checkpoint_every=2", "lr_img=0.5", "--resume",
             "--out", str(tmp / "r2.safetensors"), "--checkpoint-dir", str(ckpts)]
    add(Case("cli distill --resume with other settings", other, guard=[ckpts]))
    flipped_dir = tmp / "flipped_ckpts"
    flipped_dir.mkdir()
    for ck in sorted(ckpts.glob("ckpt_*.pt")):
        data_ck = bytearray(ck.read_bytes())
        data_ck[-20] ^= 0x01
        (flipped_dir / ck.name).write_bytes(bytes(data_ck))
    add(Case("cli distill --resume from checkpoints with a flipped byte", [*dis, "--set", "iterations=4",
                                                                           "checkpoint_every=2", "--resume",
                                                                           "--out", str(tmp / "r3.safetensors"),
                                                                           "--checkpoint-dir", str(flipped_dir)]))
    add(Case("cli distill fresh run into a used checkpoint folder", [*dis, "--set", "iterations=4",
                                                                     "--out", str(tmp / "r4.safetensors"),
                                                                     "--checkpoint-dir", str(ckpts)], guard=[ckpts]))
    keep = tmp / "kept.safetensors"
    keep.write_bytes(good.read_bytes())
    add(Case("cli distill over a good set with a bad setting", [*dis, "--set", "lr_img=nan", "--out", str(keep)],
             guard=[keep]))
    add(Case("cli distill NaN stop (lr_img=1e38)", [*dis, "--set", "lr_img=1e38", "--out", out()]))

    # ---- eval: files of every kind, options
    for label, path in {**{k: v for k, v in files.items()}, **sets}.items():
        add(Case(f"cli eval {label}", ["eval", str(path), "--seeds", "1", "--epochs", "1", "--quiet",
                                        "--device", "cpu"], guard=[Path(path)] if Path(path).is_file() else []))
    for opt, val in (("--seeds", "0"), ("--seeds", "-1"), ("--seeds", "abc"), ("--epochs", "0"), ("--epochs", "-3"),
                     ("--epochs", "x"), ("--arch", "nosuch"), ("--arch", ""), ("--protocol", "nosuch"),
                     ("--device", "tpu"), ("--device", "cuda:99"), ("--device", "meta"), ("--root", str(notes))):
        add(Case(f"cli eval {opt} {val!r}", _with(["eval", str(good), "--seeds", "1", "--epochs", "1", "--quiet"],
                                                  opt, val)))
    add(Case("cli eval without a file", ["eval"]))

    # ---- run: notebooks and output folders
    nb_text = tmp / "text.ipynb"
    nb_text.write_text("not json")
    nb_json = tmp / "json.ipynb"
    nb_json.write_text('{"cells": 5}')
    nb_dir = tmp / "dir.ipynb"
    nb_dir.mkdir()
    nb_empty = tmp / "empty.ipynb"
    nb_empty.write_text("")
    real_nb = Path(__file__).resolve().parents[1] / "notebooks" / "00_quickstart.ipynb"
    for label, nb in (("missing", tmp / "nope.ipynb"), ("not json", nb_text), ("bad schema", nb_json),
                      ("a folder", nb_dir), ("empty", nb_empty), ("a .py", Path(__file__))):
        add(Case(f"cli run notebook {label}", ["run", str(nb), "--quiet", "--out", str(tmp / "runs" / label)]))
    add(Case("cli run into a non-empty folder", ["run", str(real_nb), "--quiet", "--out", str(folder)], guard=[folder]))
    add(Case("cli run --out a file", ["run", str(real_nb), "--quiet", "--out", str(notes)], guard=[notes]))
    add(Case("cli run --out in /proc", ["run", str(real_nb), "--quiet", "--out", "/proc/ddnb_run"]))
    add(Case("cli run --out under a file", ["run", str(real_nb), "--quiet", "--out", str(notes / "r")], guard=[notes]))
    add(Case("cli run unknown parameter", ["run", str(real_nb), "--quiet", "-p", "nosuch", "1",
                                           "--out", str(tmp / "runs" / "p1")]))
    add(Case("cli run -p missing value", ["run", str(real_nb), "-p", "x"]))

    # ---- API misuse
    api: list[tuple[str, Callable[[], Any]]] = [
        ("distill dataset as a string", lambda: distill("dm", "digits", 1, budget="smoke")),
        ("distill dataset None", lambda: distill("dm", None, 1, budget="smoke")),
        ("distill dataset a tensor", lambda: distill("dm", x, 1, budget="smoke")),
        ("distill seed 'a'", lambda: distill("dm", data, 1, budget="smoke", seed="a")),
        ("distill seed -1", lambda: distill("dm", data, 1, budget="smoke", seed=-1)),
        ("distill seed 2**70", lambda: distill("dm", data, 1, budget="smoke", seed=2**70)),
        ("distill seed 1.5", lambda: distill("dm", data, 1, budget="smoke", seed=1.5)),
        ("distill seed True", lambda: distill("dm", data, 1, budget="smoke", seed=True)),
        ("distill seed None", lambda: distill("dm", data, 1, budget="smoke", seed=None)),
        ("distill ipc '1'", lambda: distill("dm", data, "1", budget="smoke")),
        ("distill ipc 0", lambda: distill("dm", data, 0, budget="smoke")),
        ("distill ipc 1.0", lambda: distill("dm", data, 1.0, budget="smoke")),
        ("distill ipc None", lambda: distill("dm", data, None, budget="smoke")),
        ("distill budget None", lambda: distill("dm", data, 1, budget=None)),
        ("distill budget 3", lambda: distill("dm", data, 1, budget=3)),
        ("distill method None", lambda: distill(None, data, 1, budget="smoke")),
        ("distill method 5", lambda: distill(5, data, 1, budget="smoke")),
        ("distill device 'meta'", lambda: distill("dm", data, 1, budget="smoke", device="meta")),
        ("distill device 'tpu'", lambda: distill("dm", data, 1, budget="smoke", device="tpu")),
        ("distill device 'cuda:99'", lambda: distill("dm", data, 1, budget="smoke", device="cuda:99")),
        ("distill device 5", lambda: distill("dm", data, 1, budget="smoke", device=5)),
        ("distill device [1]", lambda: distill("dm", data, 1, budget="smoke", device=[1])),
        ("distill lr_img nan", lambda: distill("dm", data, 1, budget="smoke", lr_img=float("nan"))),
        ("distill iterations '3'", lambda: distill("dm", data, 1, budget="smoke", iterations="3")),
        ("distill out_dir a file", lambda: distill("dm", data, 1, budget="smoke", out_dir=notes)),
        ("distill callback 1", lambda: distill("dm", data, 1, budget="smoke", callback=1)),
        ("distill resume 'yes'", lambda: distill("dm", data, 1, budget="smoke", resume="yes")),
        ("select dataset as a string", lambda: select("random", "digits", 1)),
        ("select dataset None", lambda: select("random", None, 1)),
        ("select dataset a SyntheticSet", lambda: select("random", syn, 1)),
        ("select seed 'a'", lambda: select("random", data, 1, seed="a")),
        ("select seed -1", lambda: select("random", data, 1, seed=-1)),
        ("select seed 2**70", lambda: select("random", data, 1, seed=2**70)),
        ("select herding seed 2**70", lambda: select("herding", data, 1, seed=2**70)),
        ("select ipc 0", lambda: select("random", data, 0)),
        ("select ipc 'a'", lambda: select("random", data, "a")),
        ("select ipc 10**6", lambda: select("random", data, 10**6)),
        ("select random device 'meta'", lambda: select("random", data, 1, device="meta")),
        ("select random device 'tpu'", lambda: select("random", data, 1, device="tpu")),
        ("select random device 'cuda:99'", lambda: select("random", data, 1, device="cuda:99")),
        ("select kcenter device 'meta'", lambda: select("kcenter", data, 1, device="meta")),
        ("select unknown keyword", lambda: select("random", data, 1, nosuch=1)),
        ("evaluate_synset a tensor", lambda: evaluate_synset(x, data, seeds=1, epochs=1, progress=False)),
        ("evaluate_synset a path", lambda: evaluate_synset(str(good), data, seeds=1, epochs=1, progress=False)),
        ("evaluate_synset dataset a string", lambda: evaluate_synset(syn, "digits", seeds=1, epochs=1,
                                                                     progress=False)),
        ("evaluate_synset dataset None", lambda: evaluate_synset(syn, None, seeds=1, epochs=1, progress=False)),
        ("evaluate_synset seeds 'a'", lambda: evaluate_synset(syn, data, seeds="a", epochs=1, progress=False)),
        ("evaluate_synset seeds 0", lambda: evaluate_synset(syn, data, seeds=0, epochs=1, progress=False)),
        ("evaluate_synset epochs -1", lambda: evaluate_synset(syn, data, seeds=1, epochs=-1, progress=False)),
        ("evaluate_synset device 'meta'", lambda: evaluate_synset(syn, data, seeds=1, epochs=1, device="meta",
                                                                  progress=False)),
        ("load_dataset None", lambda: load_dataset(None)),
        ("load_dataset 5", lambda: load_dataset(5)),
        ("load_dataset device 'meta'", lambda: load_dataset("digits", device="meta")),
        ("load_dataset device 'tpu'", lambda: load_dataset("digits", device="tpu")),
        ("load_dataset seed 'a'", lambda: load_dataset("digits", seed="a", val_fraction=0.1)),
        ("load_dataset root a file", lambda: load_dataset("digits", root=notes)),
        ("SyntheticSet.load a folder", lambda: SyntheticSet.load(folder)),
        ("SyntheticSet.load None", lambda: SyntheticSet.load(None)),
        ("SyntheticSet image_shape (1, 8, 8.5)", lambda: SyntheticSet(x, y, "digits", 10, (1, 8, 8.5))),
        ("SyntheticSet image_shape 'abc'", lambda: SyntheticSet(x, y, "digits", 10, "abc")),
        ("SyntheticSet image_shape 64", lambda: SyntheticSet(x, y, "digits", 10, 64)),
        ("SyntheticSet images a list", lambda: SyntheticSet([[1.0]], y, "digits", 10, (1, 8, 8))),
        ("SyntheticSet.save to a folder", lambda: syn.save(folder)),
        ("SyntheticSet.save to a pipe", lambda: syn.save(fifo)),
        ("SyntheticSet.to 'meta'", lambda: syn.to("meta")),
    ]
    for name, call in api:
        add(Case(f"api {name}", call=call, guard=[notes, folder]))
    return cases


def main() -> int:
    """Run the table and print the counts."""
    verbose = "-v" in sys.argv[1:]
    torch.set_num_threads(1)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cases = build_cases(tmp)
        marker = tmp / "PWNED"
        counts = {"clear": 0, "traceback": 0, "silent": 0, "data_loss": 0, "code_exec": 0}
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            for case in cases:
                before = _snapshot(case.guard)
                outcome = _run_cli(case.argv) if case.argv is not None else _run_api(case.call)
                if marker.exists():
                    outcome = Outcome("code_exec", f"{outcome.kind}; a crafted pickle ran: {outcome.detail}")
                    marker.unlink()
                elif _snapshot(case.guard) != before:
                    outcome = Outcome("data_loss", f"{outcome.kind}; a guarded file changed: {outcome.detail}")
                counts[outcome.kind] += 1
                if verbose or outcome.kind != "clear":
                    print(f"{outcome.kind:9s}  {case.name}: {outcome.detail[:220]}")
        finally:
            os.chdir(cwd)
    print(json.dumps({"inputs_tried": len(cases), "clear_one_line_errors": counts["clear"],
                      "tracebacks": counts["traceback"], "data_loss": counts["data_loss"],
                      "silent_corruptions": counts["silent"], "code_executions": counts["code_exec"],
                      "seconds": round(time.perf_counter() - start, 1)}))
    return 0 if counts["clear"] == len(cases) else 1


if __name__ == "__main__":
    sys.exit(main())
