"""Tests for ddnb.models: shapes on every input size, instance norm, depth errors, reference sizes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ddnb.models import ConvNet, convnet_spatial_sizes, count_params, get_model, list_models

SIZES = [(1, 8), (1, 28), (3, 32), (3, 64)]  # (channels, image size): digits, MNIST, CIFAR, TinyImageNet


@pytest.mark.parametrize("channels,size", SIZES)
@pytest.mark.parametrize("name", list_models())
def test_embed_and_forward_shapes(name: str, channels: int, size: int) -> None:
    if name == "convnet4" and size == 8:  # the only model too deep for 8x8 digits
        with pytest.raises(ValueError, match="largest depth that fits is 3"):
            get_model(name, channels, 7, size)
        return
    torch.manual_seed(0)
    model = get_model(name, channels, 7, size, **({"width": 16} if name.startswith("convnet") else {}))
    x = torch.randn(2, channels, size, size)
    feats = model.embed(x)
    assert feats.shape == (2, model.feature_dim)
    logits = model(x)
    assert logits.shape == (2, 7)
    torch.testing.assert_close(logits, model.classifier(feats))


def test_instance_norm_matches_torch_instance_norm() -> None:
    torch.manual_seed(0)
    model = get_model("convnet3", 3, 10, 32, width=8)
    norm = model.features[1]
    assert isinstance(norm, torch.nn.GroupNorm) and norm.num_groups == norm.num_channels == 8
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    h = torch.randn(4, 8, 6, 5) * 3 + 1
    expected = F.instance_norm(h, weight=norm.weight, bias=norm.bias, eps=norm.eps)
    torch.testing.assert_close(norm(h), expected)


def test_too_deep_convnet_on_digits_says_why() -> None:
    with pytest.raises(ValueError) as err:
        get_model("convnet", 1, 10, 8, depth=5)
    message = str(err.value)
    assert "depth 5" in message and "8x8" in message and "largest depth that fits is 3" in message


def test_convnet_depth_reaching_zero_without_padding_trick() -> None:
    # 3-channel 8x8: 8 -> 4 -> 2 -> 1 -> 0, so depth 3 fits and depth 4 does not.
    assert convnet_spatial_sizes(3, 8, 4) == [4, 2, 1]
    get_model("convnet3", 3, 10, 8)
    with pytest.raises(ValueError, match="largest depth that fits is 3"):
        get_model("convnet4", 3, 10, 8)


def test_reference_feature_sizes() -> None:
    # Reference ConvNet: 1-channel 28x28 pads the first conv by 3 -> 32 -> 16 -> 8 -> 4.
    assert get_model("convnet3", 1, 10, 28).feature_dim == 2048
    assert get_model("convnet3", 3, 10, 32).feature_dim == 128 * 4 * 4
    assert get_model("convnet4", 3, 10, 64).feature_dim == 128 * 4 * 4
    first_conv = get_model("convnet3", 1, 10, 28).features[0]
    assert first_conv.padding == (3, 3) and first_conv.kernel_size == (3, 3)


def test_convnet_options_build_the_asked_layers() -> None:
    model = get_model("convnet", 3, 10, 32, depth=2, width=16, norm="batchnorm", act="leakyrelu", pool="maxpool")
    kinds = [type(m).__name__ for m in model.features]
    assert kinds == ["Conv2d", "BatchNorm2d", "LeakyReLU", "MaxPool2d"] * 2
    flat = get_model("convnet", 3, 10, 8, depth=2, width=4, norm="none", act="sigmoid", pool="none")
    assert flat.feature_dim == 4 * 8 * 8
    assert [type(m).__name__ for m in flat.features] == ["Conv2d", "Sigmoid"] * 2


def test_resnet_norm_variants() -> None:
    inorm = get_model("resnet10", 3, 10, 32)
    bnorm = get_model("resnet18_bn", 3, 10, 32)
    assert isinstance(inorm.bn1, torch.nn.GroupNorm) and inorm.bn1.num_groups == 64
    assert isinstance(bnorm.bn1, torch.nn.BatchNorm2d)
    assert inorm.conv1.stride == (1, 1) and inorm.conv1.kernel_size == (3, 3)


def test_count_params_by_hand() -> None:
    model = get_model("mlp", 1, 10, 8, hidden=5)
    expected = (64 * 5 + 5) + (5 * 5 + 5) + (5 * 10 + 10)
    assert count_params(model) == expected
    model.fc_1.weight.requires_grad_(False)
    assert count_params(model, trainable_only=True) == expected - 64 * 5


def test_channels_last_input() -> None:
    model = get_model("convnet3", 1, 10, 28, width=8)
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(model(x.to(memory_format=torch.channels_last)), model(x))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: get_model("vgg11", 3, 10, 32), "known models: convnet"),
        (lambda: get_model("convnet", 3, 10, 32, norm="layernorm"), "allowed: instancenorm"),
        (lambda: get_model("convnet", 3, 10, 32, act="gelu"), "allowed: relu"),
        (lambda: get_model("convnet", 3, 10, 32, pool="stride"), "allowed: avgpool"),
        (lambda: get_model("convnet3", 3, 10, 32, depth=4), "does not take depth"),
        (lambda: get_model("resnet18", 3, 10, 32, width=3), "does not take width"),
        (lambda: ConvNet(0, 10, 32), "in_channels must be an int >= 1, got 0"),
    ],
)
def test_bad_input_is_named(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_avgpool_as_depthwise_conv_equals_torch_avg_pool_forward_and_backward(layout) -> None:
    from torch.func import functional_call, stack_module_state, vmap

    from ddnb.models import AvgPool2x2

    x = torch.randn(4, 6, 9, 7, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_(True)
    ours, = torch.autograd.grad((AvgPool2x2()(x) ** 2).sum(), x)  # odd sizes: floor, as nn.AvgPool2d
    ref, = torch.autograd.grad((F.avg_pool2d(x, 2, 2) ** 2).sum(), x)
    with torch.inference_mode():  # without autograd (the convolution on contiguous input)
        assert torch.allclose(AvgPool2x2()(x), F.avg_pool2d(x, 2, 2), atol=1e-12)
    assert torch.allclose(ours, ref, atol=1e-12)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # contiguous: a bf16 convolution
        y = AvgPool2x2()(x.float())
    assert torch.allclose(y.float(), F.avg_pool2d(x.float().bfloat16().float(), 2, 2), atol=1e-2)
    nets = [get_model("convnet3", 1, 10, 28, width=8) for _ in range(3)]  # the batched-training path: vmap
    params, buffers = stack_module_state(nets)
    xb = torch.randn(3, 2, 1, 28, 28)
    out = vmap(lambda p, b, xi: functional_call(nets[0], (p, b), (xi,)))(params, buffers, xb)
    assert torch.allclose(out, torch.stack([n(xi) for n, xi in zip(nets, xb)]), atol=1e-5)
    assert [type(m).__name__ for m in nets[0].features][:4] == ["Conv2d", "GroupNorm", "ReLU", "AvgPool2x2"]
