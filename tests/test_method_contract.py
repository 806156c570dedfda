"""The contract every registered distillation method keeps, parametrized from the registry.

A method registered with `kind="distill"` is tested here the day it is registered, at its smoke
budget on digits with ipc 2 (CCFS: 3) and two iterations (set through the method's
`iterations_setting`: CCFS's curriculum phases), through the public entry `ddnb.distill` only:

* resume: a run that crashes after iteration 1 and is resumed from its checkpoint gives the
  same images, labels and losses, bit for bit, as a run that never stopped;
* NaN stop: a non-finite loss (images turned to NaN by a callback) raises FloatingPointError
  naming the iteration; NaN images are never written as a checkpoint;
* in-loop evaluation: eval_every=1 records one evaluation per iteration in the History
  (iteration, mean, std, per_seed) of the set as it is at that iteration, and leaves the run as is;
* settings: every int setting of the smoke budget refuses a string, naming the setting and the
  value; an unknown setting name is refused with the list of allowed ones.
"""
from __future__ import annotations

import functools
import re

import pytest
import torch

import ddnb
from ddnb.methods import get_method

DISTILL = [m["name"] for m in ddnb.list_methods() if m["kind"] == "distill"]
IPC, ITERS, SEED = 2, 2, 1
# CCFS needs a real image per class for each phase beyond its distilled start: ceil(0.2 * 3) = 1 distilled + 2 real
IPC_OF = {"ccfs": 3}


def _ipc(method):
    """The ipc of `method`'s runs here."""
    return IPC_OF.get(method, IPC)


def _iters(method, n):
    """The setting that runs `method` for n loop iterations (iterations; CCFS: curricula)."""
    return {get_method(method).iterations_setting: n}


def _kw(method, iters=ITERS, **extra):
    """The keywords of every run here: smoke budget, seed, `iters` iterations, no progress bar."""
    return dict(budget="smoke", seed=SEED, progress=False, **_iters(method, iters), **extra)


@functools.lru_cache(maxsize=1)
def _digits():
    return ddnb.load_dataset("digits")


@functools.lru_cache(maxsize=None)
def _uninterrupted(method):
    """The reference run of `method`: two iterations without checkpoints, evaluation or callback."""
    syn, hist = ddnb.distill(method, _digits(), _ipc(method), **_kw(method))
    return syn, hist


class _Crash(Exception):
    """Raised by a callback to stop a run as a crash would."""


def test_registry_lists_the_known_distill_methods():
    # the contract below runs over every registered method: the known ones must be among them
    assert {"dc", "dsa", "dm", "mtt", "datm", "dance", "idc", "dream", "dream+"} <= set(DISTILL)


# ---------------------------------------------------------------- resume

@pytest.mark.parametrize("method", DISTILL)
def test_resume_after_crash_is_bit_identical(method, tmp_path):
    full, full_hist = _uninterrupted(method)

    def crash(it, state):
        if it == 1:  # after iteration 1 ran, before its checkpoint: only ckpt_00000001.pt exists
            raise _Crash

    with pytest.raises(_Crash):
        ddnb.distill(method, _digits(), _ipc(method), out_dir=tmp_path, checkpoint_every=1, callback=crash,
                     **_kw(method))
    assert sorted(p.name for p in tmp_path.glob("ckpt_*.pt")) == ["ckpt_00000001.pt"]
    resumed, hist = ddnb.distill(method, _digits(), _ipc(method), out_dir=tmp_path, resume=True, checkpoint_every=1,
                                 **_kw(method))
    assert torch.equal(resumed.images, full.images)
    assert torch.equal(resumed.labels, full.labels)
    assert hist.loss == full_hist.loss and hist.iterations == ITERS
    assert [p.rsplit("_", 1)[1] for p in hist.checkpoints] == ["00000001.pt", "00000002.pt"]


# ---------------------------------------------------------------- NaN stop

def _poison_at(k):
    """A callback that writes NaN into the images after iteration k."""
    def poison(it, state):
        if it == k:
            with torch.no_grad():
                state["images"].fill_(float("nan"))
    return poison


@pytest.mark.parametrize("method", DISTILL)
def test_non_finite_loss_stops_naming_the_iteration(method):
    # NaN images after iteration 0: iteration 1's loss is not finite, and the run stops there
    with pytest.raises(FloatingPointError, match=r"loss is (nan|inf|-inf) at iteration 1; last good checkpoint: none"):
        ddnb.distill(method, _digits(), _ipc(method), callback=_poison_at(0), **_kw(method))


@pytest.mark.parametrize("method", DISTILL)
def test_nan_images_are_never_checkpointed(method, tmp_path):
    # the images live in the checkpointed state, so NaN images stop the run at the checkpoint
    with pytest.raises(FloatingPointError,
                       match=r"state\['images'\] holds NaN/inf after iteration 0; last good checkpoint: none"):
        ddnb.distill(method, _digits(), _ipc(method), out_dir=tmp_path, checkpoint_every=1, callback=_poison_at(0),
                     **_kw(method, iters=1))
    assert not list(tmp_path.glob("ckpt_*.pt"))


# ---------------------------------------------------------------- in-loop evaluation

@pytest.mark.parametrize("method", DISTILL)
def test_in_loop_evaluation_records_the_set_of_each_iteration(method, monkeypatch):
    import ddnb.train

    seen = []

    def fake_evaluate(synset, dataset, **kw):
        # a stand-in for training on the set: its 'accuracy' is a function of the images it is given
        seen.append((synset.images.clone(), kw))
        mean = float(synset.images.double().abs().mean())
        return {"mean": mean, "std": 0.5, "per_seed": [mean - 0.5, mean + 0.5]}

    monkeypatch.setattr(ddnb.train, "evaluate_synset", fake_evaluate)
    syn, hist = ddnb.distill(method, _digits(), _ipc(method), eval_every=1, **_kw(method))
    assert len(seen) == ITERS
    means = [float(images.double().abs().mean()) for images, _ in seen]
    assert hist.evals == [{"iteration": i + 1, "mean": m, "std": 0.5, "per_seed": [m - 0.5, m + 0.5]}
                          for i, m in enumerate(means)]
    torch.testing.assert_close(seen[-1][0], syn.images, rtol=0, atol=0)  # the last evaluation saw the result
    assert not torch.equal(seen[0][0], seen[1][0])  # the first saw the set before iteration 2 changed it
    assert all(kw.get("progress") is False and "arch" in kw for _, kw in seen)
    full, full_hist = _uninterrupted(method)  # evaluating in the loop leaves the run as it is
    assert torch.equal(syn.images, full.images) and hist.loss == full_hist.loss


# ---------------------------------------------------------------- settings

def _int_settings():
    """(method, setting, value) for every int-valued (not bool) setting of each smoke budget."""
    cases = []
    for method in DISTILL:
        for key, value in sorted(get_method(method).budgets["smoke"].items()):
            if isinstance(value, int) and not isinstance(value, bool):
                cases.append(pytest.param(method, key, id=f"{method}-{key}"))
    return cases


@pytest.mark.parametrize("method, key", _int_settings())
def test_int_setting_refuses_a_string_naming_setting_and_value(method, key):
    extra = {} if key == get_method(method).iterations_setting else _iters(method, 1)  # a missing check fails fast
    with pytest.raises(ValueError) as err:
        ddnb.distill(method, _digits(), _ipc(method), budget="smoke", seed=0, progress=False, **{**extra, key: "abc"})
    msg = str(err.value)
    assert re.search(rf"\b{re.escape(key)}\b", msg), msg
    assert "abc" in msg, msg


@pytest.mark.parametrize("method", DISTILL)
def test_unknown_setting_lists_the_allowed_ones(method):
    allowed = sorted(get_method(method).budgets["smoke"])
    with pytest.raises(ValueError, match=r"unknown setting.*'no_such_setting'") as err:
        ddnb.distill(method, _digits(), _ipc(method), budget="smoke", seed=0, progress=False, no_such_setting=1)
    listed = str(err.value).split("allowed:", 1)[1]
    assert set(re.findall(r"\w+", listed)) >= set(allowed)
