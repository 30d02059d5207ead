"""Records -> ReportTable: cells, Mean and Max over the countermeasures, `≈` against the clean
row, and the notes; the transfer layout by victim.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from ueb.report.configurations import Position, _canon, _digest, _order, _split
from ueb.report.model import (
    CAVEAT,
    LATCH,
    NEAR,
    SUMMARIES,
    UNRESOLVED,
    Metric,
    ReportTable,
    Row,
    SeedValue,
    Value,
    summarise,
    within_noise,
)
from ueb.stats import RESOLUTION_POINTS, nested_components
from ueb.store import CellRecord


def row_label(poisoner: str, fraction: float) -> str:
    """'em' for a fully poisoned set, 'em @20%' when only a fraction is poisoned."""
    return poisoner if fraction >= 1.0 else f"{poisoner} @{fraction * 100:g}%"


def _probe(r: CellRecord) -> Mapping[str, Any]:
    return r.probe if isinstance(r.probe, Mapping) else {}


def _cell(recs: Sequence[CellRecord], key: str) -> Value:
    ok = [r for r in recs if r.status == "ok" and getattr(r, key) is not None]
    probes = [_probe(r) for r in recs if _probe(r)]
    errors = sum(r.status == "error" for r in recs)
    nested = None
    if any(r.poison_seed is not None and r.poison_seed != r.seed for r in ok):
        by_poison: dict[int, list[float]] = {}
        for r in ok:
            by_poison.setdefault(
                int(r.poison_seed if r.poison_seed is not None else r.seed), []
            ).append(float(getattr(r, key)))
        nested = nested_components(list(by_poison.values()))
    value = summarise(
        [float(getattr(r, key)) for r in ok],
        failed=errors > 0,
        errors=errors,
        latched=sum(bool(p.get("latched")) for p in probes),
        probed=len(probes),
        digests=tuple(sorted({_digest(r) for r in recs})),
        per_seed=tuple(
            sorted(
                (
                    SeedValue(
                        r.seed,
                        float(getattr(r, key)),
                        bool(_probe(r).get("latched")) if _probe(r) else None,
                        r.poison_seed,
                    )
                    for r in ok
                ),
                key=lambda s: (s.seed if s.poison_seed is None else s.poison_seed, s.seed, s.value),
            )
        ),
    )
    value.nested = nested
    return value


def _summaries(
    cells: Mapping[str, list[CellRecord]], columns: Sequence[str], key: str
) -> tuple[Value, Value, tuple[str, ...]]:
    """Mean and Max over countermeasures within each seed, then over seeds.

    Every seed contributes over the same countermeasures: the row's columns when some seeds
    have them all (those seeds are used), else the columns common to every seed."""
    # one unit per (poison seed, victim seed): in the nested design a victim seed recurs
    per_seed: dict[tuple[int, int], dict[str, float]] = {}
    for c in columns:
        for r in cells.get(c, []):
            if r.status == "ok" and getattr(r, key) is not None:
                unit = (r.seed if r.poison_seed is None else int(r.poison_seed), r.seed)
                per_seed.setdefault(unit, {})[c] = float(getattr(r, key))
    if not per_seed:
        return Value(None), Value(None), ()
    row_cols = [c for c in columns if any(c in v for v in per_seed.values())]
    seeds = [s for s, v in per_seed.items() if len(v) == len(row_cols)]
    used = row_cols
    if not seeds:
        seeds = list(per_seed)
        used = [c for c in row_cols if all(c in per_seed[s] for s in seeds)]
        if not used:  # no column every seed has: each seed's own columns (marked incomplete)
            means = [statistics.fmean(per_seed[s].values()) for s in seeds]
            maxes = [max(per_seed[s].values()) for s in seeds]
            return summarise(means, incomplete=True), summarise(maxes, incomplete=True), ()
    incomplete = len(used) < len(columns)
    means = [statistics.fmean(per_seed[s][c] for c in used) for s in sorted(seeds)]
    maxes = [max(per_seed[s][c] for c in used) for s in sorted(seeds)]
    mean_v = summarise(means, incomplete=incomplete)
    max_v = summarise(maxes, incomplete=incomplete)
    if any(q != s for q, s in seeds):  # nested: the poisons are the units of the interval
        units = sorted(seeds)
        for value, numbers in ((mean_v, means), (max_v, maxes)):
            groups: dict[int, list[float]] = {}
            for (q, _s), x in zip(units, numbers, strict=True):
                groups.setdefault(q, []).append(x)
            value.nested = nested_components(list(groups.values()))
    return mean_v, max_v, tuple(used)


def _victim_setting(r: CellRecord) -> str:
    """What a poisoned row must share with the clean row to be compared with it."""
    return _canon([r.profile, r.victim_version, r.victim_params])


def _mark_near_clean(rows: Sequence[Row], columns: Sequence[str]) -> bool:
    """Set `near_clean` where a poisoned row's value is within noise of its clean row's.
    Returns whether any comparison was possible (for the notes)."""
    clean: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        if r.is_clean:
            clean.setdefault((r.dataset, r.victim), []).append(r)
    compared = False
    for r in rows:
        refs = clean.get((r.dataset, r.victim), [])
        if r.is_clean or len(refs) != 1:  # no clean row, or several configurations of it
            continue
        ref = refs[0]
        if ref.victim_setting != r.victim_setting:  # trained differently: not comparable
            continue
        for c in [*columns, *SUMMARIES]:
            if c in SUMMARIES and (
                not r.summary_columns or r.summary_columns != ref.summary_columns
            ):
                continue  # Mean/Max over different countermeasures are different quantities
            a, b = r.value(c), ref.value(c)
            if a.mean is not None and b.mean is not None and min(a.n, b.n) >= 2:
                compared = True
                a.near_clean = within_noise(a, b)
    return compared


def build_table(
    records: Sequence[CellRecord], metric: Metric = "final", config: dict[str, Any] | None = None
) -> ReportTable:
    config = config or {}
    reference = reference_name(config)
    key = "final_acc" if metric == "final" else "peak_acc"
    columns = _order([r.countermeasure for r in records], config.get("countermeasures"))
    datasets = _order([r.dataset for r in records], config.get("datasets"))
    victims = _order([r.victim for r in records], config.get("victims"))
    order = {
        p: i
        for i, p in enumerate(
            _order(
                [r.poisoner for r in records],
                [*([reference] if reference else []), *config.get("poisoners", [])],
            )
        )
    }
    labelled = sorted(
        {(r.poisoner, r.poison_fraction) for r in records}, key=lambda pf: (order[pf[0]], -pf[1])
    )
    by_pos: dict[Position, list[CellRecord]] = {}
    for r in records:
        by_pos.setdefault(
            (r.dataset, r.victim, row_label(r.poisoner, r.poison_fraction)), []
        ).append(r)
    config_notes: list[str] = []
    configs: list[dict[str, Any]] = []
    rows = []
    for d in datasets:
        for v in victims:
            for name, fraction in labelled:
                pos = (d, v, row_label(name, fraction))
                if pos not in by_pos:
                    continue
                for slot in _split(pos, by_pos[pos], config_notes, configs):
                    label = pos[2] + (f" ⟨cfg {slot.variant}⟩" if slot.variant else "")
                    cells = {c: _cell(slot.cells.get(c, []), key) for c in columns}
                    mean, mx, used = _summaries(slot.cells, columns, key)
                    setting = {_victim_setting(r) for rs in slot.cells.values() for r in rs}
                    caveats = tuple(
                        sorted(
                            {
                                str((r.poison_facts or {}).get("caveat"))
                                for rs in slot.cells.values()
                                for r in rs
                                if (r.poison_facts or {}).get("caveat")
                            }
                        )
                    )
                    rows.append(
                        Row(
                            d,
                            v,
                            label,
                            cells,
                            mean,
                            mx,
                            name,
                            slot.variant,
                            used,
                            "|".join(sorted(setting)),
                            caveats,
                            reference=(name or label) == reference,
                        )
                    )
    near = _mark_near_clean(rows, columns)
    seeds = sorted({r.seed for r in records})
    table = ReportTable(columns, rows, metric, seeds=seeds, configs=configs)
    table.notes = _notes(table, near) + config_notes
    return table


def reference_name(config: dict[str, Any]) -> str | None:
    """The reference (clean) poisoner of a run: as its configuration recorded it, else the
    installed registration's (ueb.roles)."""
    recorded = config.get("reference")
    if isinstance(recorded, str):
        return recorded
    from ueb.roles import reference_poisoner

    return reference_poisoner()


def _notes(table: ReportTable, near: bool) -> list[str]:
    values = [r.value(c) for r in table.rows for c in table.value_columns]
    seeds = ", ".join(map(str, table.seeds))
    notes = [
        f"test accuracy (%), {table.metric} epoch; mean ± half-width of the 95% Student-t interval over seeds of one configuration, "
        f"n = seeds (n=1: one seed, no interval); seeds {seeds or 'none'}",
        "Mean/Max: over the countermeasures within each seed, then mean ± 95% half-width over seeds"
        + (
            "; * = over fewer countermeasures than the columns (failed or missing cells)"
            if any(v.incomplete for v in values)
            else ""
        ),
    ]
    if any(v.ci95 is not None and v.ci95 > RESOLUTION_POINTS for v in values):
        notes.append(
            f"{UNRESOLVED} = the 95% half-width is above {RESOLUTION_POINTS:g} points: "
            "not resolved at this budget (more seeds, or a longer protocol)"
        )
    if near:
        notes.append(
            f"{NEAR} = within noise of the clean row: the difference lies inside its 95% Welch interval "
            "(t quantile at the Welch-Satterthwaite df; needs n, n0 >= 2): not distinguishable from clean at these seeds"
        )
    if any(v.probed for v in values):
        notes.append(f"{LATCH} k/m = the shortcut probe latched in k of the m probed seeds")
    for row in table.rows:
        for caveat in row.caveats:
            notes.append(f"{CAVEAT} {row.poisoner}: {caveat}")
    if any(v.errors for v in values):
        notes.append(
            "err = every seed failed; err=k: k seeds failed (not in the mean); - = not run"
        )
    return notes


def pivot_by_victim(
    records: Sequence[CellRecord],
    countermeasure: str | None = None,
    metric: Metric = "final",
    config: dict[str, Any] | None = None,
) -> ReportTable:
    """The transfer layout of the paper's Tables III/E: one column per victim architecture, for
    one countermeasure (default: the baseline, plain training; ueb.roles)."""
    if countermeasure is None:
        from ueb.roles import baseline_countermeasure

        countermeasure = baseline_countermeasure()
    swapped = [
        replace(
            r,
            countermeasure=r.victim,
            victim=r.countermeasure,
            countermeasure_params=r.victim_params,
            victim_params=r.countermeasure_params,
            countermeasure_version=r.victim_version,
            victim_version=r.countermeasure_version,
        )
        for r in records
        if r.countermeasure == countermeasure
    ]
    cfg = dict(config or {})
    cfg["countermeasures"], cfg["victims"] = cfg.get("victims"), [countermeasure]
    table = build_table(swapped, metric, cfg)
    table.row_axis, table.column_axis = "Countermeasure", "Victim"
    return table
