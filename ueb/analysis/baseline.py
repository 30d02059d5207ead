"""Regression on numbers: a baseline is a JSON list of cells with their accuracy and provenance.

A cell is keyed by (dataset, poisoner, countermeasure, victim, seed, poison fraction). A baseline
entry with `"seed": null` (the paper's tables, which give no seeds) matches a run cell of any
seed. `compare` lists every cell whose final accuracy moved by more than the tolerance (in
accuracy points), cells the run failed, and cells present on one side only.

Pure Python: no torch, so `ueb check` starts fast and runs in CI without a model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ueb.errors import ConfigError, UebError
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
        return (self.dataset, self.poisoner, self.countermeasure, self.victim, self.seed, round(self.fraction, 6))

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


def resolve_path(name_or_path: str | Path) -> Path:
    """A path to a .json file, or the NAME of benchmarks/baselines/NAME.json."""
    p = Path(name_or_path)
    if p.exists():
        return p
    for folder in (DEFAULT_DIR, Path(__file__).resolve().parents[2] / DEFAULT_DIR):  # cwd, then the source tree
        candidate = folder / f"{name_or_path}.json"
        if candidate.exists():
            return candidate
    raise ConfigError(f"baseline '{name_or_path}' not found", f"pass a .json path or a name from {DEFAULT_DIR}/")


def load(name_or_path: str | Path) -> Baseline:
    path = resolve_path(name_or_path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"baseline {path} is not readable JSON ({exc})", "regenerate it with `ueb baseline accept`") from exc
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise ConfigError(f"baseline {path} has no 'cells' list", "regenerate it with `ueb baseline accept`")
    if data.get("schema", SCHEMA) > SCHEMA:
        raise ConfigError(f"baseline {path} has schema {data['schema']}, newer than this ueb ({SCHEMA})", "upgrade ueb")
    cells = []
    for i, c in enumerate(data["cells"]):
        missing = [k for k in ("dataset", "poisoner", "countermeasure", "victim", "accuracy") if k not in c]
        if missing:
            raise ConfigError(f"baseline {path}: cell {i} lacks {', '.join(missing)}", "each cell needs dataset, poisoner, countermeasure, victim and accuracy")
        cells.append(
            Entry(
                dataset=str(c["dataset"]),
                poisoner=str(c["poisoner"]),
                countermeasure=str(c["countermeasure"]),
                victim=str(c["victim"]),
                seed=None if c.get("seed") is None else int(c["seed"]),
                fraction=float(c.get("fraction", 1.0)),
                accuracy=None if c["accuracy"] is None else float(c["accuracy"]),
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
    parts = [f"  {json.dumps(k)}: {json.dumps(v, indent=2, default=str).replace(chr(10), chr(10) + '  ')}" for k, v in head.items()]
    cells = ",\n".join(f"    {json.dumps(_cell_json(e))}" for e in b.cells)
    return "{\n" + ",\n".join(parts) + ',\n  "cells": [\n' + cells + "\n  ]\n}\n"


def save(b: Baseline, path: Path) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(dumps(b))
        tmp.replace(path)
    except OSError as exc:
        raise UebError(f"cannot write baseline {path} ({exc.strerror})", "choose another --out folder") from exc
    return path


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


def provenance(manifest: dict[str, Any], records: Sequence[CellRecord], run_dir: Path) -> dict[str, Any]:
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
        "run_dir": str(run_dir),
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
    name: str, records: Sequence[CellRecord], manifest: dict[str, Any], run_dir: Path, tolerance: float = DEFAULT_TOLERANCE
) -> Baseline:
    if not records:
        raise UebError(f"run {run_dir} has no cells", "run the matrix first")
    cells = sorted((entry_of(r) for r in records), key=lambda e: (e.key[:4], e.seed or 0, -e.fraction))
    return Baseline(
        name=name,
        cells=cells,
        tolerance=tolerance,
        description=f"final test accuracy (%) of run {manifest.get('run_id') or run_dir}",
        provenance=provenance(manifest, records, run_dir),
    )


# --------------------------------------------------------------------------- comparison


@dataclass
class Moved:
    entry: Entry  # the baseline entry
    seed: int
    run_value: float | None  # None: the run's cell failed
    delta: float | None
    note: str = ""


@dataclass
class Comparison:
    tolerance: float
    moved: list[Moved]
    within: int
    missing_in_run: list[Entry]
    missing_in_baseline: list[Entry]

    @property
    def ok(self) -> bool:
        return not self.moved


def _version_note(base: Entry, run: Entry) -> str:
    changed = [f"{k} v{base.versions[k]}->v{run.versions.get(k)}" for k in base.versions if run.versions.get(k) not in (None, base.versions[k])]
    return "version changed: " + ", ".join(changed) if changed else ""


def compare(records: Sequence[CellRecord], baseline: Baseline, tolerance: float | None = None) -> Comparison:
    tol = baseline.tolerance if tolerance is None else float(tolerance)
    if tol < 0:
        raise ConfigError(f"tolerance {tol} is negative", "give accuracy points, e.g. --tolerance 2")
    exact: dict[Key, Entry] = {}
    any_seed: dict[Key, Entry] = {}
    for e in baseline.cells:
        (any_seed if e.seed is None else exact)[e.key] = e
    used: set[Key] = set()
    moved, within, extra = [], 0, []
    for r in sorted(records, key=lambda r: (r.ordinal, r.cell_id)):
        run = entry_of(r, baseline.metric)
        base = exact.get(run.key) or any_seed.get((*run.key[:4], None, run.key[5]))
        if base is None:
            extra.append(run)
            continue
        used.add(base.key)
        if base.accuracy is None:  # the baseline recorded a failure; a number now is news, not a regression
            within += 1
            continue
        if run.accuracy is None:
            moved.append(Moved(base, r.seed, None, None, f"cell failed: {r.error or r.status}"))
            continue
        delta = run.accuracy - base.accuracy
        if abs(delta) > tol + 1e-9:
            moved.append(Moved(base, r.seed, run.accuracy, delta, _version_note(base, run)))
        else:
            within += 1
    missing = [e for e in baseline.cells if e.key not in used]
    return Comparison(tol, moved, within, missing, extra)
