"""The Plan: a run configuration resolved, typed, validated and identified before any work.

`resolve(config, registry)` expands names, globs, `all` and grids; gives every selected plugin
its parameters (registered defaults < the plugin's scale preset < the profile's
`[plugins.NAME]` < the user's), typed and range-checked; resolves what each plugin requires;
loads and fingerprints the datasets; and lists the cells with their ids. Every problem it finds
is a ConfigError/DataError/PluginError raised before anything is computed, so a typo costs
seconds, not the hours of the poisons and the clean row.

Order of cells is stable: datasets, then poisoners (clean first), seeds, poison fractions,
countermeasures, victims, each in the order the configuration lists them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ueb import identity
from ueb.config import RunConfig, as_list
from ueb.errors import ConfigError, PluginError
from ueb.interfaces import Budget, Plugin, Requirement
from ueb.numerics import Numerics, device_type, resolve_numerics
from ueb.params import as_dict, closest, parse_params
from ueb.profile import Profile, load_profile, matching_plugin_settings
from ueb.registry import Registry, variant_name
from ueb.splits import load_splits

MAX_SEED = 2**32 - 1  # numpy's seeding range


@dataclass(frozen=True)
class Spec:
    """One plugin as the run uses it: what it is, its typed parameters, what it requires."""

    kind: str
    name: str  # the name shown (a grid variant's name included)
    entry: str  # the registered name that builds it (a variant's base)
    target: str  # module:Class
    version: str
    params: Mapping[str, Any]
    requires: tuple[Spec, ...] = ()
    fingerprint: str = ""  # datasets: content hash of the subsets used
    inputs: Mapping[str, Any] = field(default_factory=dict)  # Plugin.input_identity()

    @property
    def digest(self) -> str:
        return identity.digest(self.identity())

    def identity(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": self.target,
            "version": self.version,
            "params": dict(self.params),
            "requires": [r.identity() for r in self.requires],
            "fingerprint": self.fingerprint,
            "inputs": dict(self.inputs),
        }

    def describe(self) -> dict[str, Any]:
        """What is printed and stored (the identity plus the names)."""
        return {"name": self.name, "entry": self.entry, **self.identity()}


@dataclass(frozen=True)
class Cell:
    ordinal: int
    dataset: str
    poisoner: str
    seed: int
    countermeasure: str
    victim: str
    fraction: float
    id: str
    config_digest: str
    poison_key: str
    poison_seed: int = -1  # -1: the cell's own seed (the coupled design)

    @property
    def poison_seed_used(self) -> int:
        return self.seed if self.poison_seed < 0 else self.poison_seed

    @property
    def group(self) -> tuple[str, str, int]:
        """Cells of one group share one poison."""
        return (self.dataset, self.poisoner, self.poison_seed_used)


@dataclass(frozen=True)
class Plan:
    """What a run will compute. Picklable: workers receive it and build plugins from its specs."""

    config: RunConfig
    profile: Profile
    specs: Mapping[tuple[str, str], Spec]
    datasets: tuple[str, ...]
    poisoners: tuple[str, ...]
    countermeasures: tuple[str, ...]
    victims: tuple[str, ...]
    seeds: tuple[int, ...]
    fractions: tuple[float, ...]
    cells: tuple[Cell, ...]
    numerics: Numerics
    user_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def training(self) -> dict[str, Any]:
        return as_dict(self.profile.training)

    @property
    def computation(self) -> dict[str, Any]:
        """The training protocol and the numerics: what every poison and cell id hashes."""
        return {"training": self.training, "numerics": self.numerics.identity()}

    def spec(self, kind: str, name: str) -> Spec:
        return self.specs[(kind, name)]

    def poison_key(self, dataset: str, poisoner: str, seed: int) -> str:
        return identity.poison_identity(
            self.spec("poisoner", poisoner).digest,
            self.spec("dataset", dataset).fingerprint.split("/")[0],
            seed,
            self.computation,
        )

    def find(
        self,
        dataset: str,
        poisoner: str,
        seed: int,
        countermeasure: str,
        victim: str,
        fraction: float = 1.0,
    ) -> Cell | None:
        for c in self.cells:
            if (c.dataset, c.poisoner, c.seed, c.countermeasure, c.victim, c.fraction) == (
                dataset,
                poisoner,
                seed,
                countermeasure,
                victim,
                fraction,
            ):
                return c
        return None

    def describe(self) -> dict[str, Any]:
        """The full resolved configuration, stored with the run and hashed into its id."""
        return {
            "profile": self.profile.name,
            "datasets": list(self.datasets),
            "poisoners": list(self.poisoners),
            "countermeasures": list(self.countermeasures),
            "victims": list(self.victims),
            "seeds": list(self.seeds),
            "poison_seeds": list(self.config.poison_seeds),
            "poison_fractions": list(self.fractions),
            "training": self.training,
            "numerics": self.numerics.identity(),
            "data": as_dict(self.profile.data),
            "specs": {f"{k}:{n}": s.describe() for (k, n), s in self.specs.items()},
            # what the user wrote, kept for reading old runs' layout (analysis reads these)
            "params": {k: dict(v) for k, v in self.user_params.items()},
            "grid": self.config.grid,
            "profile_plugins": self.profile.plugins,
            "device": self.config.device,
            "data_root": self.config.data_root,
        }

    def run_id(self) -> str:
        ident = {
            k: v
            for k, v in self.describe().items()
            if k not in ("params", "grid", "profile_plugins", "device", "data_root")
        }
        return f"{self.profile.name}-{identity.digest(ident)[:10]}"


# --------------------------------------------------------------------------- resolution


def resolve(config: RunConfig, registry: Registry, *, load_data: bool = True) -> Plan:
    """The Plan of `config`, or the first problem with it (nothing is computed here but the
    datasets' fingerprints). `load_data=False` checks everything but the data (for files that
    name datasets this machine does not have); such a plan has no cell ids and cannot run."""
    _check_execution(config)
    profile = load_profile(config.profile)
    numerics = resolve_numerics(
        config.device,
        profile.training.precision,
        profile.training.channels_last,
        profile.training.threads,
        profile.training.deterministic,
    )
    profile = _with_numerics(profile, numerics)
    selected = {
        "dataset": registry.select("dataset", config.datasets or profile.datasets),
        "poisoner": registry.select("poisoner", config.poisoners),
        "countermeasure": registry.select("countermeasure", config.countermeasures),
        "victim": registry.select("victim", config.victims or profile.victims),
    }
    variants = _expand_grid(config, registry, selected)
    _check_user_params(config, registry, selected, variants)
    poisoners = selected["poisoner"]
    if (
        config.include_clean
        and "clean" in registry.entries["poisoner"]
        and "clean" not in poisoners
    ):
        poisoners = ["clean", *poisoners]
    selected["poisoner"] = poisoners
    for kind, names in selected.items():
        if not names:
            raise ConfigError(f"the run selects no {kind}", f"name at least one {kind}")
    seeds = _check_seeds(config.seeds or profile.seeds)
    if config.poison_seeds:
        _check_seeds(config.poison_seeds)

    builder = _SpecBuilder(config, profile, registry, variants, load_data)
    specs: dict[tuple[str, str], Spec] = {}
    for kind in ("dataset", "poisoner", "countermeasure", "victim"):
        for name in selected[kind]:
            specs[(kind, name)] = builder.spec(kind, name)
    shapes = builder.dataset_shapes
    for name in selected["poisoner"]:
        for ds in selected["dataset"]:
            _check_budget(builder.instances[("poisoner", name)], name, ds, shapes.get(ds))

    plan = Plan(
        config=config,
        profile=profile,
        specs=specs,
        datasets=tuple(selected["dataset"]),
        poisoners=tuple(poisoners),
        countermeasures=tuple(selected["countermeasure"]),
        victims=tuple(selected["victim"]),
        seeds=seeds,
        fractions=tuple(config.poison_fractions),
        cells=(),
        numerics=numerics,
        user_params={k: dict(v) for k, v in config.params.items()},
    )
    plan = _with_cells(plan) if load_data else plan
    workers = resolve_workers(
        config, len(plan.cells) if load_data else None, profile.training.iterations
    )
    return replace(plan, config=replace(config, workers=workers))


# A spawned worker spends seconds importing torch and the plugins before its first cell, about
# what a CPU needs for a few hundred training steps of a small victim: a worker is worth
# starting only with this many training steps of work for it (the quick main job has 75,600;
# a smoke run of 8 cells, 96).
STEPS_PER_WORKER = 1_000
# Peak resident memory of one process of the quick profile's main job (2.06 GiB measured,
# benchmarks/RESULTS.md), with headroom: "auto" starts no more workers than memory holds.
WORKER_PEAK_GIB = 2.5


def resolve_workers(config: RunConfig, n_cells: int | None, steps_per_cell: int = 1) -> int:
    """`config.workers` as a number; "auto" as described on RunConfig.workers."""
    if config.workers != "auto":
        return config.workers
    cores = _usable_cores()
    if config.executor == "ray":
        return cores
    if device_type(config.device) != "cpu":
        return 1
    gib = _available_gib()
    by_memory = int(gib // WORKER_PEAK_GIB) if gib else cores
    by_work = cores if n_cells is None else n_cells * steps_per_cell // STEPS_PER_WORKER
    return max(1, min(cores, by_memory, by_work, n_cells or cores))


def _usable_cores() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _available_gib() -> float:
    """MemAvailable in GiB, 0.0 where the system does not say."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def _with_cells(plan: Plan) -> Plan:
    """Every cell with its id. In the nested design (`poison_seeds`) each victim seed trains on
    the poison of each poison seed; the clean row has no poison to vary and stays coupled."""
    cells: list[Cell] = []
    training, data = plan.computation, as_dict(plan.profile.data)
    nested = plan.config.poison_seeds
    for d in plan.datasets:
        for p in plan.poisoners:
            pairs = [(s, -1) for s in plan.seeds]
            if nested and p != "clean":
                pairs = [(s, q) for q in nested for s in plan.seeds]
            for s, q in pairs:
                for f in plan.fractions if p != "clean" else (1.0,):
                    for c in plan.countermeasures:
                        for v in plan.victims:
                            config_digest = identity.cell_configuration(
                                dataset=plan.spec("dataset", d).identity(),
                                poisoner=plan.spec("poisoner", p).identity(),
                                countermeasure=plan.spec("countermeasure", c).identity(),
                                victim=plan.spec("victim", v).identity(),
                                fraction=f,
                                training=training,
                                data=data,
                            )
                            cell_id = identity.cell_identity(
                                config_digest, s, (d, p, c, v), poison_seed=None if q < 0 else q
                            )
                            cells.append(
                                Cell(
                                    len(cells),
                                    d,
                                    p,
                                    s,
                                    c,
                                    v,
                                    f,
                                    cell_id,
                                    config_digest,
                                    plan.poison_key(d, p, s if q < 0 else q),
                                    q,
                                )
                            )
    return replace(plan, cells=tuple(cells))


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
        presets = getattr(cls, "presets", {}) or {}
        preset = dict(presets.get(self.profile.scale or self.profile.name, {}))
        fields = set(getattr(cls.Params, "__dataclass_fields__", {}))
        unknown = [k for k in preset if k not in fields]
        if unknown:
            raise PluginError(
                f"{kind} '{name}' ships a '{self.profile.scale or self.profile.name}' preset with unknown parameter '{unknown[0]}'",
                "fix the plugin's `presets`",
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


def _with_numerics(profile: Profile, numerics: Numerics) -> Profile:
    """The profile with its training settings replaced by what the trainer will really do
    (`precision="auto"` resolved, channels_last where the device has it, the thread count), so
    plugins and the trainer read the same values the identities hash."""
    effective = replace(
        profile.training,
        precision=numerics.precision,  # type: ignore[arg-type]
        channels_last=numerics.channels_last,
        threads=numerics.threads,
    )
    return replace(profile, training=effective)


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
    used = set(kinds_of) | set(config.grid) | set(variants) | {"clean"}
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
