"""Selected names -> Specs: each plugin's parameters layered, typed, bound and preflighted, its
requirements resolved, its dataset loaded and fingerprinted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ueb import identity
from ueb.config import RunConfig
from ueb.errors import ConfigError, PluginError
from ueb.interfaces import Plugin, Requirement
from ueb.params import as_dict, parse_params
from ueb.plan_model import Spec
from ueb.profile import Profile, matching_plugin_settings
from ueb.registry import Registry
from ueb.splits import load_splits


class _SpecBuilder:
    """Turns selected names into specs, instantiating each plugin once to run its checks."""

    def __init__(
        self,
        config: RunConfig,
        profile: Profile,
        registry: Registry,
        variants: dict[str, tuple[str, str, dict[str, Any]]],
        load_data: bool = True,
    ):
        self.load_data = load_data
        self.config = config
        self.profile = profile
        self.registry = registry
        self.variants = variants  # variant name -> (kind, base, grid values)
        self.instances: dict[tuple[str, str], Plugin] = {}
        self.dataset_shapes: dict[str, tuple[int, int, int]] = {}

    def layered_params(self, kind: str, name: str) -> tuple[str, dict[str, Any]]:
        """(entry name, parameters): preset < profile < user, then a variant's grid values."""
        user = self.config.params
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
        preset = entry.presets().get(self.profile.scale or self.profile.name, {})
        fields = set(getattr(cls.Params, "__dataclass_fields__", {}))
        unknown = [k for k in preset if k not in fields]
        if unknown:
            raise PluginError(
                f"{kind} '{name}' ships a '{self.profile.scale or self.profile.name}' preset with unknown parameter '{unknown[0]}'",
                "fix the plugin's `presets` (its class attribute or its register(..., presets=))",
            )
        return {**preset, **matching_plugin_settings(self.profile.plugins, name)}

    def spec(self, kind: str, name: str) -> Spec:
        entry_name, params = self.layered_params(kind, name)
        return self._spec(kind, name, entry_name, params, top_level=True)

    def _spec(
        self, kind: str, name: str, entry_name: str, params: Mapping[str, Any], top_level: bool
    ) -> Spec:
        entry = self.registry.get(kind, entry_name)
        instance = entry.create(params)
        instance.name = name
        bound = instance.bind(self.profile.training)
        if bound is not instance.params:
            instance.params = parse_params(
                type(instance).Params, as_dict(bound), where=f"{kind} '{name}'"
            )
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
        return self._spec(req.kind, req.name, req.name, dict(req.params), top_level=False)

    def _fingerprint(self, dataset: Any, name: str, top_level: bool) -> str:
        digest = identity.digest(
            type(dataset).__qualname__, type(dataset).version, as_dict(dataset.params)
        )
        data = self.profile.data if top_level else type(self.profile.data)()
        splits = load_splits(dataset, digest, self.config.data_root, data)
        if top_level:
            self.dataset_shapes[name] = (
                splits.train.channels,
                splits.train.image_size,
                splits.train.image_size,
            )
        return f"{splits.train.fingerprint()}/{splits.test.fingerprint()}"
