"""Atomic file writes: a file is either its old self or completely new, never half written.

Each write goes to a unique temporary file in the target's folder, is flushed to the disk
(fsync) and then renamed over the target. On any failure the temporary file is removed, so a
full disk leaves neither `.tmp` leftovers nor empty targets behind, and the error names the
folder, the free space of its disk and the command that resumes the run.
"""

from __future__ import annotations

import errno
import io
import os
import secrets
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from ueb.errors import DiskFullError, UebError

_CHUNK = 1 << 30  # os.write takes at most ~2 GiB at once on Linux
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})

Bytes = bytes | bytearray | memoryview


def resume_command() -> str:
    """The command line that resumes this run: `ueb ...` when ueb is the program, else a phrase."""
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    if program.name in ("ueb", "ueb.exe") or (
        program.name == "__main__.py" and program.parent.name == "ueb"
    ):
        return "ueb " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "ueb"
    return "the same command"


def _resume_phrase() -> str:
    command = resume_command()
    return f"`{command}`" if command.startswith("ueb") else command


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def free_space(folder: Path) -> str:
    """Free space on the disk holding `folder` (or its nearest existing parent), for messages."""
    probe = Path(folder).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return human_bytes(shutil.disk_usage(probe).free)
    except OSError:
        return "unknown space"


def disk_full(what: str, folder: Path) -> DiskFullError:
    return DiskFullError(
        f"disk full while writing {what} to {folder} ({free_space(folder)} free on the disk holding it)",
        "free space or move --run-dir/--cache-dir to a larger disk, "
        f"then re-run {_resume_phrase()} to resume",
    )


def write_error(exc: OSError, what: str, folder: Path) -> UebError:
    """The one-line error for a failed write: a full disk, a permission, a read-only disk, or other."""
    if exc.errno in DISK_FULL_ERRNOS:
        return disk_full(what, folder)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return UebError(
            f"permission denied writing {what} to {folder}",
            "make the folder writable, or choose another --run-dir/--cache-dir",
        )
    if exc.errno == errno.EROFS:
        return UebError(
            f"cannot write {what} to {folder}: its disk is mounted read-only",
            "choose another --run-dir/--cache-dir on a writable disk",
        )
    return UebError(
        f"cannot write {what} to {folder} ({exc.strerror or exc})",
        f"check that disk, then re-run {_resume_phrase()} to resume",
    )


def _write_all(fd: int, data: Bytes) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view[:_CHUNK])
        if written <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view = view[written:]


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable; some filesystems cannot open folders, which is fine."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path: Path, data: Bytes, *, what: str | None = None) -> Path:
    """Write `data` to `path` atomically, creating its folder; raises UebError/DiskFullError."""
    path = Path(path)
    folder = path.parent
    label = what or path.name
    tmp = folder / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_error(exc, label, folder) from exc
        raise
    _fsync_folder(folder)
    return path


def write_text(path: Path, text: str, *, what: str | None = None) -> Path:
    return write_bytes(path, text.encode("utf-8"), what=what)


def save_torch(obj: Any, path: Path, *, what: str | None = None) -> Path:
    """torch.save, atomically; serialized in memory first so a full disk reads as one."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_bytes(path, buffer.getbuffer(), what=what)


def save_npy(path: Path, array: Any, *, what: str | None = None) -> Path:
    """np.save (no pickles), atomically."""
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return write_bytes(path, buffer.getbuffer(), what=what)
