"""The hooks a ueb plugin implements. Each hands the plugin a `register` callback.

`register(name, target, *, summary="", defaults=None, **meta)`:
  * `target` is a "module:Class" string (imported on first use, so listing plugins never
    imports torch) or the class itself;
  * `defaults` are parameter values for this name (one class can serve several names);
  * `meta` is free-form facts shown by `ueb list` (e.g. `stage="data"` for countermeasures).
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("ueb")
hookimpl = pluggy.HookimplMarker("ueb")


@hookspec
def register_poisoners(register: Any) -> None:
    """Register Poisoner classes."""


@hookspec
def register_countermeasures(register: Any) -> None:
    """Register Countermeasure classes."""


@hookspec
def register_victims(register: Any) -> None:
    """Register Victim classes."""


@hookspec
def register_datasets(register: Any) -> None:
    """Register Dataset classes."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add commands (typer apps or functions) to the `ueb` CLI."""


@hookspec
def register_detectors(register: Any) -> None:
    """Register Detector classes."""
