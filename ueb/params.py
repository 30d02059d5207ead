"""Typed parameters: plain dataclasses, filled from dicts (TOML, CLI) with strict checking.

Every plugin declares its parameters as a frozen dataclass. `parse_params` builds one from a
mapping, rejecting unknown keys (with the closest valid name as a hint) and values of the
wrong type, so a typo in a matrix file fails before any work starts.

A numeric parameter declares its range beside its type with `bounded` (one mechanism for every
plugin; the conformance kit checks that numeric parameters have one):

    eps: float = bounded(8 / 255, gt=0, le=1)
    steps: int | None = bounded(None, ge=1)          # None passes; a number must be >= 1
    kernel: tuple[int, ...] = bounded((3,), ge=1)    # every item is checked

`parse_params` checks every field, defaults included, so an out-of-range value stops the plan
with one line naming the parameter, the value and the range.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from ueb.errors import ConfigError

T = TypeVar("T")

BOUNDS_KEY = "ueb.bounds"


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The range a numeric parameter accepts: any of ge/gt (lower), le/lt (upper)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def contains(self, value: float) -> bool:
        if isinstance(value, float) and value != value:  # NaN is in no range
            return False
        if self.ge is not None and not value >= self.ge:
            return False
        if self.gt is not None and not value > self.gt:
            return False
        if self.le is not None and not value <= self.le:
            return False
        return not (self.lt is not None and not value < self.lt)

    def describe(self) -> str:
        """Interval notation: '(0, 1]', '[1, inf)'."""
        low = (
            f"[{_num(self.ge)}"
            if self.ge is not None
            else (f"({_num(self.gt)}" if self.gt is not None else "(-inf")
        )
        high = (
            f"{_num(self.le)}]"
            if self.le is not None
            else (f"{_num(self.lt)})" if self.lt is not None else "inf)")
        )
        return f"{low}, {high}"

    def outside(self) -> list[float]:
        """Values just outside the range (for tests that walk every plugin's parameters)."""
        out: list[float] = []
        if self.ge is not None:
            out.append(self.ge - max(1.0, abs(self.ge)))
        if self.gt is not None:
            out.append(self.gt)
        if self.le is not None:
            out.append(self.le + max(1.0, abs(self.le)))
        if self.lt is not None:
            out.append(self.lt)
        return out


def _num(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def bounded(
    default: Any = dataclasses.MISSING,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A dataclass field whose numeric value (or every item of a list) must lie in a range."""
    if ge is None and gt is None and le is None and lt is None:
        raise TypeError("bounded() needs at least one of ge, gt, le, lt")
    meta = {BOUNDS_KEY: Bounds(ge=ge, gt=gt, le=le, lt=lt)}
    if isinstance(default, (list, dict)):
        frozen = default
        return dataclasses.field(default_factory=lambda: type(frozen)(frozen), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def bounds_of(f: dataclasses.Field[Any]) -> Bounds | None:
    """The declared range of a dataclass field, if any."""
    found = f.metadata.get(BOUNDS_KEY)
    return found if isinstance(found, Bounds) else None


def check_bounds(params: Any, where: str) -> None:
    """Every bounded field of `params` in its range, or ConfigError naming it."""
    for f in dataclasses.fields(params):
        rng = bounds_of(f)
        if rng is None:
            continue
        value = getattr(params, f.name)
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if item is None or isinstance(item, bool) or not isinstance(item, (int, float)):
                continue
            if not rng.contains(item):
                raise ConfigError(
                    f"{where}: parameter '{f.name}' is {item!r}, outside its range "
                    f"{rng.describe()}",
                    f"give '{f.name}' a value in {rng.describe()}",
                )


def closest(name: str, choices: typing.Iterable[str]) -> str | None:
    """The most similar valid name, for 'did you mean' hints."""
    found = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return found[0] if found else None


def parse_params(cls: type[T], values: Mapping[str, Any] | None, where: str) -> T:
    """Build dataclass `cls` from `values`; `where` names the owner in error messages."""
    values = dict(values or {})
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in values if k not in fields]
    if unknown:
        key = unknown[0]
        hint = closest(key, fields)
        valid = ", ".join(sorted(fields)) or "none"
        fix = f"did you mean '{hint}'?" if hint else f"valid parameters: {valid}"
        raise ConfigError(f"unknown parameter '{key}' for {where}", fix)
    kwargs = {k: coerce(v, hints[k], f"{where}: parameter '{k}'") for k, v in values.items()}
    for key, value in kwargs.items():  # before __post_init__, so its checks see valid numbers
        rng = bounds_of(fields[key])
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if isinstance(item, (int, float)) and not isinstance(item, bool):
                if rng is not None and not rng.contains(item):
                    raise ConfigError(
                        f"{where}: parameter '{key}' is {item!r}, outside its range "
                        f"{rng.describe()}",
                        f"give '{key}' a value in {rng.describe()}",
                    )
                if isinstance(item, float) and not math.isfinite(item) and rng is None:
                    raise ConfigError(
                        f"{where}: parameter '{key}' is {item!r}", "give a finite number"
                    )
    try:
        built = cls(**kwargs)
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise ConfigError(f"invalid parameters for {where}: {exc}") from exc
    check_bounds(built, where)  # defaults too: a preset or default out of range is a bug
    return built


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against annotation `tp`, converting CLI strings where unambiguous."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) > 1:  # say every form the value may take, not just the first
            forms = " or ".join(_expected(a) for a in args if a is not type(None))
            raise ConfigError(f"{where} should be {forms}, got {value!r}")
        raise errors[0] if errors else ConfigError(f"{where} cannot be None")
    if origin is Literal:
        allowed = get_args(tp)
        if value in allowed:
            return value
        hint = closest(str(value), [str(a) for a in allowed])
        fix = f"did you mean '{hint}'?" if hint else f"one of {', '.join(map(str, allowed))}"
        raise ConfigError(f"{where} is {value!r}, not an allowed value", fix)
    if origin in (tuple, list):
        args = get_args(tp)
        if isinstance(value, str):  # "16,64,128" or "[16, 64, 128]" (also "(16, 64, 128)")
            text = value.strip()
            if len(text) >= 2 and (text[0], text[-1]) in (("[", "]"), ("(", ")")):
                text = text[1:-1]
            value = [v for v in (s.strip() for s in text.split(",")) if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} should be a list, got {type(value).__name__}")
        item_tp = args[0] if args else Any
        items = [coerce(v, item_tp, where) for v in value]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} should be a table, got {type(value).__name__}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in (
            "true",
            "1",
            "yes",
            "on",
            "false",
            "0",
            "no",
            "off",
        ):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{where} should be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where} should be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return (
                    int(float(value))
                    if float(value).is_integer()
                    else _bad(value, "an integer", where)
                )
            except ValueError:
                pass
        return _bad(value, "an integer", where)
    if tp is float:
        if isinstance(value, bool):
            return _bad(value, "a number", where)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return _parse_number(value)
            except ValueError:
                pass
        return _bad(value, "a number", where)
    if tp is str:
        if isinstance(value, str):
            return value
        return _bad(value, "a string", where)
    return value


def _parse_number(text: str) -> float:
    """Numbers as papers write them: '0.1', '1e-4', '8/255'."""
    if "/" in text:
        num, den = text.split("/", 1)
        if float(den) == 0:
            raise ValueError(f"{text!r} divides by zero")
        return float(num) / float(den)
    return float(text)


def _expected(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " or ".join(repr(a) for a in get_args(tp))
    names = {int: "an integer", float: "a number", bool: "true or false", str: "text"}
    return names.get(tp, "a list" if get_origin(tp) in (tuple, list) else str(tp))


def _bad(value: Any, expected: str, where: str) -> Any:
    raise ConfigError(f"{where} should be {expected}, got {value!r}")


def as_dict(params: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a params dataclass (tuples become lists)."""
    if params is None:
        return {}
    return json.loads(json.dumps(dataclasses.asdict(params), default=str))


def params_hash(*parts: Any) -> str:
    """Stable short hash of JSON-serialisable parts (dataclasses are converted)."""
    norm = [as_dict(p) if dataclasses.is_dataclass(p) else p for p in parts]
    blob = json.dumps(norm, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
