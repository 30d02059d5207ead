"""Regression on numbers: a baseline is a JSON list of cells with their accuracy and provenance.

An entry is keyed by (dataset, poisoner, countermeasure, victim, seed, poison fraction). An entry
with `"seed": null` (the paper's tables, which give no seeds) matches a run cell of any seed.

`compare` works per cell (the key without the seed): the run's mean over its seeds against the
baseline's mean over its entries, allowed to differ by max(tolerance, k × the 95% Welch
half-width of the difference) (ueb/stats.py: the rule the table's `≈` mark uses too; k = 1 by
default), so several seeds widen the tolerance by their own spread and never narrow it.
It lists the cells that moved, cells the run failed, entries on one side only, and how many of
the baseline's cells the run covered: a check that compared nothing cannot pass.

Pure Python: no torch, so `ueb check` starts fast and runs in CI without a model.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ueb.errors import ConfigError, UebError
from ueb.stats import values_half_width
from ueb.store import CellRecord

SCHEMA = 1
DEFAULT_DIR = Path("benchmarks/baselines")
DEFAULT_TOLERANCE = 1.0  # points, for a baseline that names none
KEY_FIELDS = ("dataset", "poisoner", "countermeasure", "victim", "seed", "fraction")

Key = tuple[str, str, str, str, int | None, float]


@dataclass(frozen=True)
class Entry:
    dataset: str
    poisoner: str
    countermeasure: str
    victim: str
    seed: int | None
    fraction: float
    accuracy: float | None
    versions: dict[str, str] = field(default_factory=dict)
    source: str = ""

    @property
    def key(self) -> Key:
        return (
            self.dataset,
            self.poisoner,
            self.countermeasure,
            self.victim,
            self.seed,
            round(self.fraction, 6),
        )

    def label(self) -> str:
        seed = "any seed" if self.seed is None else f"seed {self.seed}"
        frac = "" if self.fraction >= 1.0 else f" @{self.fraction * 100:g}%"
        return f"{self.dataset} | {self.poisoner}{frac} | {self.countermeasure} | {self.victim} | {seed}"


@dataclass
class Baseline:
    name: str
    cells: list[Entry]
    tolerance: float = DEFAULT_TOLERANCE
    metric: str = "final_acc"
    description: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # rows, notes: kept on a round trip


# --------------------------------------------------------------------------- reading / writing


def _number(value: Any) -> float:
    """A finite number (bool and text that is no number are not accuracies)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(value)
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(value)
    return number


def resolve_path(name_or_path: str | Path) -> Path:
    """A path to a .json file, or the NAME of benchmarks/baselines/NAME.json."""
    p = Path(name_or_path)
    if p.exists():
        return p
    for folder in (
        DEFAULT_DIR,
        Path(__file__).resolve().parents[2] / DEFAULT_DIR,
    ):  # cwd, then the source tree
        candidate = folder / f"{name_or_path}.json"
        if candidate.exists():
            return candidate
    raise ConfigError(
        f"baseline '{name_or_path}' not found", f"pass a .json path or a name from {DEFAULT_DIR}/"
    )


def load(name_or_path: str | Path) -> Baseline:
    path = resolve_path(name_or_path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"baseline {path} is not readable JSON ({exc})",
            "regenerate it with `ueb baseline accept`",
        ) from exc
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise ConfigError(
            f"baseline {path} has no 'cells' list", "regenerate it with `ueb baseline accept`"
        )
    if data.get("schema", SCHEMA) > SCHEMA:
        raise ConfigError(
            f"baseline {path} has schema {data['schema']}, newer than this ueb ({SCHEMA})",
            "upgrade ueb",
        )
    cells = []
    for i, c in enumerate(data["cells"]):
        missing = [
            k for k in ("dataset", "poisoner", "countermeasure", "victim", "accuracy") if k not in c
        ]
        if missing:
            raise ConfigError(
                f"baseline {path}: cell {i} lacks {', '.join(missing)}",
                "each cell needs dataset, poisoner, countermeasure, victim and accuracy",
            )
        try:
            accuracy = None if c["accuracy"] is None else _number(c["accuracy"])
            seed = None if c.get("seed") is None else int(c["seed"])
            fraction = _number(c.get("fraction", 1.0))
        except (TypeError, ValueError):
            raise ConfigError(
                f"baseline {path}: cell {i} ({c.get('poisoner')} x {c.get('countermeasure')}) has a "
                f"value that is not a number (accuracy {c.get('accuracy')!r}, seed {c.get('seed')!r}, "
                f"fraction {c.get('fraction', 1.0)!r})",
                "fix that cell or regenerate the baseline with `ueb baseline accept`",
            ) from None
        cells.append(
            Entry(
                dataset=str(c["dataset"]),
                poisoner=str(c["poisoner"]),
                countermeasure=str(c["countermeasure"]),
                victim=str(c["victim"]),
                seed=seed,
                fraction=fraction,
                accuracy=accuracy,
                versions={k: str(v) for k, v in (c.get("versions") or {}).items()},
                source=str(c.get("source", "")),
            )
        )
    known = {"schema", "name", "cells", "tolerance", "metric", "description", "provenance"}
    return Baseline(
        name=str(data.get("name", path.stem)),
        cells=cells,
        tolerance=float(data.get("tolerance", DEFAULT_TOLERANCE)),
        metric=str(data.get("metric", "final_acc")),
        description=str(data.get("description", "")),
        provenance=dict(data.get("provenance") or {}),
        extra={k: v for k, v in data.items() if k not in known},
    )


def _cell_json(e: Entry) -> dict[str, Any]:
    d: dict[str, Any] = {k: getattr(e, k) for k in (*KEY_FIELDS, "accuracy")}
    if e.versions:
        d["versions"] = e.versions
    if e.source:
        d["source"] = e.source
    return d


def dumps(b: Baseline) -> str:
    """JSON with one cell per line, so a diff of a re-accepted baseline shows the cells that moved."""
    head: dict[str, Any] = {
        "schema": SCHEMA,
        "name": b.name,
        "description": b.description,
        "metric": b.metric,
        "tolerance": b.tolerance,
        "provenance": b.provenance,
        **b.extra,
    }
    parts = [
        f"  {json.dumps(k)}: {json.dumps(v, indent=2, default=str).replace(chr(10), chr(10) + '  ')}"
        for k, v in head.items()
    ]
    cells = ",\n".join(f"    {json.dumps(_cell_json(e))}" for e in b.cells)
    return "{\n" + ",\n".join(parts) + ',\n  "cells": [\n' + cells + "\n  ]\n}\n"


def save(b: Baseline, path: Path) -> Path:
    from ueb.atomic import write_text

    return write_text(Path(path), dumps(b), what="the baseline")


# --------------------------------------------------------------------------- from a run


def entry_of(record: CellRecord, metric: str = "final_acc") -> Entry:
    value = getattr(record, metric) if record.status == "ok" else None
    return Entry(
        dataset=record.dataset,
        poisoner=record.poisoner,
        countermeasure=record.countermeasure,
        victim=record.victim,
        seed=record.seed,
        fraction=float(record.poison_fraction),
        accuracy=None if value is None else round(float(value), 4),
        versions={
            "poisoner": record.poisoner_version,
            "countermeasure": record.countermeasure_version,
            "victim": record.victim_version,
        },
    )


def provenance(
    manifest: dict[str, Any], records: Sequence[CellRecord], run_dir: Path
) -> dict[str, Any]:
    """Where the numbers come from: device, versions, profile, git commit, dates."""
    env = manifest.get("environment") or {}
    config = manifest.get("config") or {}
    plugins = {
        name: f"{rec.get('distribution', '')} {rec.get('version', '')}".strip()
        for name, rec in sorted((env.get("plugins") or {}).items())
    }
    return {
        "kind": "run",
        "run_id": manifest.get("run_id"),
        # the folder's name only: a baseline is shared, the path of one machine means nothing
        "run_dir": Path(run_dir).name,
        "profile": config.get("profile") or next((r.profile for r in records if r.profile), None),
        "device": env.get("device"),
        "device_name": env.get("device_name"),
        "torch": env.get("torch"),
        "python": env.get("python"),
        "platform": env.get("platform"),
        "ueb": env.get("ueb"),
        "git": env.get("git"),
        "plugins": plugins,
        "run_finished": manifest.get("last_finished"),
        "accepted": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "config": config,
    }


def from_run(
    name: str,
    records: Sequence[CellRecord],
    manifest: dict[str, Any],
    run_dir: Path,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Baseline:
    if not records:
        raise UebError(f"run {run_dir} has no cells", "run the matrix first")
    configs: dict[Key, set[str]] = {}
    for r in records:
        configs.setdefault(entry_of(r).key, set()).add(_digest(r))
    mixed = [key for key, digests in configs.items() if len(digests) > 1]
    if mixed:
        example = Entry(*mixed[0][:4], mixed[0][4], mixed[0][5], None).label()
        raise UebError(
            f"run {run_dir} holds {len(mixed)} cells in more than one configuration (e.g. {example})",
            "accept a run directory written by one configuration",
        )
    cells = sorted(
        (entry_of(r) for r in records), key=lambda e: (e.key[:4], e.seed or 0, -e.fraction)
    )
    return Baseline(
        name=name,
        cells=cells,
        tolerance=tolerance,
        description=f"final test accuracy (%) of run {manifest.get('run_id') or run_dir}",
        provenance=provenance(manifest, records, run_dir),
    )


# --------------------------------------------------------------------------- comparison

NOISE_K = 1.0  # multiple of the 95% Welch half-width of the difference a cell may move by
DEFAULT_MIN_COVERAGE = 1.0  # share of the baseline's cells a passing check must have compared

CellKey = tuple[str, str, str, str, float]  # dataset, poisoner, countermeasure, victim, fraction


def _cell_key(key: Key) -> CellKey:
    return (key[0], key[1], key[2], key[3], key[5])


@dataclass
class Moved:
    entry: Entry  # a baseline entry of the cell (label, source, versions)
    seeds: list[int]  # the run's seeds of the cell
    run_value: float | None  # the run's seed mean; None: a seed of the cell failed
    delta: float | None
    note: str = ""
    run_std: float | None = None
    run_n: int = 0
    base_value: float | None = None  # the baseline's mean over its entries of the cell
    base_n: int = 0
    allowed: float = 0.0  # the tolerance this cell was held to
    config: str = ""  # the run's config digest, when the cell holds several

    def label(self) -> str:
        seeds = ", ".join(map(str, self.seeds))
        cfg = f" ⟨cfg {self.config[:6]}⟩" if self.config else ""
        return (
            self.entry.label().rsplit(" | ", 1)[0]
            + f" | seed{'s' if len(self.seeds) > 1 else ''} {seeds}"
            + cfg
        )


@dataclass
class Comparison:
    tolerance: float
    moved: list[Moved]
    within: int  # cells within their tolerance
    missing_in_run: list[Entry]
    missing_in_baseline: list[Entry]
    compared: int = 0  # baseline cells the run has (any seed)
    baseline_cells: int = 0
    k: float = NOISE_K
    seedless: bool = False  # some baseline values carry no seed (one value per cell)
    # plugin versions that differ between the baseline and the run, over every compared cell
    version_changes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.moved

    @property
    def coverage(self) -> float:
        return self.compared / self.baseline_cells if self.baseline_cells else 0.0

    def coverage_line(self) -> str:
        return f"compared {self.compared} of {self.baseline_cells} baseline cells ({self.coverage:.0%})"

    def rule(self) -> str:
        text = (
            f"a cell passes when |run mean - baseline mean| <= max({self.tolerance:g} points, "
            f"{self.k:g} x the 95% Welch half-width of the difference), from the sample std over seeds; "
            "a side with one seed takes the other side's s, one seed on both sides: the tolerance alone"
        )
        return text + ("; a seedless baseline value counts as one seed" if self.seedless else "")


def _version_note(base: Entry, run: Entry) -> str:
    changed = [
        f"{k} v{base.versions[k]}->v{run.versions.get(k)}"
        for k in base.versions
        if run.versions.get(k) not in (None, base.versions[k])
    ]
    return "version changed: " + ", ".join(changed) if changed else ""


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def allowed_delta(tolerance: float, k: float, run: Sequence[float], base: Sequence[float]) -> float:
    """max(tolerance, k × the 95% Welch half-width of the difference, ueb.stats); a side with
    one value borrows the other side's std; with one value on each side: the tolerance."""
    hw = values_half_width(run, base)
    return tolerance if hw is None else max(tolerance, k * hw)


def _digest(r: CellRecord) -> str:
    return r.config_digest or ""


def compare(
    records: Sequence[CellRecord],
    baseline: Baseline,
    tolerance: float | None = None,
    k: float = NOISE_K,
) -> Comparison:
    """Compare the run's seed mean of every cell with the baseline's (see `Comparison.rule`).

    Records of different `config_digest` are never pooled: each configuration of a cell is
    compared on its own. A cell that failed at any seed counts as moved."""
    tol = baseline.tolerance if tolerance is None else float(tolerance)
    if tol < 0:
        raise ConfigError(
            f"tolerance {tol} is negative", "give accuracy points, e.g. --tolerance 2"
        )
    if k < 0:
        raise ConfigError(f"spread multiple {k} is negative", "give e.g. --spread-k 2")
    exact: dict[Key, Entry] = {}
    any_seed: dict[Key, Entry] = {}
    by_cell: dict[CellKey, list[Entry]] = {}
    for e in baseline.cells:
        (any_seed if e.seed is None else exact)[e.key] = e
        by_cell.setdefault(_cell_key(e.key), []).append(e)
    used: set[Key] = set()
    extra: list[Entry] = []
    groups: dict[tuple[CellKey, str], list[tuple[CellRecord, Entry]]] = {}
    for r in sorted(records, key=lambda r: (r.ordinal, r.cell_id)):
        run = entry_of(r, baseline.metric)
        base = exact.get(run.key) or any_seed.get((*run.key[:4], None, run.key[5]))
        if base is None:
            extra.append(run)
        else:
            used.add(base.key)
        if _cell_key(run.key) in by_cell:
            groups.setdefault((_cell_key(run.key), _digest(r)), []).append((r, run))
    digests_per_cell: dict[CellKey, set[str]] = {}
    for cell, digest in groups:
        digests_per_cell.setdefault(cell, set()).add(digest)
    moved, within = [], 0
    for (cell, digest), members in groups.items():
        config = (digest or "none") if len(digests_per_cell[cell]) > 1 else ""
        m = _compare_cell(by_cell[cell], members, tol, k, config)
        if m is None:
            within += 1
        else:
            moved.append(m)
    missing = [e for e in baseline.cells if e.key not in used]
    changes = sorted(
        {
            part
            for (cell, _digest), members in groups.items()
            for part in _version_note(by_cell[cell][0], members[0][1])
            .removeprefix("version changed: ")
            .split(", ")
            if part
        }
    )
    return Comparison(
        tol,
        moved,
        within,
        missing,
        extra,
        compared=len(digests_per_cell),
        baseline_cells=len(by_cell),
        k=k,
        seedless=bool(any_seed),
        version_changes=changes,
    )


def _compare_cell(
    entries: list[Entry], members: list[tuple[CellRecord, Entry]], tol: float, k: float, config: str
) -> Moved | None:
    """The cell's verdict: None when within its tolerance, else what moved."""
    first = entries[0]
    seeds = sorted({r.seed for r, _ in members})
    base_values = [e.accuracy for e in entries if e.accuracy is not None]
    if not base_values:  # the baseline recorded a failure; a number now is news, not a regression
        return None
    base_mean = statistics.fmean(base_values)
    failed = [r for r, run in members if run.accuracy is None]
    if failed:
        why = "; ".join(f"seed {r.seed}: {r.error or r.status}" for r in failed[:2])
        return Moved(
            first,
            seeds,
            None,
            None,
            f"cell failed ({why})",
            base_value=base_mean,
            base_n=len(base_values),
            allowed=tol,
            config=config,
        )
    values = [run.accuracy for _, run in members if run.accuracy is not None]
    run_mean, run_std = _mean_std(values)
    allowed = allowed_delta(tol, k, values, base_values)
    delta = run_mean - base_mean
    if abs(delta) <= allowed + 1e-9:
        return None
    note = _version_note(first, members[0][1])
    return Moved(
        first,
        seeds,
        run_mean,
        delta,
        note,
        run_std,
        len(values),
        base_mean,
        len(base_values),
        allowed,
        config,
    )
