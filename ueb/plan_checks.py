"""The checks `resolve` runs before any work: execution settings and writable folders, seeds,
the user's parameters and grids, and each poisoner's budget.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

from ueb import roles
from ueb.config import RunConfig, as_list
from ueb.errors import ConfigError, PluginError
from ueb.interfaces import Budget
from ueb.params import closest
from ueb.registry import Registry, variant_name

MAX_SEED = 2**32 - 1  # numpy's seeding range


def _check_execution(config: RunConfig) -> None:
    if config.workers != "auto" and config.workers < 1:
        raise ConfigError(f"--workers is {config.workers}", "use 1 or more, or auto")
    bad = [f for f in config.poison_fractions if not 0.0 < f <= 1.0]
    if bad:
        raise ConfigError(f"poison fraction {bad[0]} is outside (0, 1]", "use e.g. 0.2 for 20%")
    if len(set(config.poison_fractions)) != len(config.poison_fractions):
        raise ConfigError("a poison fraction is given twice", "list each fraction once")
    device = config.device
    if device not in ("auto", "cpu") and not device.startswith(("cuda", "mps")):
        raise ConfigError(f"unknown device '{device}'", "use auto, cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {device} asked for, but this machine has no usable CUDA GPU",
                "use --device cpu (or auto)",
            )
    if config.data_root is not None:
        root = Path(config.data_root).expanduser()
        if not root.exists():
            raise ConfigError(
                f"--data-root {config.data_root} does not exist",
                "pass the folder holding the dataset files",
            )
        if not root.is_dir():
            raise ConfigError(
                f"--data-root {config.data_root} is not a folder",
                "pass the folder holding the dataset files",
            )
    if config.run_dir is not None:
        if Path(config.run_dir).exists() and not Path(config.run_dir).is_dir():
            raise ConfigError(
                f"--run-dir {config.run_dir} is a file", "pass a folder (it is created if missing)"
            )
        check_writable_folder(Path(config.run_dir), "--run-dir")
    from ueb.artifacts import default_cache_root

    cache = Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_root()
    check_writable_folder(cache, "--cache-dir" if config.cache_dir else "the cache (UEB_CACHE)")


NAME_MAX = 255  # bytes in one path component on Linux, macOS and Windows file systems


def check_writable_folder(folder: Path, what: str) -> None:
    """`folder` can be created (or exists as a folder) and written to, before any work: a cache
    that is a file, on a read-only disk or behind a too-long name would fail every cell."""
    import os

    for part in folder.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise ConfigError(
                f"{what}: the folder name '{part[:24]}...' is {len(os.fsencode(part))} bytes, "
                f"over the {NAME_MAX} a file system allows",
                "choose a shorter path",
            )
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(
            f"{what} {folder}: {existing} is a file, not a folder", "pass a folder path"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{what} {folder} cannot be written ({existing} is read-only for this user)",
            "pass a writable folder",
        )


def _check_seeds(seeds: tuple[int, ...]) -> tuple[int, ...]:
    for s in seeds:
        if not 0 <= s <= MAX_SEED:
            raise ConfigError(
                f"seed {s} is outside 0..{MAX_SEED}", "use non-negative seeds such as 0, 1, 2"
            )
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds {list(seeds)} name a seed twice", "list each seed once")
    return tuple(seeds)


def _check_user_params(
    config: RunConfig,
    registry: Registry,
    selected: dict[str, list[str]],
    variants: dict[str, tuple[str, str, dict[str, Any]]],
) -> None:
    """Every `--param`/`[params]` key must exist in its plugin's Params, selected or not (so a
    typo names the parameter it meant), and the plugin must be used by the run."""
    kinds_of = {n: k for k, names in selected.items() for n in names}
    for plugin, values in config.params.items():
        kind = kinds_of.get(plugin) or next(
            (k for k in registry.entries if plugin in registry.entries[k]), None
        )
        if plugin in variants:
            kind, plugin = variants[plugin][0], variants[plugin][1]
        if kind is None:
            every = [n for k in registry.entries for n in registry.entries[k]]
            hint = closest(plugin, every)
            raise ConfigError(
                f"parameters given for '{plugin}', which is not a registered plugin",
                f"did you mean '{hint}'?" if hint else "see `ueb list`",
            )
        cls = registry.get(kind, plugin).load_class()
        fields = set(getattr(cls.Params, "__dataclass_fields__", {}))
        for key in values:
            if key not in fields:
                hint = closest(key, fields)
                fix = (
                    f"did you mean '{hint}'?"
                    if hint
                    else f"valid parameters: {', '.join(sorted(fields)) or 'none'}"
                )
                raise ConfigError(f"unknown parameter '{key}' for {kind} '{plugin}'", fix)
    used = set(kinds_of) | set(config.grid) | set(variants)
    reference = roles.reference_poisoner(registry)
    if reference is not None:
        used.add(reference)
    unused = sorted(set(config.params) - used)
    if unused:
        raise ConfigError(
            f"parameters given for '{unused[0]}', which this run does not use",
            "select it with -p/-c/-v/-d, or drop the parameter",
        )


def _expand_grid(
    config: RunConfig, registry: Registry, selected: dict[str, list[str]]
) -> dict[str, tuple[str, str, dict[str, Any]]]:
    variants: dict[str, tuple[str, str, dict[str, Any]]] = {}
    for plugin, grid in config.grid.items():
        kind = next((k for k, names in selected.items() if plugin in names), None)
        if kind is None:
            raise ConfigError(
                f"--grid names '{plugin}', which this run does not select",
                "select it with -p/-c/-v/-d too",
            )
        keys = list(grid)
        names = []
        for combo in itertools.product(*(as_list(grid[k]) for k in keys)):
            values = dict(zip(keys, combo, strict=True))
            name = variant_name(plugin, values)
            registry.derive(kind, plugin, values)
            variants[name] = (kind, plugin, values)
            names.append(name)
        i = selected[kind].index(plugin)
        selected[kind][i : i + 1] = names
    return variants


def _check_budget(
    poisoner: Any, name: str, dataset: str, shape: tuple[int, int, int] | None
) -> None:
    """A declared budget must be a possible one for the data (an L2 radius of 1e9 is a typo)."""
    budget = poisoner.budget()
    if not isinstance(budget, Budget):
        raise PluginError(
            f"poisoner '{name}'.budget() returned {budget!r}", "return a ueb.interfaces.Budget"
        )
    if budget.norm == "unbounded":
        return
    c, h, w = shape or (3, 1024, 1024)  # data not loaded: only what no image size allows
    limits = {"linf": 1.0, "l2": math.sqrt(c * h * w), "l0": float(h * w)}
    if budget.norm not in limits:
        raise PluginError(
            f"poisoner '{name}' declares an unknown norm '{budget.norm}'",
            "use linf, l2, l0 or unbounded",
        )
    eps, top = budget.eps, limits[budget.norm]
    if not (math.isfinite(eps) and 0 <= eps <= top):
        raise ConfigError(
            f"poisoner '{name}': budget {budget.norm} {eps:g} is impossible for {dataset} images ({c}x{h}x{w}); "
            f"it must lie in [0, {top:g}]",
            "check the poisoner's eps (Linf budgets are fractions of the pixel range, e.g. 8/255)",
        )
