"""Resume of an interrupted run with several workers, under the process pool and under Ray: the
cells saved before the stop are kept as they were (not recomputed), the others are computed,
and the final table equals that of a run never interrupted, cell for cell."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pytest
from core_helpers import FIXTURES, REPO, run_cli

from ueb.store import Store

pytestmark = pytest.mark.slow

GATE = '''
import os
import time

from ueb.hookspecs import hookimpl
from ueb.interfaces import Countermeasure


class Gate(Countermeasure):
    """Trains once the file UEB_TEST_GATE names exists; scheduled after plain cells."""

    stage = "protocol"
    version = "1"

    def cost(self):
        return 0.1

    def fit(self, model, train, test, trainer, ctx):
        gate = os.environ.get("UEB_TEST_GATE", "")
        while gate and not os.path.exists(gate):
            time.sleep(0.05)
        return trainer.fit(model, train, test, hooks=self)


@hookimpl
def register_countermeasures(register):
    register("gate", Gate, summary="test: waits for a file", stage="protocol")
'''

EXECUTORS = {"pool": ["--workers", "2"], "ray": ["--executor", "ray", "--workers", "2"]}


def _plugins(tmp: Path) -> Path:
    folder = tmp / "plugins"
    folder.mkdir()
    shutil.copy(FIXTURES / "minimal_plugins.py", folder)
    (folder / "gate.py").write_text(GATE)
    return folder


def _args(plugins: Path, run_dir: Path, *execution: str) -> list[str]:
    return [
        "--plugins-dir", str(plugins), "run", "-p", "random-noise", "-c", "identity,gate",
        "-v", "tiny", "--profile", "smoke", "--run-dir", str(run_dir), *execution,
    ]  # fmt: skip


def _records(run_dir: Path) -> dict[str, dict]:
    return {r.cell_id: asdict(r) for r in Store(run_dir).records()}


def _done(run_dir: Path) -> int:
    try:
        return len(Store(run_dir).done_ids())
    except Exception:  # not created yet, or being written
        return 0


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[dict[str, dict], dict]:
    """The same matrix run straight through (gate open) with its own cache: records and table."""
    tmp = tmp_path_factory.mktemp("straight")
    plugins = _plugins(tmp)
    (tmp / "open").touch()
    env = {"UEB_CACHE": str(tmp / "cache"), "UEB_TEST_GATE": str(tmp / "open")}
    res = run_cli(*_args(plugins, tmp / "run"), "-q", env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    return _records(tmp / "run"), json.loads((tmp / "run" / "table.json").read_text())


def _skip_without(executor: str) -> None:
    if executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            pytest.skip("import ray failed: Ray is an optional extra (pip install 'ueb[ray]')")


def _signal_when_two_cells_are_saved(
    args: list[str], env: dict[str, str], send: Callable[[int], None]
) -> tuple[int, str]:
    """Start `ueb run` in a session of its own, wait for its two plain cells (the gate cells
    wait in their workers), then `send(pid)` a signal: the exit status and stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ueb.cli", *args], cwd=REPO, env={**os.environ, **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    run_dir = Path(args[args.index("--run-dir") + 1])
    try:
        deadline = time.monotonic() + 480
        while _done(run_dir) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if _done(run_dir) != 2:
            ended = "" if proc.poll() is None else proc.communicate()[1][-2000:]
            raise TimeoutError(f"the two plain cells should finish while the gates wait {ended}")
        send(proc.pid)
        _out, err = proc.communicate(timeout=60)
        return proc.returncode, err
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _ctrl_c(pid: int) -> None:
    os.killpg(pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group


def _sigterm(pid: int) -> None:
    os.kill(pid, signal.SIGTERM)  # what timeout, containers and Slurm do: the main process


@pytest.mark.parametrize("executor", sorted(EXECUTORS))
def test_an_interrupted_parallel_run_resumes_keeping_its_cells(executor, uninterrupted, tmp_path):
    _skip_without(executor)
    run_dir = tmp_path / "run"
    args = _args(_plugins(tmp_path), run_dir, *EXECUTORS[executor])
    gate = tmp_path / "open"  # absent: the gate cells wait in their workers
    env = {"UEB_CACHE": str(tmp_path / "cache"), "UEB_TEST_GATE": str(gate)}
    code, err = _signal_when_two_cells_are_saved(args, env, _ctrl_c)
    assert code == 130 and "re-run the same command to resume" in err, err[-2000:]
    saved = _records(run_dir)
    assert len(saved) == 2 and {r["countermeasure"] for r in saved.values()} == {"identity"}

    gate.touch()
    again = run_cli(*args, "-q", env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "2 done here" in again.stdout and "2 to compute" in again.stdout, again.stdout
    after = _records(run_dir)
    # the saved cells were not recomputed: the very same records (finish time, train seconds)
    changed = {
        cell: {k: (v, after[cell][k]) for k, v in record.items() if after[cell][k] != v}
        for cell, record in saved.items()
    }
    assert not any(changed.values()), changed
    straight, table = uninterrupted
    assert sorted(after) == sorted(straight)
    for cell, record in straight.items():
        got = after[cell]
        assert got["status"] == record["status"] == "ok"
        for key in ("final_acc", "peak_acc", "peak_step", "clean_final_acc", "history"):
            assert got[key] == record[key], (cell, key)
    assert json.loads((run_dir / "table.json").read_text()) == table


@pytest.mark.xfail(
    strict=False,
    reason="ray.init replaced the run's SIGTERM handler (a SIGTERM then aborted the driver with "
    "SIGABRT, no message); RayPool now restores the handlers "
    "(tests/test_core_executors.py::test_ray_keeps_the_runs_signal_handlers), but this end-to-end "
    "run has not yet been seen passing: under load Ray's start-up outlasts the deadline",
)
def test_sigterm_stops_a_ray_run_with_its_exit_code_and_message(tmp_path):
    """SIGTERM while cells are in flight, as under the process pool (tests/test_stopping.py)."""
    _skip_without("ray")
    run_dir = tmp_path / "run"
    args = _args(_plugins(tmp_path), run_dir, *EXECUTORS["ray"])
    env = {"UEB_CACHE": str(tmp_path / "cache"), "UEB_TEST_GATE": str(tmp_path / "closed")}
    code, err = _signal_when_two_cells_are_saved(args, env, _sigterm)
    assert len(_records(run_dir)) == 2  # what finished is kept, whatever the exit
    last = err.strip().splitlines()[-1]
    assert code == 143 and "stopped by SIGTERM" in last, err[-2000:]
