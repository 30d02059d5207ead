"""CI's regression check on numbers: a small CPU matrix against the checked-in baseline.

Profile `benchmarks/profiles/ci-regression.toml` (fastnet, 2,000 training images, 120 steps,
seconds per cell). The baseline's tolerance (10 points) absorbs another CPU's floating point
moving a few of the 1,000 test images; it catches what breaks a method or the trainer.
Regenerate after an intended change (and bump the plugin's version):
    ueb run -p lsp,ops -c vanilla,grayscale --profile benchmarks/profiles/ci-regression.toml --run-dir R -q
    ueb baseline accept R --name ci-regression --tolerance 10
"""

from __future__ import annotations

from pathlib import Path

import pytest
from core_helpers import REPO, run_cli

BASELINE = REPO / "benchmarks" / "baselines" / "ci-regression.json"
PROFILE = REPO / "benchmarks" / "profiles" / "ci-regression.toml"


@pytest.mark.slow
def test_cpu_numbers_match_the_checked_in_baseline(tmp_path: Path):
    env = {"UEB_CACHE": str(tmp_path / "cache")}
    run = run_cli("run", "-p", "lsp,ops", "-c", "vanilla,grayscale", "--profile", str(PROFILE), "--run-dir", str(tmp_path / "r"), "-q", env=env)
    assert run.returncode == 0, run.stderr
    check = run_cli("check", str(tmp_path / "r"), "--baseline", str(BASELINE), "--strict", env=env)
    assert check.returncode == 0, check.stdout + check.stderr
