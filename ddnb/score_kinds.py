"""The per-example difficulty scores themselves, one function per definition (`ddnb.scores` draws
the models, averages over seeds and caches the result).

Scoring models train with plain SGD (no augmentation) in a seeded random order, so every example
is presented once per epoch; `fit` lets a caller see each presentation's logits before the update
(what forgetting events are counted on).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddnb.train import kl_loss

_EVAL_BATCH = 512


@dataclass(frozen=True)
class FitSettings:
    """How a scoring model trains: SGD with momentum and weight decay at a constant lr, batch size."""

    lr: float
    momentum: float
    weight_decay: float
    batch_size: int


def fit(model: nn.Module, x: Tensor, targets: Tensor, epochs: int, settings: FitSettings, seed: int,
        loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
        on_batch: Callable[[int, Tensor, Tensor], None] | None = None) -> nn.Module:
    """Train `model` in place for `epochs` epochs; `on_batch(epoch, idx, logits)` sees each batch before its step."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                          weight_decay=settings.weight_decay)
    model.train()
    for e in range(epochs):
        perm = torch.randperm(x.shape[0], generator=gen).to(x.device)
        for i in range(0, x.shape[0], settings.batch_size):
            idx = perm[i:i + settings.batch_size]
            out = model(x[idx])
            if on_batch is not None:
                on_batch(e, idx, out.detach())
            loss = loss_fn(out, targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model


def forgetting_counts(correct: Tensor) -> Tensor:
    """Forgetting events per example from a (presentations, N) correctness record (Toneva et al. 2019).

    An event is correct at presentation t and wrong at t + 1; an example never correct at any
    presentation gets the number of presentations (it is harder than any forgotten one).
    """
    c = correct.bool()
    events = (c[:-1] & ~c[1:]).sum(0)
    return torch.where(c.any(0), events, torch.full_like(events, c.shape[0])).double()


def forgetting_run(model: nn.Module, x: Tensor, y: Tensor, epochs: int, settings: FitSettings, seed: int) -> Tensor:
    """Train once, recording whether each presentation was classified correctly; the forgetting counts."""
    correct = torch.zeros(epochs, x.shape[0], dtype=torch.bool, device=x.device)

    def record(e: int, idx: Tensor, logits: Tensor) -> None:
        correct[e, idx] = logits.argmax(1) == y[idx]

    fit(model, x, y, epochs, settings, seed, on_batch=record)
    return forgetting_counts(correct).cpu()


@torch.no_grad()
def logits_of(model: nn.Module, x: Tensor) -> Tensor:
    """The model's logits for x in eval mode, in batches (float64, on x's device)."""
    model.eval()
    return torch.cat([model(x[i:i + _EVAL_BATCH]).double() for i in range(0, x.shape[0], _EVAL_BATCH)])


def el2n_values(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """EL2N (Paul et al. 2021): ||softmax(f(x)) - onehot(y)||_2 per example."""
    probs = logits_of(model, x).softmax(1)
    return (probs - F.one_hot(y, probs.shape[1]).double()).norm(dim=1).cpu()


def true_logits(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """The logit of each example's own class (000 Tab. 4: smaller is harder)."""
    return logits_of(model, x).gather(1, y.view(-1, 1)).view(-1).cpu()


def el2n_sl_values(model: nn.Module, x: Tensor, q: Tensor, temperature: float) -> Tensor:
    """EL2N-SL (004 §4): (1/T) ||softmax(f(x) / T) - q(x)||_2 against target probabilities q."""
    p = (logits_of(model, x) / temperature).softmax(1)
    return ((p - q.double()).norm(dim=1) / temperature).cpu()


def last_layer_names(model: nn.Module) -> list[str]:
    """Names of the parameters of the last module that holds parameters itself (the classifier)."""
    owners = [(name, m) for name, m in model.named_modules() if next(m.parameters(recurse=False), None) is not None]
    prefix, module = owners[-1]
    return [f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False)]


def grand_values(model: nn.Module, x: Tensor, y: Tensor, last_layer: bool = False, batch_size: int = 128) -> Tensor:
    """GraNd (Paul et al. 2021): the norm of each example's cross-entropy gradient (torch.func, eval mode).

    last_layer: the gradient of the last layer's parameters only (a cheaper variant).
    """
    from torch.func import functional_call, grad, vmap

    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    names = last_layer_names(model) if last_layer else list(params)
    fixed = {k: v for k, v in params.items() if k not in names}

    def loss(free: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        out = functional_call(model, {**fixed, **free}, (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    per_example = vmap(grad(loss), in_dims=(None, 0, 0))
    free = {k: params[k] for k in names}
    norms = []
    for i in range(0, x.shape[0], batch_size):
        grads = per_example(free, x[i:i + batch_size], y[i:i + batch_size])
        norms.append(sum(g.flatten(1).double().pow(2).sum(1) for g in grads.values()).sqrt())
    return torch.cat(norms).cpu()


def holdout_masks(n: int, models: int, fraction: float, seed: int) -> Tensor:
    """(models, n) bools, True where model k holds example i out: each model trains on round(fraction * n)
    examples, and the held-out ones are drawn among the least held-out so far (random ties), so every
    example is held out as evenly as possible."""
    n_out = n - round(fraction * n)
    if n_out < 1 or n_out == n or models * n_out < n:
        raise ValueError(f"cscore with {models} models on {fraction:g} of {n} examples holds out {n_out} per model; "
                         f"allowed: 1 <= held out < {n} and models * held out >= {n} (every example held out once)")
    gen = torch.Generator().manual_seed(seed)
    counts = torch.zeros(n)
    masks = torch.zeros(models, n, dtype=torch.bool)
    for k in range(models):
        out = torch.argsort(counts + torch.rand(n, generator=gen))[:n_out]
        masks[k, out] = True
        counts[out] += 1
    return masks


def soft_targets_loss(temperature: float) -> Callable[[Tensor, Tensor], Tensor]:
    """T**2 * KL(q || softmax(f / T)): the SL regime's loss for target probabilities q."""
    return lambda out, q: kl_loss(out, q, temperature)
