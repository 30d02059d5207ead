"""How complete a run is, and whether a run is writing into its directory now."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunState:
    planned: int
    ok: int
    failed: int
    missing: int
    running: bool

    @property
    def complete(self) -> bool:
        return self.missing == 0 and self.failed == 0 and not self.running

    def line(self) -> str:
        """'run in progress: 40 of 126 cells done, 2 failed, 84 not yet computed' ('' if complete)."""
        if self.complete:
            return ""
        head = "run in progress" if self.running else "incomplete run"
        parts = [f"{self.ok} of {self.planned} cells done"]
        if self.failed:
            parts.append(f"{self.failed} failed")
        if self.missing:
            parts.append(
                f"{self.missing} {'running or queued' if self.running else 'missing (re-run its command to resume)'}"
            )
        return f"{head}: " + ", ".join(parts)


def _lock_held(path: Path) -> bool:
    """True when another process holds the run directory's lock (a run is writing)."""
    import fcntl

    if not path.exists():
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
