"""The run configuration: defaults < matrix TOML file < command-line flags, validated once.

A matrix file looks like:

    profile = "quick"
    poisoners = ["deephiding", "em"]
    countermeasures = ["all"]
    victims = ["fastnet"]          # default: the profile's
    datasets = ["fashion-mnist"]   # default: the profile's
    seeds = [0, 1]                 # default: the profile's
    [params.deephiding]
    restriction = "soft"

`resolve` expands globs and 'all' against the registry and fills in the profile's defaults,
giving the concrete matrix that is printed, stored with the results and hashed into the
default run directory (so re-running the same command resumes the same run).
"""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ueb.errors import ConfigError
from ueb.params import as_dict, params_hash, parse_params
from ueb.profile import Profile, load_profile
from ueb.registry import Registry, variant_name


@dataclass(frozen=True)
class RunConfig:
    poisoners: tuple[str, ...] = ("deephiding",)
    countermeasures: tuple[str, ...] = ("vanilla",)
    victims: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()
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
    # Trained victims kept for analysis (Grad-CAM, t-SNE): none, the vanilla cells, or all.
    save_models: Literal["none", "vanilla", "all"] = "vanilla"
    # Fractions of the training set that are poisoned (paper Tables V, VI, G), a matrix axis;
    # the rest stays clean. The poisoned subset is fixed by the seed.
    poison_fractions: tuple[float, ...] = (1.0,)
    # Execution only (not part of a result's identity): where cells run.
    executor: Literal["local", "ray"] = "local"
    workers: int = 1
    ray_address: str | None = None
    cpus_per_cell: float = 1.0
    gpus_per_cell: float = 0.0


def load_matrix_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"matrix file {path} does not exist", "pass an existing .toml file to --matrix")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"matrix file {path} is not valid TOML: {exc}") from exc


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


@dataclass(frozen=True)
class ResolvedRun:
    """The concrete matrix: every name resolved, every plugin's parameters known."""

    config: RunConfig
    profile: Profile
    datasets: tuple[str, ...]
    poisoners: tuple[str, ...]
    countermeasures: tuple[str, ...]
    victims: tuple[str, ...]
    seeds: tuple[int, ...]
    variants: tuple[tuple[str, str, tuple[tuple[str, Any], ...]], ...] = ()

    def register_variants(self, registry: Registry) -> None:
        """Make this run's grid variants known to `registry` (workers call this too)."""
        for kind, base, values in self.variants:
            registry.derive(kind, base, dict(values))

    def plugin_params(self, name: str) -> dict[str, Any]:
        """Profile scale settings < the user's parameters, for plugin `name`.

        A grid variant (`deephiding-s[per_class=1]`) gets its base plugin's settings, then its
        own grid values on top: a profile glob such as `deephiding*` must neither override the
        swept value nor be skipped because the variant's name does not match `[plugins.NAME]`.
        """
        for _kind, base, values in self.variants:
            if variant_name(base, dict(values)) == name:
                return {
                    **self.profile.plugin_params(base),
                    **self.config.params.get(base, {}),
                    **dict(values),
                    **self.config.params.get(name, {}),
                }
        return {**self.profile.plugin_params(name), **self.config.params.get(name, {})}

    def describe(self) -> dict[str, Any]:
        return {
            "profile": self.profile.name,
            "datasets": list(self.datasets),
            "poisoners": list(self.poisoners),
            "countermeasures": list(self.countermeasures),
            "victims": list(self.victims),
            "seeds": list(self.seeds),
            "params": self.config.params,
            "grid": self.config.grid,
            "training": as_dict(self.profile.training),
            "data": as_dict(self.profile.data),
            "profile_plugins": self.profile.plugins,
            "device": self.config.device,
            "data_root": self.config.data_root,
            "poison_fractions": list(self.config.poison_fractions),
        }

    def run_id(self) -> str:
        return f"{self.profile.name}-{params_hash(self.describe())[:10]}"


def resolve(config: RunConfig, registry: Registry) -> ResolvedRun:
    profile = load_profile(config.profile)
    selected = {
        "dataset": registry.select("dataset", config.datasets or profile.datasets),
        "poisoner": registry.select("poisoner", config.poisoners),
        "countermeasure": registry.select("countermeasure", config.countermeasures),
        "victim": registry.select("victim", config.victims or profile.victims),
    }
    variants = []
    for plugin, grid in config.grid.items():
        kind = next((k for k, names in selected.items() if plugin in names), None)
        if kind is None:
            raise ConfigError(f"--grid names '{plugin}', which this run does not select", "select it with -p/-c/-v/-d too")
        keys = list(grid)
        names = []
        for combo in itertools.product(*(_as_list(grid[k]) for k in keys)):
            values = tuple(zip(keys, combo, strict=True))
            variants.append((kind, plugin, values))
            names.append(registry.derive(kind, plugin, dict(values)))
        i = selected[kind].index(plugin)
        selected[kind][i : i + 1] = names
    poisoners = selected["poisoner"]
    if config.include_clean and "clean" in registry.entries["poisoner"] and "clean" not in poisoners:
        poisoners = ["clean", *poisoners]
    resolved = ResolvedRun(
        config=config,
        profile=profile,
        datasets=tuple(selected["dataset"]),
        poisoners=tuple(poisoners),
        countermeasures=tuple(selected["countermeasure"]),
        victims=tuple(selected["victim"]),
        seeds=tuple(config.seeds or profile.seeds),
        variants=tuple(variants),
    )
    if config.workers < 1:
        raise ConfigError(f"--workers is {config.workers}", "use 1 or more")
    bad = [f for f in config.poison_fractions if not 0.0 < f <= 1.0]
    if bad:
        raise ConfigError(f"poison fraction {bad[0]} is outside (0, 1]", "use e.g. 0.2 for 20%")
    for kind, names in (("poisoner", resolved.poisoners), ("countermeasure", resolved.countermeasures), ("victim", resolved.victims), ("dataset", resolved.datasets)):
        if not names:
            raise ConfigError(f"the run selects no {kind}", f"name at least one {kind}")
    used = set(resolved.poisoners + resolved.countermeasures + resolved.victims + resolved.datasets) | set(config.grid)
    unknown = set(config.params) - used
    if unknown:
        name = sorted(unknown)[0]
        raise ConfigError(f"parameters given for '{name}', which this run does not use", "check the plugin name in --param/[params]")
    return resolved


def with_run_dir(resolved: ResolvedRun, root: Path = Path("runs")) -> Path:
    return Path(resolved.config.run_dir) if resolved.config.run_dir else root / resolved.run_id()


def _as_list(values: Any) -> list[Any]:
    return list(values) if isinstance(values, list | tuple) else [v for v in str(values).split(",") if v]


def parse_grid_flags(items: list[str]) -> dict[str, dict[str, list[str]]]:
    """`--grid PLUGIN.KEY=V1,V2,...` into {plugin: {key: [values]}}."""
    out: dict[str, dict[str, list[str]]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"--grid '{item}' is not PLUGIN.KEY=V1,V2", "write e.g. --grid iss-jpeg.quality=2,4,6,8,10")
        plugin, param = key.split(".", 1)
        out.setdefault(plugin, {})[param] = [v for v in values.split(",") if v]
    return out


def parse_param_flags(items: list[str], default_targets: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """`--param plugin.key=value` (or `key=value` for every selected poisoner)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--param '{item}' is not KEY=VALUE", "write e.g. --param deephiding.mode=sample")
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


__all__ = ["RunConfig", "ResolvedRun", "build_config", "resolve", "load_matrix_file", "parse_param_flags", "with_run_dir", "parse_grid_flags"]
