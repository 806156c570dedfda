"""Method settings declared once, next to each method's budgets, and checked in one place.

A method declares the type and range of every setting (`Int`, `Float`, `Bool`, `Choice`, `Strategy`, `Text`),
in the spirit of scikit-learn's `validate_params`; `check_settings` runs for every method when its
budget is resolved (API and CLI `--set` alike), so a bad value fails before any work starts, with
one line naming the setting, the value and what is allowed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class Spec:
    """What one setting accepts: a kind (int, float, bool, choice, text, strategy), bounds, choices, None."""

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] = ()
    optional: bool = False
    bool_ok: bool = False

    def accepts(self, value: Any) -> bool:
        """Whether `value` is allowed."""
        if value is None:
            return self.optional
        if self.kind == "bool" or (self.bool_ok and isinstance(value, bool)):
            return isinstance(value, bool)
        if self.kind == "strategy":
            return isinstance(value, str) and _valid_strategy(value)
        if self.kind == "choice":
            return any(value == c and type(value) is type(c) for c in self.choices)
        if self.kind == "text":
            return isinstance(value, str)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def describe(self) -> str:
        """What is allowed, in words (e.g. "an int >= 1", "one of 'mse', 'mae'", "None or a float > 0")."""
        if self.kind == "bool":
            text = "true or false"
        elif self.kind == "choice":
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.kind == "text":
            text = "a string"
        elif self.kind == "strategy":
            text = f"{'true, false or ' if self.bool_ok else ''}a DSA strategy such as 'color_crop_cutout'"
        else:
            fmt = "d" if self.kind == "int" else "g"  # an int bound in full: 9223372036854775807, not 9.22337e+18
            bounds = []
            if self.low is not None:
                bounds.append(f"{'>' if self.low_open else '>='} {self.low:{fmt}}")
            if self.high is not None:
                bounds.append(f"{'<' if self.high_open else '<='} {self.high:{fmt}}")
            noun = "an int" if self.kind == "int" else "a finite number"
            text = " ".join([noun, " and ".join(bounds)]) if bounds else noun
        return f"None or {text}" if self.optional else text


def Int(low: int | None = 0, high: int | None = None, *, optional: bool = False) -> Spec:
    """An int setting in [low, high] (bool is not an int here)."""
    return Spec("int", low, high, optional=optional)


def Seed() -> Spec:
    """A random seed: an int in [0, 2**63 - 1] (what torch.manual_seed and numpy accept alike)."""
    return Int(0, 2**63 - 1)


def Float(low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False,
          optional: bool = False) -> Spec:
    """A finite number in the given (open or closed) bounds; ints are accepted."""
    return Spec("float", low, high, low_open, high_open, optional=optional)


def Positive(*, optional: bool = False) -> Spec:
    """A finite number > 0 (learning rates, weights)."""
    return Float(0.0, low_open=True, optional=optional)


def Bool() -> Spec:
    """True or False."""
    return Spec("bool")


def Choice(*choices: Any, optional: bool = False) -> Spec:
    """One of the given values (compared with their type: 1 is not True)."""
    return Spec("choice", choices=tuple(choices), optional=optional)


def Strategy(*, optional: bool = True, bool_ok: bool = False) -> Spec:
    """A DSA strategy string (pieces joined by '_'); None (off) when optional, True/False when bool_ok."""
    return Spec("strategy", optional=optional, bool_ok=bool_ok)


def _valid_strategy(value: str) -> bool:
    """Whether `value` parses as a DSA strategy (ddnb.augment.parse_strategy)."""
    from ddnb.augment import parse_strategy

    try:
        parse_strategy(value)
    except ValueError:
        return False
    return True


def Text(*, optional: bool = False) -> Spec:
    """Any string (a model name checked later by its own registry, a folder)."""
    return Spec("text", optional=optional)


def check_spec(method: str, spec: Mapping[str, Spec], budgets: Mapping[str, Mapping[str, Any]]) -> None:
    """ValueError when a budget has a setting without a spec, or a spec names no setting (caught at registration)."""
    for budget, settings in budgets.items():
        missing, extra = sorted(set(settings) - set(spec)), sorted(set(spec) - set(settings))
        if missing or extra:
            raise ValueError(f"method {method!r} budget {budget!r}: settings without a spec {missing}, "
                             f"specs without a setting {extra}")


def check_settings(method: str, spec: Mapping[str, Spec], settings: Mapping[str, Any]) -> None:
    """ValueError naming the first setting whose value the spec does not allow, the value and what is allowed."""
    for key, value in settings.items():
        rule = spec[key]
        if not rule.accepts(value):
            raise ValueError(f"{method} setting {key}={value!r} is not allowed; allowed: {rule.describe()}")


def require(name: str, value: Any, spec: Spec) -> Any:
    """`value` if the spec allows it, else ValueError "`name` must be <what is allowed>, got <value>" (arguments)."""
    if not spec.accepts(value):
        raise ValueError(f"{name} must be {spec.describe()}, got {value!r}")
    return value
