"""Train several models, each with its own seed, on one small set in one batched step per batch.

`train_models(models, x, y, seeds=...)` gives each model what `train_model(model, x, y, seed=s)` would:
its init (the model as passed), its batch order and CutMix draws from a CPU generator seeded s, and its
DSA draws from the global-RNG stream that `torch.manual_seed(s)` starts (that stream's state is switched
in around the model's own DSA call). The models' parameters are stacked (`torch.func.stack_module_state`)
and run as one grouped network (`stacked_forward`): linear layers as one batched matmul over the
models, the convolutional blocks per model on its slices of the stacked tensors (oneDNN's grouped
convolution, which `torch.func.vmap` lowers to, ran 1.5-2.5x slower than separate ones on the CPU
measured, and ConvNet-3's convolutions already run near the CPU's FMA peak). One backward and one
optimizer step serve all models; SGD and AdamW act elementwise, so each slice follows its model's
sequential run up to float rounding. Supported: the ConvNet family without BatchNorm and the MLP
(see `batch_unsupported`).
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn
import torch.nn.functional as F
from torch.func import stack_module_state
from tqdm.auto import tqdm

from ddnb.precision import autocast, resolve_precision
from ddnb.schedules import IDC_MILESTONES, make_optimizer
from ddnb.train import RegimeLoss, teacher_in_eval, training_setup
from ddnb.utils import resolve_device, to_device


def batch_unsupported(model: nn.Module) -> str | None:
    """Why `model` cannot train in the batched path, or None when it can (ConvNet without BatchNorm, MLP)."""
    from ddnb.models import MLP, ConvNet

    if not isinstance(model, (ConvNet, MLP)):
        return f"the batched path covers the ConvNet family and the MLP, not {type(model).__name__}"
    if any(True for _ in model.buffers()):
        return "it has BatchNorm (per-model running statistics)"
    return None


def stacked_forward(model: nn.Module, params: dict[str, Tensor], xs: Sequence[Tensor]) -> Tensor:
    """Logits (K, B, classes) of K copies of `model` (a ConvNet or MLP) whose parameters are stacked along
    dim 0 in `params` (named as model.named_parameters()), copy k on the batch xs[k]."""
    from ddnb.models import ConvNet

    own = [dict(zip(params, p)) for p in zip(*(t.unbind() for t in params.values()))]  # one unbind per tensor
    if isinstance(model, ConvNet):
        h = torch.stack([_conv_features(model.features, p, x) for p, x in zip(own, xs)])
        return _linear(h, params, "classifier")
    h = torch.stack(list(xs)).flatten(2)
    h = F.relu(_linear(F.relu(_linear(h, params, "fc_1")), params, "fc_2"))
    return _linear(h, params, "classifier")


def _conv_features(features: nn.Sequential, p: dict[str, Tensor], x: Tensor) -> Tensor:
    """One model's flattened ConvNet features, with its parameters `p` (slices of the stacked ones)."""
    for i, layer in enumerate(features):
        if isinstance(layer, nn.Conv2d):
            x = F.conv2d(x, p[f"features.{i}.weight"], p[f"features.{i}.bias"], layer.stride, layer.padding)
        elif isinstance(layer, nn.GroupNorm):
            x = F.group_norm(x, layer.num_groups, p[f"features.{i}.weight"], p[f"features.{i}.bias"], layer.eps)
        else:
            x = layer(x)
    return x.flatten(1)


def _linear(h: Tensor, params: dict[str, Tensor], name: str) -> Tensor:
    """A stacked linear layer: h (K, B, in) -> (K, B, out), as one batched matmul."""
    return torch.baddbmm(params[f"{name}.bias"].unsqueeze(1), h, params[f"{name}.weight"].transpose(1, 2))


class _Stream:
    """One model's random streams: a generator for batch order and CutMix, the global-RNG state for DSA."""

    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.dsa_state = torch.Generator().manual_seed(seed).get_state()  # = the state after torch.manual_seed(seed)

    def augment(self, xb: Tensor, idx: Tensor, strategy: str | None, cutmix_alpha: float | None,
                cutmix_prob: float) -> tuple[Tensor, Tensor | None, float]:
        """DSA then (with probability cutmix_prob) CutMix of one batch, drawn as train_model's run_epoch does."""
        from ddnb.augment import cutmix, dsa

        if strategy is not None:
            torch.set_rng_state(self.dsa_state)
            xb = dsa(xb, strategy, seed=None)
            self.dsa_state = torch.get_rng_state()
        idx_b, lam = None, 1.0
        if cutmix_alpha is not None and float(torch.rand((), generator=self.gen)) < cutmix_prob:
            xb, _, idx_b, lam = cutmix(xb, idx, alpha=cutmix_alpha, generator=self.gen)
        return xb, idx_b, lam


def train_models(
    models: Sequence[nn.Module], images: Tensor, labels: Tensor, *, seeds: Sequence[int], epochs: int,
    regime: str = "hl", optimizer: str = "sgd", lr: float = 0.01, momentum: float = 0.9,
    weight_decay: float = 5e-4, batch_size: int = 256, schedule: str = "step", warmup_epochs: int = 0,
    milestones: Sequence[float] = IDC_MILESTONES, gamma: float = 0.2, dsa: bool | str | None = False,
    temperature: float = 1.0, teacher: nn.Module | None = None, cutmix_alpha: float | None = None,
    cutmix_prob: float = 1.0, label_kind: str | None = None, device: str | torch.device | None = None,
    progress: bool = False, precision: str = "fp32",
    on_epoch_end: Callable[[int, Sequence[nn.Module]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train models[k] in place as train_model(models[k], ..., seed=seeds[k]) would, all in one batched step
    per batch; returns one history (train_loss, lr, seconds) per model. Settings as train_model's.

    The models share one supported architecture (see batch_unsupported). `on_epoch_end(epoch, models)` runs
    after every epoch (from 1) with each model holding its current weights. Raises FloatingPointError naming
    the seed and the epoch when a model's loss becomes NaN or infinite.
    """
    if len(models) != len(seeds) or not models:
        raise ValueError(f"train_models needs one seed per model, got {len(models)} models and {len(seeds)} seeds")
    reason = batch_unsupported(models[0])
    if reason is not None:
        raise ValueError(f"{type(models[0]).__name__} cannot train batched: {reason}")
    shapes = [[(name, p.shape) for name, p in m.named_parameters()] for m in models]
    if any(s != shapes[0] for s in shapes):
        raise ValueError("train_models needs models of one architecture (the same parameter names and shapes)")
    dev = resolve_device(device) if device is not None else next(models[0].parameters()).device
    lrs, strategy, x, _, step = training_setup(
        images, labels, regime=regime, label_kind=label_kind, teacher=teacher, batch_size=batch_size,
        temperature=temperature, schedule=schedule, lr=lr, epochs=epochs, warmup_epochs=warmup_epochs,
        milestones=milestones, gamma=gamma, dsa=dsa, device=dev)
    precision = resolve_precision(precision, dev)
    for model in models:
        model.to(dev).train()
    params, _ = stack_module_state(list(models))
    opt = make_optimizer(optimizer, params.values(), lr, momentum, weight_decay)
    losses: list[list[float]] = [[] for _ in models]
    start = time.perf_counter()
    with teacher_in_eval(teacher, dev):
        with torch.random.fork_rng(devices=[]):
            streams = [_Stream(s) for s in seeds]
            for e in tqdm(range(epochs), desc=f"train x{len(models)}", leave=False, disable=not progress):
                for group in opt.param_groups:
                    group["lr"] = lrs[e]
                epoch_loss = _batched_epoch(models[0], params, opt, x, step, batch_size, strategy, cutmix_alpha,
                                            cutmix_prob, streams, precision)
                for k, loss in enumerate(epoch_loss):
                    if not math.isfinite(loss):
                        raise FloatingPointError(f"training loss of seed {seeds[k]} became {loss} at epoch "
                                                 f"{e + 1}/{epochs} (lr {lrs[e]:g}); lower the learning rate or "
                                                 "check the inputs for NaN")
                    losses[k].append(loss)
                if on_epoch_end is not None:
                    _copy_back(models, params)
                    on_epoch_end(e + 1, models)
    _copy_back(models, params)
    seconds = time.perf_counter() - start
    return [{"train_loss": loss, "lr": lrs, "seconds": seconds} for loss in losses]


def _copy_back(models: Sequence[nn.Module], params: dict[str, Tensor]) -> None:
    """Copy each model's slice of the stacked parameters into the model."""
    with torch.no_grad():
        for k, model in enumerate(models):
            for name, p in model.named_parameters():
                p.copy_(params[name][k])


def _batched_epoch(model: nn.Module, params: dict[str, Tensor], opt: torch.optim.Optimizer, x: Tensor,
                   step: RegimeLoss, batch_size: int, strategy: str | None, cutmix_alpha: float | None,
                   cutmix_prob: float, streams: list[_Stream], precision: str) -> list[float]:
    """One pass over x per model, each in its own random order; each model's mean loss (see run_epoch)."""
    n = x.shape[0]
    perms = [to_device(torch.randperm(n, generator=s.gen), x.device) for s in streams]
    total = torch.zeros(len(streams), device=x.device)
    for i in range(0, n, batch_size):
        idx = [perm[i:i + batch_size] for perm in perms]
        drawn = [s.augment(x[ix], ix, strategy, cutmix_alpha, cutmix_prob) for s, ix in zip(streams, idx)]
        with autocast(precision, x.device):
            out = stacked_forward(model, params, [d[0] for d in drawn]).float()
            loss = torch.stack([step.loss(out[k], d[0], idx[k], d[1], d[2]) for k, d in enumerate(drawn)])
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
        total += loss.detach() * idx[0].numel()
    return [t / max(n, 1) for t in total.tolist()]
