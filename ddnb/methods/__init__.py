"""The method registry: one name per distillation or selection method, reached the same way
from notebooks, sweeps and the CLI (`ddnb.distill`, `ddnb.select`, `ddnb.list_methods`)."""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from ddnb.settings import Int, Seed, Spec, check_settings, check_spec, require

KINDS = ("select", "distill")
BUDGETS = ("smoke", "cpu", "paper")
# Modules that register methods when imported; add a module here when you add a method file.
_METHOD_MODULES = ("ddnb.methods.coreset", "ddnb.methods.dm", "ddnb.methods.dc", "ddnb.methods.mtt",
                  "ddnb.methods.dance", "ddnb.methods.dream", "ddnb.methods.selection",
                  "ddnb.methods.selmatch", "ddnb.methods.ccfs", "ddnb.methods.sre2l", "ddnb.methods.cad_prune")


@dataclass
class MethodInfo:
    """A registered method: its entry point, kind, named budgets, the spec of their settings, its paper.

    `check(settings)` (optional) raises ValueError for combinations of settings that each spec allows
    alone but the method does not (start epochs beyond the experts' length, ...). `iterations_setting`
    names the setting that counts a distiller's loop iterations (CCFS: "curricula", its phases).
    """

    name: str
    kind: str
    fn: Callable[..., Any]
    budgets: dict[str, dict[str, Any]] = field(default_factory=dict)
    spec: dict[str, Spec] = field(default_factory=dict)
    check: Callable[[dict[str, Any]], None] | None = None
    paper: str = ""
    summary: str = ""
    iterations_setting: str = "iterations"


_REGISTRY: dict[str, MethodInfo] = {}


def register(name: str, kind: str, budgets: dict[str, dict[str, Any]] | None = None,
             spec: dict[str, Spec] | None = None, check: Callable[[dict[str, Any]], None] | None = None,
             paper: str = "", summary: str = "",
             iterations_setting: str = "iterations") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: put an entry point in the registry under `name`.

    A distill entry point is `fn(dataset, ipc, *, seed, device, budget, settings, run)` (`run`: a
    `ddnb.methods.loop.RunOptions`); every setting of every budget needs a spec. `iterations_setting`:
    the setting that counts the loop's iterations.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    check_spec(name, spec or {}, budgets or {})

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"method {name!r} is registered twice")
        doc_line = (fn.__doc__ or "").strip().split("\n")[0]
        _REGISTRY[name] = MethodInfo(name, kind, fn, dict(budgets or {}), dict(spec or {}), check, paper,
                                     summary or doc_line, iterations_setting)
        return fn

    return deco


def _load_all() -> None:
    """Import every method module so its @register calls run."""
    for mod in _METHOD_MODULES:
        importlib.import_module(mod)


def get_method(name: str, kind: str | None = None) -> MethodInfo:
    """Look a method up by name; an unknown name lists the known ones."""
    _load_all()
    info = _REGISTRY.get(name) if isinstance(name, str) else None
    if info is None or (kind is not None and info.kind != kind):
        known = sorted(n for n, i in _REGISTRY.items() if kind is None or i.kind == kind)
        what = f"{kind} method" if kind else "method"
        raise ValueError(f"unknown {what} {name!r}; known: {', '.join(known)}")
    return info


def list_methods() -> list[dict[str, Any]]:
    """Every registered method with its kind, budgets and the paper its `paper` budget follows."""
    _load_all()
    return [
        {"name": i.name, "kind": i.kind, "budgets": sorted(i.budgets), "paper": i.paper, "summary": i.summary}
        for i in sorted(_REGISTRY.values(), key=lambda i: (i.kind, i.name))
    ]


def resolve_budget(info: MethodInfo, budget: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The settings of a named budget with single settings overridden, checked against the method's spec."""
    if not isinstance(budget, str) or budget not in info.budgets:
        raise ValueError(f"unknown budget {budget!r} for method {info.name!r}; allowed: {', '.join(info.budgets)}")
    settings = dict(info.budgets[budget])
    unknown = sorted(set(overrides) - set(settings))
    if unknown:
        raise ValueError(
            f"unknown setting(s) {', '.join(map(repr, unknown))} for method {info.name!r}; "
            f"allowed: {', '.join(sorted(settings))}")
    settings.update(overrides)
    check_settings(info.name, info.spec, settings)
    if info.check is not None:
        info.check(settings)
    return settings


def _check_call(dataset: Any, ipc: Any, seed: Any, device: Any) -> None:
    """ValueError for the arguments every method takes: a loaded Dataset, ipc, seed and a device that is here."""
    from ddnb.data import require_dataset
    from ddnb.utils import resolve_device

    require_dataset(dataset)
    require("ipc", ipc, Int(1))
    require("seed", seed, Seed())
    resolve_device(device)


def select_arguments(method: str) -> list[str]:
    """The keyword arguments of a selection method beyond dataset, ipc, seed and device (its own settings)."""
    fn = get_method(method, "select").fn
    return [p for p in inspect.signature(fn).parameters if p not in ("dataset", "ipc", "seed", "device")]


def select(method: str, dataset: Any, ipc: int, seed: int = 0, device: Any = None, **kw: Any):
    """Run a selection method: returns (SyntheticSet of real images, chosen indices).

    The set is returned on `device` when one is given (else where the dataset is); the feature
    selectors (herding, kcenter) also compute their features there. `kw` are the method's own
    keyword arguments (arch, model, batch_size).
    """
    info = get_method(method, "select")
    _check_call(dataset, ipc, seed, device)
    own = select_arguments(method)
    unknown = sorted(set(kw) - set(own))
    if unknown:
        raise ValueError(f"unknown argument(s) {', '.join(map(repr, unknown))} for selection method {method!r}; "
                         f"allowed: {', '.join(own)}")
    synset, indices = info.fn(dataset, ipc, seed=seed, device=device, **kw)
    return (synset.to(device) if device is not None else synset), indices


def distill(method: str, dataset: Any, ipc: int, budget: str = "cpu", seed: int = 0, device: Any = None,
            **overrides: Any):
    """Run a distillation method under a named budget: returns (SyntheticSet, History).

    `overrides` are the method's settings plus the options of the run (`RunOptions` fields: out_dir,
    resume, progress, checkpoint_every, eval_every, callback). Every argument is checked before any
    work starts (the run options by `RunOptions` itself).
    """
    from ddnb.methods.loop import RunOptions

    info = get_method(method, "distill")
    _check_call(dataset, ipc, seed, device)
    options = set(RunOptions.__dataclass_fields__)
    settings = resolve_budget(info, budget, {k: v for k, v in overrides.items() if k not in options})
    run = RunOptions(**{k: v for k, v in overrides.items() if k in options})  # checks itself
    return info.fn(dataset, ipc, seed=seed, device=device, budget=budget, settings=settings, run=run)
