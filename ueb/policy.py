"""What a failure does to a run: one policy for the sequential and the parallel paths.

A poisoner or a cell that raises fails its own cells (recorded with a one-line reason) and the
matrix goes on, unless `fail_fast`. A full disk, exhausted memory or Ctrl-C stop the run: the
next cell would fail the same way, and finished cells are already in the store.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from pathlib import Path

from ueb.errors import DiskFullError, UebError
from ueb.plan import Cell, Plan
from ueb.store import CellRecord


def recoverable(exc: BaseException) -> bool:
    """Errors that fail one cell; a full disk, Ctrl-C or exhausted memory stop the run."""
    if isinstance(exc, KeyboardInterrupt | MemoryError):
        return False
    if isinstance(exc, DiskFullError):
        return False
    return isinstance(exc, Exception)


def one_line(exc: BaseException) -> str:
    """An error as one line: a UebError's own line, or the exception and where it was raised."""
    if isinstance(exc, UebError):
        return exc.line()
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}".replace("\n", " ")


def error_record(plan: Plan, cell: Cell, message: str | None) -> CellRecord:
    """A cell's identity fields with status 'error' (the worker fills in the rest on success)."""
    return CellRecord(
        cell_id=cell.id,
        ordinal=cell.ordinal,
        dataset=cell.dataset,
        poisoner=cell.poisoner,
        countermeasure=cell.countermeasure,
        victim=cell.victim,
        seed=cell.seed,
        poison_seed=cell.poison_seed_used,
        poison_fraction=cell.fraction,
        profile=plan.profile.name,
        params_hash=cell.id,
        config_digest=cell.config_digest,
        status="error",
        error=message,
    )


class RunStopped(UebError):
    """The run stops: a fatal error, or the first failure under --fail-fast."""


@dataclass
class FailurePolicy:
    """Decides, for both execution paths, whether a failure stops the run."""

    fail_fast: bool
    failed_groups: dict[tuple[str, str, int], str] = field(default_factory=dict)

    def poison_failed(
        self, group: tuple[str, str, int], exc: BaseException | None, line: str
    ) -> None:
        """Record a poisoner's failure for its group, or stop the run."""
        if exc is not None and not recoverable(exc):
            raise exc
        if self.fail_fast:
            raise RunStopped(f"poisoner {group[1]} failed (--fail-fast): {line}")
        self.failed_groups[group] = line

    def group_error(self, cell: Cell) -> str | None:
        return self.failed_groups.get(cell.group)

    def cell_finished(self, record: CellRecord, fatal: bool) -> None:
        """Called after the record is stored: stop on a fatal error or under --fail-fast."""
        if fatal:
            raise RunStopped(record.error or "a cell failed and the run cannot go on")
        if record.status == "error" and self.fail_fast:
            raise RunStopped(
                f"cell {record.poisoner} x {record.countermeasure} x {record.victim} failed (--fail-fast): {record.error}"
            )
