"""Reports in the paper's Table I layout: a row per (dataset, victim, poisoner), a column per
countermeasure, then Mean and Max over the countermeasures; test accuracy in %.

Every cell carries its uncertainty, in every format:

- a cell is the mean ± the half-width of its 95% Student-t interval over its seeds, with the
  seed count (`94.31 ± 0.50 n=3`; one seed: `94.31 n=1`, no interval); `?` marks a cell whose
  half-width is above 5 points, which this budget does not resolve (ueb/stats.py). JSON and
  CSV give the mean, the sample std, `ci95`, n and every seed's value;
- Mean and Max are taken over the countermeasures within each seed, then summarised over the
  seeds the same way, so their spread is the seed-to-seed spread of the value shown. They use
  the countermeasures every such seed has; `*` marks a Mean/Max over fewer countermeasures than
  the table's columns (failed or missing cells);
- `≈` marks a poisoned row's value within noise of the clean row's: |Δ| inside the 95% Welch
  interval of the difference (ueb/stats.py; the same rule `ueb check` applies);
- `L k/m` (class-wise poisoners): the shortcut probe latched in k of the m probed seeds;
- `err=k`: k seeds of the cell failed; a cell that only failed shows `err`, one not run `-`.

Seeds are pooled only among records with equal `config_digest`. When one table position holds
records of several configurations, the row is split into `em ⟨cfg 1a2b3c⟩` rows and a note
says which recorded settings differ.

Formats: `to_markdown`, `to_latex`, `to_json` (mean/std/n/ci95/latched/probed per cell),
`to_csv` (long format: one line per row and column, for `pandas.read_csv(...).pivot(...)`), and
`to_rich(table, width)`, which picks a layout that fits the terminal without cutting a number:
Table I, then transposed (countermeasures as rows), then panels of column groups.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ueb.stats import (
    RESOLUTION_POINTS,
    NestedComponents,
    difference_half_width,
    half_width,
    nested_components,
)
from ueb.store import CellRecord

Metric = Literal["final", "peak"]

NEAR = "≈"
LATCH = "L"
UNRESOLVED = "?"
CAVEAT = "†"
SUMMARIES = ("Mean", "Max")


# --------------------------------------------------------------------------- statistics


@dataclass
class Value:
    """One table value over seeds: mean, sample std (n-1), seed count, and its markers."""

    mean: float | None
    std: float | None = None
    n: int = 0
    failed: bool = False
    incomplete: bool = False
    errors: int = 0  # seeds that failed
    latched: int = 0  # seeds whose shortcut probe latched
    probed: int = 0  # seeds with a shortcut probe
    near_clean: bool = False  # within noise of the clean row (see NEAR)
    digests: tuple[str, ...] = ()
    # every seed's number: (seed, value, latched: None where the cell has no shortcut probe)
    per_seed: tuple[tuple[int, float, bool | None], ...] = ()
    # The nested design (poison seeds x victim seeds): the variance components and the mean's
    # standard error from the poison means (ueb.stats.nested_components).
    nested: NestedComponents | None = None

    @property
    def ci95(self) -> float | None:
        """Half-width of the 95% t-interval of the mean (None below two seeds). In the nested
        design the poisons are the independent units: t(0.975, P-1) x the SE of the mean."""
        if self.mean is None:
            return None
        if self.nested is not None:
            return self.nested.half_width
        return half_width(self.std, self.n)

    @property
    def resolved(self) -> bool:
        """False when the 95% half-width is above RESOLUTION_POINTS (or unknown at n=1)."""
        hw = self.ci95
        return hw is not None and hw <= RESOLUTION_POINTS

    def main(self, digits: int = 2) -> str:
        """The number: `≈10.29 ± 0.74*`, `34.68 ± 8.02?`, `err` or `-`."""
        if self.mean is None:
            return "err" if self.failed else "-"
        s = f"{self.mean:.{digits}f}"
        hw = self.ci95
        if hw is not None:
            s += f" ± {hw:.{digits}f}"
            if hw > RESOLUTION_POINTS:
                s += UNRESOLVED
        return (NEAR if self.near_clean else "") + s + ("*" if self.incomplete else "")

    def detail(self) -> str:
        """Seed count and markers: `n=3 L2/3 err=1`; nested: `n=3x2 sd poison 4.1 victim 1.2`."""
        parts = [f"n={self.n}"] if self.mean is not None else []
        if self.nested is not None and self.mean is not None:
            c = self.nested
            parts = [
                f"n={c.poisons}x{c.victims} sd poison {c.poison_sd:.1f} victim {c.victim_sd:.1f}"
            ]
        if self.probed:
            parts.append(f"{LATCH}{self.latched}/{self.probed}")
        if self.errors and self.mean is not None:
            parts.append(f"err={self.errors}")
        return " ".join(parts)

    def text(self, digits: int = 2) -> str:
        return " ".join(p for p in (self.main(digits), self.detail()) if p)


def summarise(values: Sequence[float], **markers: Any) -> Value:
    if not values:
        return Value(None, **markers)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return Value(statistics.fmean(values), std, len(values), **markers)


def within_noise(a: Value, b: Value) -> bool:
    """|a - b| inside the 95% Welch interval of the difference (ueb.stats); False when either
    side has fewer than two seeds."""
    if a.mean is None or b.mean is None or a.std is None or b.std is None or min(a.n, b.n) < 2:
        return False
    hw = difference_half_width(a.std, a.n, b.std, b.n)
    return hw is not None and abs(a.mean - b.mean) <= hw + 1e-9


# --------------------------------------------------------------------------- the table


@dataclass
class Row:
    dataset: str
    victim: str
    poisoner: str  # the row's label: 'em', 'em @20%', 'em ⟨cfg 1a2b3c⟩'
    cells: dict[str, Value]
    mean: Value
    max: Value
    name: str = ""  # the poisoner plugin
    variant: str = ""  # configuration tag when one table position holds several configurations
    summary_columns: tuple[str, ...] = ()  # the columns Mean and Max are over
    victim_setting: str = field(default="", repr=False)  # the victim side's settings, for ≈
    # What a poisoner said about its poison that a reader must not miss (its `caveat` fact,
    # e.g. semantic images that did not come from the paper's generator); the label carries †.
    caveats: tuple[str, ...] = ()

    def value(self, column: str) -> Value:
        if column == "Mean":
            return self.mean
        if column == "Max":
            return self.max
        return self.cells[column]

    @property
    def is_clean(self) -> bool:
        return (self.name or self.poisoner) == "clean"


def title(row: Row) -> str:
    """The row's label as printed: with † when its poisoner left a caveat (see the notes)."""
    return f"{row.poisoner} {CAVEAT}" if row.caveats else row.poisoner


@dataclass
class ReportTable:
    columns: list[str]
    rows: list[Row]
    metric: Metric
    notes: list[str] = field(default_factory=list)
    row_axis: str = "Victim"
    column_axis: str = "Countermeasure"
    seeds: list[int] = field(default_factory=list)
    configs: list[dict[str, Any]] = field(default_factory=list)  # split positions, for JSON

    @property
    def value_columns(self) -> list[str]:
        return [*self.columns, *SUMMARIES]


def _order(names: Iterable[str], preferred: Sequence[str] | None) -> list[str]:
    seen = list(dict.fromkeys(names))
    if not preferred:
        return seen
    first = [n for n in dict.fromkeys(preferred) if n in seen]
    return first + [n for n in seen if n not in first]


def row_label(poisoner: str, fraction: float) -> str:
    """'em' for a fully poisoned set, 'em @20%' when only a fraction is poisoned."""
    return poisoner if fraction >= 1.0 else f"{poisoner} @{fraction * 100:g}%"


def _digest(r: CellRecord) -> str:
    return r.config_digest or ""


def _probe(r: CellRecord) -> Mapping[str, Any]:
    return r.probe if isinstance(r.probe, Mapping) else {}


def _settings(r: CellRecord) -> dict[str, Any]:
    """What a row shares across its columns, as the record states it."""
    return {
        "profile": r.profile,
        "poisoner_version": r.poisoner_version,
        "poisoner_params": r.poisoner_params,
        "victim_version": r.victim_version,
        "victim_params": r.victim_params,
    }


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, str) else _canon(v)
    return out


def _differences(
    groups: Mapping[str, Sequence[CellRecord]], fields: Callable[[CellRecord], dict[str, Any]]
) -> str:
    """'poisoner_params.eps: 0.03 ⟨cfg a⟩ vs 0.06 ⟨cfg b⟩' over the groups' first records."""
    flat = {tag: _flat(fields(recs[0])) for tag, recs in groups.items()}
    keys = _order((k for f in flat.values() for k in f), None)
    diffs = []
    for k in keys:
        vals = {tag: f.get(k, "(unset)") for tag, f in flat.items()}
        if len(set(vals.values())) > 1:
            diffs.append(f"{k}: " + " vs ".join(f"{v} ⟨cfg {t}⟩" for t, v in vals.items()))
    return "; ".join(diffs)


def _full_fields(r: CellRecord) -> dict[str, Any]:
    return {
        **_settings(r),
        "countermeasure_version": r.countermeasure_version,
        "countermeasure_params": r.countermeasure_params,
        "git": r.git,
        "torch": r.torch,
        "device": r.device,
    }


def _tag(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:6]


@dataclass
class _Slot:
    """The records of one table row: one configuration per column."""

    variant: str
    cells: dict[str, list[CellRecord]]


Position = tuple[str, str, str]  # dataset, victim, row label


def _split(
    pos: Position, recs: Sequence[CellRecord], notes: list[str], configs: list[dict[str, Any]]
) -> list[_Slot]:
    """One slot when every column of the position holds one configuration; else a slot per
    configuration, aligned across columns by the row's recorded settings when they tell the
    configurations apart, or (when they do not) a slot per conflicting cell and digest."""
    by_col: dict[str, dict[str, list[CellRecord]]] = {}
    for r in recs:
        by_col.setdefault(r.countermeasure, {}).setdefault(_digest(r), []).append(r)
    conflicts = [c for c, g in by_col.items() if len(g) > 1]
    if not conflicts:
        return [
            _Slot("", {c: [r for g in groups.values() for r in g] for c, groups in by_col.items()})
        ]
    where = f"{pos[2]} on {pos[0]} / {pos[1]}"
    sig = {id(r): _canon(_settings(r)) for r in recs}
    columns = [[r for rs in groups.values() for r in rs] for groups in by_col.values()]
    separable = all(
        len({_digest(r) for r in g})
        == len({sig[id(r)] for r in g})
        == len({(_digest(r), sig[id(r)]) for r in g})
        for g in columns
    )
    slots: dict[str, _Slot] = {}
    groups_by_tag: dict[str, list[CellRecord]] = {}
    if separable:
        for r in sorted(recs, key=lambda r: (r.finished, r.ordinal)):
            tag = _tag(sig[id(r)])
            slots.setdefault(tag, _Slot(tag, {})).cells.setdefault(r.countermeasure, []).append(r)
            groups_by_tag.setdefault(tag, []).append(r)
        differs = _differences(groups_by_tag, _settings)
    else:
        plain = _Slot("", {c: next(iter(g.values())) for c, g in by_col.items() if len(g) == 1})
        if plain.cells:
            slots[""] = plain
        per_column = []
        for c in conflicts:
            in_column = {}
            for digest, rs in by_col[c].items():
                tag = digest[:6] or "none"
                slots[f"{c}/{tag}"] = _Slot(tag, {c: rs})
                groups_by_tag.setdefault(tag, []).extend(rs)
                in_column[tag] = rs
            found = _differences(in_column, _full_fields)
            per_column.append(
                f"{c}: {found or 'no recorded parameter (training or data settings?)'}"
            )
        differs = "; ".join(per_column)
    digests = {tag: sorted({_digest(r) for r in rs}) for tag, rs in groups_by_tag.items()}
    listed = "; ".join(
        f"⟨cfg {t}⟩ "
        + ", ".join((d[:12] or "(none)") for d in ds[:3])
        + (f" (+{len(ds) - 3} more)" if len(ds) > 3 else "")
        for t, ds in digests.items()
    )
    notes.append(
        f"{where}: records of {len(digests)} configurations, shown apart, never pooled; differs: {differs}; config digests: {listed}"
    )
    configs.append(
        {
            "dataset": pos[0],
            "victim": pos[1],
            "poisoner": pos[2],
            "differs": differs,
            "digests": digests,
        }
    )
    return list(slots.values())


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
                    r.seed,
                    float(getattr(r, key)),
                    bool(_probe(r).get("latched")) if _probe(r) else None,
                )
                for r in ok
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
    key = "final_acc" if metric == "final" else "peak_acc"
    columns = _order([r.countermeasure for r in records], config.get("countermeasures"))
    datasets = _order([r.dataset for r in records], config.get("datasets"))
    victims = _order([r.victim for r in records], config.get("victims"))
    order = {
        p: i
        for i, p in enumerate(
            _order([r.poisoner for r in records], ["clean", *config.get("poisoners", [])])
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
                        )
                    )
    near = _mark_near_clean(rows, columns)
    seeds = sorted({r.seed for r in records})
    table = ReportTable(columns, rows, metric, seeds=seeds, configs=configs)
    table.notes = _notes(table, near) + config_notes
    return table


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
    countermeasure: str = "vanilla",
    metric: Metric = "final",
    config: dict[str, Any] | None = None,
) -> ReportTable:
    """The transfer layout of the paper's Tables III/E: one column per victim architecture."""
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


# --------------------------------------------------------------------------- text formats


def _header(table: ReportTable) -> list[str]:
    return ["Dataset", table.row_axis, "Poisoner", *table.value_columns]


def _cells(row: Row, table: ReportTable) -> list[str]:
    return [
        row.dataset,
        row.victim,
        title(row),
        *(row.value(c).text() for c in table.value_columns),
    ]


def _md(text: str) -> str:
    return text.replace("*", "\\*").replace("_", "\\_")


def to_markdown(table: ReportTable) -> str:
    head = _header(table)
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" if i < 3 else "---:" for i in range(len(head))) + "|",
    ]
    lines += [
        "| " + " | ".join(c.replace("|", "\\|") for c in _cells(r, table)) + " |"
        for r in table.rows
    ]
    lines += ["", *(f"_{_md(n)}_" for n in table.notes)]
    return "\n".join(lines) + "\n"


CSV_FIELDS = (
    "dataset", "victim", "poisoner", "variant", "column", "summary", "mean", "std", "n", "ci95",
    "latched", "probed", "near_clean", "errors", "incomplete",
)  # fmt: skip


def to_csv(table: ReportTable) -> str:
    """Long format, one line per (row, column), Mean and Max as columns with `summary` = 1:
    `pd.read_csv(f).pivot(index=["dataset", "victim", "poisoner"], columns="column", values="mean")`
    gives the Table I layout back. `std` is the sample std (n-1) over seeds, `ci95` the half-width
    of the 95% t-interval, `latched`/`probed` the shortcut-probe counts (empty when not probed)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)

    def num(x: float | None) -> str:
        return "" if x is None else f"{x:.6g}"

    for r in table.rows:
        for c in table.value_columns:
            v = r.value(c)
            w.writerow(
                [r.dataset, r.victim, title(r), r.variant, c, int(c in SUMMARIES), num(v.mean), num(v.std if v.n > 1 else None), v.n,
                 num(v.ci95), v.latched if v.probed else "", v.probed or "", int(v.near_clean), v.errors, int(v.incomplete)]
            )  # fmt: skip
    return buf.getvalue()


_TEX = {
    "\\": "\\textbackslash{}", "{": "\\{", "}": "\\}", "_": "\\_", "%": "\\%", "&": "\\&", "#": "\\#", "$": "\\$",
    "^": "\\^{}", "~": "\\~{}", "|": "$|$", "<": "$<$", ">": "$>$", "±": "$\\pm$", NEAR: "$\\approx$", "⟨": "$\\langle$", "⟩": "$\\rangle$",
}  # fmt: skip


def _tex(s: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in s)


def to_latex(table: ReportTable) -> str:
    head = _header(table)
    spec = "lll" + "r" * (len(head) - 3)
    lines = [
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        " & ".join(_tex(h) for h in head) + " \\\\",
        "\\midrule",
    ]
    lines += [" & ".join(_tex(c) for c in _cells(r, table)) + " \\\\" for r in table.rows]
    lines.append("\\bottomrule")
    lines += [
        f"\\multicolumn{{{len(head)}}}{{p{{0.95\\linewidth}}}}{{\\footnotesize {_tex(n)}}} \\\\"
        for n in table.notes
    ]
    lines.append("\\end{tabular}")
    return "\n".join(lines) + "\n"


def value_json(v: Value) -> dict[str, Any]:
    return {
        "mean": v.mean,
        "std": v.std if v.n > 1 else None,
        "n": v.n,
        "ci95": v.ci95,
        "latched": v.latched if v.probed else None,
        "probed": v.probed,
        "near_clean": v.near_clean,
        "failed": v.failed,
        "errors": v.errors,
        "incomplete": v.incomplete,
        "config_digests": list(v.digests),
        "per_seed": [{"seed": a, "value": b, "latched": c} for a, b, c in v.per_seed],
        "nested": None
        if v.nested is None
        else {
            "poison_seeds": v.nested.poisons,
            "victim_seeds": v.nested.victims,
            "poison_variance": v.nested.poison_var,
            "victim_variance": v.nested.victim_var,
            "poison_sd": v.nested.poison_sd,
            "victim_sd": v.nested.victim_sd,
        },
    }


def to_json(table: ReportTable) -> str:
    return json.dumps(
        {
            "metric": table.metric,
            "spread": "std: sample standard deviation (n-1) over seeds; ci95: half-width of the 95% t-interval of the mean",
            "columns": table.columns,
            "seeds": table.seeds,
            "rows": [
                {
                    "dataset": r.dataset,
                    "victim": r.victim,
                    "poisoner": r.poisoner,
                    "plugin": r.name,
                    "variant": r.variant,
                    "cells": {c: value_json(r.cells[c]) for c in table.columns},
                    "mean": value_json(r.mean),
                    "max": value_json(r.max),
                    "summary_columns": list(r.summary_columns),
                    "caveats": list(r.caveats),
                }
                for r in table.rows
            ],
            "configurations": table.configs,
            "notes": table.notes,
        },
        indent=2,
    )


# --------------------------------------------------------------------------- terminal

TITLE = "Test accuracy (%) of victims trained on protected data"


@dataclass
class _Grid:
    """A layout-neutral table: row labels (several label columns), data columns, cells."""

    label_heads: list[str]
    labels: list[list[str]]  # per row, one text per label column
    heads: list[str]  # data column headers (may hold newlines)
    values: list[list[Value]]  # per row, per data column
    dim_rows: set[int] = field(default_factory=set)
    dim_cols: set[int] = field(default_factory=set)
    bold_cols: set[int] = field(default_factory=set)
    bold_rows: set[int] = field(default_factory=set)
    sections: set[int] = field(default_factory=set)  # rows that start a new section


def _common(table: ReportTable) -> tuple[bool, bool, str]:
    """Whether dataset / victim vary between rows, and the title suffix naming them when not."""
    ds = {r.dataset for r in table.rows}
    vs = {r.victim for r in table.rows}
    fixed = [next(iter(ds))] if len(ds) == 1 else []
    fixed += [next(iter(vs))] if len(vs) == 1 else []
    return len(ds) > 1, len(vs) > 1, " / ".join(fixed)


def _table_one(table: ReportTable) -> _Grid:
    many_d, many_v, _ = _common(table)
    label_heads = [
        h for h, keep in (("Dataset", many_d), (table.row_axis, many_v), ("Poisoner", True)) if keep
    ]
    labels = [
        [x for x, keep in ((r.dataset, many_d), (r.victim, many_v), (title(r), True)) if keep]
        for r in table.rows
    ]
    cols = table.value_columns
    grid = _Grid(label_heads, labels, list(cols), [[r.value(c) for c in cols] for r in table.rows])
    grid.dim_rows = {i for i, r in enumerate(table.rows) if r.is_clean}
    grid.bold_cols = {i for i, c in enumerate(cols) if c in SUMMARIES}
    grid.sections = {
        i for i in range(1, len(table.rows)) if table.rows[i].dataset != table.rows[i - 1].dataset
    }
    return grid


def _transposed(table: ReportTable) -> _Grid:
    many_d, many_v, _ = _common(table)
    heads = [
        "\n".join(
            x for x, keep in ((r.dataset, many_d), (r.victim, many_v), (title(r), True)) if keep
        )
        for r in table.rows
    ]
    cols = table.value_columns
    grid = _Grid(
        [table.column_axis],
        [[c] for c in cols],
        heads,
        [[r.value(c) for r in table.rows] for c in cols],
    )
    grid.dim_cols = {j for j, r in enumerate(table.rows) if r.is_clean}
    grid.bold_rows = {i for i, c in enumerate(cols) if c in SUMMARIES}
    grid.sections = {len(table.columns)} if table.columns else set()
    return grid


def _rich_table(grid: _Grid, cols: Sequence[int], stacked: bool, title: str) -> Any:
    from rich.table import Table
    from rich.text import Text

    t = Table(title=title, title_justify="left")
    for h in grid.label_heads:
        t.add_column(Text(h), justify="left", overflow="fold")
    for j in cols:
        t.add_column(
            Text(grid.heads[j]),
            justify="right",
            overflow="fold",
            style="bold" if j in grid.bold_cols else None,
        )
    sep = "\n" if stacked else " "
    for i, (labels, values) in enumerate(zip(grid.labels, grid.values, strict=True)):
        if i in grid.sections:
            t.add_section()
        cells = [Text(x) for x in labels]
        for j in cols:
            v = values[j]
            cells.append(
                Text(
                    sep.join(p for p in (v.main(), v.detail()) if p),
                    style="dim" if j in grid.dim_cols else "",
                )
            )
        t.add_row(
            *cells, style="dim" if i in grid.dim_rows else ("bold" if i in grid.bold_rows else None)
        )
    return t


def _width(renderable: Any) -> int:
    from rich.console import Console
    from rich.measure import Measurement

    console = Console(width=100_000)
    return Measurement.get(console, console.options, renderable).maximum


def _panels(grid: _Grid, width: int, stacked: bool) -> list[list[int]]:
    """Data columns in groups that fit `width` next to the repeated row labels (greedy)."""
    groups: list[list[int]] = []
    current: list[int] = []
    for j in range(len(grid.heads)):
        trial = [*current, j]
        if current and _width(_rich_table(grid, trial, stacked, "")) > width:
            groups.append(current)
            trial = [j]
        current = trial
    if current:
        groups.append(current)
    return groups


def to_rich(table: ReportTable, width: int | None = None) -> Any:
    """The table for a terminal `width` columns wide (None: the Table I layout as is).

    Layouts, first that fits: Table I; Table I with the seed count under the number; transposed
    (countermeasures as rows); transposed and stacked; then panels of column groups (each
    repeating the row labels) of whichever orientation needs fewer. Columns fold rather than
    cut, so a number is never shortened to '…'."""
    from rich.console import Group
    from rich.text import Text

    _, _, fixed = _common(table)
    title = TITLE + (f": {fixed}" if fixed else "")
    notes = Text("\n".join(table.notes), style="italic")
    one, flipped = _table_one(table), _transposed(table)
    if width is None:
        return Group(_rich_table(one, range(len(one.heads)), False, title), notes)
    candidates = [
        (one, False, ""),
        (one, True, ""),
        (flipped, False, f" ({table.column_axis.lower()}s as rows)"),
        (flipped, True, f" ({table.column_axis.lower()}s as rows)"),
    ]
    for grid, stacked, how in candidates:
        t = _rich_table(grid, range(len(grid.heads)), stacked, title + how)
        if _width(t) <= width:
            return Group(t, notes)
    options = [(grid, how, _panels(grid, width, True)) for grid, _, how in candidates[1::2]]
    grid, how, groups = min(options, key=lambda o: len(o[2]))
    tables = [
        _rich_table(grid, cols, True, f"{title}{how}, part {k} of {len(groups)}")
        for k, cols in enumerate(groups, 1)
    ]
    return Group(*tables, notes)


RENDERERS = {"markdown": to_markdown, "csv": to_csv, "latex": to_latex, "json": to_json}
EXTENSIONS = {"markdown": "md", "csv": "csv", "latex": "tex", "json": "json"}
