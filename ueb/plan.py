"""The Plan: a run configuration resolved, typed, validated and identified before any work.

`resolve(config, registry)` expands names, globs, `all` and grids; gives every selected plugin
its parameters (registered defaults < the plugin's scale preset < the profile's
`[plugins.NAME]` < the user's), typed and range-checked; resolves what each plugin requires;
loads and fingerprints the datasets; and lists the cells with their ids. Every problem it finds
is a ConfigError/DataError/PluginError raised before anything is computed, so a typo costs
seconds, not the hours of the poisons and the clean row.

Order of cells is stable: datasets, then poisoners (clean first), seeds, poison fractions,
countermeasures, victims, each in the order the configuration lists them.

What a Plan holds is in `ueb.plan_model`, how each plugin's spec is built in `ueb.plan_specs`,
the checks in `ueb.plan_checks`; `Spec`, `Cell` and `Plan` are importable from here.
"""

from __future__ import annotations

from dataclasses import replace

from ueb import identity, roles
from ueb.config import RunConfig
from ueb.errors import ConfigError
from ueb.numerics import Numerics, resolve_numerics
from ueb.params import as_dict
from ueb.plan_checks import MAX_SEED as MAX_SEED
from ueb.plan_checks import NAME_MAX as NAME_MAX
from ueb.plan_checks import (
    _check_budget,
    _check_execution,
    _check_seeds,
    _check_user_params,
    _expand_grid,
)
from ueb.plan_checks import check_writable_folder as check_writable_folder
from ueb.plan_model import Cell, Plan, Spec
from ueb.plan_specs import SpecResolver
from ueb.profile import Profile, load_profile
from ueb.registry import Registry
from ueb.worker_count import resolve_workers

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
    reference = roles.reference_poisoner(registry)
    if config.include_clean and reference is not None and reference not in poisoners:
        poisoners = [reference, *poisoners]
    selected["poisoner"] = poisoners
    for kind, names in selected.items():
        if not names:
            raise ConfigError(f"the run selects no {kind}", f"name at least one {kind}")
    seeds = _check_seeds(config.seeds or profile.seeds)
    if config.poison_seeds:
        _check_seeds(config.poison_seeds)

    builder = SpecResolver(
        registry, profile, config.params, variants, config.data_root, load_data=load_data
    )
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
        reference=reference,
        baseline=roles.baseline_countermeasure(registry),
    )
    plan = _with_cells(plan) if load_data else plan
    workers = resolve_workers(
        config,
        len(plan.cells) if load_data else None,
        profile.training.iterations,
        accelerator=numerics.accelerator,
    )
    return replace(plan, config=replace(config, workers=workers))


def _with_cells(plan: Plan) -> Plan:
    """Every cell with its id. In the nested design (`poison_seeds`) each victim seed trains on
    the poison of each poison seed; the clean row has no poison to vary and stays coupled."""
    cells: list[Cell] = []
    training, data = plan.computation, as_dict(plan.profile.data)
    nested = plan.config.poison_seeds
    for d in plan.datasets:
        for p in plan.poisoners:
            pairs = [(s, -1) for s in plan.seeds]
            if nested and p != plan.reference:
                pairs = [(s, q) for q in nested for s in plan.seeds]
            for s, q in pairs:
                for f in plan.fractions if p != plan.reference else (1.0,):
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
