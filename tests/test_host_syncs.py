"""Host syncs per iteration of every distillation method, counted on the CPU as they would happen on a GPU.

A CUDA program waits for the GPU whenever the host reads a device value (`.item()`, `float(t)`,
`bool(t)` / `if t`, `.tolist()`, `.numpy()`, `.cpu()`), an op with a data-dependent output size runs
(`nonzero`, boolean-mask indexing, `unique`, `masked_select`) or a blocking host-to-device copy is made
(`.to(device)` or `copy_` of a host tensor without non_blocking, a host index tensor used on a device
tensor). On the CPU all tensors live in one place, so `_Tracker` (a TorchFunctionMode) keeps a
host/device mark on every tensor made during a run as a GPU run would place it: factories and random
draws without `device=` (every draw from a CPU generator) and `.cpu()` results are host, `.to(device)`
results and unmarked tensors (data, parameters) are device, any other op's output is host only when all
its tensor inputs are. Only reads of device tensors and blocking copies of host tensors count, each
under the file that made it. The counts are taken inside `run_loop` (per iteration), and checked not to
grow with the method's inner loop (1 vs 2 of its inner steps) nor with the batches of a training epoch.
"""
from __future__ import annotations

import collections
import functools
import sys
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

import ddnb
from ddnb.methods import get_method, loop

READS = {"item", "__float__", "__int__", "__bool__", "__index__", "__complex__", "__format__", "tolist", "numpy",
         "cpu", "nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "bincount"}
FACTORIES = {"tensor", "as_tensor", "zeros", "ones", "full", "empty", "arange", "linspace", "rand", "randn",
             "randint", "randperm", "normal", "eye"}
INDEXING = {"__getitem__", "__setitem__", "index_put_", "index_put"}
DSA_FILE = "augment.py"  # DSA's draws: pinned, non-blocking copies (none may sync: counted apart to say so)
ITERATION_BOUND = 4  # host syncs one iteration may make, whatever its inner loop: the loss, DATM's threshold, ...
# CCFS's iterations are phases: a filter trained by train_model (one sync per epoch) and a selection made on the
# host (a few syncs per phase); its first phase also runs the distilled start (a whole DM run, counted under dm)
PHASE_BOUND = 10
# DREAM's sampler re-clusters each class every `interval` steps (k-means and the chosen indices on the host: two
# syncs per class and clustering); the runs here set it beyond their steps so that only the first iteration clusters
NO_RECLUSTER = {"dream": {"interval": 1000}, "dream+": {"interval": 1000}}
FIRST_CLUSTERING = 2 * 10  # two syncs for each of digits' 10 classes
IPC, IPC_OF = 2, {"ccfs": 3}
# per method: (setting, small value, larger value) of its inner loop; sre2l/dwa loop over the ipc batches
INNER = {"dc": ("outer_loop", 2, 3), "dsa": ("outer_loop", 2, 3), "dance": ("iter_calib", 1, 2),
         "idc": ("inner_loops", 1, 2), "dream": ("inner_loops", 1, 2), "dream+": ("inner_loops", 1, 2),
         "mtt": ("syn_steps", 2, 4), "datm": ("syn_steps", 2, 4), "sre2l": ("ipc", 2, 3), "dwa": ("ipc", 2, 3),
         "ccfs": ("epochs", 1, 2)}
DISTILL = [m["name"] for m in ddnb.list_methods() if m["kind"] == "distill"]


def _host(t: torch.Tensor) -> bool:
    """Whether t would live in host memory on a GPU run (unmarked tensors: device)."""
    return getattr(t, "_ddnb_host", False)


def _target(args: tuple, kwargs: dict) -> Any:
    """The device (or tensor) a `.to(...)` call moves to, or None when it only changes the dtype."""
    for a in (*args[1:], kwargs.get("device"), kwargs.get("other")):
        if isinstance(a, (str, torch.device, torch.Tensor)):
            return a
    return None


class _Tracker(TorchFunctionMode):
    """Marks tensors host or device as a GPU run would and counts host syncs by file while `counting`."""

    def __init__(self) -> None:
        super().__init__()
        self.counting = 0  # depth of run_loop calls (CCFS runs DM's loop inside its own)
        self.syncs: collections.Counter[str] = collections.Counter()

    def _count(self, what: str) -> None:
        """Count one sync under the ddnb (or test) file that caused it."""
        frame = sys._getframe(2)
        while frame.f_back is not None and "/ddnb/" not in frame.f_code.co_filename:
            frame = frame.f_back
        if self.counting:
            self.syncs[f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_code.co_name}:{what}"] += 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        device_in = [t for t in tensors if not _host(t)]
        host_in = [t for t in tensors if _host(t) and t.dim() > 0]  # 0-d host tensors pass as scalars
        if name in READS and device_in:
            self._count(name)
        elif name in ("to", "copy_") and host_in and not kwargs.get("non_blocking", False):
            if name == "copy_" and not _host(args[0]) or name == "to" and _target(args, kwargs) is not None:
                self._count(f"{name} (blocking host-to-device copy)")
        elif name in INDEXING and device_in and any(t.dtype == torch.bool for t in tensors[1:]):
            self._count(f"{name} (boolean mask)")
        elif name in INDEXING and device_in and host_in:
            self._count(f"{name} (host index)")
        out = func(*args, **kwargs)
        if name == "to":
            target = _target(args, kwargs)
            host = _host(target) if isinstance(target, torch.Tensor) else (target is None and _host(args[0]))
        elif name in ("cpu", "numpy"):
            host = True
        elif not tensors:  # the string "cpu" and a CPU generator mean the host; a torch.device, the run's device
            host = name in FACTORIES and (kwargs.get("device") in (None, "cpu") or kwargs.get("generator") is not None)
        else:
            host = not device_in and not (name == "copy_" and not _host(args[0]))
        if name in ("to", "cpu") and out is args[0] and host != _host(out):
            out = out.view_as(out)  # a move that is a no-op on the CPU: mark a new alias, not the source
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                t._ddnb_host = host
        return out


@functools.lru_cache(maxsize=1)
def _digits() -> Any:
    return ddnb.load_dataset("digits")


def _loop_syncs(monkeypatch: pytest.MonkeyPatch, method: str, iters: int, **settings: Any) -> collections.Counter:
    """Host syncs inside run_loop of a smoke run of `method` on digits with `iters` iterations."""
    tracker, run_loop = _Tracker(), loop.run_loop

    def counted_loop(*args: Any, **kwargs: Any) -> Any:
        tracker.counting += 1
        try:
            return run_loop(*args, **kwargs)
        finally:
            tracker.counting -= 1

    for mod in list(sys.modules.values()):
        if mod is not loop and getattr(mod, "__name__", "").startswith("ddnb.methods.") and \
                getattr(mod, "run_loop", None) is run_loop:
            monkeypatch.setattr(mod, "run_loop", counted_loop)
    ipc = settings.pop("ipc", IPC_OF.get(method, IPC))
    settings = {**NO_RECLUSTER.get(method, {}), **settings}
    with tracker:
        ddnb.distill(method, _digits(), ipc, budget="smoke", seed=0, progress=False,
                     **{get_method(method).iterations_setting: iters}, **settings)
    monkeypatch.undo()
    return tracker.syncs


def _total(syncs: collections.Counter, dsa: bool = False) -> int:
    """Syncs outside augment.py (dsa=True: those inside it)."""
    return sum(n for key, n in syncs.items() if key.startswith(DSA_FILE) == dsa)


@pytest.mark.parametrize("method", DISTILL)
def test_syncs_per_iteration_are_bounded_and_do_not_grow_with_the_inner_loop(monkeypatch, method, capsys):
    one, two = _loop_syncs(monkeypatch, method, 1), _loop_syncs(monkeypatch, method, 2)
    per_iteration = two - one
    report = f"{method}: {_total(one)} syncs in iteration 1, {_total(per_iteration)} per further iteration " \
             f"(+{_total(per_iteration, dsa=True)} blocking copies of DSA draws): {dict(per_iteration)}"
    with capsys.disabled():
        print("\n" + report)
    assert _total(one, dsa=True) == _total(per_iteration, dsa=True) == 0, report
    if method == "ccfs":
        assert _total(per_iteration) <= PHASE_BOUND, report
    else:
        first = ITERATION_BOUND + (FIRST_CLUSTERING if method in NO_RECLUSTER else 0)
        assert _total(per_iteration) <= ITERATION_BOUND and _total(one) <= first, report
    if method in INNER:
        name, small, large = INNER[method]
        few, more = _loop_syncs(monkeypatch, method, 1, **{name: small}), _loop_syncs(monkeypatch, method, 1,
                                                                                       **{name: large})
        grows = method == "ccfs" and name == "epochs"  # train_model syncs once per epoch (its NaN check)
        allowed = (large - small) * (IPC_OF["ccfs"]) if grows else 0
        assert _total(more) - _total(few) <= allowed, f"{method}: {name}={small}: {dict(few)}; {large}: {dict(more)}"


def _train_syncs(batch_size: int, epochs: int) -> collections.Counter:
    """Host syncs of train_model on 64 digits images (DSA on) at the given batch size and epochs."""
    data = _digits()
    model = ddnb.get_model("convnet3", 1, 10, 8)
    tracker = _Tracker()
    with tracker:
        tracker.counting = 1
        ddnb.train_model(model, data.x_train[:64], data.y_train[:64], epochs=epochs, batch_size=batch_size, lr=0.01,
                         dsa=True)
    return tracker.syncs


def test_train_model_syncs_once_per_epoch_not_per_batch():
    per_batch = {b: _total(_train_syncs(b, 2)) - _total(_train_syncs(b, 1)) for b in (64, 8)}
    assert per_batch[64] == per_batch[8] == 1, per_batch


def test_dsa_draws_reach_the_device_without_a_sync():
    from ddnb.augment import dsa

    x = _digits().x_train[:4]
    tracker = _Tracker()
    with tracker:
        tracker.counting = 1
        dsa(x, "color_crop_cutout_flip_scale_rotate", seed=0)
        dsa(x, "color_crop_cutout_flip_scale_rotate", seed=None)
    assert not tracker.syncs, dict(tracker.syncs)
