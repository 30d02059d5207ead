"""The result store: one SQLite file per run directory, one row per matrix cell.

A row is written as soon as its cell finishes (or fails), inside one transaction, so killing
the process at any moment loses at most the cell in progress. The manifest table records the
environment (ueb, git, torch, device, plugin distributions) and the resolved configuration.

While a run writes, the file is in WAL mode (readers such as `ueb report` never block it);
`close()` switches it back to a rollback journal, so a finished run is one self-contained file
that can be read from a read-only copy. The schema version is SQLite's `user_version`; stores
written by an older ueb gain the missing columns when opened for writing and read with
defaults otherwise. Every SQLite failure reaches the user as one line (damaged, empty, newer,
locked, disk full), never a traceback.

The record itself is `ueb.records.CellRecord`, the run's completeness `ueb.run_state.RunState`;
both are importable from here.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ueb.atomic import DISK_FULL_ERRNOS, disk_full, resume_command, write_error
from ueb.errors import UebError
from ueb.records import _JSON_FIELDS, _NUMERIC_FIELDS, CellRecord, _column_type, _default, _dumps
from ueb.run_state import RunState, _lock_held

DB_NAME = "results.sqlite"
# user_version: 0 and 1 are stores of older ueb (no config_digest/git/torch/device/probe columns)
SCHEMA_VERSION = 2


def _writable(path: Path) -> bool:
    """Whether this process may write `path` (a separate function so tests can pretend)."""
    return os.access(path, os.W_OK)


_DISK_ERRNOS = DISK_FULL_ERRNOS | {errno.EACCES, errno.EPERM, errno.EROFS}
_BUGS = (
    sqlite3.ProgrammingError,
    sqlite3.InterfaceError,
)  # ueb's own mistakes keep their traceback


class Store:
    """Read-write (`Store(run_dir)`, created if missing) or read-only (`Store.open_existing`)."""

    def __init__(self, run_dir: Path, *, readonly: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / DB_NAME
        self.readonly = readonly
        self._conn: sqlite3.Connection | None = None
        try:
            with self._errors():
                if readonly:
                    self._open_readonly()
                else:
                    self._open_writable()
                self._columns = {row[1] for row in self.conn.execute("PRAGMA table_info(cells)")}
        except BaseException:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            raise

    @classmethod
    def open_existing(cls, run_dir: Path, readonly: bool = True) -> Store:
        """The store of a finished or running run; read-only unless asked otherwise."""
        run_dir = Path(run_dir)
        if not (run_dir / DB_NAME).exists():
            raise UebError(
                f"no results in {run_dir} (missing {DB_NAME})",
                "pass the run directory printed by `ueb run`",
            )
        return cls(run_dir, readonly=readonly)

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise UebError(f"results store {self.path} is already closed")
        return self._conn

    # -- opening ----------------------------------------------------------------------------

    def _open_writable(self) -> None:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if exc.errno in _DISK_ERRNOS:
                raise write_error(exc, "results", self.run_dir) from exc
            raise UebError(
                f"cannot create run directory {self.run_dir} ({exc.strerror})",
                "choose another --run-dir",
            ) from exc
        existed = self.path.exists() and self.path.stat().st_size > 0
        self._conn = sqlite3.connect(self.path, timeout=30)
        if existed:
            self._check()
            self._refuse_foreign()
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        cols = ", ".join(
            f"{f.name} {_column_type(f.name)}{' PRIMARY KEY' if f.name == 'cell_id' else ''}"
            for f in fields(CellRecord)
        )
        with self._conn as c:
            c.execute(f"CREATE TABLE IF NOT EXISTS cells ({cols})")
            c.execute("CREATE TABLE IF NOT EXISTS manifest (key TEXT PRIMARY KEY, value TEXT)")
            have = {row[1] for row in c.execute("PRAGMA table_info(cells)")}
            for f in fields(CellRecord):
                if f.name not in have:  # a store of an older ueb
                    c.execute(f"ALTER TABLE cells ADD COLUMN {f.name} {_column_type(f.name)}")
            c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _open_readonly(self) -> None:
        if not self.path.exists():
            raise UebError(
                f"no results in {self.run_dir} (missing {DB_NAME})",
                "pass the run directory printed by `ueb run`",
            )
        if self.path.stat().st_size == 0:
            raise UebError(
                f"{self.path} is empty (0 bytes), not a ueb results store",
                "pass the run directory printed by `ueb run`, or delete the empty file",
            )
        uri = f"file:{quote(str(self.path.absolute()))}"
        if _writable(self.run_dir) and _writable(self.path):
            uri += "?mode=ro"  # sees a running run's WAL, never writes
        else:
            wal = self.path.with_name(DB_NAME + "-wal")
            if wal.exists() and wal.stat().st_size > 0:
                raise UebError(
                    f"results store {self.path} has changes not yet merged from {wal.name}, "
                    "and its folder is read-only",
                    "copy the run directory to a writable place and pass the copy",
                )
            uri += "?immutable=1"  # read-only media: no locks, no journal files
        self._conn = sqlite3.connect(uri, uri=True, timeout=30)
        self._check()
        if not self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'cells'").fetchone():
            raise UebError(
                f"{self.path} is not a ueb results store (no cells table)",
                "pass the run directory printed by `ueb run`",
            )

    def _refuse_foreign(self) -> None:
        """An SQLite file that is not a ueb store is never adopted (nor written into)."""
        tables = {
            r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        cols = {row[1] for row in self.conn.execute("PRAGMA table_info(cells)")}
        if "cells" not in tables or "cell_id" not in cols:
            shown = ", ".join(sorted(tables)[:4]) or "none"
            raise UebError(
                f"{self.path} is an SQLite file but not a ueb results store (tables: {shown})",
                "pass another --run-dir, or move the file away",
            )

    def _check(self) -> None:
        """Refuse stores of a newer ueb and damaged files before reading anything from them."""
        version = int(self.conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise UebError(
                f"results store {self.path} was written by a newer ueb (schema {version}; "
                f"this ueb reads up to {SCHEMA_VERSION})",
                "upgrade ueb (pip install -U ueb) to read or resume it",
            )
        problems = [row[0] for row in self.conn.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            raise self._damaged("; ".join(problems[:3]))

    # -- errors -----------------------------------------------------------------------------

    def _damaged(self, detail: str) -> UebError:
        return UebError(
            f"results store {self.path} is damaged: {detail}",
            "move it away to start over, or restore a copy; finished cells in it cannot be read",
        )

    def _translate(self, exc: sqlite3.Error) -> UebError:
        code = getattr(exc, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        message = str(exc)
        if primary == sqlite3.SQLITE_FULL or "disk is full" in message:
            return disk_full("results", self.run_dir)
        if (
            primary in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
            or "malformed" in message
            or "not a database" in message
        ):
            return self._damaged(message)
        if primary == sqlite3.SQLITE_READONLY:
            return UebError(
                f"results store {self.path} cannot be written ({message})",
                "make the run directory writable, or pass another --run-dir",
            )
        if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return UebError(
                f"results store {self.path} is locked by another process ({message})",
                "wait for the other ueb command to finish, then retry",
            )
        if primary == sqlite3.SQLITE_CANTOPEN:
            return UebError(
                f"cannot open results store {self.path} ({message})",
                "check that the run directory exists and is readable",
            )
        command = resume_command()
        return UebError(
            f"cannot use results store {self.path} ({message})",
            f"check the disk holding it, then re-run {f'`{command}`' if command.startswith('ueb') else command}",
        )

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except _BUGS:
            raise
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        if self.readonly:
            raise UebError(
                f"results store {self.path} was opened read-only",
                "open it with Store(run_dir) to write",
            )
        with self._errors(), self.conn as c:
            yield c

    def close(self) -> None:
        """Close; a writable store first leaves WAL mode so the run is one self-contained file."""
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        try:
            if not self.readonly:
                conn.execute("PRAGMA busy_timeout = 200")
                conn.execute("PRAGMA journal_mode=DELETE")
        except sqlite3.Error:
            pass  # a reader still has it open: it stays in WAL mode, complete and consistent
        finally:
            conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- manifest ---------------------------------------------------------------------------

    def set_manifest(self, **items: Any) -> None:
        with self._tx() as c:
            c.executemany(
                "INSERT OR REPLACE INTO manifest (key, value) VALUES (?, ?)",
                [(k, json.dumps(v, default=str)) for k, v in items.items()],
            )

    def manifest(self) -> dict[str, Any]:
        with self._errors():
            rows = self.conn.execute("SELECT key, value FROM manifest").fetchall()
        try:
            return {k: json.loads(v) for k, v in rows}
        except ValueError as exc:
            raise self._damaged(f"unreadable manifest entry ({exc})") from exc

    def state(self) -> RunState:
        """How complete the run is: cells planned, finished, failed, missing; whether a run is
        writing into this directory now (its lock is held)."""
        planned = self.manifest().get("planned_cells")
        with self._errors():
            rows = self.conn.execute("SELECT cell_id, status FROM cells").fetchall()
        status = {cid: st for cid, st in rows}
        ok = sum(1 for s in status.values() if s == "ok")
        failed = sum(1 for s in status.values() if s != "ok")
        missing = sum(1 for cid in planned if cid not in status) if isinstance(planned, list) else 0
        return RunState(
            planned=len(planned) if isinstance(planned, list) else len(status),
            ok=ok,
            failed=failed,
            missing=missing,
            running=_lock_held(self.run_dir / ".lock"),
        )

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
        with self._errors():
            return {
                r[0] for r in self.conn.execute("SELECT cell_id FROM cells WHERE status = 'ok'")
            }

    def records(self) -> list[CellRecord]:
        return self._select("", ())

    def _select(self, where: str, args: tuple[Any, ...]) -> list[CellRecord]:
        # a read-only store of an older ueb lacks some columns: those fields keep their defaults
        present = [f for f in fields(CellRecord) if f.name in self._columns]
        missing = {f.name: f for f in fields(CellRecord) if f.name not in self._columns}
        names = [f.name for f in present]
        with self._errors():
            rows = self.conn.execute(
                f"SELECT {', '.join(names)} FROM cells {where} ORDER BY ordinal, cell_id", args
            ).fetchall()
        out = []
        for row in rows:
            d = dict(zip(names, row, strict=True))
            try:
                for k in _JSON_FIELDS & d.keys():
                    d[k] = json.loads(d[k]) if d[k] else ({} if k != "history" else [])
            except ValueError as exc:
                raise self._damaged(f"cell {d['cell_id']} has unreadable JSON ({exc})") from exc
            d.update({name: _default(f) for name, f in missing.items()})
            for k in _NUMERIC_FIELDS & d.keys():
                if d[k] is not None and (
                    isinstance(d[k], bool) or not isinstance(d[k], int | float)
                ):
                    raise self._damaged(
                        f"cell {d['cell_id']} has a {k} that is not a number ({d[k]!r})"
                    )
            out.append(CellRecord(**d))
        return out

    # -- export -----------------------------------------------------------------------------

    def export_json(self) -> str:
        return json.dumps(
            {"manifest": self.manifest(), "cells": [asdict(r) for r in self.records()]},
            indent=2,
            default=str,
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
