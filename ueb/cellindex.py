"""Finished cells by id, shared by every run that uses one cache.

A cell's id is a hash of everything that determines its numbers, so a cell finished in one run
directory is the same computation in another: the clean row that every poisoner's run shares
is computed once. Each entry is the record as JSON, the run directory it came from, and the
record's sha256: an entry whose record does not match it (damaged, or edited by hand) is not
used, and the cell is computed again.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

from ueb.atomic import write_text
from ueb.identity import record_checksum
from ueb.store import CellRecord

_FIELDS = {f.name for f in fields(CellRecord)}


class CellIndex:
    def __init__(self, cache_root: Path) -> None:
        self.root = Path(cache_root) / "cells"

    def _path(self, cell_id: str) -> Path:
        return self.root / cell_id[:2] / f"{cell_id}.json"

    def put(self, record: CellRecord, run_dir: Path) -> None:
        if record.status != "ok":
            return
        body = json.loads(json.dumps(asdict(record), default=str))
        blob = {
            "source": str(Path(run_dir).resolve()),
            "record": body,
            "sha256": record_checksum(body),
        }
        write_text(self._path(record.cell_id), json.dumps(blob, default=str), what="the cell index")

    def _read(self, cell_id: str) -> dict | None:
        try:
            blob = json.loads(self._path(cell_id).read_text())
        except (OSError, ValueError):
            return None  # absent or damaged: the cell is computed again
        if not isinstance(blob, dict) or not isinstance(blob.get("record"), dict):
            return None
        if blob.get("sha256") != record_checksum(blob["record"]):
            return None  # damaged or edited: never reused
        return blob

    def get(self, cell_id: str) -> CellRecord | None:
        blob = self._read(cell_id)
        if blob is None:
            return None
        raw = {k: v for k, v in blob["record"].items() if k in _FIELDS}
        try:
            record = CellRecord(**raw)
        except TypeError:
            return None
        if record.cell_id != cell_id or record.status != "ok" or record.final_acc is None:
            return None
        return record

    def source(self, cell_id: str) -> str:
        blob = self._read(cell_id)
        return str(blob.get("source", "")) if blob else ""
