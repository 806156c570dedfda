"""The `ddnb` command: list datasets and methods, select, distill, evaluate, run notebooks, report.

A thin layer over the same functions the notebooks call. A user mistake (unknown name, missing
file, IPC larger than a class, unknown setting, bad option value, unwritable --out) ends with exit
status 2 and one line `ddnb: error: ...` on stderr; a run stopped because its loss or images became
NaN/inf ends with exit status 3 and one line naming the iteration and the last good checkpoint;
anything else is a bug and keeps its traceback.  `ddnb` alone prints the commands, one line each,
and exits 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn, Sequence

from ddnb import __version__

USER_ERRORS = (ValueError, FileNotFoundError)  # what ddnb raises for a user mistake; a KeyError is a bug
EXIT_USER_ERROR = 2
EXIT_NAN_STOP = 3  # a run stopped on a non-finite loss or state (FloatingPointError): a known outcome, not a bug
CLI_RUN_OPTIONS = ("checkpoint_every", "eval_every")  # run options `ddnb distill --set` may change
PYTHON_ONLY = ("model", "scores")  # selection arguments that take Python objects: not settable from the command line


def parse_value(text: str) -> Any:
    """A command-line value as a JSON literal when it is one (1, 0.5, true, null, [1,2]), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_settings(items: Sequence[str]) -> dict[str, Any]:
    """`key=value` strings -> a dict, each value through `parse_value`."""
    settings: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {item!r}")
        settings[key] = parse_value(value)
    return settings


def _out(*parts: Any) -> None:
    """Print a line of results on stdout."""
    print(*parts, flush=True)


def cmd_datasets(args: argparse.Namespace) -> int:
    """`ddnb datasets`: every dataset, whether it is here and where."""
    from ddnb.data import list_datasets

    rows = list_datasets(root=args.root)
    if args.json:
        _out(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        where = r["path"] if r["available"] else _not_found(r["places"])
        _out(f"{r['name']:<{width}}  {'yes' if r['available'] else 'no ':<3}  {where}")
    return 0


def _not_found(places: Sequence[str]) -> str:
    """The `ddnb datasets` cell of a dataset that is not here."""
    if not places:
        return "not found (no folder to look in: give --root DIR or set $DDNB_DATA)"
    return "not found; looked in: " + ", ".join(map(str, places))


def cmd_methods(args: argparse.Namespace) -> int:
    """`ddnb methods`: every registered method, its kind, budgets and the paper its settings follow."""
    from ddnb.methods import list_methods

    rows = list_methods()
    if args.json:
        _out(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        budgets = ", ".join(r["budgets"]) or "-"
        _out(f"{r['name']:<{width}}  {r['kind']:<7}  budgets: {budgets}")
        if r["summary"]:
            _out(f"{'':<{width}}  {r['summary']}")
        if r["paper"]:
            _out(f"{'':<{width}}  paper: {r['paper']}")
    return 0


def select_settings(method: str, items: Sequence[str]) -> dict[str, Any]:
    """`--set key=value` of `ddnb select`: the method's own settings; an unknown key names the allowed ones."""
    from ddnb.methods import select_arguments

    settings = parse_settings(items)
    allowed = [a for a in select_arguments(method) if a not in PYTHON_ONLY]
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(map(repr, unknown))} for selection method {method!r}; "
                         f"allowed: {', '.join(allowed) or 'none'}")
    return settings


def cmd_select(args: argparse.Namespace) -> int:
    """`ddnb select`: pick real images with a selection method and save them as a SyntheticSet."""
    from ddnb.data import load_dataset
    from ddnb.methods import get_method, select
    from ddnb.synset import check_set_destination
    from ddnb.utils import check_writable

    get_method(args.method, "select")  # an unknown name fails before the dataset is loaded
    settings = select_settings(args.method, args.set or [])
    out = check_set_destination(check_writable(args.out, "--out"), overwrite=args.overwrite)
    data = load_dataset(args.dataset, root=args.root, device=args.device)
    synset, indices = select(args.method, data, args.ipc, seed=args.seed, device=args.device, **settings)
    synset.save(out)
    _out(f"saved {len(indices)} images ({args.method}, {args.dataset}, ipc {args.ipc}, seed {args.seed}) "
         f"to {args.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """`ddnb eval`: train fresh models on a saved set and report test accuracy over seeds."""
    from ddnb.data import load_dataset
    from ddnb.models import get_model
    from ddnb.settings import Int, require
    from ddnb.synset import SyntheticSet
    from ddnb.train import evaluate_synset

    require("--seeds", args.seeds, Int(1))
    if args.epochs is not None:
        require("--epochs", args.epochs, Int(1))
    synset = SyntheticSet.load(args.file)
    data = load_dataset(synset.dataset, root=args.root, device=args.device)
    c, h, _ = data.image_shape
    try:  # an unknown or unfitting model fails before training starts
        get_model(args.arch, c, data.num_classes, h)
    except ValueError as exc:
        raise ValueError(f"--arch {args.arch!r}: {exc}") from exc
    synset, extra = _with_teacher(args, synset, data)
    res = evaluate_synset(synset, data, arch=args.arch, seeds=args.seeds, epochs=args.epochs,
                          dsa=True if args.dsa else None, protocol=args.protocol, device=args.device,
                          progress=not args.quiet, **extra)
    if args.json:
        _out(json.dumps({"file": str(args.file), "dataset": synset.dataset, **res.to_dict(),
                         "teacher_name": args.teacher}))
    else:
        per_seed = ", ".join(f"{a:.2f}" for a in res.per_seed)
        used = res.protocol
        _out(f"{args.file}: {res} test accuracy; per seed: {per_seed}; protocol {used['name']} "
             f"({'carried by the set' if used['source'] == 'set' else used['source']}, {used['epochs']} epochs)")
    return 0


def _with_teacher(args: argparse.Namespace, synset: Any, data: Any) -> tuple[Any, dict[str, Any]]:
    """`--teacher NAME`: under --protocol sl the set relabeled by the teacher, under sl+kd the teacher to train with."""
    if args.teacher is None:
        return synset, {}
    if args.protocol not in ("sl", "sl+kd"):
        raise ValueError(f"--teacher needs --protocol sl or sl+kd, got --protocol {args.protocol}")
    from ddnb.teachers import get_teacher, relabel

    teacher = get_teacher(args.teacher, data, device=args.device, progress=not args.quiet)
    return (relabel(synset, teacher), {}) if args.protocol == "sl" else (synset, {"teacher": teacher})


def history_path(out: str | Path) -> Path:
    """Where `ddnb distill` writes the History of the set saved at `out`: FILE with .history.json."""
    return Path(out).with_suffix(".history.json")


def checkpoint_dir(out: str | Path) -> Path:
    """The default checkpoint folder of `ddnb distill --out FILE`: FILE without suffix + .checkpoints."""
    return Path(out).with_suffix(".checkpoints")


def check_checkpoint_dir(folder: Path) -> Path:
    """`folder` when checkpoints can be written there (new, or an existing folder), else ValueError."""
    from ddnb.utils import check_writable

    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--checkpoint-dir {str(folder)!r} is a file; give a folder for the checkpoints")
    return check_writable(folder, "--checkpoint-dir")


def cmd_distill(args: argparse.Namespace) -> int:
    """`ddnb distill`: run a distillation method under a budget; save the set and its History.

    The run locks its output file and checkpoint folder (a second run on either is refused) and
    removes temp files an interrupted earlier run left there.
    """
    from ddnb.data import load_dataset
    from ddnb.locks import output_lock
    from ddnb.methods import distill, get_method, resolve_budget
    from ddnb.synset import check_set_destination
    from ddnb.utils import check_writable, remove_stale_temps

    settings = parse_settings(args.set or [])
    info = get_method(args.method, "distill")  # an unknown name or setting fails before any work
    resolve_budget(info, args.budget, {k: v for k, v in settings.items() if k not in CLI_RUN_OPTIONS})
    out = check_set_destination(check_writable(args.out, "--out"), overwrite=args.overwrite)
    folder = check_checkpoint_dir(Path(args.checkpoint_dir or checkpoint_dir(args.out)))
    with output_lock(out), output_lock(folder):
        check_set_destination(out, overwrite=args.overwrite)
        remove_stale_temps(out.parent, [out.name, history_path(out).name])
        remove_stale_temps(folder)
        run_opts = {"progress": True, "resume": args.resume, "out_dir": folder}
        data = load_dataset(args.dataset, root=args.root, device=args.device)
        synset, history = distill(args.method, data, args.ipc, budget=args.budget, seed=args.seed,
                                  device=args.device, **{**run_opts, **settings})
        synset.save(out)
        history.save(history_path(out))
    _out(f"saved {synset.n_stored} images ({args.method}, {args.dataset}, ipc {args.ipc}, budget {args.budget}) "
         f"to {args.out}; history: {history_path(args.out)}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """`ddnb run`: execute a notebook headless with parameters; exit 1 when the run failed."""
    from ddnb.runs import run_notebook

    params = {name: parse_value(value) for name, value in args.param or []}
    out = Path(args.out) if args.out is not None else Path("runs") / Path(args.notebook).stem
    result = run_notebook(args.notebook, params, out, progress=not args.quiet, overwrite=args.overwrite,
                          resume=args.resume)
    _out(f"{args.notebook}: {result['status']}; outputs in {out.resolve()}")
    if result["status"] == "failed":
        print(f"ddnb: run failed: {result.get('error')}", file=sys.stderr)
        return 1
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """`ddnb report`: print the "Measured here" Markdown table of the records under a results folder."""
    from ddnb.records import record_result, report_table

    for run_dir in args.record or []:
        path = record_result(run_dir, args.results, overwrite=args.overwrite, ipc=args.ipc)
        print(f"recorded {run_dir} as {path}", file=sys.stderr)
    _out(report_table(args.results))
    return 0


def device_name(text: str) -> str:
    """A --device value, checked by `resolve_device` (a device that is here) so that a typo is a usage error."""
    from ddnb.utils import resolve_device

    try:
        resolve_device(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    return text


class Parser(argparse.ArgumentParser):
    """argparse with a usage mistake reported as one `ddnb: error:` line that points to --help (exit 2)."""

    def error(self, message: str) -> NoReturn:
        """Print `ddnb: error: MESSAGE; see `PROG --help`` on stderr and exit 2."""
        self.exit(EXIT_USER_ERROR, f"ddnb: error: {_one_line(message)}; see `{self.prog} --help`\n")


def _add_common(p: argparse.ArgumentParser, *, seed: bool = False, device: bool = True) -> None:
    """Options several subcommands share."""
    p.add_argument("--root", default=None, help="folder to look for datasets in first")
    if device:
        p.add_argument("--device", type=device_name, default=None,
                       help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    if seed:
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `ddnb` and its subcommands."""
    parser = Parser(prog="ddnb", description="Notebook-first dataset distillation.")
    parser.add_argument("--version", action="version", version=f"ddnb {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    p = sub.add_parser("datasets", help="list datasets, whether each is available and where")
    _add_common(p, device=False)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("methods", help="list selection and distillation methods with budgets and papers")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("select", help="select real images per class (random, herding, kcenter, by score, window)")
    p.add_argument("method", help="selection method (see `ddnb methods`)")
    p.add_argument("--dataset", required=True, help="dataset name (see `ddnb datasets`)")
    p.add_argument("--ipc", type=int, required=True, help="images per class")
    p.add_argument("--out", required=True, help="file to save the selected set to (.safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace --out even when it is not a ddnb set")
    p.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE",
                   help="a setting of the method: beta, alpha, order, score, budget, ... (values parsed as JSON "
                        "when possible)")
    _add_common(p, seed=True)
    p.set_defaults(func=cmd_select)

    p = sub.add_parser("eval", help="evaluate a saved set: train fresh models, report test accuracy")
    p.add_argument("file", help="a saved SyntheticSet")
    p.add_argument("--arch", default="convnet3", help="model to train (default convnet3)")
    p.add_argument("--seeds", type=int, default=5, help="number of model seeds (default 5)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the protocol's)")
    p.add_argument("--dsa", action="store_true", help="train with DSA augmentation (default: the protocol's)")
    p.add_argument("--protocol", default=None,
                   help="named evaluation protocol: dc, hl, sl, sl+kd, idc (default: the one the set carries, else dc)")
    p.add_argument("--teacher", default=None,
                   help="a named teacher (ddnb.teachers.TEACHERS; trained on the set's dataset and cached on first "
                        "use): soft labels for --protocol sl, the on-the-fly labeller for sl+kd")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_common(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("distill", help="distill a synthetic set with a registered method")
    p.add_argument("method", help="distillation method (see `ddnb methods`)")
    p.add_argument("--dataset", required=True, help="dataset name (see `ddnb datasets`)")
    p.add_argument("--ipc", type=int, required=True, help="images per class")
    p.add_argument("--budget", default="cpu", help="named budget: smoke, cpu or paper (default cpu)")
    p.add_argument("--out", required=True, help="file to save the set to; the history goes beside it")
    p.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE",
                   help="override one setting of the budget, or checkpoint_every / eval_every "
                        "(values parsed as JSON when possible)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the checkpoint folder")
    p.add_argument("--checkpoint-dir", default=None,
                   help="folder for checkpoints (default: FILE without its suffix + .checkpoints)")
    p.add_argument("--overwrite", action="store_true", help="replace --out even when it is not a ddnb set")
    _add_common(p, seed=True)
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("run", help="run a notebook headless with parameters (papermill)")
    p.add_argument("notebook", help="the .ipynb to run")
    p.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="set a notebook parameter (value parsed as JSON when possible)")
    p.add_argument("--out", default=None, help="output folder (default: runs/<notebook name>)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the earlier run in a non-empty output folder (its listed files)")
    p.add_argument("--resume", action="store_true",
                   help="run into the folder of an interrupted run, keeping its files (cached work is skipped)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="print the Markdown table of the recorded runs under a results folder")
    p.add_argument("results", nargs="?", default="results",
                   help="folder of records <notebook>/<budget>-<dataset>-ipcN-seedS.json (default results)")
    p.add_argument("--record", action="append", metavar="RUN_DIR",
                   help="first copy this finished run's results.json into the folder (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="with --record: replace an existing record")
    p.add_argument("--ipc", help="with --record: the IPC part of the record's name (e.g. 10+20) for a run whose "
                   "params left ipc unset (the notebook's default)")
    p.set_defaults(func=cmd_report)
    return parser


def _one_line(exc: BaseException | str) -> str:
    """An exception's message (or a text) on one line: its lines joined by '; '."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    joined = "".join(f"{line}{' ' if line.endswith(':') else '; '}" for line in lines)
    return joined.rstrip("; ") or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `ddnb`: parse arguments, run the subcommand, turn user mistakes into exit 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        print("\nddnb: error: no command given; pick one of the commands above", file=sys.stderr)
        return EXIT_USER_ERROR
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        print(f"ddnb: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except FloatingPointError as exc:  # the NaN stop of a run: its message names the iteration and last checkpoint
        print(f"ddnb: error: run stopped: {_one_line(exc)}", file=sys.stderr)
        return EXIT_NAN_STOP
    except BrokenPipeError:  # the reader went away (`ddnb methods | head`): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
