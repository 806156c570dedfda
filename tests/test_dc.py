"""DC / DSA: the batched-by-class loss against a per-class reference loop written out here, the
reference loop schedule, and short runs on digits (images move, factor 2, exact resume)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ddnb.augment import dsa
from ddnb.data import load_dataset
from ddnb.methods import distill, list_methods
from ddnb.methods.base import init_synthetic
from ddnb.methods.dc import dc_loss, freeze_batchnorm, get_loops
from ddnb.models import get_model

FAST = dict(arch="mlp", iterations=2, outer_loop=2, inner_loop=1, batch_real=16)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _reference_layer_distance(gwr: torch.Tensor, gws: torch.Tensor) -> torch.Tensor:
    """distance_wb of the DC reference: 0 for 1-D parameters, else sum over output rows of 1 - cos."""
    if gwr.dim() == 1:
        return torch.zeros(())
    gwr, gws = gwr.reshape(gwr.shape[0], -1), gws.reshape(gws.shape[0], -1)
    return torch.sum(1 - torch.sum(gwr * gws, -1) / (gwr.norm(dim=-1) * gws.norm(dim=-1) + 1e-6))


def _reference_dc_loss(net, real, syn, seeds=None):
    """The reference main.py inner block: per class, real grads detached, synthetic grads with graph."""
    params = list(net.parameters())
    loss = torch.zeros(())
    for c in range(len(real)):
        img_real, img_syn = real[c], syn[c]
        if seeds is not None:
            img_real, img_syn = dsa(img_real, seed=seeds[c]), dsa(img_syn, seed=seeds[c])
        lab_real = torch.ones(img_real.shape[0], dtype=torch.long) * c
        lab_syn = torch.ones(img_syn.shape[0], dtype=torch.long) * c
        gw_real = [g.detach().clone() for g in torch.autograd.grad(F.cross_entropy(net(img_real), lab_real), params)]
        gw_syn = torch.autograd.grad(F.cross_entropy(net(img_syn), lab_syn), params, create_graph=True)
        for gr, gs in zip(gw_real, gw_syn):
            loss = loss + _reference_layer_distance(gr, gs)
    return loss


@pytest.mark.parametrize("with_dsa", [False, True])
def test_dc_loss_equals_reference_loop(with_dsa: bool) -> None:
    torch.manual_seed(0)
    net = get_model("convnet", 1, 3, 8, depth=1, width=4)
    real = [torch.randn(6, 1, 8, 8) for _ in range(3)]
    syn = [torch.randn(2, 1, 8, 8, requires_grad=True) for _ in range(3)]
    seeds = [11, 22, 33] if with_dsa else None
    ours = dc_loss(net, real, syn, "ours", "color_crop_cutout_flip_scale_rotate" if with_dsa else None, seeds)
    ref = _reference_dc_loss(net, real, syn, seeds)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    g_ours = torch.autograd.grad(ours, syn)
    g_ref = torch.autograd.grad(ref, syn)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        assert a.abs().sum() > 0


def test_dc_loss_needs_seeds_with_dsa() -> None:
    net = get_model("mlp", 1, 2, 8)
    x = [torch.randn(2, 1, 8, 8)] * 2
    with pytest.raises(ValueError, match="seed"):
        dc_loss(net, x, x, strategy="flip", seeds=None)


def test_get_loops_reference_table_and_overrides() -> None:
    assert get_loops(1) == (1, 1)
    assert get_loops(10) == (10, 50)
    assert get_loops(50) == (50, 10)
    assert get_loops(7, 3, 4) == (3, 4)
    assert get_loops(10, outer_loop=2) == (2, 50)
    with pytest.raises(ValueError, match="ipc=7"):
        get_loops(7)
    with pytest.raises(ValueError, match=r"setting outer_loop=0 is not allowed; allowed: None or an int >= 1"):
        distill("dc", load_dataset("digits"), 1, budget="smoke", outer_loop=0)


def test_freeze_batchnorm_sets_and_freezes_statistics(digits) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten(),
                              torch.nn.Linear(2 * 6 * 6, 10))
    freeze_batchnorm(net, digits, torch.Generator().manual_seed(0))
    bn = net[1]
    assert not bn.training and net[0].training
    assert bn.running_mean.abs().sum() > 0  # moved from its zero init by the real batch
    frozen = bn.running_mean.clone()
    net(torch.randn(4, 1, 8, 8))  # eval-mode BatchNorm: statistics stay put
    torch.testing.assert_close(bn.running_mean, frozen)


def test_registered_with_budgets() -> None:
    methods = {m["name"]: m for m in list_methods()}
    for name in ("dc", "dsa"):
        assert methods[name]["kind"] == "distill"
        assert methods[name]["budgets"] == ["cpu", "paper", "smoke"]


@pytest.mark.parametrize("method", ["dc", "dsa"])
def test_smoke_run_moves_images(digits, method: str) -> None:
    syn, hist = distill(method, digits, 1, budget="smoke", seed=0, device="cpu", progress=False,
                        **{**FAST, "arch": "convnet3", "iterations": 1})
    init, _ = init_synthetic(digits, 1, seed=0, init="real")
    assert syn.images.shape == init.shape and syn.labels.tolist() == list(range(10))
    assert (syn.images - init).abs().max() > 1e-4
    assert hist.iterations == 1 and all(math.isfinite(v) for v in hist.loss)
    assert syn.provenance["method"] == method


def test_factor_2(digits) -> None:
    syn, hist = distill("dc", digits, 1, budget="smoke", seed=0, device="cpu", progress=False, factor=2, **FAST)
    images, labels = syn.decoded()
    assert syn.factor == 2 and syn.images.shape == (10, 1, 8, 8)
    assert images.shape == (40, 1, 8, 8) and sorted(labels.tolist()) == sorted(list(range(10)) * 4)
    init, _ = init_synthetic(digits, 1, seed=0, init="real", factor=2)
    assert (syn.images - init).abs().max() > 1e-4


def test_resume_is_exact(digits, tmp_path) -> None:
    kw = dict(budget="smoke", seed=3, device="cpu", progress=False, **{**FAST, "iterations": 3})
    straight, _ = distill("dsa", digits, 1, **kw)
    distill("dsa", digits, 1, out_dir=tmp_path, checkpoint_every=1, **{**kw, "iterations": 3})
    # drop the last checkpoint: the resumed run must redo iteration 3 exactly
    (tmp_path / "ckpt_00000003.pt").unlink()
    resumed, hist = distill("dsa", digits, 1, out_dir=tmp_path, resume=True, checkpoint_every=1, **kw)
    assert hist.iterations == 3
    torch.testing.assert_close(resumed.images, straight.images)


def test_bad_settings(digits) -> None:
    with pytest.raises(ValueError, match="lr_img"):
        distill("dc", digits, 1, budget="smoke", lr_img=0.0)
    with pytest.raises(ValueError, match="metric"):
        distill("dc", digits, 1, budget="smoke", metric="l2")
    with pytest.raises(ValueError, match="ipc=3"):
        distill("dc", digits, 3, budget="smoke", outer_loop=None, inner_loop=None)
