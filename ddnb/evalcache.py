"""On-disk caches for long studies (notebook 05): evaluations and sets, each keyed by the hash of
everything that produced it, so that a killed run re-executed skips what it has finished.

`cached_evaluate` stores an `EvalResult` as JSON under the hash of the set's content (images, labels,
label kind, factor), the dataset (training fingerprint plus a digest of its test split, so a test subset
is a different key), the architecture, seeds, the fully resolved training settings, a digest of the
teacher's weights (SL+KD), the curve epochs and the ddnb version. `cached_set` stores a SyntheticSet
(safetensors + JSON header) under the hash of a config the caller gives. Nothing is pickled. The device
is not part of a key: a result computed on another device is reused (equal up to float rounding).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from torch import Tensor, nn

from ddnb.experts import cache_key, data_fingerprint
from ddnb.precision import resolve_precision
from ddnb.synset import SyntheticSet, require_synset
from ddnb.utils import atomic_save_json, resolve_device

if TYPE_CHECKING:
    from ddnb.data import Dataset
    from ddnb.train import EvalResult


def default_cache_dir(what: str) -> Path:
    """$DDNB_CACHE/<what>, else ~/.cache/ddnb/<what>."""
    root = os.environ.get("DDNB_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "ddnb") / what


def tensor_digest(*tensors: Tensor) -> str:
    """SHA-256 over the float32 (or int64) bytes and shapes of the given tensors."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu()
        t = t.long() if not t.is_floating_point() else t.float()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def module_digest(model: nn.Module) -> str:
    """SHA-256 of a module's state (parameters and buffers, in name order)."""
    state = model.state_dict()
    return tensor_digest(*(state[k] for k in sorted(state))) + ":" + ",".join(sorted(state))[:64]


def eval_config(synset: SyntheticSet, dataset: Dataset, arch: str, seeds: Sequence[int], epochs: int | None,
                dsa: bool | str | None, protocol: str | None, model_kw: dict[str, Any] | None,
                curve_epochs: Sequence[int] | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """Everything that determines an evaluation's result (its hash is the cache key)."""
    from ddnb import __version__
    from ddnb.train import chosen_protocol

    images, labels = synset.decoded()
    settings = chosen_protocol(synset, protocol, epochs, dsa, dict(overrides))
    teacher = settings.pop("teacher", None)
    return json.loads(json.dumps({
        "set": tensor_digest(images, labels), "label_kind": synset.label_kind,
        "data": data_fingerprint(dataset), "test": tensor_digest(dataset.x_test, dataset.y_test), "arch": arch,
        "model_kw": dict(sorted((model_kw or {}).items())), "seeds": [int(s) for s in seeds],
        "settings": {k: v for k, v in settings.items() if k != "source"},
        "teacher": module_digest(teacher) if teacher is not None else None,
        "curve_epochs": sorted(set(curve_epochs or ())), "ddnb_version": __version__}, default=str))


def cached_evaluate(synset: SyntheticSet, dataset: Dataset, cache_dir: str | os.PathLike | None = None, *,
                    arch: str = "convnet3", seeds: Sequence[int] = (0,), epochs: int | None = None,
                    protocol: str | None = None, model_kw: dict[str, Any] | None = None,
                    curve_epochs: Sequence[int] | None = None, **kw: Any) -> EvalResult:
    """`evaluate_synset` with the result cached as JSON (cache_dir None: $DDNB_CACHE/evals); same arguments.

    `kw` are further evaluate_synset arguments: device, progress and batched do not enter the key;
    training settings (teacher, lr, ...) do, and precision when it is not fp32.
    """
    from ddnb.train import EvalResult, evaluate_synset

    require_synset(synset)
    seeds = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    run_kw = {k: kw.pop(k) for k in ("device", "progress", "batched") if k in kw}
    dsa, precision = kw.pop("dsa", None), kw.pop("precision", "fp32")
    config = eval_config(synset, dataset, arch, seeds, epochs, dsa, protocol, model_kw, curve_epochs, kw)
    if precision != "fp32":  # in the key only when used, so fp32 results keep their keys
        config["precision"] = resolve_precision(precision, resolve_device(run_kw.get("device")))
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir("evals")
    path = folder / f"{dataset.name}_{arch}_{cache_key(config)}.json"
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
            if stored.get("config") == config:
                result = dict(stored["result"])
                result["curve"] = {int(e): v for e, v in result["curve"].items()}
                return EvalResult(**result)
        except (ValueError, KeyError, TypeError):
            pass  # a damaged or foreign file: evaluate again and replace it
    result = evaluate_synset(synset, dataset, arch=arch, seeds=seeds, epochs=epochs, dsa=dsa, protocol=protocol,
                             model_kw=model_kw, curve_epochs=curve_epochs, precision=precision, **run_kw, **kw)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_save_json(path, {"config": config, "result": result.to_dict()})
    return result


def cached_set(config: dict[str, Any], make: Callable[[], SyntheticSet],
               cache_dir: str | os.PathLike | None = None) -> SyntheticSet:
    """The set `make()` builds, saved under the hash of `config` (which must name everything that determines
    it) and loaded from there next time (cache_dir None: $DDNB_CACHE/sets)."""
    if not isinstance(config, dict) or not config:
        raise ValueError(f"config must be a non-empty dict naming what determines the set, got {config!r}")
    plain = json.loads(json.dumps(config, default=str))
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir("sets")
    path = folder / f"{cache_key(plain)}.safetensors"
    if path.is_file():
        try:
            synset = SyntheticSet.load(path)
            if synset.provenance.get("cache_config") == plain:
                return synset
        except ValueError:
            pass  # damaged: rebuild and replace
    synset = require_synset(make())
    folder.mkdir(parents=True, exist_ok=True)
    stored = SyntheticSet(synset.images.detach().cpu(), synset.labels.detach().cpu(), synset.dataset,
                          synset.num_classes, synset.image_shape, synset.factor,
                          {**synset.provenance, "cache_config": plain}, synset.label_kind)
    stored.save(path)
    return stored
