"""Roles: what core asks the registry for instead of a plugin's name.

A registration declares its role (`register(..., role="reference")`); core code asks for the
role and gets the name, so a third party can replace a built-in and a built-in can be renamed
without touching core. The roles:

- poisoner `reference`: the unperturbed row every table compares against (built in: `clean`);
- countermeasure `baseline`: plain training, the column `--save-models baseline` keeps and
  `--pivot victim` shows by default (built in: `vanilla`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ueb.registry import Registry

REFERENCE = "reference"
BASELINE = "baseline"


def _registry(registry: Registry | None) -> Registry:
    if registry is not None:
        return registry
    from ueb.registry import get_registry

    return get_registry()


def reference_poisoner(registry: Registry | None = None) -> str | None:
    """The poisoner registered as the clean reference row, if any is installed."""
    return _registry(registry).with_role("poisoner", REFERENCE)


def baseline_countermeasure(registry: Registry | None = None) -> str | None:
    """The countermeasure registered as plain training, if any is installed."""
    return _registry(registry).with_role("countermeasure", BASELINE)
