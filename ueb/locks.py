"""Cross-process locks on files (`fcntl.flock`), for run directories and cache builds.

The kernel drops a flock when its holder exits, so a crashed run never leaves a stale lock;
the lock file only carries who holds it (pid, host, start time, command) for messages.
Within one process acquisitions of the same path nest instead of deadlocking: the locks
serialize processes, not the calls of one process.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ueb.atomic import resume_command, write_error
from ueb.errors import UebError


class LockBusy(Exception):
    """A non-blocking acquisition found the lock held by another process."""

    def __init__(self, path: Path, holder: dict[str, Any]) -> None:
        self.path = path
        self.holder = holder
        super().__init__(f"{path} is held by {describe_holder(holder)}")


@dataclass
class _Held:
    fd: int
    count: int
    pid: int


_held: dict[str, _Held] = {}
_guard = threading.Lock()


def describe_holder(holder: dict[str, Any]) -> str:
    """'pid 123 since 14:05, `ueb run ...`' (what is known of it)."""
    if not holder.get("pid"):
        return "another process"
    parts = [f"pid {holder['pid']}"]
    if holder.get("host") and holder["host"] != socket.gethostname():
        parts[0] += f" on {holder['host']}"
    if holder.get("since"):
        parts[0] += f" since {time.strftime('%H:%M', time.localtime(float(holder['since'])))}"
    if holder.get("command"):
        parts.append(f"`{holder['command']}`")
    return ", ".join(parts)


def read_holder(path: Path) -> dict[str, Any]:
    """Who wrote `path` last (empty if unknown, e.g. between its holder's lock and write)."""
    try:
        info = json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _command() -> str:
    command = resume_command()
    if command.startswith("ueb"):
        return command
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    return shlex.join([program, *sys.argv[1:]])


def _release(key: str, pid: int) -> None:
    """Drop one hold of `key` by process `pid` (a forked child never unlocks its parent's lock)."""
    with _guard:
        held = _held.get(key)
        if held is None or held.pid != pid or os.getpid() != pid:
            return
        held.count -= 1
        if held.count > 0:
            return
        del _held[key]
    try:
        fcntl.flock(held.fd, fcntl.LOCK_UN)
    finally:
        os.close(held.fd)


class FileLock:
    """An exclusive lock on `path`, held from construction until `release()` (or collection).

    `blocking=False` raises LockBusy when another process holds it; `blocking=True` waits,
    calling `on_wait(message)` once before waiting. `what` names the holder's work in that
    message ("building deephiding-hider 1a2b").
    """

    def __init__(
        self,
        path: Path,
        *,
        blocking: bool = True,
        on_wait: Callable[[str], None] | None = None,
        what: str = "",
    ) -> None:
        self.path = Path(path)
        self._key = os.path.realpath(self.path)
        self._pid = os.getpid()
        self._acquire(blocking, on_wait, what)
        self._finalizer = weakref.finalize(self, _release, self._key, self._pid)

    def _acquire(self, blocking: bool, on_wait: Callable[[str], None] | None, what: str) -> None:
        with _guard:
            held = _held.get(self._key)
            if held is not None and held.pid == self._pid:
                held.count += 1
                return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise write_error(exc, f"the lock {self.path.name}", self.path.parent) from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = read_holder(self.path)
                if not blocking:
                    raise LockBusy(self.path, holder) from None
                if on_wait is not None:
                    doing = what or f"holding {self.path}"
                    on_wait(f"waiting for another process {doing} ({describe_holder(holder)})")
                fcntl.flock(fd, fcntl.LOCK_EX)
            info = {
                "pid": self._pid,
                "host": socket.gethostname(),
                "since": time.time(),
                "command": _command(),
                "what": what,
            }
            try:  # only for messages: a full disk must not stop the lock itself
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(info).encode(), 0)
            except OSError:
                pass
        except BaseException:
            os.close(fd)
            raise
        with _guard:
            _held[self._key] = _Held(fd, 1, self._pid)

    @property
    def held(self) -> bool:
        return self._finalizer.alive

    def release(self) -> None:
        """Release this hold (idempotent); the lock is dropped when its last hold goes."""
        self._finalizer()

    close = release

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class RunLock(FileLock):
    """The exclusive right to write one run directory (`<run_dir>/.lock`), never waiting."""

    def __init__(self, run_dir: Path) -> None:
        run_dir = Path(run_dir)
        try:
            super().__init__(run_dir / ".lock", blocking=False, what=f"running in {run_dir}")
        except LockBusy as busy:
            raise UebError(
                f"run directory {run_dir} is in use by another ueb run ({describe_holder(busy.holder)})",
                "wait for it to finish, or pass another --run-dir",
            ) from None
