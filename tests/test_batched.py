"""ddnb.batched: several seeds trained in one stacked step equal the sequential train_model per seed.

The reference is train_model itself, run once per seed on a fresh copy of the same init: each seed's
final parameters must agree to PARAM_ATOL (float32 rounding of a different summation order; measured
differences are about 1e-7) and its per-epoch losses to LOSS_RTOL.
"""
from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from ddnb.batched import batch_unsupported, train_models
from ddnb.data import load_dataset
from ddnb.models import get_model
from ddnb.synset import SyntheticSet
from ddnb.train import evaluate_synset, train_model

PARAM_ATOL = 1e-5
LOSS_RTOL = 1e-5
SEEDS = [0, 3, 7]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _models(arch: str, seeds: list[int], **kw) -> list[nn.Module]:
    """One fresh model per seed, initialised under that seed (as evaluate_synset does)."""
    out = []
    for s in seeds:
        torch.manual_seed(s)
        out.append(get_model(arch, 1, 10, 8, **kw))
    return out


def _teacher() -> nn.Module:
    torch.manual_seed(99)
    return get_model("convnet3", 1, 10, 8, width=8)


CASES = {
    "convnet3 hl sgd step dsa cutmix": dict(
        arch="convnet3", model_kw={"width": 16}, labels="hard",
        train=dict(epochs=4, batch_size=32, lr=0.05, dsa=True, cutmix_alpha=1.0, cutmix_prob=0.5)),
    "mlp sl adamw cosine warmup idc-dsa": dict(
        arch="mlp", model_kw={}, labels="soft",
        train=dict(epochs=4, batch_size=25, regime="sl", optimizer="adamw", lr=1e-3, schedule="cosine",
                   warmup_epochs=1, temperature=4.0, dsa="idc:color_crop_flip_scale_rotate")),
    "convnet depth2 no-norm maxpool sl+kd multistep": dict(
        arch="convnet", model_kw={"depth": 2, "width": 8, "norm": "none", "act": "leakyrelu", "pool": "maxpool"},
        labels="hard", train=dict(epochs=3, batch_size=64, regime="sl+kd", optimizer="sgd", lr=0.02,
                                  schedule="multistep", temperature=2.0, dsa=True, cutmix_alpha=1.0)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_batched_training_equals_sequential_train_model_per_seed(digits, case):
    spec = CASES[case]
    x = digits.x_train[:70]
    y = digits.y_train[:70]
    if spec["labels"] == "soft":
        y = torch.softmax(torch.randn(70, 10, generator=torch.Generator().manual_seed(1)) * 2, 1)
    train = dict(spec["train"])
    if train.get("regime") == "sl+kd":
        train["teacher"] = _teacher()
    sequential = _models(spec["arch"], SEEDS, **spec["model_kw"])
    seq_hist = [train_model(m, x, y, seed=s, **train) for m, s in zip(sequential, SEEDS)]
    batched = _models(spec["arch"], SEEDS, **spec["model_kw"])
    bat_hist = train_models(batched, x, y, seeds=SEEDS, **train)
    for s, a, b, ha, hb in zip(SEEDS, sequential, batched, seq_hist, bat_hist):
        for (name, p), q in zip(a.named_parameters(), b.parameters()):
            torch.testing.assert_close(q, p, atol=PARAM_ATOL, rtol=0, msg=f"seed {s} {name}")
        assert hb["train_loss"] == pytest.approx(ha["train_loss"], rel=LOSS_RTOL)
    init = _models(spec["arch"], [0], **spec["model_kw"])[0]
    moved = max((p - q).abs().max().item() for p, q in zip(sequential[0].parameters(), init.parameters()))
    assert moved > 100 * PARAM_ATOL  # training moved the weights far more than the tolerance
    first = [torch.cat([p.flatten() for p in m.parameters()]) for m in batched]
    assert not torch.allclose(first[0], first[1])  # the seeds differ


def _real(data, ipc: int) -> SyntheticSet:
    g = torch.Generator().manual_seed(0)
    idx = torch.cat([ix[torch.randperm(len(ix), generator=g)[:ipc]] for ix in data.class_indices()])
    return SyntheticSet.from_real(data, idx, "random", seed=0)


def test_evaluate_synset_batched_by_default_and_equal_to_sequential(digits):
    synset = _real(digits, 10)
    kw = dict(seeds=3, epochs=5, dsa=True, progress=False, model_kw={"width": 16}, lr=0.05)
    default = evaluate_synset(synset, digits, **kw)
    sequential = evaluate_synset(synset, digits, batched=False, **kw)
    assert default.path == "batched" and sequential.path == "sequential"
    one_image = 100.0 / digits.x_test.shape[0]  # at most one test image may flip on rounding
    assert default.per_seed == pytest.approx(sequential.per_seed, abs=one_image + 1e-9)
    assert default.to_dict()["path"] == "batched"
    single = evaluate_synset(synset, digits, seeds=1, epochs=1, progress=False, model_kw={"width": 8})
    assert single.path == "sequential"  # one seed: nothing to batch


def test_unsupported_models_fall_back_with_a_log_line_or_refuse_when_forced(digits, caplog):
    assert batch_unsupported(get_model("convnet3", 1, 10, 8, norm="batchnorm")) is not None
    assert batch_unsupported(get_model("resnet10", 1, 10, 8)) is not None
    assert batch_unsupported(get_model("convnet3", 1, 10, 8)) is None
    assert batch_unsupported(get_model("mlp", 1, 10, 8)) is None
    synset = _real(digits, 1)
    kw = dict(seeds=2, epochs=1, progress=False, model_kw={"width": 8, "norm": "batchnorm"})
    with caplog.at_level(logging.INFO, logger="ddnb.train"):
        res = evaluate_synset(synset, digits, **kw)
    assert res.path == "sequential" and "one after another" in caplog.text and "BatchNorm" in caplog.text
    with pytest.raises(ValueError, match="batched=False"):
        evaluate_synset(synset, digits, batched=True, **kw)
    with pytest.raises(ValueError, match="batched must be"):
        evaluate_synset(synset, digits, seeds=2, epochs=1, progress=False, batched="yes")


def test_batched_training_leaves_the_global_rng_alone_and_names_a_nan_seed(digits):
    x, y = digits.x_train[:20].clone(), digits.y_train[:20]
    models = _models("mlp", [0, 1])
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_models(models, x, y, seeds=[0, 1], epochs=2, dsa=True)
    assert torch.equal(torch.rand(3), expected)
    with pytest.raises(FloatingPointError, match=r"seed 4 became (nan|inf|-inf) at epoch 2/2"):
        train_models(_models("mlp", [4, 5]), x, y, seeds=[4, 5], epochs=2, lr=1e30)
    with pytest.raises(ValueError, match="one seed per model"):
        train_models(_models("mlp", [0, 1]), x, y, seeds=[0], epochs=1)
