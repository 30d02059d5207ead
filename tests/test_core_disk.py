"""Atomic writes under a full disk, and cross-process locks on run directories and builds."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ueb import atomic
from ueb.errors import DiskFullError, UebError
from ueb.locks import FileLock, LockBusy, RunLock

# -- atomic writes -----------------------------------------------------------------------------


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def _full_disk_after_half(monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up halfway through the file: half is written, then ENOSPC."""
    real_write = os.write

    def write_half_then_fail(fd: int, data: memoryview) -> None:
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic, "_write_all", write_half_then_fail)


def test_write_bytes_replaces_the_file_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "sub" / "x.bin"
    atomic.write_bytes(target, b"old")
    atomic.write_bytes(target, b"new content")
    assert target.read_bytes() == b"new content"
    assert _leftovers(target.parent) == []


def test_full_disk_keeps_the_old_file_and_names_disk_free_space_and_resume_command(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(sys, "argv", ["/venv/bin/ueb", "run", "--config", "my matrix.toml"])
    target = tmp_path / "facts.json"
    target.write_text("old")
    _full_disk_after_half(monkeypatch)
    with pytest.raises(DiskFullError) as info:
        atomic.write_text(target, "x" * 10_000, what="results")
    line = info.value.line()
    assert "\n" not in line
    assert line.startswith(f"disk full while writing results to {tmp_path} (")
    assert "free on the disk holding it" in line
    assert "`ueb run --config 'my matrix.toml'`" in line and "--run-dir/--cache-dir" in line
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_full_disk_on_a_new_file_leaves_no_empty_target(tmp_path, monkeypatch):
    _full_disk_after_half(monkeypatch)
    with pytest.raises(DiskFullError):
        atomic.save_npy(tmp_path / "images.npy", np.zeros((4, 3, 8, 8), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_save_torch_on_a_full_disk_raises_disk_full_not_a_torch_error(tmp_path, monkeypatch):
    monkeypatch.setattr(
        os, "write", lambda fd, data: (_ for _ in ()).throw(OSError(errno.EDQUOT, "quota"))
    )
    with pytest.raises(DiskFullError, match="disk full while writing a model"):
        atomic.save_torch({"w": torch.ones(1000)}, tmp_path / "m.pt", what="a model")
    assert list(tmp_path.iterdir()) == []


def test_save_torch_and_save_npy_round_trip(tmp_path):
    atomic.save_torch({"w": torch.arange(5)}, tmp_path / "m.pt")
    assert torch.load(tmp_path / "m.pt", weights_only=True)["w"].tolist() == [0, 1, 2, 3, 4]
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 2, 2)
    atomic.save_npy(tmp_path / "a.npy", a)
    assert np.array_equal(np.load(tmp_path / "a.npy"), a)


@pytest.mark.parametrize(
    ("code", "expected", "not_expected"),
    [
        (errno.EACCES, "permission denied writing", "disk full"),
        (errno.EROFS, "mounted read-only", "permission"),
        (errno.EIO, "cannot write", "permission"),
    ],
)
def test_other_write_errors_say_what_happened(tmp_path, monkeypatch, code, expected, not_expected):
    def fail(fd: int, data: memoryview) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(atomic, "_write_all", fail)
    with pytest.raises(UebError) as info:
        atomic.write_bytes(tmp_path / "f", b"x")
    assert not isinstance(info.value, DiskFullError)
    assert expected in info.value.line() and not_expected not in info.value.line()
    assert list(tmp_path.iterdir()) == []


def test_disk_full_is_never_blamed_on_permissions(tmp_path):
    error = atomic.write_error(
        OSError(errno.ENOSPC, "No space left on device"), "results", tmp_path
    )
    assert isinstance(error, DiskFullError) and "permission" not in error.line()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["/usr/local/bin/ueb", "run", "-c", "a b.toml"], "ueb run -c 'a b.toml'"),
        (["/x/site-packages/ueb/__main__.py", "run"], "ueb run"),
        (["/x/bin/pytest", "-q"], "the same command"),
        ([""], "the same command"),
    ],
)
def test_resume_command(monkeypatch, argv, expected):
    monkeypatch.setattr(sys, "argv", argv)
    assert atomic.resume_command() == expected


def test_human_bytes():
    assert atomic.human_bytes(0) == "0 B"
    assert atomic.human_bytes(1536) == "1.5 KiB"
    assert atomic.human_bytes(3 * 1024**3) == "3.0 GiB"


# -- locks -------------------------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from ueb.locks import FileLock, RunLock
    kind, path, hold = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
    lock = RunLock(path) if kind == "run" else FileLock(path)
    print("locked", flush=True)
    if hold < 0:
        sys.stdin.read()
    else:
        time.sleep(hold)
    lock.release()
    """
)


def _holder(kind: str, path: Path, hold: float = -1) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, kind, str(path), str(hold), "run", "--config", "m.toml"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_process_on_a_run_directory_gets_one_line_naming_the_first(tmp_path):
    holder = _holder("run", tmp_path)
    try:
        with pytest.raises(UebError) as info:
            RunLock(tmp_path)
        line = info.value.line()
        assert line.startswith(
            f"run directory {tmp_path} is in use by another ueb run (pid {holder.pid} since "
        )
        assert "run --config m.toml" in line and "pass another --run-dir" in line
    finally:
        holder.communicate("")
    RunLock(tmp_path).release()  # free again once the holder is done


def test_a_killed_run_leaves_no_stale_lock(tmp_path):
    holder = _holder("run", tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lock = RunLock(tmp_path)
    assert lock.held
    lock.release()
    assert not lock.held


def test_file_lock_waits_for_the_holder_and_says_so_once(tmp_path):
    path = tmp_path / "k.lock"
    holder = _holder("file", path, hold=1.0)
    messages: list[str] = []
    start = time.monotonic()
    with FileLock(path, on_wait=messages.append, what="building hider 1a2b"):
        waited = time.monotonic() - start
    holder.wait()
    assert waited > 0.3
    assert len(messages) == 1
    assert messages[0].startswith(
        f"waiting for another process building hider 1a2b (pid {holder.pid}"
    )


def test_non_blocking_file_lock_reports_the_holder(tmp_path):
    path = tmp_path / "k.lock"
    holder = _holder("file", path)
    try:
        with pytest.raises(LockBusy) as info:
            FileLock(path, blocking=False)
        assert info.value.holder["pid"] == holder.pid
    finally:
        holder.communicate("")


def test_locks_nest_within_a_process_and_hold_until_the_last_release(tmp_path):
    outer = RunLock(tmp_path)
    inner = RunLock(tmp_path)  # the same process: no self-deadlock, no error
    inner.release()
    probe = [
        sys.executable,
        "-c",
        "import sys; from ueb.locks import RunLock; RunLock(sys.argv[1])",
        str(tmp_path),
    ]
    assert subprocess.run(probe, capture_output=True).returncode != 0  # still held by `outer`
    outer.release()
    assert subprocess.run(probe, capture_output=True).returncode == 0


def test_a_lock_is_released_when_its_object_is_collected(tmp_path):
    lock = FileLock(tmp_path / "k.lock")
    assert lock.held
    del lock
    probe = "import sys; from ueb.locks import FileLock; FileLock(sys.argv[1], blocking=False)"
    assert subprocess.run([sys.executable, "-c", probe, str(tmp_path / "k.lock")]).returncode == 0


def test_threads_of_one_process_share_a_lock_instead_of_deadlocking(tmp_path):
    lock = FileLock(tmp_path / "k.lock")
    done = threading.Event()

    def other() -> None:
        with FileLock(tmp_path / "k.lock"):
            done.set()

    thread = threading.Thread(target=other)
    thread.start()
    thread.join(timeout=10)
    lock.release()
    assert done.is_set()
