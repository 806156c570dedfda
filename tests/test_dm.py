"""DM: batched loss vs the reference per-class loop, 1-channel channels_last DSA, learning, resume, NaN."""
from __future__ import annotations

import pytest
import torch

import ddnb
from ddnb.augment import DSA_STRATEGY, dsa
from ddnb.matching import mean_feature_loss
from ddnb.methods import dm as M
from ddnb.methods.base import init_synthetic
from ddnb.models import get_model


@pytest.fixture(scope="module")
def digits():
    return ddnb.load_dataset("digits")


def _net(data, seed):
    torch.manual_seed(seed)
    c, h, _ = data.image_shape
    return get_model("convnet3", c, data.num_classes, h).requires_grad_(False)


def test_batched_loss_and_grad_equal_reference_loop(digits):
    net = _net(digits, 0)
    images, labels = init_synthetic(digits, 3, seed=1)
    g = torch.Generator().manual_seed(5)
    real = M.sample_real(digits, 16, g)
    seeds = M.class_seeds(g, digits.num_classes)
    # ddnb: real features in inference mode, chunks of 3 classes, all synthetic classes in one channels_last pass
    x = images.clone().requires_grad_(True)
    syn = M.syn_by_class(x, 3, digits.num_classes, 1, digits.image_size)
    loss = M.dm_loss(M.real_class_means(net.embed, real, seeds, DSA_STRATEGY, chunk=48),
                     M.syn_class_means(net.embed, syn, seeds, DSA_STRATEGY))
    loss.backward()
    # reference main_DM.py: one class at a time, real features with autograd then detached
    y = images.clone().requires_grad_(True)
    ref = 0.0
    for c in range(digits.num_classes):
        fr = net.embed(dsa(real[c], DSA_STRATEGY, seed=seeds[c])).detach()
        fs = net.embed(dsa(y[c * 3:(c + 1) * 3], DSA_STRATEGY, seed=seeds[c]))
        ref = ref + mean_feature_loss(fr, fs)
    ref.backward()
    assert torch.allclose(loss, ref, rtol=1e-4)
    assert torch.allclose(x.grad, y.grad, rtol=1e-3, atol=1e-6 * float(y.grad.abs().max()))


def test_one_channel_channels_last_with_dsa_crop(digits):
    syn, hist = ddnb.distill("dm", digits, 2, budget="smoke", seed=0, progress=False, iterations=3,
                             dsa_strategy="crop", channels_last=True)
    assert syn.images.shape == (20, 1, 8, 8) and torch.isfinite(syn.images).all() and len(hist.loss) == 3
    assert syn.provenance["method"] == "dm" and syn.provenance["params"]["dsa_strategy"] == "crop"


def _objective(data, images, labels, nets):
    """DM objective without augmentation: all real images of each class, averaged over fixed networks."""
    real = [data.real_by_class(c) for c in range(data.num_classes)]
    syn = M.syn_by_class(images, images.shape[0] // data.num_classes, data.num_classes, 1, data.image_size)
    with torch.no_grad():
        return sum(float(M.dm_loss(M.real_class_means(n.embed, real, [0] * 10, None, 4096),
                                   M.syn_class_means(n.embed, syn, [0] * 10, None))) for n in nets) / len(nets)


def test_smoke_budget_moves_images_and_lowers_matching_loss(digits):
    syn, hist = ddnb.distill("dm", digits, 2, budget="smoke", seed=0, progress=False)
    start, labels = init_synthetic(digits, 2, seed=0)
    assert len(hist.loss) == 20 and not torch.equal(syn.images, start)
    nets = [_net(digits, 100 + i) for i in range(4)]  # networks the run never saw
    assert _objective(digits, syn.images, labels, nets) < 0.8 * _objective(digits, start, labels, nets)


def test_factored_images_run(digits):
    syn, _ = ddnb.distill("dm", digits, 1, budget="smoke", seed=0, progress=False, iterations=2, factor=2)
    assert syn.factor == 2 and syn.images.shape == (10, 1, 8, 8)
    assert syn.decoded()[0].shape == (40, 1, 8, 8)


def test_resume_is_exact(digits, tmp_path):
    kw = dict(budget="smoke", seed=1, progress=False, batch_real=8)
    full, _ = ddnb.distill("dm", digits, 1, iterations=6, **kw)
    ddnb.distill("dm", digits, 1, iterations=6, out_dir=tmp_path, checkpoint_every=3, **kw)
    (tmp_path / "ckpt_00000006.pt").unlink()  # 'crash' after iteration 3
    resumed, hist = ddnb.distill("dm", digits, 1, iterations=6, out_dir=tmp_path, resume=True, **kw)
    assert torch.equal(full.images, resumed.images) and len(hist.loss) == 6


def test_nan_stops_with_iteration(digits):
    with pytest.raises(FloatingPointError, match=r"loss is (nan|inf) at iteration 1; last good checkpoint: none"):
        ddnb.distill("dm", digits, 1, budget="smoke", seed=0, progress=False, iterations=3, batch_real=8,
                     lr_img=1e38)


def test_unknown_setting_lists_allowed(digits):
    with pytest.raises(ValueError, match=r"unknown setting\(s\) 'lr'.*allowed: arch, batch_real"):
        ddnb.distill("dm", digits, 1, budget="smoke", lr=0.1)
    with pytest.raises(ValueError, match="unknown budget 'fast'.*allowed: smoke, cpu, paper"):
        ddnb.distill("dm", digits, 1, budget="fast")
    with pytest.raises(ValueError, match=r"dm setting batch_real=0 is not allowed; allowed: an int >= 1"):
        ddnb.distill("dm", digits, 1, budget="smoke", batch_real=0)


def test_registered_with_paper_budget():
    info = next(m for m in ddnb.list_methods() if m["name"] == "dm")
    assert info["kind"] == "distill" and info["budgets"] == ["cpu", "paper", "smoke"]
    assert M.BUDGETS["paper"]["iterations"] == 20_000 and M.BUDGETS["paper"]["lr_img"] == 1.0
