"""The same matrix through the process pool and through Ray gives the same rows as in-process."""

from __future__ import annotations

import os

import pytest
from core_helpers import FIXTURES, run_cli

from ueb.store import Store

ARGS = [
    "--plugins-dir",
    str(FIXTURES),
    "run",
    "-p",
    "random-noise",
    "-c",
    "identity,invert",
    "-v",
    "tiny",
    "--profile",
    "smoke",
    "-q",
]


def _rows(run_dir):
    return sorted(
        (r.cell_id, r.status, r.final_acc, r.clean_final_acc) for r in Store(run_dir).records()
    )


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    d = tmp_path_factory.mktemp("seq")
    res = run_cli(*ARGS, "--run-dir", str(d / "run"), env={"UEB_CACHE": str(d / "cache")})
    assert res.returncode == 0, res.stderr
    rows = _rows(d / "run")
    # clean and random-noise x identity and invert, every one trained: two empty stores are equal too
    assert len(rows) == 4 and all(status == "ok" and acc is not None for _, status, acc, _ in rows)
    return rows


@pytest.mark.slow
def test_process_pool_matches_sequential(sequential, tmp_path):
    res = run_cli(
        *ARGS,
        "--workers",
        "2",
        "--run-dir",
        str(tmp_path / "run"),
        env={"UEB_CACHE": str(tmp_path / "cache")},
    )
    assert res.returncode == 0, res.stderr
    assert _rows(tmp_path / "run") == sequential


@pytest.mark.slow
def test_ray_executor_matches_sequential(sequential, tmp_path):
    if os.environ.get("CI"):  # the test extras CI installs include Ray: missing there is a failure
        import ray  # noqa: F401
    else:
        pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'ueb[ray]')")
    res = run_cli(
        *ARGS,
        "--executor",
        "ray",
        "--workers",
        "2",
        "--run-dir",
        str(tmp_path / "run"),
        env={"UEB_CACHE": str(tmp_path / "cache")},
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    rows = _rows(tmp_path / "run")
    assert rows == sequential
    poisoned = [r for r in Store(tmp_path / "run").records() if r.poisoner != "clean"]
    assert poisoned and all(
        r.clean_final_acc is not None for r in poisoned
    )  # back-filled references


def test_ray_keeps_the_runs_signal_handlers():
    """ray.init installs its own SIGTERM handler (a SIGTERM then aborts the driver); RayPool
    puts the run's handlers back, so the run still stops with its one line and its exit code."""
    if os.environ.get("CI"):
        import ray  # noqa: F401
    else:
        pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'ueb[ray]')")
    import subprocess
    import sys

    script = (
        "import signal\n"
        "from ueb.executors import RayPool\n"
        "def h(s, f): pass\n"
        "signal.signal(signal.SIGTERM, h); signal.signal(signal.SIGINT, h)\n"
        "pool = RayPool(None, 1.0, 0.0, 1)\n"
        "print(signal.getsignal(signal.SIGTERM) is h, signal.getsignal(signal.SIGINT) is h)\n"
        "pool.__exit__(None, None, None)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "True True"
