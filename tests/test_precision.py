"""ddnb.precision: native-bf16 detection, the auto/bf16/fp32 choice, and its use in DM, DANCE and evaluation training.

Tolerances (bf16 keeps 8 significand bits, relative rounding 2**-8 = 3.9e-3 per value): class mean features
under bf16 autocast within 1e-2 (relative L2) of fp32, the DM loss within 2e-2 relative, the first-epoch
training loss under bf16 within 5e-3 of fp32 cross-entropy computed by hand; measured here (AVX512-BF16)
1.5e-3, 1.2e-3 and 1.5e-4.
"""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

import ddnb
import ddnb.batched as B
import ddnb.precision as P
from ddnb.augment import DSA_STRATEGY, dsa
from ddnb.matching import mean_feature_loss
from ddnb.methods import dm as M
from ddnb.methods import get_method
from ddnb.methods.base import init_synthetic
from ddnb.models import get_model
from ddnb.synset import SyntheticSet
from ddnb.train import evaluate_synset, train_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return ddnb.load_dataset("digits")


@pytest.fixture
def native(monkeypatch):
    """Set whether the CPU counts as having native bf16 (through its flags), and forget earlier notices."""
    monkeypatch.setattr(P, "_told", set())

    def set_native(yes: bool) -> None:
        monkeypatch.setattr(P, "cpu_flags", lambda: {"avx512f", "avx512_bf16"} if yes else {"avx512f", "avx2"})

    return set_native


def test_detection_reads_the_bf16_flags(monkeypatch):
    for flags, expected in (({"avx512f", "avx2"}, False), ({"avx512_bf16"}, True), ({"amx_bf16", "amx_tile"}, True)):
        monkeypatch.setattr(P, "cpu_flags", lambda flags=flags: flags)
        assert P.native_bf16(CPU) is expected
    assert P.native_bf16(torch.device("mps")) is False


def test_auto_is_bf16_where_native_and_fp32_with_one_notice_where_not(native, caplog):
    native(True)
    assert P.resolve_precision("auto", CPU) == "bf16"
    native(False)
    with caplog.at_level(logging.WARNING, logger="ddnb.precision"):
        assert P.resolve_precision("auto", CPU) == "fp32"
        assert P.resolve_precision("auto", CPU) == "fp32"
    notices = [r.getMessage() for r in caplog.records]
    assert len(notices) == 1 and "no avx512_bf16 / amx_bf16 flag" in notices[0] and "fp32" in notices[0]


def test_the_setting_forces_either_way(native):
    for has in (True, False):
        native(has)
        assert P.resolve_precision("bf16", CPU) == "bf16" and P.resolve_precision("fp32", CPU) == "fp32"


@pytest.mark.parametrize("has", [True, False])
def test_autocast_is_on_exactly_when_resolved_to_bf16(native, has):
    native(has)
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    for precision, on in (("auto", has), ("bf16", True), ("fp32", False)):
        with P.autocast(precision, CPU):
            assert torch.is_autocast_enabled("cpu") is on
            assert (a @ b).dtype == (torch.bfloat16 if on else torch.float32)
    assert not torch.is_autocast_enabled("cpu")


def test_bad_values_raise_one_clear_line(digits):
    allowed = "one of 'auto', 'bf16', 'fp32'"
    with pytest.raises(ValueError, match=f"precision must be {allowed}, got 'fp16'"):
        P.resolve_precision("fp16", CPU)
    for method in ("dm", "dance"):
        with pytest.raises(ValueError, match=f"{method} setting precision='half' is not allowed; allowed: {allowed}"):
            ddnb.distill(method, digits, 1, budget="smoke", seed=0, progress=False, precision="half")
    synset = SyntheticSet.from_real(digits, torch.arange(10), "random", seed=0)
    with pytest.raises(ValueError, match=f"precision must be {allowed}, got True"):
        evaluate_synset(synset, digits, seeds=1, epochs=1, progress=False, precision=True)


def test_dm_and_dance_declare_precision_auto_in_every_budget():
    # auto since bf16's accuracy was measured within the spread (results/benchmarks/bf16-fashion_mnist.json)
    for name in ("dm", "dance"):
        method = get_method(name)
        assert {b: s["precision"] for b, s in method.budgets.items()} == dict.fromkeys(method.budgets, "auto")


def test_bf16_real_means_and_dm_loss_close_to_an_fp32_reference_loop(digits):
    torch.manual_seed(0)
    net = get_model("convnet3", 1, 10, 8).requires_grad_(False)
    images, _ = init_synthetic(digits, 3, seed=1)
    g = torch.Generator().manual_seed(5)
    real = M.sample_real(digits, 32, g)
    seeds = M.class_seeds(g, digits.num_classes)
    mean16 = M.real_class_means(net.embed, real, seeds, DSA_STRATEGY, chunk=64, precision="bf16")
    syn = M.syn_by_class(images, 3, digits.num_classes, 1, digits.image_size)
    loss16 = M.dm_loss(mean16, M.syn_class_means(net.embed, syn, seeds, DSA_STRATEGY))
    # reference (main_DM.py's loop, fp32): one class at a time, no autocast
    ref, means = 0.0, []
    with torch.no_grad():
        for c in range(digits.num_classes):
            fr = net.embed(dsa(real[c], DSA_STRATEGY, seed=seeds[c]))
            means.append(fr.mean(0))
            ref = ref + mean_feature_loss(fr, net.embed(dsa(images[c * 3:(c + 1) * 3], DSA_STRATEGY, seed=seeds[c])))
    mean32 = torch.stack(means)
    assert mean16.dtype == torch.float32
    assert 0 < float((mean16 - mean32).norm() / mean32.norm()) < 1e-2  # bf16 ran (not bit-equal), and is close
    assert float(loss16) == pytest.approx(float(ref), rel=2e-2)


@pytest.mark.parametrize("method", ["dm", "dance"])
def test_distillation_records_the_precision_its_real_pass_ran_in(digits, native, method):
    native(False)
    kw = dict(budget="smoke", seed=0, progress=False, iterations=2)
    auto, _ = ddnb.distill(method, digits, 1, precision="auto", **kw)
    forced, _ = ddnb.distill(method, digits, 1, precision="bf16", **kw)
    assert auto.provenance["real_precision"] == "fp32" and forced.provenance["real_precision"] == "bf16"
    assert torch.isfinite(forced.images).all() and not torch.equal(auto.images, forced.images)


def _conv_dtypes(model: torch.nn.Module) -> list[torch.dtype]:
    """A list that fills with the output dtype of the model's first convolution on every call."""
    seen: list[torch.dtype] = []
    model.features[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    return seen


def test_training_under_bf16_keeps_fp32_parameters_and_its_loss_matches_fp32_cross_entropy(digits):
    x, y = digits.x_train[:64], digits.y_train[:64]
    torch.manual_seed(0)
    model = get_model("convnet3", 1, 10, 8, width=16)
    with torch.no_grad():
        expected = float(F.cross_entropy(model(x), y))
    seen = _conv_dtypes(model)
    hist = train_model(model, x, y, epochs=1, batch_size=64, lr=1e-6, precision="bf16")
    assert seen == [torch.bfloat16]
    assert hist["train_loss"][0] == pytest.approx(expected, rel=5e-3) and hist["train_loss"][0] != expected
    assert all(p.dtype == torch.float32 for p in model.parameters())
    seen.clear()
    train_model(model, x, y, epochs=1, batch_size=64, lr=1e-6)
    assert seen == [torch.float32]


def test_evaluation_in_bf16_both_paths_records_it_and_lands_near_fp32(digits, monkeypatch):
    g = torch.Generator().manual_seed(0)
    idx = torch.cat([ix[torch.randperm(len(ix), generator=g)[:10]] for ix in digits.class_indices()])
    synset = SyntheticSet.from_real(digits, idx, "random", seed=0)
    autocast_on: list[bool] = []
    forward = B.stacked_forward

    def watched(*args, **kw):
        autocast_on.append(torch.is_autocast_enabled("cpu"))
        return forward(*args, **kw)

    monkeypatch.setattr(B, "stacked_forward", watched)
    kw = dict(seeds=2, epochs=5, progress=False, model_kw={"width": 16}, lr=0.05)
    fp32 = evaluate_synset(synset, digits, **kw)
    batched = evaluate_synset(synset, digits, precision="bf16", **kw)
    sequential = evaluate_synset(synset, digits, precision="bf16", batched=False, **kw)
    assert autocast_on and not any(autocast_on[:len(autocast_on) // 2]) and all(autocast_on[len(autocast_on) // 2:])
    assert (fp32.precision, batched.precision, sequential.precision) == ("fp32", "bf16", "bf16")
    assert batched.path == "batched" and sequential.path == "sequential"
    assert batched.to_dict()["precision"] == "bf16"
    for res in (batched, sequential):  # a few points: 5 epochs from 100 images, bf16 rounding changes the path
        assert res.per_seed == pytest.approx(fp32.per_seed, abs=5.0)
