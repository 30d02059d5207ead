"""Two runs started together on one cache compute each training once: the first to reach a
training claims it, the other waits and reads the result."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from core_helpers import REPO

from ueb.store import Store

FIXTURES = Path(__file__).parent / "fixtures" / "stopping"


@pytest.mark.slow
def test_two_runs_on_one_cache_compute_each_cell_once(tmp_path):
    env = {**os.environ, "UEB_CACHE": str(tmp_path / "cache")}
    args = ["-p", "random-noise", "-c", "identity,slow", "-v", "tiny", "--profile", "smoke"]
    args += ["--param", "slow.seconds=4", "--workers", "1", "-q"]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ueb.cli",
                "--plugins-dir",
                str(FIXTURES),
                "run",
                *args,
                "--run-dir",
                str(tmp_path / name),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for name in ("a", "b")
    ]
    for p in procs:
        _out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    a = {r.cell_id: r for r in Store(tmp_path / "a").records()}
    b = {r.cell_id: r for r in Store(tmp_path / "b").records()}
    assert set(a) == set(b) and len(a) == 4
    for cell_id in a:
        trained_here = [
            run for run, recs in (("a", a), ("b", b))
            if "training_from" not in recs[cell_id].extra
            and "reused_from" not in recs[cell_id].extra
        ]  # fmt: skip
        assert len(trained_here) == 1, (cell_id, a[cell_id].extra, b[cell_id].extra)
        assert a[cell_id].final_acc == b[cell_id].final_acc
        assert a[cell_id].history == b[cell_id].history
