"""The registry: every poisoner, countermeasure, victim and dataset the plugins registered.

Entries hold "module:Class" strings and are imported on first use. Names are unique per
kind: two plugins registering one name is an error naming both distributions.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ueb.errors import ConfigError, PluginError
from ueb.params import closest, parse_params
from ueb.plugins import PluginHost, canonical_distribution, get_host

if TYPE_CHECKING:
    from ueb.interfaces import PluginProvider

KINDS = ("poisoner", "countermeasure", "victim", "dataset", "detector")
HOOKS = {
    "poisoner": "register_poisoners",
    "countermeasure": "register_countermeasures",
    "victim": "register_victims",
    "dataset": "register_datasets",
    "detector": "register_detectors",
}
PLURAL = {k: k + "s" for k in KINDS}

# The distribution whose plugins `all` selects (see Registry.select).
OWN_DISTRIBUTION = "ueb"
ALL_PLUS = "all+"
FAMILY_PREFIX = "family:"
# The poisoner families built-in registrations use (`register(..., family=...)`); a third
# party may declare another, which `family:NAME` and `ueb list` then show like these.
FAMILIES = (
    "error-minimising",
    "error-maximising",
    "surrogate-free",
    "generative",
    "contrastive",
    "reference",
)


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    target: Any  # "module:Class" or the class
    summary: str
    plugin: str
    distribution: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)

    def load_class(self) -> Any:
        from ueb import interfaces

        base = {
            "poisoner": interfaces.Poisoner,
            "countermeasure": interfaces.Countermeasure,
            "victim": interfaces.Victim,
            "dataset": interfaces.Dataset,
            "detector": interfaces.Detector,
        }[self.kind]
        if isinstance(self.target, str):
            module_name, _, attr = self.target.partition(":")
            try:
                obj = getattr(importlib.import_module(module_name), attr)
            except Exception as exc:
                raise PluginError(
                    f"{self.kind} '{self.name}' (plugin {self.plugin}, {self.distribution}) cannot be imported "
                    f"from {self.target}: {type(exc).__name__}: {exc}",
                    "reinstall the plugin or check its dependencies",
                ) from exc
        else:
            obj = self.target
        if not (isinstance(obj, type) and issubclass(obj, base)):
            raise PluginError(
                f"{self.kind} '{self.name}' from {self.distribution} is {obj!r}, not a {base.__name__} subclass",
                "the plugin must register a class implementing the interface",
            )
        hint = self.meta.get("stage")
        declared = getattr(obj, "stage", None)
        if self.kind == "countermeasure" and hint is not None and hint != declared:
            raise PluginError(
                f"countermeasure '{self.name}' ({self.distribution}) is registered with stage='{hint}' "
                f"but its class {obj.__name__} declares stage = '{declared}'",
                "declare the stage once, as the class attribute `stage` (drop or correct the register() argument)",
            )
        return obj

    def presets(self) -> dict[str, dict[str, Any]]:
        """Scale presets for this name: the class's `presets`, then those given at registration
        (`register(..., presets={"quick": {...}})`) on top, scale by scale. A registration's own
        presets let names that share one class (em / em-class) carry different scales."""
        merged = {s: dict(v) for s, v in (getattr(self.load_class(), "presets", {}) or {}).items()}
        for scale, values in (self.meta.get("presets") or {}).items():
            merged.setdefault(scale, {}).update(values)
        return merged

    def create(self, params: Mapping[str, Any] | None = None) -> Any:
        """Instantiate with defaults < `params`, both validated against the class's Params."""
        cls = self.load_class()
        merged = {**self.defaults, **(params or {})}
        typed = parse_params(cls.Params, merged, where=f"{self.kind} '{self.name}'")
        try:
            return cls(typed, name=self.name)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid parameters for {self.kind} '{self.name}': {exc}") from exc

    def stage(self) -> str | None:
        """A countermeasure's stage: its class attribute (a `stage=` given to `register` is only
        a listing hint and must agree). Listing uses the hint when there is one, so that it
        needs no import."""
        if self.kind != "countermeasure":
            return None
        return str(self.meta.get("stage") or getattr(self.load_class(), "stage", "data"))


class Registry:
    def __init__(self, host: PluginHost | None = None) -> None:
        self.host = host or get_host()
        self.entries: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
        for kind in KINDS:
            self._collect(kind)

    def _collect(self, kind: str) -> None:
        caller = getattr(self.host.pm.hook, HOOKS[kind])
        # Run each plugin's hook by itself, sorted by plugin name (pluggy's own order is
        # last-registered-first), so we know who registered what and results are stable.
        for impl in sorted(caller.get_hookimpls(), key=lambda i: i.plugin_name):
            plugin_name = impl.plugin_name
            dist = self.host.distribution_of(plugin_name)

            def register(
                name: str,
                target: Any,
                *,
                summary: str = "",
                defaults: Mapping[str, Any] | None = None,
                _plugin: str = plugin_name,
                _dist: str = dist,
                **meta: Any,
            ) -> None:
                existing = self.entries[kind].get(name)
                if existing is not None:
                    raise PluginError(
                        f"{kind} '{name}' is registered twice: by {existing.distribution} "
                        f"(plugin {existing.plugin}) and by {_dist} (plugin {_plugin})",
                        "uninstall one of the two distributions or rename the plugin's entry",
                    )
                self.entries[kind][name] = Entry(
                    kind, name, target, summary, _plugin, _dist, dict(defaults or {}), dict(meta)
                )
                rec = self.host.records.get(_plugin)
                if rec is not None:
                    rec.registered.append(f"{kind}:{name}")

            try:
                impl.function(register=register)
            except PluginError:
                raise
            except Exception as exc:
                self.host.fail_registered(plugin_name, exc)

    # -- queries -------------------------------------------------------------------------

    def names(self, kind: str) -> list[str]:
        """Registered names in registration order (plugins by name, then each plugin's order),
        so `all` follows the order a plugin chose, e.g. the paper's Table I columns."""
        return list(self.entries[kind])

    def get(self, kind: str, name: str) -> Entry:
        try:
            return self.entries[kind][name]
        except KeyError:
            hint = closest(name, self.entries[kind])
            fix = f"did you mean '{hint}'?" if hint else f"see `ueb list {PLURAL[kind]}`"
            raise ConfigError(f"unknown {kind} '{name}'", fix) from None

    def create(self, kind: str, name: str, params: Mapping[str, Any] | None = None) -> Any:
        return self.get(kind, name).create(params)

    def derive(self, kind: str, base: str, values: Mapping[str, Any]) -> str:
        """Register a variant of `base` with other default parameters; returns its name.

        Parameter grids (a JPEG quality sweep, clipped vs. soft DH) become ordinary names such
        as `iss-jpeg[quality=2]`, so they flow through the matrix, the cache and the report.
        """
        entry = self.get(kind, base)
        name = variant_name(base, values)
        if name not in self.entries[kind]:
            self.entries[kind][name] = Entry(
                kind, name, entry.target, entry.summary, entry.plugin, entry.distribution,
                {**entry.defaults, **values}, {**entry.meta, "variant_of": base},
            )  # fmt: skip
        return name

    def select(self, kind: str, patterns: Iterable[str]) -> list[str]:
        """Resolve names, comma lists, globs, `family:NAME`, `all` and `all+` into registered
        names (order kept, each name once).

        `all` is ueb's own distribution only, so installing a plugin package never changes
        what `all` selects (nor the hash of a run directory); `all+` adds every other
        distribution's names after ueb's. Names a registration keeps out of `all`
        (`hidden_from_all=True`) stay out of `all+` too; a name, a glob or a family selects them.
        Globs and families match every distribution, ueb's names first.
        """
        chosen: list[str] = []
        for raw in patterns:
            for pat in (p.strip() for p in raw.split(",")):
                if not pat:
                    continue
                if pat in ("all", ALL_PLUS):
                    matches = [
                        n
                        for n in self.ordered_names(kind)
                        if self.left_out_of_all(kind, n) is None
                        or (
                            pat == ALL_PLUS
                            and not self.entries[kind][n].meta.get("hidden_from_all")
                        )
                    ]
                elif pat.startswith(FAMILY_PREFIX):
                    matches = self._family(kind, pat[len(FAMILY_PREFIX) :].strip())
                elif any(ch in pat for ch in "*?["):
                    matches = [n for n in self.ordered_names(kind) if fnmatch.fnmatchcase(n, pat)]
                    if not matches:
                        raise ConfigError(
                            f"no {kind} matches '{pat}'", f"see `ueb list {PLURAL[kind]}`"
                        )
                else:
                    self.get(kind, pat)
                    matches = [pat]
                chosen.extend(m for m in matches if m not in chosen)
        return chosen

    def ordered_names(self, kind: str) -> list[str]:
        """ueb's own names in registration order, then each other distribution's (by name)."""
        names = self.names(kind)
        own = [n for n in names if is_own(self.entries[kind][n])]
        others = sorted(
            (n for n in names if not is_own(self.entries[kind][n])),
            key=lambda n: (self.entries[kind][n].distribution, names.index(n)),
        )
        return own + others

    def left_out_of_all(self, kind: str, name: str) -> str | None:
        """Why `all` does not select `name` ('hidden', 'third-party'), or None if it does."""
        entry = self.entries[kind][name]
        if entry.meta.get("hidden_from_all"):
            return "hidden"
        return None if is_own(entry) else "third-party"

    def with_role(self, kind: str, role: str) -> str | None:
        """The name registered with `role=ROLE` (ueb's own first), or None. Core asks for roles
        (ueb.roles), never for a plugin by name."""
        for n in self.ordered_names(kind):
            if self.entries[kind][n].meta.get("role") == role:
                return n
        return None

    def families(self, kind: str) -> list[str]:
        """The families the registrations of `kind` declare, in order of first appearance."""
        found: list[str] = []
        for n in self.ordered_names(kind):
            family = self.entries[kind][n].meta.get("family")
            if family and family not in found:
                found.append(str(family))
        return found

    def _family(self, kind: str, family: str) -> list[str]:
        matches = [
            n
            for n in self.ordered_names(kind)
            if self.entries[kind][n].meta.get("family") == family
        ]
        if not matches:
            known = self.families(kind)
            hint = closest(family, known)
            fix = (
                f"did you mean '{FAMILY_PREFIX}{hint}'?"
                if hint
                else f"families: {', '.join(known) or 'none registered'}"
            )
            raise ConfigError(f"no {kind} has family '{family}'", fix)
        return matches


_registry: Registry | None = None


def is_own(entry: Entry) -> bool:
    """Whether an entry comes from ueb's own distribution (what `all` selects)."""
    return canonical_distribution(entry.distribution) == OWN_DISTRIBUTION


def variant_name(base: str, values: Mapping[str, Any]) -> str:
    """The registered name of a grid variant, e.g. `iss-jpeg[quality=2]`."""
    return f"{base}[{','.join(f'{k}={v}' for k, v in values.items())}]"


def get_registry() -> Registry:
    """The registry of the process-wide plugin host (rebuilt when the host is replaced)."""
    global _registry
    host = get_host()
    if _registry is None or _registry.host is not host:
        _registry = Registry(host)
    return _registry


def registry_provider(registry: Registry) -> PluginProvider:
    """A `RunContext.provider` that builds any registered plugin (tools and tests; a run's
    context builds only what the plan resolved)."""

    def provide(kind: str, name: str, params: Mapping[str, Any] | None = None) -> Any:
        return registry.create(kind, name, params)

    return provide


def reset_registry() -> None:
    global _registry
    _registry = None
