"""What every plugin declares (version, Params with ranges, presets, requires()), checked the
way a run prepares an instance.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from typing import Any

from ueb.params import bounds_of

if typing.TYPE_CHECKING:
    from ueb.interfaces import Plugin
    from ueb.profile import TrainingConfig

# --------------------------------------------------------------------------- declarations


def _who(plugin: Plugin) -> str:
    return f"{plugin.kind} '{plugin.name}' ({type(plugin).__module__}:{type(plugin).__qualname__})"


def _instantiate(
    plugin: Any, base: type, params: Mapping[str, Any] | None, training: TrainingConfig
) -> Any:
    """An instance prepared as a run prepares it: typed parameters, `bind`, `preflight`."""
    from ueb.errors import ConfigError, PluginError
    from ueb.params import parse_params
    from ueb.plan_specs import bind_to

    if isinstance(plugin, type):
        if not issubclass(plugin, base):
            raise AssertionError(
                f"{plugin.__qualname__} is not a {base.__name__} subclass; subclass ueb.interfaces.{base.__name__}"
            )
        cls: Any = plugin
        _check_params_class(cls)
        try:
            typed = parse_params(cls.Params, params, where=f"{cls.kind} {cls.__qualname__}")
        except ConfigError as exc:
            raise AssertionError(
                f"{cls.__qualname__}: the parameters given to the check do not parse: {exc.line()}"
            ) from exc
        instance: Any = cls(typed, name=cls.__name__.lower())
    else:
        if not isinstance(plugin, base):
            raise AssertionError(
                f"{plugin!r} is not a {base.__name__}; pass a {base.__name__} subclass or instance"
            )
        if params:
            raise TypeError("pass params only with a class; an instance already has its parameters")
        instance = plugin
        cls = type(plugin)
        _check_params_class(cls)
    who = _who(instance)
    _check_declarations(instance, who)
    try:
        bind_to(instance, training, where=who)
    except PluginError as exc:
        raise AssertionError(exc.line()) from None
    instance.preflight()
    identity = instance.input_identity()
    try:
        json.dumps(dict(identity), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise AssertionError(
            f"{who}.input_identity() is not a JSON-able mapping ({exc}); return sizes, dates, hashes"
        ) from exc
    return instance


def _check_params_class(cls: type) -> None:
    params_cls = getattr(cls, "Params", None)
    name = cls.__qualname__
    if not (isinstance(params_cls, type) and dataclasses.is_dataclass(params_cls)):
        raise AssertionError(
            f"{name}.Params is not a dataclass; declare `@dataclass(frozen=True) class Params:` inside the class"
        )
    if not params_cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise AssertionError(
            f"{name}.Params is not frozen; use @dataclass(frozen=True) (parameters are hashed into cache keys)"
        )
    try:
        hints = typing.get_type_hints(params_cls)
    except Exception as exc:
        raise AssertionError(
            f"{name}.Params has annotations that cannot be resolved ({type(exc).__name__}: {exc}); import the types they name at module level"
        ) from exc
    unbounded = [
        f.name
        for f in dataclasses.fields(params_cls)
        if f.init and is_numeric(hints.get(f.name)) and bounds_of(f) is None
    ]
    if unbounded:
        raise AssertionError(
            f"{name}.Params has numeric parameters without a range: {', '.join(unbounded)}; "
            "declare each with ueb.params.bounded(default, ge=/gt=/le=/lt=) so an out-of-range value stops the plan"
        )


def is_numeric(tp: Any) -> bool:
    """int or float, alone, optional, or as the items of a list/tuple (bool is not numeric)."""
    if tp in (int, float):
        return True
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None) and a is not Ellipsis]
    if origin in (typing.Union, types.UnionType):
        return any(is_numeric(a) for a in args)
    if origin in (list, tuple):
        return bool(args) and all(is_numeric(a) for a in args)
    return False


def _check_declarations(instance: Plugin, who: str) -> None:
    """version, Params (strict parsing, a lossless round trip through stored JSON), presets, requires()."""
    from ueb.errors import ConfigError
    from ueb.interfaces import Requirement
    from ueb.params import as_dict, parse_params
    from ueb.registry import KINDS

    cls = type(instance)
    if not isinstance(cls.version, str) or not cls.version.strip():
        raise AssertionError(
            f'{who} has version {cls.version!r}; declare `version = "1"` (a non-empty string, bumped when its numbers change)'
        )
    if type(instance.params) is not cls.Params:
        raise AssertionError(
            f"{who}.params is a {type(instance.params).__name__}, not its Params; keep the instance's params as the Params dataclass"
        )
    stored = as_dict(instance.params)
    try:
        json.dumps(stored, allow_nan=False)
    except ValueError as exc:
        raise AssertionError(
            f"{who} has a parameter that is not finite JSON ({exc}); stored results are strict JSON"
        ) from exc
    try:
        again = parse_params(cls.Params, stored, where=who)
    except ConfigError as exc:
        raise AssertionError(
            f"{who}'s parameters do not parse back from their stored form {stored}: {exc.line()}; make each default match its annotation"
        ) from exc
    if again != instance.params:
        diff = [
            f.name
            for f in dataclasses.fields(cls.Params)
            if getattr(again, f.name) != getattr(instance.params, f.name)
        ]
        raise AssertionError(
            f"{who}'s parameters change in a round trip through JSON ({', '.join(diff)}); annotate them with the type the default has"
        )
    try:
        parse_params(cls.Params, {**stored, "not_a_parameter": 1}, where=who)
    except ConfigError:
        pass
    else:
        raise AssertionError(
            f"{who}.Params accepted an unknown key; Params must be a plain dataclass parsed by ueb.params.parse_params"
        )
    presets = cls.presets
    if not isinstance(presets, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Mapping) for k, v in presets.items()
    ):
        raise AssertionError(
            f"{who}.presets must map scale names ('smoke', 'quick', 'paper') to tables of parameters, got {presets!r}"
        )
    for scale, preset in presets.items():
        try:
            parse_params(cls.Params, {**stored, **preset}, where=f"{who} preset '{scale}'")
        except ConfigError as exc:
            raise AssertionError(f"{who}.presets['{scale}'] does not parse: {exc.line()}") from exc
    requirements = instance.requires()
    if not isinstance(requirements, list | tuple):
        raise AssertionError(
            f"{who}.requires() returned {type(requirements).__name__}; return a list of ueb.interfaces.Requirement"
        )
    for req in requirements:
        if not isinstance(req, Requirement):
            raise AssertionError(
                f"{who}.requires() returned {req!r}; return ueb.interfaces.Requirement(kind, name, params)"
            )
        if req.kind not in KINDS:
            raise AssertionError(
                f"{who}.requires() names kind '{req.kind}'; use one of {', '.join(KINDS)}"
            )
