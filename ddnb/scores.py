"""Per-example difficulty scores of the training images, cached on disk, and per-class rankings.

Kinds (each as its authors define it; `HIGHER_IS_HARDER` says which way is hard):
  forgetting  Toneva et al. 2019: forgetting events (correct -> wrong between consecutive presentations);
              never learned: the number of presentations; averaged over seeds.
  el2n        Paul et al. 2021: ||softmax(f(x)) - onehot(y)||_2 after `epochs` epochs, averaged over seeds.
  grand       Paul et al. 2021: the norm of the per-example loss gradient over all parameters after `epochs`
              epochs (0: at initialization, as in the paper), averaged over seeds; `last_layer=True`: the
              classifier's parameters only.
  logits      000 Tab. 4: the true-class logit of a model trained `epochs` epochs (smaller is harder).
  cscore      Jiang et al. 2021, holdout estimate: `seeds` models, each on a random `fraction` of the
              examples; an example's score is its accuracy over the models that did not see it (lower is
              harder). Every example is held out at least once (held-out sets drawn among the least held out).
  el2n_sl     004 §4: (1/T) ||softmax(f(x) / T) - q(x)||_2, q a teacher's soft labels (`teacher` model or
              `soft_labels`), f trained `epochs` epochs on q (SL regime, KL at T), averaged over seeds.

Budgets (`budget=`; every setting can be overridden by its argument):
  smoke  a ConvNet of width 16 on every image, 1 seed, 0-3 epochs, 4 c-score models (tests, digits).
  cpu    sized for minutes on Fashion-MNIST on a CPU (not yet measured): a ConvNet of width 32, a seeded
         pool of 500 images per class (scores cover the pool only; every image when a class has 500 or
         fewer), 2 seeds, 10 epochs (forgetting, logits, c-score), EL2N at epoch 2, GraNd at
         initialization, 8 c-score models on halves of the pool.
  paper  the papers' sizes (not meant for a CPU): the default ConvNet (width 128) on every image;
         forgetting 200 epochs x 5 seeds (Toneva), EL2N at epoch 20 and GraNd at initialization over 10
         seeds (Paul), logits after 200 epochs, c-score 2000 models on 70 % subsets (Jiang et al. average
         over several subset ratios; one ratio here), EL2N-SL at epoch 20 over 10 seeds.
EL2N-SL uses the temperature of the "sl" evaluation protocol (20) in every budget.
Scoring models train with SGD (momentum 0.9, weight decay 5e-4, constant lr, no augmentation).
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ddnb import score_kinds as sk
from ddnb.data import Dataset, require_dataset
from ddnb.experts import cache_key, data_fingerprint
from ddnb.methods.base import real_init_indices
from ddnb.settings import Bool, Choice, Float, Int, Positive, Seed, Text, require
from ddnb.synset import infer_label_kind, load_tensor_file, save_tensor_file
from ddnb.train import PROTOCOLS, soften
from ddnb.utils import resolve_device

HIGHER_IS_HARDER = {"forgetting": True, "el2n": True, "grand": True, "logits": False, "cscore": False,
                    "el2n_sl": True}
KINDS = tuple(HIGHER_IS_HARDER)
ORDERS = ("easy", "hard")
FILE_KIND = "ddnb.Scores"
_MOMENTUM, _WEIGHT_DECAY = 0.9, 5e-4
_TEMPERATURE = PROTOCOLS["sl"]["temperature"]
BUDGETS: dict[str, dict[str, Any]] = {
    "smoke": dict(model_kw={"width": 16}, pool=0, batch_size=64, lr=0.01, fraction=0.5, temperature=_TEMPERATURE,
                  epochs=dict(forgetting=3, el2n=1, grand=0, logits=3, cscore=3, el2n_sl=1),
                  seeds=dict(forgetting=1, el2n=1, grand=1, logits=1, cscore=4, el2n_sl=1)),
    "cpu": dict(model_kw={"width": 32}, pool=500, batch_size=128, lr=0.01, fraction=0.5, temperature=_TEMPERATURE,
                epochs=dict(forgetting=10, el2n=2, grand=0, logits=10, cscore=10, el2n_sl=2),
                seeds=dict(forgetting=2, el2n=2, grand=2, logits=2, cscore=8, el2n_sl=2)),
    "paper": dict(model_kw={}, pool=0, batch_size=128, lr=0.01, fraction=0.7, temperature=_TEMPERATURE,
                  epochs=dict(forgetting=200, el2n=20, grand=0, logits=200, cscore=200, el2n_sl=20),
                  seeds=dict(forgetting=5, el2n=10, grand=10, logits=1, cscore=2000, el2n_sl=10)),
}
_FROM_INIT = ("el2n", "grand", "el2n_sl")  # kinds that may be scored at initialization (epochs=0)


def default_cache_dir() -> Path:
    """Where scores are cached: $DDNB_CACHE/scores, else ~/.cache/ddnb/scores."""
    root = os.environ.get("DDNB_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "ddnb") / "scores"


@dataclass
class Scores:
    """Difficulty scores of training images x_train[indices] (labels y_train[indices]), one per image.

    `per_seed` holds each seed's (c-score: each model's, NaN where it saw the image) scores; `config`
    everything that produced them (its hash is the cache key).
    """

    kind: str
    values: Tensor
    indices: Tensor
    labels: Tensor
    per_seed: Tensor
    higher_is_harder: bool
    config: dict[str, Any]

    @classmethod
    def from_values(cls, dataset: Dataset, kind: str, values: Tensor | Any, source: str = "given") -> Scores:
        """Scores of every training image from elsewhere (e.g. the official SelMatch .npy files), one per image."""
        require("kind", kind, Choice(*KINDS))
        v = torch.as_tensor(values, dtype=torch.float64).cpu()
        n = len(require_dataset(dataset).x_train)
        if v.shape != (n,) or not bool(torch.isfinite(v).all()):
            raise ValueError(f"values must be {n} finite numbers (one per training image of {dataset.name!r}), "
                             f"got shape {tuple(v.shape)}")
        config = {"kind": kind, "data": dataset_fingerprint(dataset), "source": source}
        return cls(kind, v, torch.arange(n), dataset.y_train.detach().cpu().long(), v[None], HIGHER_IS_HARDER[kind],
                   json.loads(json.dumps(config)))

    @property
    def key(self) -> str:
        """The cache key: a hash of the config."""
        return cache_key(self.config)

    def difficulty(self) -> Tensor:
        """The values oriented so that higher is harder."""
        return self.values if self.higher_is_harder else -self.values

    def check_dataset(self, dataset: Dataset) -> None:
        """ValueError unless the scores were computed for this dataset (name, training-set size and content)."""
        data = self.config["data"]
        if data != dataset_fingerprint(require_dataset(dataset)):
            raise ValueError(
                f"{self.kind} scores were computed for {data['name']!r} with {data['x_train'][0]} training images, "
                f"not for {dataset.name!r} with {len(dataset.x_train)}; allowed: scores computed for this dataset's "
                "training set (compute_scores(dataset, ...))")

    def summary(self) -> dict[str, Any]:
        """Kind, cache key and the settings (not the data fingerprint): for a set's provenance."""
        return {"kind": self.kind, "key": self.key, **{k: v for k, v in self.config.items() if k != "data"}}


def class_ranking(scores: Scores, order: str = "hard") -> list[Tensor]:
    """Per class, the training indices of its scored images, hardest first (order "hard") or easiest first.

    Ties keep ascending index order in both orders (a stable sort, as the official SelMatch code).
    """
    require("order", order, Choice(*ORDERS))
    key = -scores.difficulty() if order == "hard" else scores.difficulty()
    num_classes = scores.config["data"]["num_classes"]
    ranking = []
    for c in range(num_classes):
        members = torch.nonzero(scores.labels == c).view(-1)
        ranking.append(scores.indices[members[torch.sort(key[members], stable=True).indices]])
    return ranking


def compute_scores(
    dataset: Dataset, kind: str, arch: str = "convnet3", epochs: int | None = None, seeds: int | None = None, *,
    budget: str = "cpu", seed: int = 0, pool: int | None = None, model_kw: dict[str, Any] | None = None,
    batch_size: int | None = None, lr: float | None = None, fraction: float | None = None, last_layer: bool = False,
    temperature: float | None = None, teacher: nn.Module | None = None, soft_labels: Tensor | None = None,
    cache_dir: str | os.PathLike | None = None, device: str | torch.device | None = None, progress: bool = True,
) -> Scores:
    """Difficulty scores of every training image (or of a seeded pool per class), loaded from the cache when there.

    `epochs`, `seeds` (c-score: the number of models), `pool` (images per class, 0: all), `model_kw`,
    `batch_size`, `lr`, `fraction` (c-score) and `temperature` (el2n_sl) default to the budget's; seed i
    of n is `seed + i`. A corrupted or foreign cache file is recomputed, not trusted.
    """
    require_dataset(dataset)
    require("kind", kind, Choice(*KINDS))
    require("budget", budget, Choice(*BUDGETS))
    b = BUDGETS[budget]
    s = dict(arch=arch, epochs=b["epochs"][kind] if epochs is None else epochs,
             seeds=b["seeds"][kind] if seeds is None else seeds, seed=seed, pool=_pool(dataset, b, pool),
             batch_size=b["batch_size"] if batch_size is None else batch_size, lr=b["lr"] if lr is None else lr,
             fraction=b["fraction"] if fraction is None else fraction, last_layer=last_layer,
             temperature=b["temperature"] if temperature is None else temperature)
    model_kw = b["model_kw"] if model_kw is None else model_kw
    _check_settings(dataset, kind, s, model_kw, teacher, soft_labels)
    model_kw = dict(model_kw)
    dev = resolve_device(device)
    indices = (real_init_indices(dataset, s["pool"], seed) if s["pool"] else torch.arange(len(dataset.x_train))).cpu()
    targets = None
    if kind == "el2n_sl":
        targets = _soft_targets(dataset, indices, s["temperature"], teacher, soft_labels, dev)
    config = _config(dataset, kind, s, model_kw, indices, targets)
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = path / f"{dataset.name}_{kind}_{cache_key(config)}.safetensors"
    cached = _load(path, config)
    if cached is not None:
        return cached
    x = dataset.x_train[indices.to(dataset.x_train.device)].to(dev)
    y = dataset.y_train[indices.to(dataset.y_train.device)].to(dev)
    per_seed = _compute(dataset, kind, s, model_kw, x, y, targets, dev, progress)
    values = per_seed.nanmean(0) if kind == "cscore" else per_seed.mean(0)
    scores = Scores(kind, values, indices, y.cpu(), per_seed, HIGHER_IS_HARDER[kind], config)
    save_tensor_file(path, {"values": values, "indices": indices, "labels": scores.labels, "per_seed": per_seed},
                     {"config": config, "kind": kind}, FILE_KIND)
    return scores


def _pool(dataset: Dataset, budget: dict[str, Any], pool: int | None) -> int | None:
    """The pool size: the argument, else the budget's where every class has more images (else 0: all of them)."""
    if pool is not None:
        return pool
    return budget["pool"] if budget["pool"] < min(len(i) for i in dataset.class_indices()) else 0


def _check_settings(dataset: Dataset, kind: str, s: dict[str, Any], model_kw: dict[str, Any],
                    teacher: nn.Module | None, soft_labels: Tensor | None) -> None:
    """ValueError naming the first setting out of range, or targets given for a kind that takes none."""
    smallest = min(len(i) for i in dataset.class_indices())
    require("arch", s["arch"], Text())
    require("epochs", s["epochs"], Int(0 if kind in _FROM_INIT else 1))
    require("seeds", s["seeds"], Int(1))
    require("seed", s["seed"], Seed())
    require(f"pool (images per class; 0: all, the smallest class of {dataset.name!r} has {smallest})", s["pool"],
            Int(0, smallest))
    require("batch_size", s["batch_size"], Int(1))
    require("lr", s["lr"], Positive())
    require("fraction", s["fraction"], Float(0, 1, low_open=True, high_open=True))
    require("last_layer", s["last_layer"], Bool())
    require("temperature", s["temperature"], Positive())
    if not isinstance(model_kw, dict):
        raise ValueError(f"model_kw must be None or a dict of model arguments, got {model_kw!r}")
    if kind != "el2n_sl" and (teacher is not None or soft_labels is not None):
        raise ValueError(f"teacher / soft_labels are for kind 'el2n_sl' only, got them with kind {kind!r}")
    if kind == "el2n_sl" and (teacher is None) == (soft_labels is None):
        raise ValueError("kind 'el2n_sl' needs exactly one of teacher (a model) or soft_labels (N, K), got "
                         f"{'both' if teacher is not None else 'neither'}")
    if s["last_layer"] and kind != "grand":
        raise ValueError(f"last_layer is a GraNd option; allowed with kind 'grand' only, got kind {kind!r}")


def _soft_targets(dataset: Dataset, indices: Tensor, temperature: float, teacher: nn.Module | None,
                  soft_labels: Tensor | None, device: torch.device) -> Tensor:
    """q(x) of the scored images at temperature T: softmax(teacher(x) / T), or the given soft labels softened."""
    if teacher is not None:
        was_training = teacher.training
        logits = sk.logits_of(teacher.to(device), dataset.x_train[indices.to(dataset.x_train.device)].to(device))
        teacher.train(was_training)
        return soften(logits.float(), temperature, "soft_logits")
    n, k = len(dataset.x_train), dataset.num_classes
    if not isinstance(soft_labels, Tensor) or tuple(soft_labels.shape) != (n, k) or not soft_labels.is_floating_point():
        raise ValueError(f"soft_labels must be a float tensor of shape ({n}, {k}) (one row per training image), got "
                         f"{type(soft_labels).__name__} {tuple(getattr(soft_labels, 'shape', ()))}")
    labels = soft_labels.detach().to(device)
    return soften(labels[indices.to(device)], temperature, infer_label_kind(labels))


def dataset_fingerprint(dataset: Dataset) -> dict[str, Any]:
    """The data fingerprint of the experts' cache (name, shapes, content hash) plus the class count."""
    return {**data_fingerprint(dataset), "num_classes": dataset.num_classes}


def _digest(t: Tensor) -> str:
    """SHA-256 of a tensor's float32 bytes (the identity of soft targets in the cache key)."""
    return hashlib.sha256(t.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()


def _config(dataset: Dataset, kind: str, s: dict[str, Any], model_kw: dict[str, Any], indices: Tensor,
            targets: Tensor | None) -> dict[str, Any]:
    """Everything that determines the scores (its hash is the cache key); kind-specific settings only when used."""
    from ddnb import __version__

    config = {"kind": kind, "data": dataset_fingerprint(dataset), "arch": s["arch"],
              "model_kw": dict(sorted(model_kw.items())), "epochs": s["epochs"],
              "seeds": [s["seed"] + i for i in range(s["seeds"])], "pool": s["pool"],
              "pool_sha256": _digest(indices) if s["pool"] else None, "lr": s["lr"], "momentum": _MOMENTUM,
              "weight_decay": _WEIGHT_DECAY, "batch_size": s["batch_size"], "ddnb_version": __version__}
    if kind == "grand":
        config["last_layer"] = s["last_layer"]
    if kind == "cscore":
        config["fraction"] = s["fraction"]
    if kind == "el2n_sl":
        config.update(temperature=s["temperature"], targets_sha256=_digest(targets))
    return json.loads(json.dumps(config))


def _load(path: Path, config: dict[str, Any]) -> Scores | None:
    """The cached scores of `config`, or None when the file is missing, corrupted or written for another config."""
    if not path.is_file():
        return None
    try:
        tensors, meta = load_tensor_file(path, FILE_KIND)
        values, indices, labels, per_seed = (tensors[k] for k in ("values", "indices", "labels", "per_seed"))
        data = config["data"]
        n = config["pool"] * data["num_classes"] if config["pool"] else data["x_train"][0]
        if meta.get("config") != config or not values.shape == indices.shape == labels.shape == (n,) \
                or per_seed.shape[1:] != (n,):
            raise ValueError("it was written for another configuration")
    except (ValueError, KeyError) as exc:
        warnings.warn(f"score cache {path} is unusable ({exc}); recomputing", stacklevel=3)
        return None
    kind = config["kind"]
    return Scores(kind, values, indices, labels, per_seed, HIGHER_IS_HARDER[kind], config)


def _model(dataset: Dataset, arch: str, model_kw: dict[str, Any], seed: int, device: torch.device) -> nn.Module:
    """A freshly initialized scoring model for `dataset`, seeded without touching the global RNG state."""
    from ddnb.models import get_model

    c, h, _ = dataset.image_shape
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return get_model(arch, c, dataset.num_classes, h, **model_kw).to(device)


def _compute(dataset: Dataset, kind: str, s: dict[str, Any], model_kw: dict[str, Any], x: Tensor, y: Tensor,
             targets: Tensor | None, device: torch.device, progress: bool) -> Tensor:
    """(seeds, n) float64 scores, one row per seed (c-score: per model, NaN where the model trained on the image)."""
    settings = sk.FitSettings(s["lr"], _MOMENTUM, _WEIGHT_DECAY, s["batch_size"])
    epochs, rows = s["epochs"], []
    held_out = sk.holdout_masks(len(x), s["seeds"], s["fraction"], s["seed"]) if kind == "cscore" else None
    for i in tqdm(range(s["seeds"]), desc=f"scores {kind}", disable=not progress):
        seed = s["seed"] + i
        model = _model(dataset, s["arch"], model_kw, seed, device)
        if kind == "forgetting":
            rows.append(sk.forgetting_run(model, x, y, epochs, settings, seed))
        elif kind == "cscore":
            out = held_out[i].to(device)
            sk.fit(model, x[~out], y[~out], epochs, settings, seed)
            correct = (sk.logits_of(model, x).argmax(1) == y).double().cpu()
            rows.append(torch.where(held_out[i], correct, torch.full_like(correct, float("nan"))))
        elif kind == "el2n_sl":
            sk.fit(model, x, targets, epochs, settings, seed, loss_fn=sk.soft_targets_loss(s["temperature"]))
            rows.append(sk.el2n_sl_values(model, x, targets, s["temperature"]))
        else:
            sk.fit(model, x, y, epochs, settings, seed)
            if kind == "el2n":
                rows.append(sk.el2n_values(model, x, y))
            elif kind == "grand":
                rows.append(sk.grand_values(model, x, y, s["last_layer"], s["batch_size"]))
            else:
                rows.append(sk.true_logits(model, x, y))
    return torch.stack(rows).double()
