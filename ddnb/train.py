"""Train a model on a (small) set under a label regime, test it, and evaluate a synthetic set over seeds.

Label regimes (paper 004, "Hard Truths About Soft Labels", Tab. 1):
  "hl"     cross-entropy on hard labels;
  "sl"     fixed soft labels, KL divergence at temperature T, scaled by T**2;
  "sl+kd"  a teacher labels every augmented view on the fly: KL between the student's and the
           teacher's softened logits on the same (DSA / CutMix) batch, scaled by T**2.
The training set is small, so it stays on the device and is batched by index permutations drawn
from a torch.Generator seeded by `seed`; DSA draws from the global RNG, which is seeded inside a
forked RNG state (the caller's RNG state is untouched). Same seed, same device -> same result.
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ddnb.data import require_dataset
from ddnb.precision import autocast, resolve_precision
from ddnb.schedules import IDC_MILESTONES, lr_schedule, make_optimizer
from ddnb.speedups import speedups_on
from ddnb.synset import infer_label_kind, require_synset
from ddnb.utils import resolve_device, to_device

if TYPE_CHECKING:
    from ddnb.data import Dataset
    from ddnb.synset import SyntheticSet

log = logging.getLogger(__name__)

REGIMES = ("hl", "sl", "sl+kd")
IDC_EVAL_DSA = "idc:color_crop_flip_scale_rotate"  # IDC's evaluation augmentation: its DSA strategy minus cutout

# Named evaluation protocols. "dc" is the DC/DSA/DM reference `evaluate_synset` (SGD, momentum
# 0.9, weight decay 5e-4, lr x0.1 half way; 300 epochs, 1000 with DSA). "hl" and "sl" are the
# small-scale columns of paper 004 Tab. 1 ("StepLR@151" of 300 epochs = x0.1 at half way);
# momentum / weight decay that Tab. 1 leaves open follow DC (SGD) and torch's AdamW default (0.01).
# "sl+kd" is the SL setting with a teacher (pass teacher=...) and CutMix (alpha 1) on every batch (Tab. 1).
# "idc" is the IDC family's evaluation (IDC argument.py / train.py, used by DREAM(+) and DANCE): batch 64,
# lr x0.2 at 2/3 and 5/6 of training, the IDC augmentation composition without cutout, CutMix (alpha 1)
# with probability 0.5 (its Fashion-MNIST / MNIST / CIFAR setting), 1000 epochs (DANCE: 1500).
PROTOCOLS: dict[str, dict[str, Any]] = {
    "dc": dict(regime="hl", optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, batch_size=256,
               schedule="step", warmup_epochs=0, epochs=300, epochs_dsa=1000, dsa=False, temperature=1.0),
    "hl": dict(regime="hl", optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, batch_size=256,
               schedule="step", warmup_epochs=0, epochs=300, dsa=True, temperature=1.0),
    "sl": dict(regime="sl", optimizer="adamw", lr=1e-3, weight_decay=0.01, batch_size=256,
               schedule="cosine", warmup_epochs=0, epochs=300, dsa=True, temperature=20.0),
    "sl+kd": dict(regime="sl+kd", optimizer="adamw", lr=1e-3, weight_decay=0.01, batch_size=256,
                  schedule="cosine", warmup_epochs=0, epochs=300, dsa=True, temperature=20.0, cutmix_alpha=1.0),
    "idc": dict(regime="hl", optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, batch_size=64,
                schedule="multistep", milestones=IDC_MILESTONES, gamma=0.2, warmup_epochs=0, epochs=1000,
                dsa=IDC_EVAL_DSA, cutmix_alpha=1.0, cutmix_prob=0.5, temperature=1.0),
}


# ------------------------------------------------------------------------- losses
def soften(targets: Tensor, temperature: float, label_kind: str) -> Tensor:
    """Target probabilities at temperature T: softmax(logits / T), or softmax(log p / T) for probabilities."""
    if label_kind == "soft_logits":
        return F.softmax(targets / temperature, dim=-1)
    if label_kind == "soft_probs":
        return F.softmax(torch.log(targets) / temperature, dim=-1)
    raise ValueError(f"label_kind must be 'soft_logits' or 'soft_probs' for soft targets, got {label_kind!r}")


def kl_loss(student_logits: Tensor, target_probs: Tensor, temperature: float) -> Tensor:
    """T**2 * KL(target || softmax(student / T)), averaged over the batch (Hinton et al. distillation)."""
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    return F.kl_div(log_q, target_probs, reduction="batchmean") * temperature**2


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """SL+KD loss: T**2 * KL(softmax(teacher / T) || softmax(student / T)), computed in log space."""
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits / temperature, dim=-1)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * temperature**2


# ------------------------------------------------------------------------- training
def _dsa_strategy(dsa: bool | str | None) -> str | None:
    """None for no augmentation; the default DSA strategy for True; a given strategy string as is."""
    from ddnb.augment import DSA_STRATEGY, parse_strategy

    if dsa is None or dsa is False:
        return None
    if dsa is True:
        return DSA_STRATEGY
    if isinstance(dsa, str):
        return dsa if parse_strategy(dsa) else None
    raise ValueError(f"dsa must be True, False, None or a strategy string like {DSA_STRATEGY!r}, got {dsa!r}")


def _check_labels(regime: str, labels: Tensor, n: int, label_kind: str | None) -> str:
    """Labels fit the regime and the images; returns the label kind."""
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")
    if labels.shape[0] != n:
        raise ValueError(f"got {labels.shape[0]} labels for {n} images; they must match")
    kind = label_kind if label_kind is not None else infer_label_kind(labels)
    if regime == "hl" and kind != "hard":
        raise ValueError(f"regime 'hl' needs hard integer labels, got {kind} labels; use regime 'sl' "
                         "or pass labels.argmax(1)")
    if regime == "sl" and kind == "hard":
        raise ValueError("regime 'sl' needs soft labels of shape (N, K); use regime 'hl' for hard labels")
    return kind


def check_training(regime: str, labels: Tensor, n: int, label_kind: str | None, teacher: nn.Module | None,
                   batch_size: int, temperature: float) -> str:
    """The training settings that do not depend on the schedule fit together; returns the label kind."""
    kind = _check_labels(regime, labels, n, label_kind)
    if regime == "sl+kd" and teacher is None:
        raise ValueError("regime 'sl+kd' needs a teacher model (teacher=...)")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    return kind


class RegimeLoss:
    """Loss of one augmented batch under a regime (holds the fixed pieces: targets, teacher, T)."""

    def __init__(self, regime: str, labels: Tensor, kind: str, temperature: float, teacher: nn.Module | None):
        self.regime, self.temperature, self.teacher = regime, temperature, teacher
        self.targets = soften(labels, temperature, kind) if regime == "sl" else labels

    def loss(self, out: Tensor, x: Tensor, idx_a: Tensor, idx_b: Tensor | None, lam: float) -> Tensor:
        """Loss of logits `out` for augmented inputs x; with CutMix the targets mix as lam*a + (1-lam)*b."""
        if self.regime == "sl+kd":
            with torch.no_grad():
                teacher_logits = self.teacher(x)
            return kd_loss(out, teacher_logits, self.temperature)
        if self.regime == "hl":
            loss = F.cross_entropy(out, self.targets[idx_a])
            return loss if idx_b is None else lam * loss + (1 - lam) * F.cross_entropy(out, self.targets[idx_b])
        target = self.targets[idx_a] if idx_b is None else lam * self.targets[idx_a] + (1 - lam) * self.targets[idx_b]
        return kl_loss(out, target, self.temperature)


def training_setup(images: Tensor, labels: Tensor, *, regime: str, label_kind: str | None,
                   teacher: nn.Module | None, batch_size: int, temperature: float, schedule: str, lr: float,
                   epochs: int, warmup_epochs: int, milestones: Sequence[float], gamma: float,
                   dsa: bool | str | None, device: torch.device
                   ) -> tuple[list[float], str | None, Tensor, Tensor, RegimeLoss]:
    """What one or many trainings need, checked: per-epoch lrs, the DSA strategy, the data on `device`, the loss."""
    kind = check_training(regime, labels, images.shape[0], label_kind, teacher, batch_size, temperature)
    lrs = lr_schedule(schedule, lr, epochs, warmup_epochs, milestones, gamma)
    x, y = images.detach().to(device), labels.detach().to(device)
    return lrs, _dsa_strategy(dsa), x, y, RegimeLoss(regime, y, kind, temperature, teacher)


@contextmanager
def teacher_in_eval(teacher: nn.Module | None, device: torch.device) -> Iterator[None]:
    """The teacher (if any) on `device` in eval mode for the block; its own train/eval mode restored after."""
    if teacher is None:
        yield
        return
    was_training = teacher.training
    teacher.to(device).eval()
    try:
        yield
    finally:
        teacher.train(was_training)


def train_model(
    model: nn.Module, images: Tensor, labels: Tensor, *, epochs: int, regime: str = "hl",
    optimizer: str = "sgd", lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4,
    batch_size: int = 256, schedule: str = "step", warmup_epochs: int = 0,
    milestones: Sequence[float] = IDC_MILESTONES, gamma: float = 0.2, dsa: bool | str | None = False,
    temperature: float = 1.0, teacher: nn.Module | None = None, cutmix_alpha: float | None = None,
    cutmix_prob: float = 1.0, label_kind: str | None = None, seed: int = 0,
    device: str | torch.device | None = None, progress: bool = False,
    on_epoch_end: Callable[[int, nn.Module], None] | None = None, precision: str = "fp32",
) -> dict[str, Any]:
    """Train `model` in place on (images, labels) under a label regime; returns per-epoch loss and lr.

    device None: the device the model is on. `label_kind` (None = inferred, see
    ddnb.synset.infer_label_kind) says whether soft labels are probabilities or logits.
    `on_epoch_end(epoch, model)` runs after every epoch (epoch counts from 1), e.g. to snapshot weights.
    `milestones` and `gamma` are the "multistep" schedule's (see lr_schedule). `precision` "bf16" (or "auto",
    see ddnb.precision) runs forward and loss under bf16 autocast; parameters and optimizer stay fp32.
    Raises FloatingPointError naming the epoch when the loss becomes NaN or infinite.
    """
    dev = resolve_device(device) if device is not None else next(model.parameters()).device
    lrs, strategy, x, _, step = training_setup(
        images, labels, regime=regime, label_kind=label_kind, teacher=teacher, batch_size=batch_size,
        temperature=temperature, schedule=schedule, lr=lr, epochs=epochs, warmup_epochs=warmup_epochs,
        milestones=milestones, gamma=gamma, dsa=dsa, device=dev)
    precision = resolve_precision(precision, dev)
    model.to(dev)
    opt = make_optimizer(optimizer, model.parameters(), lr, momentum, weight_decay)
    history: dict[str, Any] = {"train_loss": [], "lr": lrs}
    start = time.perf_counter()
    with teacher_in_eval(teacher, dev):
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(seed)
            gen = torch.Generator().manual_seed(seed)
            model.train()
            for e in tqdm(range(epochs), desc="train", leave=False, disable=not progress):
                for group in opt.param_groups:
                    group["lr"] = lrs[e]
                loss = float(run_epoch(model, opt, x, step, batch_size, strategy, cutmix_alpha, cutmix_prob, gen,
                                       precision=precision))  # the epoch's host sync (NaN check, history)
                if not math.isfinite(loss):
                    raise FloatingPointError(f"training loss became {loss} at epoch {e + 1}/{epochs} (lr {lrs[e]:g}); "
                                             "lower the learning rate or check the inputs for NaN")
                history["train_loss"].append(loss)
                if on_epoch_end is not None:
                    on_epoch_end(e + 1, model)
    history["seconds"] = time.perf_counter() - start
    return history


def run_epoch(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, step: RegimeLoss, batch_size: int,
              strategy: str | None, cutmix_alpha: float | None, cutmix_prob: float,
              gen: torch.Generator, order: Tensor | None = None, precision: str = "fp32") -> Tensor:
    """One pass over the rows `order` of x (default: all of x in a random order from `gen`); the mean loss, a
    float64 0-d tensor left on x's device (no host sync: the caller converts it once per epoch).

    Each batch gets per-sample DSA (`strategy`, global RNG) and, with probability `cutmix_prob`,
    CutMix; forward and loss run under `precision` (ddnb.precision); the loss is weighted by batch size in the mean.
    """
    from ddnb.augment import cutmix, dsa

    perm = to_device(torch.randperm(x.shape[0], generator=gen) if order is None else order, x.device)
    n = perm.numel()
    total = torch.zeros((), device=x.device)
    for i in range(0, n, batch_size):
        idx = perm[i:i + batch_size]
        xb = x[idx]
        if strategy is not None:
            xb = dsa(xb, strategy, seed=None)
        idx_b, lam = None, 1.0
        if cutmix_alpha is not None and float(torch.rand((), generator=gen)) < cutmix_prob:
            xb, _, idx_b, lam = cutmix(xb, idx, alpha=cutmix_alpha, generator=gen)
        with autocast(precision, x.device):
            loss = step.loss(model(xb).float(), xb, idx, idx_b, lam)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.detach() * idx.numel()
    return total.double() / max(n, 1)


# ------------------------------------------------------------------------- testing
def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1024) -> float:
    """Accuracy of `model` on (x, y) in [0, 1], in eval and inference mode (the model's mode is restored)."""
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"evaluate needs as many labels as (at least one) images, got {x.shape[0]} and {y.shape[0]}")
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=dev)
    with torch.inference_mode():
        for i in range(0, x.shape[0], batch_size):
            pred = model(x[i:i + batch_size].to(dev)).argmax(1)
            correct += (pred == y[i:i + batch_size].to(dev)).sum()
    model.train(was_training)
    return int(correct) / x.shape[0]


@dataclass
class EvalResult:
    """Test accuracy (%) of models trained on a set: mean, population std (numpy ddof=0), per seed."""

    mean: float
    std: float
    per_seed: list[float]
    protocol: dict[str, Any]
    arch: str
    seconds: float
    seeds: list[int] = field(default_factory=list)
    path: str = "sequential"  # how the seeds trained: "batched" (one stacked step) or "sequential"
    precision: str = "fp32"  # what training's forward and loss ran in: "fp32" or "bf16" (autocast)
    curve: dict[int, list[float]] = field(default_factory=dict)  # epoch -> test accuracy (%) per seed
    test_seconds: float | None = None  # the part of `seconds` spent testing (None: cached before it was measured)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (for results.json)."""
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.std:.2f}% ({self.arch}, {len(self.per_seed)} seeds)"


_TRAIN_KEYS = ("regime", "optimizer", "lr", "momentum", "weight_decay", "batch_size", "schedule",
               "warmup_epochs", "milestones", "gamma", "temperature", "teacher", "cutmix_alpha", "cutmix_prob")


def resolve_protocol(protocol: str, epochs: int | None, dsa: bool | str | None,
                     overrides: dict[str, Any]) -> dict[str, Any]:
    """The full training settings of a named protocol with epochs, dsa and single settings overridden."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    unknown = sorted(set(overrides) - set(_TRAIN_KEYS))
    if unknown:
        raise ValueError(f"unknown training setting(s) {unknown}; allowed: {', '.join(_TRAIN_KEYS)}")
    base = dict(PROTOCOLS[protocol])
    dsa = base.pop("dsa") if dsa is None else dsa
    epochs_dsa = base.pop("epochs_dsa", None)
    if epochs is None:
        epochs = epochs_dsa if (epochs_dsa is not None and _dsa_strategy(dsa)) else base["epochs"]
    settings = {**base, **overrides, "epochs": epochs, "dsa": dsa, "name": protocol}
    return settings


def _training_labels(synset: SyntheticSet, regime: str) -> tuple[Tensor, Tensor, str]:
    """Decoded images and the labels a regime trains on: HL uses argmax of soft labels (paper 004's HL)."""
    images, labels = synset.decoded()
    kind = synset.label_kind
    if regime == "hl" and kind != "hard":
        labels, kind = labels.argmax(1), "hard"
    return images.detach(), labels.detach(), kind


def protocol_record(name: str, *, epochs: int | None = None, dsa: bool | str | None = None,
                    **overrides: Any) -> dict[str, Any]:
    """The evaluation protocol a SyntheticSet carries (provenance "eval_protocol"): name, epochs, dsa and
    train_model settings that differ from the named protocol (None entries left out); checked now."""
    resolve_protocol(name, epochs, dsa, overrides)
    return {"name": name, **{k: v for k, v in dict(epochs=epochs, dsa=dsa, **overrides).items() if v is not None}}


def chosen_protocol(synset: SyntheticSet, protocol: str | None, epochs: int | None, dsa: bool | str | None,
                    overrides: dict[str, Any]) -> dict[str, Any]:
    """The full settings evaluate_synset trains with, and their `source`: "argument" (an explicit
    `protocol`), "set" (the protocol the set carries) or "default" ("dc"); explicit epochs, dsa and
    settings override the set's."""
    carried = synset.eval_protocol if protocol is None else None
    if carried is None:
        settings = resolve_protocol(protocol or "dc", epochs, dsa, overrides)
        return {**settings, "source": "default" if protocol is None else "argument"}
    stored = {k: v for k, v in carried.items() if k not in ("name", "epochs", "dsa")}
    settings = resolve_protocol(carried["name"], epochs if epochs is not None else carried.get("epochs"),
                                dsa if dsa is not None else carried.get("dsa"), {**stored, **overrides})
    return {**settings, "source": "set"}


def evaluate_synset(
    synset: SyntheticSet, dataset: Dataset, arch: str = "convnet3", seeds: int | Sequence[int] = 5,
    epochs: int | None = None, dsa: bool | str | None = None, protocol: str | None = None,
    device: str | torch.device | None = None, progress: bool = True,
    model_kw: dict[str, Any] | None = None, batched: bool | None = None, precision: str = "fp32",
    curve_epochs: Sequence[int] | None = None, **overrides: Any,
) -> EvalResult:
    """Train a fresh `arch` per seed on the synthetic set and report final-epoch test accuracy (%).

    protocol None: the one the set carries (`synset.eval_protocol`, e.g. "idc" for IDC-family sets,
    MTT's learned lr), else "dc"; an explicit protocol wins over the set's, and explicit epochs, dsa
    and `overrides` (train_model settings: lr, batch_size, teacher, ...) over either. The result's
    `protocol` records the settings used and their `source` (argument, set or default).
    seeds: a count n (seeds 0..n-1) or explicit seeds; seed i sets both the model init and the
    training order. dsa None: the protocol's choice ("dc": off; 1000 epochs when on). With regime
    "hl" a soft-label set trains on the argmax class. std is the population std over seeds (numpy, ddof=0).
    batched None: with several seeds, train all models together in one stacked step per batch
    (ddnb.batched.train_models, the same per-seed result up to float rounding) where the architecture
    allows it (no BatchNorm) and DDNB_SPEEDUPS is not "off" (ddnb.speedups), else one after another (logged);
    True / False force either. The result's `path` says which ran. precision: "fp32", "bf16" or "auto" (bf16
    where native, ddnb.precision) for training's forward and loss (testing stays fp32); the result's
    `precision` says which ran.
    curve_epochs: epochs (1..epochs) after which every model is also tested, within the same training (the
    result's `curve`: epoch -> accuracy per seed; the final epoch's entry equals per_seed).
    """
    from ddnb.batched import batch_unsupported, train_models
    from ddnb.models import get_model

    require_synset(synset, require_dataset(dataset))
    settings = chosen_protocol(synset, protocol, epochs, dsa, overrides)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise ValueError(f"seeds must be a positive count or a non-empty list, got {seeds!r}")
    if batched not in (None, True, False):
        raise ValueError(f"batched must be None, True or False, got {batched!r}")
    points = _curve_points(curve_epochs, settings["epochs"])
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    images, labels, kind = _training_labels(synset, settings["regime"])
    images, labels = images.to(dev), labels.to(dev)
    x_test, y_test = dataset.x_test.to(dev), dataset.y_test.to(dev)
    c, h, _ = dataset.image_shape
    train_kw = {k: settings[k] for k in _TRAIN_KEYS if k in settings}
    start = time.perf_counter()
    models = []
    for s in seed_list:
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(s)
            models.append(get_model(arch, c, dataset.num_classes, h, **(model_kw or {})).to(dev))
    reason = batch_unsupported(models[0])
    if batched and reason is not None:
        raise ValueError(f"batched=True, but {arch} cannot train batched: {reason}; pass batched=False")
    use_batched = batched is True or (batched is None and reason is None and len(seed_list) > 1 and speedups_on())
    if batched is None and reason is not None and len(seed_list) > 1:
        log.info("evaluate_synset: %s trains its %d seeds one after another: %s", arch, len(seed_list), reason)
    curve: dict[int, list[float]] = {e: [] for e in points}
    tested = 0.0  # seconds in test passes, so that benchmarks can tell training's time from testing's

    def test(model: nn.Module) -> float:
        nonlocal tested
        begin = time.perf_counter()
        acc = 100.0 * evaluate(model, x_test, y_test)
        tested += time.perf_counter() - begin
        return acc

    def test_at(epoch: int, trained: Sequence[nn.Module]) -> None:
        if epoch in curve:
            curve[epoch].extend(test(m) for m in trained)

    if use_batched:
        train_models(models, images, labels, seeds=seed_list, epochs=settings["epochs"], dsa=settings["dsa"],
                     label_kind=kind, device=dev, progress=progress, precision=precision,
                     on_epoch_end=test_at if points else None, **train_kw)
    accs: list[float] = []
    bar = tqdm(list(zip(seed_list, models)), desc=f"eval {arch}", disable=not progress)
    for s, model in bar:
        if not use_batched:
            train_model(model, images, labels, epochs=settings["epochs"], dsa=settings["dsa"], label_kind=kind,
                        seed=s, device=dev, progress=progress, precision=precision, **train_kw,
                        on_epoch_end=(lambda e, m: test_at(e, [m])) if points else None)
        accs.append(curve[settings["epochs"]][len(accs)] if settings["epochs"] in curve else test(model))
        bar.set_postfix(acc=f"{accs[-1]:.2f}")
    record = {k: v for k, v in settings.items() if k != "teacher"}
    record["teacher"] = type(settings["teacher"]).__name__ if settings.get("teacher") is not None else None
    return EvalResult(float(np.mean(accs)), float(np.std(accs, ddof=0)), accs, record, arch,
                      time.perf_counter() - start, seed_list, "batched" if use_batched else "sequential", precision,
                      curve, tested)


def _curve_points(curve_epochs: Sequence[int] | None, epochs: int) -> list[int]:
    """The sorted distinct curve epochs, each an int in 1..epochs (ValueError naming the first that is not)."""
    points = sorted(set(curve_epochs or ()))
    for e in points:
        if isinstance(e, bool) or not isinstance(e, (int, np.integer)) or not 1 <= e <= epochs:
            raise ValueError(f"curve_epochs must be ints in 1..{epochs} (the training epochs), got {e!r}")
    return [int(e) for e in points]
