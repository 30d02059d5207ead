"""Ctrl-C, SIGTERM and kill -9 with two workers: a message, the signal's exit code, no process
left behind, and a resume that finishes the matrix with the cells already saved unchanged."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from core_helpers import REPO

from ueb.store import Store

FIXTURES = Path(__file__).parent / "fixtures" / "stopping"
ARGS = ["-p", "random-noise", "-c", "identity,slow", "-v", "tiny", "--profile", "smoke"]

pytestmark = pytest.mark.slow


def _start(tmp_path: Path, *extra: str) -> subprocess.Popen[str]:
    """`ueb run` in a session of its own (so a signal to its group reaches its workers only)."""
    cmd = [sys.executable, "-m", "ueb.cli", "--plugins-dir", str(FIXTURES), "run", *ARGS]
    cmd += ["--workers", "2", "--run-dir", str(tmp_path / "run"), *extra]
    env = {**os.environ, "UEB_CACHE": str(tmp_path / "cache")}
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip


def _live_processes(field: int, value: int) -> list[int]:
    """Live (not zombie) processes whose /proc stat field `field` (1: parent, 2: group) is value."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[field]) == value and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def _children(pid: int) -> list[int]:
    return _live_processes(1, pid)


def _group_alive(pgid: int) -> list[int]:
    return _live_processes(2, pgid)


def _wait_for(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = predicate()
        if got:
            return got
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def _done(tmp_path: Path) -> int:
    try:
        return len(Store(tmp_path / "run").done_ids())
    except Exception:
        return 0


def _workers_busy_on_slow_cells(proc, tmp_path):
    """Both workers started and the quick cells saved: the slow ones are in flight."""
    return len(_children(proc.pid)) >= 2 and _done(tmp_path) >= 2


@pytest.mark.parametrize(
    "how, code, name",
    [("group-sigint", 130, "SIGINT"), ("sigterm", 143, "SIGTERM")],
    ids=["ctrl-c", "sigterm"],
)
def test_a_signal_stops_the_run_in_seconds_and_it_resumes(tmp_path, how, code, name):
    proc = _start(tmp_path)
    try:
        _wait_for(lambda: _workers_busy_on_slow_cells(proc, tmp_path), 240, "the slow cells")
        saved = {
            r.cell_id: r.final_acc for r in Store(tmp_path / "run").records() if r.status == "ok"
        }
        sent = time.monotonic()
        if how == "group-sigint":
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        else:
            os.kill(proc.pid, signal.SIGTERM)  # what timeout, containers and Slurm do
        _out, err = proc.communicate(timeout=30)
        assert time.monotonic() - sent < 15
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == code, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert f"stopped by {name}" in last and "re-run the same command to resume" in last, err
    _wait_for(lambda: not _group_alive(proc.pid), 10, "no process of the run left")
    # Resume with the same command: the finished cells are kept as they were, the rest computed.
    again = _start(tmp_path)
    _out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-2000:]
    records = {r.cell_id: r for r in Store(tmp_path / "run").records()}
    assert len(records) == 4 and all(r.status == "ok" for r in records.values())
    assert all(records[c].final_acc == acc for c, acc in saved.items())


def test_workers_die_with_a_parent_killed_by_sigkill(tmp_path):
    proc = _start(tmp_path)
    try:
        workers = _wait_for(
            lambda: _children(proc.pid) if len(_children(proc.pid)) >= 2 else None,
            240,
            "two workers",
        )
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)  # its pipes stay open while any worker lives

        def gone():
            alive = [
                w
                for w in workers
                if Path(f"/proc/{w}").exists()
                and "Z" not in Path(f"/proc/{w}/stat").read_text().rsplit(")", 1)[1].split()[0]
            ]
            return not alive

        _wait_for(gone, 30, "the workers to end")  # at once, or when they finish starting
    finally:
        for pid in _group_alive(proc.pid):
            os.kill(pid, signal.SIGKILL)
