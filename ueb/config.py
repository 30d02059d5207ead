"""The run configuration: defaults < matrix TOML file < command-line flags, validated once.

A matrix file looks like:

    profile = "quick"
    poisoners = ["deephiding", "em"]
    countermeasures = ["all"]
    victims = ["fastnet"]          # default: the profile's
    datasets = ["fashion-mnist"]   # default: the profile's
    seeds = [0, 1]                 # default: the profile's
    [plugins.deephiding]        # as in profiles ([params.deephiding] is read the same way)
    restriction = "soft"

`ueb.plan.resolve` turns a RunConfig into the Plan: every name expanded, every parameter typed,
every cell identified (so re-running the same command resumes the same run).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ueb import defaults
from ueb.errors import ConfigError
from ueb.params import parse_params


@dataclass(frozen=True)
class RunConfig:
    poisoners: tuple[str, ...] = defaults.RUN_POISONERS
    countermeasures: tuple[str, ...] = defaults.RUN_COUNTERMEASURES
    victims: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()
    # A nested design: every victim seed above trains on the poison of every poison seed here
    # (P x V cells per configuration), so a report can split the spread into poison-to-poison
    # and victim-to-victim variance. Empty: the poison's seed is the cell's seed.
    poison_seeds: tuple[int, ...] = ()
    profile: str = "quick"
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Parameter grids: {plugin: {param: [values]}}; each value becomes a variant of the plugin
    # (e.g. iss-jpeg[quality=2]) that replaces it in the matrix.
    grid: dict[str, dict[str, Any]] = field(default_factory=dict)
    include_clean: bool = True
    data_root: str | None = None
    run_dir: str | None = None
    cache_dir: str | None = None
    device: str = "auto"
    fail_fast: bool = False
    # Trained victims kept for analysis (Grad-CAM, t-SNE): none, the cells of the baseline
    # countermeasure (plain training, ueb.roles), or all.
    save_models: Literal["none", "baseline", "all"] = "baseline"
    # Fractions of the training set that are poisoned (paper Tables V, VI, G), a matrix axis;
    # the rest stays clean. The poisoned subset is fixed by the seed.
    poison_fractions: tuple[float, ...] = (1.0,)
    # Execution only (not part of a result's identity): where cells run.
    executor: Literal["local", "ray"] = "local"
    # A number, or "auto": one single-thread process per core on a CPU when the run has training
    # work enough to pay for starting them (and memory for each), one process on a GPU. The `ueb run`
    # command defaults to "auto"; the plan resolves it (ueb/plan.py) and the run records the number.
    workers: int | Literal["auto"] = 1
    ray_address: str | None = None
    cpus_per_cell: float = 1.0
    gpus_per_cell: float = 0.0


def load_matrix_file(path: str | Path) -> dict[str, Any]:
    """A matrix file's values. Plugin settings are `[plugins.NAME]` tables, as in profiles
    (`[params.NAME]`, the older spelling, is read the same way)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(
            f"matrix file {path} does not exist", "pass an existing .toml file to --matrix"
        )
    if path.is_dir():
        raise ConfigError(
            f"--matrix {path} is a folder",
            "pass one .toml file, e.g. benchmarks/matrices/table1-cifar10.toml",
        )
    try:
        values = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"matrix file {path} is not valid TOML: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"matrix file {path} cannot be read ({exc})", "pass a readable UTF-8 .toml file"
        ) from exc
    plugins = values.pop("plugins", {})
    if plugins:
        if not isinstance(plugins, dict) or not all(isinstance(v, dict) for v in plugins.values()):
            raise ConfigError(f"matrix file {path}: [plugins] must hold one table per plugin name")
        params = values.setdefault("params", {})
        for name, table in plugins.items():
            params.setdefault(name, {}).update(table)
    return values


def build_config(file_values: dict[str, Any] | None, flags: dict[str, Any]) -> RunConfig:
    """Merge file values and flags (flags win; None means 'not given') into a RunConfig."""
    merged: dict[str, Any] = dict(file_values or {})
    params = {k: dict(v) for k, v in merged.pop("params", {}).items()}
    for plugin, values in (flags.pop("params", None) or {}).items():
        params.setdefault(plugin, {}).update(values)
    for key, value in flags.items():
        if value is not None and value != ():
            merged[key] = value
    merged["params"] = params
    return parse_params(RunConfig, merged, where="the run configuration")


def as_list(values: Any) -> list[Any]:
    return (
        list(values)
        if isinstance(values, list | tuple)
        else [v for v in str(values).split(",") if v]
    )


def parse_grid_flags(items: list[str]) -> dict[str, dict[str, list[str]]]:
    """`--grid PLUGIN.KEY=V1,V2,...` into {plugin: {key: [values]}}."""
    out: dict[str, dict[str, list[str]]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(
                f"--grid '{item}' is not PLUGIN.KEY=V1,V2",
                "write e.g. --grid iss-jpeg.quality=2,4,6,8,10",
            )
        plugin, param = key.split(".", 1)
        listed = [v for v in (s.strip() for s in values.split(",")) if v]
        if not plugin or not param or not listed:
            raise ConfigError(
                f"--grid '{item}' names no {'values' if plugin and param else 'plugin or parameter'}",
                "write PLUGIN.KEY=V1,V2, e.g. --grid iss-jpeg.quality=2,4,6,8,10",
            )
        out.setdefault(plugin, {})[param] = listed
    return out


def parse_param_flags(
    items: list[str], default_targets: tuple[str, ...]
) -> dict[str, dict[str, Any]]:
    """`--param plugin.key=value` (or `key=value` for every selected poisoner)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(
                f"--param '{item}' is not KEY=VALUE", "write e.g. --param deephiding.mode=sample"
            )
        key, value = item.split("=", 1)
        if "." in key:
            plugin, key = key.split(".", 1)
            targets: tuple[str, ...] = (plugin,)
        else:
            targets = default_targets
            if not targets:
                raise ConfigError(f"--param '{item}' names no plugin", "write PLUGIN.KEY=VALUE")
        for t in targets:
            out.setdefault(t, {})[key] = value
    return out


__all__ = [
    "RunConfig",
    "build_config",
    "load_matrix_file",
    "parse_param_flags",
    "parse_grid_flags",
    "as_list",
]
