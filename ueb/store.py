"""The result store: one SQLite file (WAL) per run directory, one row per matrix cell.

A row is written as soon as its cell finishes (or fails), inside one transaction, so killing
the process at any moment loses at most the cell in progress. The manifest table records the
environment (ueb, git, torch, device, plugin distributions) and the resolved configuration.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ueb.errors import UebError

DB_NAME = "results.sqlite"


@dataclass
class CellRecord:
    cell_id: str
    ordinal: int
    dataset: str
    poisoner: str
    countermeasure: str
    victim: str
    seed: int
    poison_fraction: float = 1.0
    profile: str = ""
    poisoner_version: str = ""
    countermeasure_version: str = ""
    victim_version: str = ""
    poisoner_params: dict[str, Any] = field(default_factory=dict)
    countermeasure_params: dict[str, Any] = field(default_factory=dict)
    victim_params: dict[str, Any] = field(default_factory=dict)
    params_hash: str = ""
    status: str = "pending"  # ok | error
    final_acc: float | None = None
    peak_acc: float | None = None
    peak_step: int | None = None
    clean_final_acc: float | None = None
    clean_peak_acc: float | None = None
    iterations: int | None = None
    poison_seconds: float | None = None
    train_seconds: float | None = None
    poison_facts: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    finished: str = ""


_JSON_FIELDS = {"poisoner_params", "countermeasure_params", "victim_params", "poison_facts", "history", "extra"}


def _column_type(name: str) -> str:
    if name in _JSON_FIELDS:
        return "TEXT"
    if name in ("ordinal", "seed", "peak_step", "iterations"):
        return "INTEGER"
    if name.endswith(("_acc", "_seconds", "_fraction")):
        return "REAL"
    return "TEXT"


def _finite(value: Any) -> Any:
    """NaN and +-inf become None, at any depth: SQLite's JSON functions reject them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _dumps(value: Any) -> str:
    """Strict JSON, so that `json_extract` works on every stored record."""
    return json.dumps(_finite(value), default=str, allow_nan=False)


class Store:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UebError(f"cannot create run directory {self.run_dir} ({exc.strerror})", "choose another --run-dir") from exc
        self.path = self.run_dir / DB_NAME
        self._conn = sqlite3.connect(self.path, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        cols = ", ".join(
            f"{f.name} {_column_type(f.name)}{' PRIMARY KEY' if f.name == 'cell_id' else ''}" for f in fields(CellRecord)
        )
        with self._tx() as c:
            c.execute(f"CREATE TABLE IF NOT EXISTS cells ({cols})")
            c.execute("CREATE TABLE IF NOT EXISTS manifest (key TEXT PRIMARY KEY, value TEXT)")

    @classmethod
    def open_existing(cls, run_dir: Path) -> Store:
        run_dir = Path(run_dir)
        if not (run_dir / DB_NAME).exists():
            raise UebError(f"no results in {run_dir} (missing {DB_NAME})", "pass the run directory printed by `ueb run`")
        return cls(run_dir)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            with self._conn:
                yield self._conn
        except sqlite3.OperationalError as exc:
            if "disk" in str(exc).lower() or "full" in str(exc).lower():
                raise UebError(f"cannot write results to {self.path}: {exc}", "free disk space, then re-run to resume") from exc
            raise

    def close(self) -> None:
        self._conn.close()

    # -- manifest ---------------------------------------------------------------------------

    def set_manifest(self, **items: Any) -> None:
        with self._tx() as c:
            c.executemany(
                "INSERT OR REPLACE INTO manifest (key, value) VALUES (?, ?)",
                [(k, json.dumps(v, default=str)) for k, v in items.items()],
            )

    def manifest(self) -> dict[str, Any]:
        rows = self._conn.execute("SELECT key, value FROM manifest").fetchall()
        return {k: json.loads(v) for k, v in rows}

    # -- cells ------------------------------------------------------------------------------

    def put(self, record: CellRecord) -> None:
        record.finished = record.finished or time.strftime("%Y-%m-%dT%H:%M:%S")
        row = asdict(record)
        for k in _JSON_FIELDS:
            row[k] = _dumps(row[k])
        names = list(row)
        with self._tx() as c:
            c.execute(
                f"INSERT OR REPLACE INTO cells ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})",
                [row[n] for n in names],
            )

    def get(self, cell_id: str) -> CellRecord | None:
        rows = self._select("WHERE cell_id = ?", (cell_id,))
        return rows[0] if rows else None

    def find(self, prefix: str) -> list[CellRecord]:
        return self._select("WHERE cell_id LIKE ?", (prefix + "%",))

    def done_ids(self) -> set[str]:
        return {r[0] for r in self._conn.execute("SELECT cell_id FROM cells WHERE status = 'ok'")}

    def records(self) -> list[CellRecord]:
        return self._select("", ())

    def _select(self, where: str, args: tuple[Any, ...]) -> list[CellRecord]:
        names = [f.name for f in fields(CellRecord)]
        cur = self._conn.execute(f"SELECT {', '.join(names)} FROM cells {where} ORDER BY ordinal, cell_id", args)
        out = []
        for row in cur.fetchall():
            d = dict(zip(names, row, strict=True))
            for k in _JSON_FIELDS:
                d[k] = json.loads(d[k]) if d[k] else ({} if k != "history" else [])
            out.append(CellRecord(**d))
        return out

    # -- export -----------------------------------------------------------------------------

    def export_json(self) -> str:
        return json.dumps(
            {"manifest": self.manifest(), "cells": [asdict(r) for r in self.records()]}, indent=2, default=str
        )

    def export_csv(self) -> str:
        buf = io.StringIO()
        names = [f.name for f in fields(CellRecord) if f.name not in ("history",)]
        writer = csv.DictWriter(buf, fieldnames=names, extrasaction="ignore")
        writer.writeheader()
        for r in self.records():
            row = asdict(r)
            for k in _JSON_FIELDS:
                if k in row:
                    row[k] = json.dumps(row[k], default=str, sort_keys=True)
            writer.writerow(row)
        return buf.getvalue()
