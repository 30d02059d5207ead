"""The one resolver of plugin parameters, and the one instantiator of a resolved plugin.

`SpecResolver` turns a plugin's name into a `Spec`: its parameters layered (the registered
defaults < its scale preset < the profile's `[plugins.NAME]` tables < the user's params < a grid
variant's values), typed, bound to the training protocol and preflighted, its requirements
resolved, a dataset loaded and fingerprinted. `instantiate` builds the plugin a Spec names, with
exactly the Spec's typed parameters. A run, the detection table, the analysis commands, the
plugins' own command lines, the conformance kit and the docs checker all go through these two,
so a parameter means the same thing on every path.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ueb import identity
from ueb.errors import ConfigError, PluginError
from ueb.interfaces import Plugin, Requirement
from ueb.params import as_dict, parse_params
from ueb.plan_model import Spec
from ueb.profile import Profile, TrainingConfig, matching_plugin_settings
from ueb.registry import Registry
from ueb.splits import load_splits


def bind_to(instance: Plugin, training: TrainingConfig, where: str) -> Plugin:
    """`instance` bound to the training protocol as a run binds it: `bind`'s result must be the
    plugin's own Params, and is typed and range-checked again."""
    bound = instance.bind(training)
    if bound is not instance.params:
        if type(bound) is not type(instance).Params:
            raise PluginError(
                f"{where}: bind() returned {type(bound).__name__}, not its Params",
                "return dataclasses.replace(self.params, ...) from bind()",
            )
        instance.params = parse_params(type(instance).Params, as_dict(bound), where=where)
    return instance


def instantiate(registry: Registry, spec: Spec) -> Any:
    """The plugin of `spec`, with exactly the spec's typed parameters (no layering, no bind:
    the spec holds their result). Raises PluginError when the registered class is no longer
    the one the spec was resolved with."""
    cls = registry.get(spec.kind, spec.entry).load_class()
    got = f"{cls.__module__}:{cls.__qualname__}"
    if got != spec.target or str(cls.version) != spec.version:
        raise PluginError(
            f"{spec.kind} '{spec.name}' is now {got}@{cls.version}, but the run was planned with {spec.target}@{spec.version}",
            "re-run the command so that the plan is made again",
        )
    return cls(
        parse_params(cls.Params, dict(spec.params), where=f"{spec.kind} '{spec.name}'"),
        name=spec.name,
    )


def spec_from_description(data: Mapping[str, Any]) -> Spec:
    """The Spec a run stored (`Spec.describe()`, in the manifest's `specs`). Runs stored before
    requirements carried their names give those requirements an empty name: their identity is
    whole, but they cannot be built by name."""
    name = str(data.get("name") or "")
    return Spec(
        kind=str(data["kind"]),
        name=name,
        entry=str(data.get("entry") or name),
        target=str(data["target"]),
        version=str(data["version"]),
        params=dict(data.get("params") or {}),
        requires=tuple(spec_from_description(r) for r in data.get("requires") or ()),
        fingerprint=str(data.get("fingerprint") or ""),
        inputs=dict(data.get("inputs") or {}),
    )


class SpecResolver:
    """Names -> Specs for one profile and one set of user parameters (see the module doc).

    `user_params` maps a plugin name to its KEY=VALUE settings (strings are typed by the
    plugin's Params); `variants` maps a grid variant's name to (kind, base, grid values).
    With `load_data`, a dataset's spec carries the fingerprint of the subsets the run uses
    (which loads it); without, the fingerprint is empty.
    """

    def __init__(
        self,
        registry: Registry,
        profile: Profile,
        user_params: Mapping[str, Mapping[str, Any]] | None = None,
        variants: Mapping[str, tuple[str, str, dict[str, Any]]] | None = None,
        data_root: str | Path | None = None,
        load_data: bool = False,
    ):
        self.registry = registry
        self.profile = profile
        self.user_params = {k: dict(v) for k, v in (user_params or {}).items()}
        self.variants = dict(variants or {})
        self.data_root = data_root
        self.load_data = load_data
        self.instances: dict[tuple[str, str], Plugin] = {}
        self.dataset_shapes: dict[str, tuple[int, int, int]] = {}

    @property
    def scale(self) -> str:
        return self.profile.scale or self.profile.name

    def layered_params(self, kind: str, name: str) -> tuple[str, dict[str, Any]]:
        """(entry name, parameters): preset < profile < user, then a variant's grid values."""
        user = self.user_params
        if name in self.variants:
            _kind, base, values = self.variants[name]
            layered = {
                **self._below_user(kind, base),
                **user.get(base, {}),
                **values,
                **user.get(name, {}),
            }
            return base, layered
        return name, {**self._below_user(kind, name), **user.get(name, {})}

    def _below_user(self, kind: str, name: str) -> dict[str, Any]:
        entry = self.registry.get(kind, name)
        cls = entry.load_class()
        preset = entry.presets().get(self.scale, {})
        fields = set(getattr(cls.Params, "__dataclass_fields__", {}))
        unknown = [k for k in preset if k not in fields]
        if unknown:
            raise PluginError(
                f"{kind} '{name}' ships a '{self.scale}' preset with unknown parameter '{unknown[0]}'",
                "fix the plugin's `presets` (its class attribute or its register(..., presets=))",
            )
        return {**preset, **matching_plugin_settings(self.profile.plugins, name)}

    def unbound(self, kind: str, name: str) -> Any:
        """Plugin `name` with its layered, typed parameters, before `bind` and `preflight` (what
        the docs' tables list: a value that follows the training protocol still reads None)."""
        entry_name, params = self.layered_params(kind, name)
        instance = self.registry.get(kind, entry_name).create(params)
        instance.name = name
        return instance

    def spec(self, kind: str, name: str) -> Spec:
        """The spec of plugin `name` (a registered name or a grid variant's) with its
        parameters layered as the module doc says."""
        entry_name, params = self.layered_params(kind, name)
        return self.spec_with(kind, name, entry_name, params, top_level=True)

    def spec_with(
        self,
        kind: str,
        name: str,
        entry_name: str,
        params: Mapping[str, Any],
        top_level: bool = False,
    ) -> Spec:
        """The spec of `entry_name` with exactly `params` over its registered defaults (a
        requirement's parameters, which no preset or profile changes)."""
        entry = self.registry.get(kind, entry_name)
        instance = entry.create(params)
        instance.name = name
        bind_to(instance, self.profile.training, where=f"{kind} '{name}'")
        instance.preflight()
        inputs = dict(instance.input_identity())
        requires = tuple(self._requirement(instance, r) for r in instance.requires())
        fingerprint = ""
        if kind == "dataset" and self.load_data:
            fingerprint = self._fingerprint(instance, name, top_level)
        cls = type(instance)
        spec = Spec(
            kind=kind,
            name=name,
            entry=entry_name,
            target=f"{cls.__module__}:{cls.__qualname__}",
            version=str(cls.version),
            params=as_dict(instance.params),
            requires=requires,
            fingerprint=fingerprint,
            inputs=inputs,
        )
        if top_level:
            self.instances[(kind, name)] = instance
        return spec

    def _requirement(self, owner: Plugin, req: Requirement) -> Spec:
        if not isinstance(req, Requirement):
            raise PluginError(
                f"{owner.kind} '{owner.name}' requires() returned {req!r}",
                "return ueb.interfaces.Requirement objects",
            )
        where = f"{owner.kind} '{owner.name}'"
        try:
            self.registry.get(req.kind, req.name)
        except ConfigError as exc:
            raise ConfigError(f"{where} requires {exc.problem}", exc.fix) from None
        return self.spec_with(req.kind, req.name, req.name, dict(req.params))

    def _fingerprint(self, dataset: Any, name: str, top_level: bool) -> str:
        digest = identity.digest(
            type(dataset).__qualname__, type(dataset).version, as_dict(dataset.params)
        )
        data = self.profile.data if top_level else type(self.profile.data)()
        root = None if self.data_root is None else str(self.data_root)
        splits = load_splits(dataset, digest, root, data)
        if top_level:
            self.dataset_shapes[name] = (
                splits.train.channels,
                splits.train.image_size,
                splits.train.image_size,
            )
        return f"{splits.train.fingerprint()}/{splits.test.fingerprint()}"
