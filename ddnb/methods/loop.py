"""The checkpointed loop every distillation runs: its options, History, per-iteration seeds,
checksummed checkpoints that record the run's identity, exact resume and a clear stop on NaN.

A method writes one `step(it) -> loss` closure over a `state` dict and hands both to
`run_loop` with the run's `RunOptions`, which adds progress, timing, periodic evaluation, atomic
checkpoints, exact resume and a clear stop on NaN. Resume is exact because every random choice
inside `step(it)` comes from `seed_iteration(seed, it)` (a function of seed and iteration only),
and everything that evolves (images, optimizer state, learnable lr, ...) lives in `state` and is
checkpointed.

Importing this module tunes glibc malloc for large activation buffers (see `ddnb.alloc`).
"""
from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import pickle
import re
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ddnb.settings import Bool, Int, require
from ddnb.utils import atomic_save_json, atomic_write_bytes, check_writable

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 2  # 2: a checksummed frame around the torch.save payload, and the run identity
_CKPT_MAGIC = b"ddnb-checkpoint 2\n"
_CKPT_HEADER_RE = re.compile(rb"^sha256=([0-9a-f]{64}) bytes=(\d+)\n")
_CKPT_RE = re.compile(r"^ckpt_(\d{8})\.pt$")
Step = Callable[[int], float | Tensor]  # a 0-d device tensor: run_loop syncs it once per iteration
Callback = Callable[[int, dict[str, Any]], None]


@dataclass
class RunOptions:
    """How a distillation runs, apart from what it computes: checkpoints, resume, progress, evaluation, callback.

    `out_dir`: checkpoint folder (None: no checkpoints); `resume`: continue from its last checkpoint;
    `checkpoint_every`: iterations between checkpoints (None: n_iters // 20); `eval_every`: iterations
    between in-loop evaluations (0: none); `callback(it, state)`: runs after every iteration.
    """

    out_dir: str | Path | None = None
    resume: bool = False
    progress: bool = True
    checkpoint_every: int | None = None
    eval_every: int = 0
    callback: Callback | None = None

    def __post_init__(self) -> None:
        """ValueError for an option of the wrong type or range, or a checkpoint folder that cannot be written."""
        require("resume", self.resume, Bool())
        require("progress", self.progress, Bool())
        require("checkpoint_every", self.checkpoint_every, Int(1, optional=True))
        require("eval_every", self.eval_every, Int(0))
        if self.callback is not None and not callable(self.callback):
            raise ValueError(f"callback must be None or a function callback(it, state), got {self.callback!r}")
        if self.resume and self.out_dir is None:
            raise ValueError("resume=True needs out_dir (the folder holding the checkpoints)")
        if self.out_dir is not None:
            if not isinstance(self.out_dir, (str, os.PathLike)):
                raise ValueError(f"out_dir must be None or a folder path, got {type(self.out_dir).__name__} "
                                 f"{self.out_dir!r}")
            if Path(self.out_dir).exists() and not Path(self.out_dir).is_dir():
                raise ValueError(f"out_dir {str(self.out_dir)!r} is a file; give a folder for the checkpoints")
            check_writable(self.out_dir, "checkpoint folder")


@dataclass
class History:
    """What a distillation run did: loss and seconds per iteration, evaluations, checkpoints, records (CCFS: phases)."""

    method: str
    settings: dict[str, Any]
    loss: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def iterations(self) -> int:
        """Number of iterations completed."""
        return len(self.loss)

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-ready dict (the form stored in checkpoints and history.json)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        """Rebuild a History from `to_dict()` output."""
        return cls(method=d["method"], settings=dict(d["settings"]), loss=list(d["loss"]),
                   seconds=list(d["seconds"]), evals=list(d["evals"]), checkpoints=list(d["checkpoints"]),
                   records=list(d.get("records", [])))

    def save(self, path: str | Path) -> Path:
        """Write the history as JSON atomically (temp file + rename)."""
        return atomic_save_json(path, self.to_dict())


# ---------------------------------------------------------------- per-iteration randomness

def iteration_seed(seed: int, it: int) -> int:
    """The seed of iteration `it` of a run seeded `seed`: a function of both only (exact resume)."""
    return seed * 1_000_003 + it


def seed_iteration(seed: int, it: int) -> torch.Generator:
    """Seed the global torch RNG for iteration `it` and return a CPU generator seeded the same."""
    s = iteration_seed(seed, it)
    torch.manual_seed(s)
    return torch.Generator().manual_seed(s)


# ---------------------------------------------------------------- checkpoint state

def _state_payload(state: dict[str, Any]) -> dict[str, Any]:
    """Snapshot of `state`: tensors detached to CPU, modules/optimizers as state dicts, scalars as is."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, Tensor):
            out[key] = value.detach().cpu().clone()
        elif hasattr(value, "state_dict") and hasattr(value, "load_state_dict"):
            out[key] = value.state_dict()
        elif value is None or isinstance(value, (bool, int, float, str)):
            out[key] = value
        else:
            raise TypeError(f"state[{key!r}] is a {type(value).__name__}; allowed: Tensor, an object with "
                            f"state_dict()/load_state_dict() (module, optimizer), or a bool/int/float/str/None")
    return out


def _restore_state(state: dict[str, Any], saved: dict[str, Any]) -> None:
    """Put a snapshot back: tensors copied in place (closures keep their references), others loaded."""
    missing = sorted(set(state) ^ set(saved))
    if missing:
        raise ValueError(f"checkpoint state keys differ from the run's: {missing}")
    for key, value in state.items():
        if isinstance(value, Tensor):
            with torch.no_grad():
                value.copy_(saved[key].to(value.device))
        elif hasattr(value, "load_state_dict"):
            value.load_state_dict(saved[key])
        else:
            state[key] = saved[key]


def checkpoint_path(out_dir: str | Path, iteration: int) -> Path:
    """File of the checkpoint taken after `iteration` completed iterations."""
    return Path(out_dir) / f"ckpt_{iteration:08d}.pt"


def checkpoints_newest_first(out_dir: str | Path) -> list[Path]:
    """The checkpoint files of `out_dir`, most completed iterations first (none when it is no folder)."""
    folder = Path(out_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The checkpoint with the most completed iterations in `out_dir`, or None."""
    found = checkpoints_newest_first(out_dir)
    return found[0] if found else None


class DamagedCheckpoint(ValueError):
    """A checkpoint file that is empty, truncated, fails its checksum or is not a ddnb checkpoint."""


def _frame_checkpoint(payload: bytes) -> bytes:
    """The bytes of a checkpoint file: magic line, checksum line (sha256 and length), then the payload."""
    return _CKPT_MAGIC + f"sha256={hashlib.sha256(payload).hexdigest()} bytes={len(payload)}\n".encode() + payload


def _verified_payload(path: Path) -> bytes:
    """The torch.save payload of a checkpoint file after its checksum holds, else DamagedCheckpoint saying why."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DamagedCheckpoint(f"{path} cannot be read ({exc.strerror or exc})") from exc
    if not data:
        raise DamagedCheckpoint(f"{path} is empty (0 bytes)")
    if _CKPT_MAGIC.startswith(data):
        raise DamagedCheckpoint(f"{path} is truncated ({len(data)} bytes)")
    if not data.startswith(_CKPT_MAGIC):
        older = data.startswith(b"PK")  # format 1 was a bare torch.save zip
        what = "a checkpoint of an older ddnb (format 1, no checksum)" if older else "not a ddnb checkpoint"
        raise DamagedCheckpoint(f"{path} is {what}; this ddnb resumes format {CHECKPOINT_FORMAT} only")
    body = data[len(_CKPT_MAGIC):]
    header = _CKPT_HEADER_RE.match(body)
    if header is None:
        raise DamagedCheckpoint(f"{path} is truncated or has a damaged checksum line ({len(data)} bytes)")
    payload, expected = body[header.end():], int(header.group(2))
    if len(payload) != expected:
        what = "truncated" if len(payload) < expected else "longer than written"
        raise DamagedCheckpoint(f"{path} is {what} ({len(payload)} of {expected} payload bytes)")
    if hashlib.sha256(payload).hexdigest() != header.group(1).decode():
        raise DamagedCheckpoint(f"{path} fails its checksum (its bytes changed after it was written)")
    return payload


def save_checkpoint(path: Path, iteration: int, state: dict[str, Any], history: History,
                    identity: dict[str, Any] | None = None) -> Path:
    """Write state, history and run identity atomically: torch.save bytes (weights_only-loadable) in a
    checksummed frame."""
    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "iteration": iteration, "state": _state_payload(state),
                "history": history.to_dict(), "identity": dict(identity or {})}, buf)
    return atomic_write_bytes(path, _frame_checkpoint(buf.getvalue()))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint after checking its checksum, without executing pickled code (weights_only=True).

    Raises DamagedCheckpoint (a ValueError) for an empty, truncated, altered or foreign file, and
    ValueError for a file whose content holds code or objects other than plain tensors and values.
    """
    path = Path(path)
    payload = _verified_payload(path)
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol advice would precede the one-line refusal
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{path} holds code or objects that are not plain tensors and was not loaded "
                         f"(ddnb never runs code from a checkpoint); delete it unless you trust and know "
                         f"its origin") from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise DamagedCheckpoint(f"{path} passes its checksum but torch cannot read it ({type(exc).__name__})") from exc
    keys = ("format", "iteration", "state", "history", "identity")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or not set(keys) <= set(ckpt):
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise DamagedCheckpoint(f"{path} is not a format-{CHECKPOINT_FORMAT} ddnb checkpoint (format {found!r}); "
                                f"it needs the entries {list(keys)}")
    return ckpt


def _run_identity(method: str, settings: dict[str, Any], identity: dict[str, Any] | None) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: method, settings and the caller's `identity` entries."""
    if identity is not None and (not isinstance(identity, dict) or not all(isinstance(k, str) for k in identity)
                                 or {"method", "settings"} & set(identity)):
        raise ValueError(f"identity must be a dict with str keys other than 'method' and 'settings' "
                         f"(e.g. dataset, ipc, seed, budget), got {identity!r}")
    return {"method": method, "settings": dict(settings), **(identity or {})}


def _identity_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'key (checkpoint X, this run Y)' for each entry that differs; settings entries as settings.<name>."""
    missing = object()
    flat = [(f"settings.{k}", saved.get("settings", {}).get(k, missing), current["settings"].get(k, missing))
            for k in sorted(set(saved.get("settings", {})) | set(current["settings"]))]
    flat += [(k, saved.get(k, missing), current.get(k, missing))
             for k in sorted(set(saved) | set(current)) if k != "settings"]
    return [f"{key} (checkpoint {_shown(a, missing)}, this run {_shown(b, missing)})" for key, a, b in flat if a != b]


def _shown(value: Any, missing: object) -> str:
    """An identity value as a message shows it: its repr, or 'not set'."""
    return "not set" if value is missing else repr(value)


def _check_state_shapes(path: Path, state: dict[str, Any], saved: dict[str, Any]) -> None:
    """ValueError naming a state tensor whose shape differs between the checkpoint and this run."""
    for key, value in state.items():
        other = saved.get(key)
        if isinstance(value, Tensor) and isinstance(other, Tensor) and value.shape != other.shape:
            raise ValueError(f"cannot resume: state[{key!r}] has shape {tuple(other.shape)} in {path} but "
                             f"{tuple(value.shape)} in this run")


def _newest_intact(out_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of `out_dir` that loads, logging one line per damaged newer one skipped."""
    damaged: list[str] = []
    for path in checkpoints_newest_first(out_dir):
        try:
            ckpt = load_checkpoint(path)
        except DamagedCheckpoint as exc:
            damaged.append(str(exc))
            continue
        for reason in damaged:
            log.warning("skipped a damaged checkpoint: %s; resuming from %s", reason, path)
        return path, ckpt
    if damaged:
        raise ValueError(f"no intact checkpoint in {out_dir} to resume from: {'; '.join(damaged)}; "
                         f"remove the folder to start again")
    return None


def _resume(out_dir: Path, state: dict[str, Any], identity: dict[str, Any],
            n_iters: int) -> tuple[int, History | None]:
    """Load the newest intact checkpoint of `out_dir` into `state` when it belongs to this run (same
    identity); returns (iterations done, its history)."""
    found = _newest_intact(out_dir)
    if found is None:
        log.info("resume=True but %s holds no checkpoint; starting from iteration 0", out_dir)
        return 0, None
    path, ckpt = found
    differences = _identity_differences(ckpt["identity"], identity)
    if differences:
        raise ValueError(f"cannot resume from {path}: it belongs to another run; differing: {', '.join(differences)}")
    if ckpt["iteration"] > n_iters:
        raise ValueError(f"{path} is at iteration {ckpt['iteration']}, past n_iters={n_iters}")
    _check_state_shapes(path, state, ckpt["state"])
    _restore_state(state, ckpt["state"])
    return ckpt["iteration"], History.from_dict(ckpt["history"])


# ---------------------------------------------------------------- the loop

def _eval_record(iteration: int, result: Any) -> dict[str, Any]:
    """An evals entry from an EvalResult-like object or a dict with mean/std/per_seed."""
    get = result.get if isinstance(result, dict) else lambda k: getattr(result, k)
    return {"iteration": iteration, "mean": float(get("mean")), "std": float(get("std")),
            "per_seed": [float(a) for a in get("per_seed")]}


def _check_loop_args(n_iters: int, out_dir: Any, resume: bool) -> None:
    """ValueError for a negative iteration count, or a fresh run into a folder that holds another run's checkpoints."""
    require("n_iters", n_iters, Int(0))
    if not resume and out_dir is not None and latest_checkpoint(out_dir) is not None:
        raise ValueError(f"out_dir {str(out_dir)!r} already holds checkpoints of an earlier run; "
                         f"pass resume=True to continue it, or choose an empty folder")


def run_loop(step: Step, state: dict[str, Any], *, method: str, settings: dict[str, Any], n_iters: int,
             run: RunOptions, eval_fn: Callable[[dict[str, Any]], Any] | None = None,
             identity: dict[str, Any] | None = None) -> History:
    """Run step(it) for it in [start, n_iters) with progress, timing, checkpoints, resume and NaN stop.

    `step(it)` does one iteration in place on the objects in `state` and returns its loss as a
    float. Checkpoints (every `run.checkpoint_every` iterations, default n_iters // 20, and at the
    end) go to `run.out_dir/ckpt_XXXXXXXX.pt` (the number = iterations completed) with history.json
    beside them; none are written without `out_dir`. `run.resume` continues from the last checkpoint
    (a fresh run refuses a folder that already holds checkpoints, so runs never mix).
    `eval_fn(state)` (an EvalResult or a dict with mean/std/per_seed) runs every `run.eval_every`
    iterations and at the end; `run.callback(it, state)` runs after each step(it).
    `identity` (dataset, ipc, seed, budget, ...) is stored in each checkpoint with method and
    settings; a resume whose identity differs raises ValueError naming the differing entries.
    A non-finite loss (or a state tensor with NaN/inf at a checkpoint) raises FloatingPointError
    naming the iteration and the last good checkpoint.
    """
    _check_loop_args(n_iters, run.out_dir, run.resume)
    folder = Path(run.out_dir) if run.out_dir is not None else None
    every, eval_every, callback = run.checkpoint_every or max(1, n_iters // 20), run.eval_every, run.callback
    ident = _run_identity(method, settings, identity)
    start, history = _resume(folder, state, ident, n_iters) if run.resume else (0, None)
    history = history or History(method=method, settings=dict(settings))
    bar = tqdm(range(start, n_iters), initial=start, total=n_iters, desc=method, disable=not run.progress)
    for it in bar:
        t0 = time.perf_counter()
        loss = float(step(it))  # the iteration's host sync: History and the NaN check need the value
        seconds = time.perf_counter() - t0
        if not math.isfinite(loss):
            bar.close()
            last = history.checkpoints[-1] if history.checkpoints else "none (no checkpoint written yet)"
            raise FloatingPointError(f"{method}: loss is {loss} at iteration {it}; last good checkpoint: {last}")
        history.loss.append(loss)
        history.seconds.append(seconds)
        bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        done = it + 1
        if eval_fn is not None and eval_every and (done % eval_every == 0 or done == n_iters):
            history.evals.append(_eval_record(done, eval_fn(state)))
        if callback is not None:
            callback(it, state)
        if folder is not None and (done % every == 0 or done == n_iters):
            _write_checkpoint(folder, done, state, history, ident)
    bar.close()
    return history


def _write_checkpoint(folder: Path, done: int, state: dict[str, Any], history: History,
                      identity: dict[str, Any]) -> None:
    """Record the checkpoint path in the history, then write the checkpoint and history.json.

    A state tensor with NaN/inf (a finite loss can precede a diverged update) stops the run
    instead of overwriting the last good checkpoint's place as the newest one.
    """
    for key, value in state.items():
        if isinstance(value, Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            last = history.checkpoints[-1] if history.checkpoints else "none (no checkpoint written yet)"
            raise FloatingPointError(f"{history.method}: state[{key!r}] holds NaN/inf after iteration {done - 1}; "
                                     f"last good checkpoint: {last}")
    path = checkpoint_path(folder, done)
    history.checkpoints.append(str(path))
    save_checkpoint(path, done, state, history, identity)
    history.save(folder / "history.json")
