"""The networks dataset distillation trains and matches on: ConvNet family, small ResNets, MLP.

Follows the DC/DM/MTT reference code (VICO-UoE/DatasetCondensation `networks.py`):

* ConvNet: `depth` blocks of [conv 3x3 -> norm -> act -> pool], then one Linear classifier.
  Width 128, instance norm (`GroupNorm(C, C, affine=True)`), ReLU and 2x2 average pooling by
  default. As in the reference, the first conv uses padding 3 when the input has one channel,
  so 28x28 MNIST-like images behave like 32x32 ones (28 -> 32 -> 16 -> 8 -> 4; feature 2048).
* ResNet-10/18 for small images: BasicBlock, 3x3 stem conv with stride 1 and no max-pool, as
  the DC reference ResNet; instance norm by default ("resnet10", "resnet18") or BatchNorm
  ("resnet10_bn", "resnet18_bn"). Global average pooling (the reference's fixed 4x4 pool is only
  right for 32 px), so any image size from 8 px up works.
* MLP: flatten -> 128 -> 128 -> classifier, ReLU.

Every model has `embed(x)` -> (N, D) features before the classifier, `forward(x) =
classifier(embed(x))`, and an attribute `feature_dim` (= D).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ddnb.settings import Int, require

NORMS = ("instancenorm", "batchnorm", "none")
ACTIVATIONS = ("relu", "leakyrelu", "sigmoid")
POOLINGS = ("avgpool", "maxpool", "none")
CONVNET_KWARGS = ("depth", "width", "norm", "act", "pool")


def _check_choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    """Raise ValueError naming `value` and the allowed choices when `value` is not one of them."""
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; allowed: {', '.join(allowed)}")


def _check_positive_int(what: str, value: Any) -> None:
    """Raise ValueError unless `value` is a positive int (bools excluded)."""
    require(what, value, Int(1))


def norm_layer(norm: str, channels: int) -> nn.Module:
    """The normalization layer of the DD reference code for `channels` feature maps."""
    _check_choice("norm", norm, NORMS)
    if norm == "instancenorm":
        return nn.GroupNorm(channels, channels, affine=True)
    if norm == "batchnorm":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


def activation_layer(act: str) -> nn.Module:
    """The activation of the DD reference code (leaky ReLU slope 0.01)."""
    _check_choice("act", act, ACTIVATIONS)
    if act == "relu":
        return nn.ReLU(inplace=True)
    if act == "leakyrelu":
        return nn.LeakyReLU(negative_slope=0.01)
    return nn.Sigmoid()


class AvgPool2x2(nn.Module):
    """nn.AvgPool2d(2, 2), computed without autograd on contiguous (NCHW) input as a depthwise 2x2 convolution with
    weights 1/4: the same numbers, and on CPU oneDNN's convolution is faster there than ATen's average pooling
    (DM's real-image pass, test-set passes). With autograd or on channels_last input, where the convolution is
    slower (bf16 backward above all), torch's pooling (benchmarks/bench_pool.py). No parameters: state dicts are
    unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (torch.is_grad_enabled() and x.requires_grad) or not x.is_contiguous():
            return F.avg_pool2d(x, 2, 2)
        c = x.shape[1]  # under autocast conv2d casts the weight with the input (1/4 is exact in bf16)
        return F.conv2d(x, torch.full((c, 1, 2, 2), 0.25, dtype=x.dtype, device=x.device), stride=2, groups=c)


def pooling_layer(pool: str) -> nn.Module:
    """The 2x2, stride-2 pooling of the DD reference code, or Identity for "none"."""
    _check_choice("pool", pool, POOLINGS)
    if pool == "avgpool":
        return AvgPool2x2()
    if pool == "maxpool":
        return nn.MaxPool2d(kernel_size=2, stride=2)
    return nn.Identity()


def _first_padding(in_channels: int) -> int:
    """Padding of the first ConvNet conv: 3 for one-channel input (reference), else 1."""
    return 3 if in_channels == 1 else 1


def convnet_spatial_sizes(in_channels: int, image_size: int, depth: int, pool: str = "avgpool") -> list[int]:
    """Feature-map side after each ConvNet block, so a too-deep net is caught before it is built."""
    sizes = []
    size = image_size + 2 * _first_padding(in_channels) - 2
    for _ in range(depth):
        if pool != "none":
            size //= 2
        if size < 1:
            break
        sizes.append(size)  # later convs use padding 1 and keep the size
    return sizes


def _check_depth_fits(in_channels: int, image_size: int, depth: int, pool: str) -> int:
    """Return the final feature side, or raise ValueError naming depth, size and the deepest fit."""
    sizes = convnet_spatial_sizes(in_channels, image_size, depth, pool)
    if len(sizes) < depth:
        raise ValueError(
            f"ConvNet depth {depth} does not fit {image_size}x{image_size} images with {in_channels} "
            f"channel(s) and pool {pool!r}: each pooling halves the feature map and it reaches 0; "
            f"the largest depth that fits is {len(sizes)}"
        )
    return sizes[-1]


class ConvNet(nn.Module):
    """The DD ConvNet: `depth` x [conv3x3, norm, act, pool] then Linear(feature_dim, classes)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int,
        depth: int = 3,
        width: int = 128,
        norm: str = "instancenorm",
        act: str = "relu",
        pool: str = "avgpool",
    ) -> None:
        super().__init__()
        for what, value in (("in_channels", in_channels), ("num_classes", num_classes),
                            ("image_size", image_size), ("depth", depth), ("width", width)):
            _check_positive_int(what, value)
        for what, value, allowed in (("norm", norm, NORMS), ("act", act, ACTIVATIONS), ("pool", pool, POOLINGS)):
            _check_choice(what, value, allowed)
        side = _check_depth_fits(in_channels, image_size, depth, pool)
        self.features = self._make_layers(in_channels, depth, width, norm, act, pool)
        self.feature_dim = width * side * side
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    @staticmethod
    def _make_layers(in_channels: int, depth: int, width: int, norm: str, act: str, pool: str) -> nn.Sequential:
        """Stack the conv blocks; the first conv pads by 3 for one-channel input as the reference."""
        layers: list[nn.Module] = []
        channels = in_channels
        for d in range(depth):
            padding = _first_padding(in_channels) if d == 0 else 1
            layers += [nn.Conv2d(channels, width, kernel_size=3, padding=padding)]
            if norm != "none":
                layers += [norm_layer(norm, width)]
            layers += [activation_layer(act)]
            if pool != "none":
                layers += [pooling_layer(pool)]
            channels = width
        return nn.Sequential(*layers)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened conv features (N, feature_dim), the input of the classifier."""
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N, num_classes)."""
        return self.classifier(self.embed(x))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with norm, identity or 1x1-conv shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, norm: str = "instancenorm") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = norm_layer(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = norm_layer(norm, planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                norm_layer(norm, planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """relu(bn2(conv2(relu(bn1(conv1 x)))) + shortcut(x))."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet for small images (DC reference): 3x3 stride-1 stem, no max-pool, 4 stages, GAP."""

    def __init__(self, blocks: tuple[int, int, int, int], in_channels: int, num_classes: int,
                 norm: str = "instancenorm") -> None:
        super().__init__()
        _check_positive_int("in_channels", in_channels)
        _check_positive_int("num_classes", num_classes)
        _check_choice("norm", norm, NORMS)
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = norm_layer(norm, 64)
        stages = []
        in_planes = 64
        for planes, n_blocks, stride in zip((64, 128, 256, 512), blocks, (1, 2, 2, 2)):
            layer = []
            for s in [stride] + [1] * (n_blocks - 1):
                layer.append(BasicBlock(in_planes, planes, s, norm))
                in_planes = planes
            stages.append(nn.Sequential(*layer))
        self.layers = nn.Sequential(*stages)
        self.feature_dim = 512 * BasicBlock.expansion
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled last-stage features (N, 512)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N, num_classes)."""
        return self.classifier(self.embed(x))


class MLP(nn.Module):
    """The reference MLP: flatten -> Linear(., 128) -> ReLU -> Linear(128, 128) -> ReLU -> Linear."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int, hidden: int = 128) -> None:
        super().__init__()
        for what, value in (("in_channels", in_channels), ("num_classes", num_classes),
                            ("image_size", image_size), ("hidden", hidden)):
            _check_positive_int(what, value)
        self.fc_1 = nn.Linear(in_channels * image_size * image_size, hidden)
        self.fc_2 = nn.Linear(hidden, hidden)
        self.feature_dim = hidden
        self.classifier = nn.Linear(hidden, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Second hidden layer's activations (N, hidden)."""
        out = F.relu(self.fc_1(x.flatten(1)))
        return F.relu(self.fc_2(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N, num_classes)."""
        return self.classifier(self.embed(x))


def _convnet(depth: int | None) -> Callable[..., nn.Module]:
    """Builder for the ConvNet family; `depth` fixed for presets, free (default 3) for "convnet"."""
    allowed = CONVNET_KWARGS if depth is None else tuple(k for k in CONVNET_KWARGS if k != "depth")

    def build(in_channels: int, num_classes: int, image_size: int, **kw: Any) -> nn.Module:
        _check_kwargs("convnet" if depth is None else f"convnet{depth}", kw, allowed)
        fixed = {} if depth is None else {"depth": depth}
        return ConvNet(in_channels, num_classes, image_size, **fixed, **kw)

    return build


def _resnet(blocks: tuple[int, int, int, int], norm: str) -> Callable[..., nn.Module]:
    """Builder for a small-image ResNet with the given blocks per stage and norm."""

    def build(in_channels: int, num_classes: int, image_size: int, **kw: Any) -> nn.Module:
        _check_kwargs("resnet", kw, ())
        _check_positive_int("image_size", image_size)
        return ResNet(blocks, in_channels, num_classes, norm=norm)

    return build


def _mlp(in_channels: int, num_classes: int, image_size: int, **kw: Any) -> nn.Module:
    """Builder for the MLP (keyword: hidden)."""
    _check_kwargs("mlp", kw, ("hidden",))
    return MLP(in_channels, num_classes, image_size, **kw)


def _check_kwargs(name: str, kw: dict[str, Any], allowed: tuple[str, ...]) -> None:
    """Raise ValueError naming the keyword arguments model `name` does not take."""
    bad = sorted(set(kw) - set(allowed))
    if bad:
        raise ValueError(
            f"model {name!r} does not take {', '.join(bad)}; allowed keywords: {', '.join(allowed) or 'none'}"
        )


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "convnet": _convnet(None),
    "convnet3": _convnet(3),
    "convnet4": _convnet(4),
    "resnet10": _resnet((1, 1, 1, 1), "instancenorm"),
    "resnet18": _resnet((2, 2, 2, 2), "instancenorm"),
    "resnet10_bn": _resnet((1, 1, 1, 1), "batchnorm"),
    "resnet18_bn": _resnet((2, 2, 2, 2), "batchnorm"),
    "mlp": _mlp,
}


def list_models() -> list[str]:
    """Names `get_model` accepts."""
    return list(_BUILDERS)


def get_model(name: str, in_channels: int, num_classes: int, image_size: int, **kw: Any) -> nn.Module:
    """Build a model by name for images (in_channels, image_size, image_size) and `num_classes`."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(_BUILDERS)}")
    return _BUILDERS[name](in_channels, num_classes, image_size, **kw)


def seeded_model(name: str, dataset: Any, seed: int, device: Any = "cpu", **kw: Any) -> nn.Module:
    """`get_model(name, ...)` for `dataset`, initialized from `seed` on `device` without touching the global RNG."""
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        return get_model(name, dataset.channels, dataset.num_classes, dataset.image_size, **kw).to(dev)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of `model` (only those with requires_grad when trainable_only)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
