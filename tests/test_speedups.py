"""DDNB_SPEEDUPS=off switches off issue 12's speedups: auto-bf16 becomes fp32, several seeds train one after
another (the same accuracies as batched, to float rounding), results.json records it; a bad value is named."""
from __future__ import annotations

import pytest
import torch

import ddnb
from ddnb import precision as P
from ddnb.runs import versions
from ddnb.synset import SyntheticSet
from ddnb.train import evaluate_synset

CPU = torch.device("cpu")


def test_off_means_fp32_for_auto_and_sequential_seeds(monkeypatch):
    monkeypatch.setattr(P, "cpu_flags", lambda: {"avx512_bf16"})  # a CPU with native bf16
    data = ddnb.load_dataset("digits")
    synset = SyntheticSet.from_real(data, torch.arange(30), "random", seed=0)
    monkeypatch.delenv("DDNB_SPEEDUPS", raising=False)
    assert P.resolve_precision("auto", CPU) == "bf16" and versions()["speedups"] == "on"
    on = evaluate_synset(synset, data, seeds=2, epochs=2, progress=False)
    monkeypatch.setenv("DDNB_SPEEDUPS", "off")
    assert P.resolve_precision("auto", CPU) == "fp32" and P.resolve_precision("bf16", CPU) == "bf16"
    assert versions()["speedups"] == "off"
    off = evaluate_synset(synset, data, seeds=2, epochs=2, progress=False)
    assert (on.path, off.path) == ("batched", "sequential")
    assert off.per_seed == pytest.approx(on.per_seed, abs=1.0)  # a few of the 599 test images may flip by rounding
    assert evaluate_synset(synset, data, seeds=2, epochs=1, progress=False, batched=True).path == "batched"


def test_a_bad_value_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("DDNB_SPEEDUPS", "fast")
    with pytest.raises(ValueError, match=r"DDNB_SPEEDUPS='fast' is not allowed; allowed: on, off"):
        P.resolve_precision("auto", CPU)
