"""Plugin loading: pluggy entry points (group "ueb"), a plugins folder, and direct registration.

Loading is lazy (first use) and done once. One broken plugin is reported and skipped, so the
CLI still works; set UEB_STRICT_PLUGINS=1 (CI does) to make any failure fatal.

Environment:
  UEB_PLUGINS       comma-separated distribution names whose entry points load besides ueb's
                    own (unset: all; empty: none; '-', '_' and case do not matter). The test suite sets it to "ueb" so whatever else is
                    installed cannot change its results.
  UEB_PLUGINS_DIR   a folder of plugin .py files to load without installing them.
  UEB_STRICT_PLUGINS=1  a plugin that fails to load is an error, not a warning.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import importlib.util
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from ueb import hookspecs
from ueb.errors import PluginError

ENTRY_POINT_GROUP = "ueb"


@dataclass
class PluginRecord:
    """One plugin module as `ueb plugins` shows it."""

    name: str
    distribution: str
    version: str
    source: str
    error: str | None = None
    registered: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


def canonical_distribution(name: str) -> str:
    """Distribution names compare as packaging does: case, '-', '_' and '.' do not matter."""
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def allowed_distributions() -> set[str] | None:
    """UEB_PLUGINS as canonical distribution names (None: load every distribution).

    ueb's own distribution is always loaded: without it no dataset or victim exists, so
    `UEB_PLUGINS=my-dist` means "the built-ins and my-dist"; `UEB_PLUGINS=` (empty) is the one
    way to load no entry point at all.
    """
    only = os.environ.get("UEB_PLUGINS")
    if only is None:
        return None
    names = {canonical_distribution(s.strip()) for s in only.split(",") if s.strip()}
    return names | {"ueb"} if names else set()


def strict_mode() -> bool:
    return os.environ.get("UEB_STRICT_PLUGINS", "") not in ("", "0", "false")


class PluginHost:
    """The pluggy manager plus a record of what loaded, from where, and what failed."""

    def __init__(self, *, entry_points: bool = True, plugins_dir: str | Path | None = None) -> None:
        self.pm = pluggy.PluginManager("ueb")
        self.pm.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}
        if entry_points:
            self._load_entry_points()
        folder = plugins_dir or os.environ.get("UEB_PLUGINS_DIR")
        if folder:
            self.load_folder(Path(folder))
        self.pm.check_pending()

    # -- loading -----------------------------------------------------------------------

    def _load_entry_points(self) -> None:
        allowed = allowed_distributions()
        eps = sorted(
            md.entry_points(group=ENTRY_POINT_GROUP),
            key=lambda e: (e.dist.name if e.dist else "", e.name),
        )
        if allowed:
            present = {canonical_distribution(e.dist.name) for e in eps if e.dist}
            for name in sorted(allowed - present):
                message = (
                    f"UEB_PLUGINS names '{name}', but no installed distribution by that name has ueb entry points "
                    f"(installed: {', '.join(sorted(present)) or 'none'})"
                )
                if strict_mode():
                    raise PluginError(message, "install it or correct UEB_PLUGINS")
                print(f"warning: {message}", file=sys.stderr)
        for ep in eps:
            dist = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else "?"
            if allowed is not None and canonical_distribution(dist) not in allowed:
                continue
            # Plugins are known by "distribution:entry-point", so a third party may name an
            # entry point like a built-in one ("baselines") without taking over its record.
            key = f"{dist}:{ep.name}"
            if key in self.records:
                continue
            try:
                module = ep.load()
            except Exception as exc:  # a broken plugin must not take the CLI down
                self._failed(PluginRecord(key, dist, version, ep.value), exc)
                continue
            self.register(module, name=key, distribution=dist, version=version, source=ep.value)

    def load_folder(self, folder: Path) -> None:
        if not folder.is_dir():
            raise PluginError(
                f"plugins folder {folder} does not exist", "pass an existing folder of .py files"
            )
        for path in sorted(folder.glob("*.py")):
            name = f"ueb_local_{path.stem}"
            try:
                spec = importlib.util.spec_from_file_location(name, path)
                assert spec and spec.loader
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                spec.loader.exec_module(module)
            except Exception as exc:
                self._failed(PluginRecord(path.stem, "<plugins-dir>", "-", str(path)), exc)
                continue
            self.register(
                module, name=path.stem, distribution="<plugins-dir>", version="-", source=str(path)
            )

    def register(
        self,
        plugin: ModuleType | Any,
        *,
        name: str | None = None,
        distribution: str = "<direct>",
        version: str = "-",
        source: str = "",
    ) -> None:
        """Register a module or object with hook implementations (tests use this directly)."""
        name = str(name or getattr(plugin, "__name__", None) or repr(plugin))
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:
            self._failed(PluginRecord(name, distribution, version, source), exc)
            return
        self.records[name] = PluginRecord(name, distribution, version, source or name)

    def _failed(self, record: PluginRecord, exc: BaseException) -> None:
        record.error = f"{type(exc).__name__}: {exc}"
        self.records[record.name] = record
        if strict_mode():
            raise PluginError(
                f"plugin '{record.name}' from {record.distribution} failed to load: {record.error}",
                "fix or uninstall it, or unset UEB_STRICT_PLUGINS",
            ) from exc
        print(
            f"warning: plugin '{record.name}' ({record.distribution}) failed to load and is skipped: {record.error}",
            file=sys.stderr,
        )
        if os.environ.get("UEB_DEBUG"):
            traceback.print_exception(exc)

    def fail_registered(self, plugin_name: str, exc: BaseException) -> None:
        """A loaded plugin whose hook raised: mark it failed (or raise in strict mode)."""
        rec = self.records.get(plugin_name) or PluginRecord(plugin_name, "<direct>", "-", "")
        self._failed(rec, exc)

    def distribution_of(self, plugin_name: str) -> str:
        rec = self.records.get(plugin_name)
        return rec.distribution if rec else "<direct>"


_host: PluginHost | None = None


def get_host() -> PluginHost:
    """The process-wide plugin host, created on first use."""
    global _host
    if _host is None:
        _host = PluginHost()
    return _host


def set_host(host: PluginHost | None) -> None:
    """Replace (or with None, forget) the process-wide host; tests use this."""
    global _host
    _host = host
