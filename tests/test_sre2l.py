"""SRe2L / DWA: the BN-statistics loss against statistics computed by hand, the per-step augmentation,
DWA's perturbation, and short runs through ddnb.distill (the registry contract runs in test_method_contract)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ddnb
from ddnb.matching import bn_matching_loss
from ddnb.methods.sre2l import jitter_flip, perturb_teacher
from ddnb.models import ConvNet


def _bn_net(seed=0):
    torch.manual_seed(seed)
    net = ConvNet(1, 10, 8, depth=2, width=4, norm="batchnorm")
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _by_hand(net, x, var_weight, first):
    """Walk the layers without hooks; per BN layer the channel mean / biased variance of its input."""
    h, total, n_bn = x, 0.0, 0
    for layer in net.features:
        if isinstance(layer, nn.BatchNorm2d):
            flat = h.transpose(0, 1).reshape(h.shape[1], -1).double()
            mean = flat.sum(1) / flat.shape[1]
            var = ((flat - mean[:, None]) ** 2).sum(1) / flat.shape[1]
            term = ((mean - layer.running_mean.double()) ** 2).sum().sqrt() \
                + var_weight * ((var - layer.running_var.double()) ** 2).sum().sqrt()
            total += (first if n_bn == 0 else 1.0) * float(term)
            n_bn += 1
        h = layer(h)
    return total, net.classifier(h.flatten(1)), n_bn


@pytest.mark.parametrize("var_weight,first", [(1.0, 1.0), (2.5, 10.0)])
def test_bn_loss_matches_statistics_computed_by_hand(var_weight, first):
    net = _bn_net()
    x = torch.randn(6, 1, 8, 8)
    loss, logits = bn_matching_loss(net, x, var_weight=var_weight, first_multiplier=first)
    with torch.no_grad():
        expected, expected_logits, n_bn = _by_hand(net, x, var_weight, first)
    assert n_bn == 2
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert torch.allclose(logits, expected_logits, atol=1e-6)


def test_bn_loss_is_zero_at_the_running_statistics_and_differentiable_in_x():
    net = _bn_net()
    x = torch.randn(6, 1, 8, 8, requires_grad=True)
    loss, _ = bn_matching_loss(net, x)
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    bn = net.features[1]
    xs = torch.randn(8, 1, 8, 8)
    with torch.no_grad():  # set the first layer's running stats to the batch's own: its term vanishes
        h = net.features[0](xs)
        bn.running_mean.copy_(h.mean((0, 2, 3)))
        bn.running_var.copy_(h.var((0, 2, 3), unbiased=False))
    full, _ = bn_matching_loss(net, xs, first_multiplier=10.0)
    rest, _ = bn_matching_loss(net, xs, first_multiplier=0.0)
    assert float(full) == pytest.approx(float(rest), abs=1e-4)


def test_bn_loss_refuses_a_model_without_batchnorm():
    with pytest.raises(ValueError, match="BatchNorm"):
        bn_matching_loss(ConvNet(1, 10, 8, depth=2, width=4), torch.randn(2, 1, 8, 8))


def test_jitter_flip_is_a_roll_and_a_flip():
    x = torch.arange(2 * 1 * 4 * 4.0).reshape(2, 1, 4, 4)
    assert torch.equal(jitter_flip(x, 0, False, torch.Generator().manual_seed(0)), x)
    out = jitter_flip(x, 1, True, torch.Generator().manual_seed(3))
    candidates = [torch.roll(x, (a, b), (2, 3)) for a in (-1, 0, 1) for b in (-1, 0, 1)]
    candidates += [torch.flip(c, (3,)) for c in candidates]
    assert any(torch.equal(out, c) for c in candidates)


def test_perturbation_has_length_rho_and_lowers_the_real_loss():
    net = _bn_net()
    x, y = torch.randn(20, 1, 8, 8), torch.randint(0, 10, (20,))
    moved = perturb_teacher(net, x, y, rho=0.05, steps=3)
    delta = torch.cat([(a - b).flatten() for a, b in zip(moved.parameters(), net.parameters())])
    assert 0.04 < float(delta.norm()) <= 0.05 + 1e-6
    with torch.no_grad():
        assert F.cross_entropy(moved(x), y) < F.cross_entropy(net(x), y)
    assert not any(p.requires_grad for p in moved.parameters())


@pytest.mark.parametrize("method", ["sre2l", "dwa"])
def test_short_run_lowers_the_loss_and_keeps_pixels_valid(method):
    digits = ddnb.load_dataset("digits")
    syn, hist = ddnb.distill(method, digits, 2, budget="smoke", progress=False, iterations=15)
    assert syn.images.shape == (20, 1, 8, 8) and syn.labels.tolist() == sorted(list(range(10)) * 2)
    assert hist.loss[-1] < hist.loss[0]
    x01 = digits.denormalize(syn.images)
    assert float(x01.min()) >= -1e-5 and float(x01.max()) <= 1 + 1e-5
    assert syn.provenance["teacher"]["name"] == "convnet3_bn"
