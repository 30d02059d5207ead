"""Shared helpers for the core tests: an isolated plugin host and a CLI runner in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).parent.parent


def isolated_registry(*modules, entry_points: bool = True):
    """A fresh plugin host (ueb's own entry points plus `modules`) installed process-wide."""
    from ueb.plugins import PluginHost, set_host
    from ueb.registry import get_registry

    host = PluginHost(entry_points=entry_points)
    for i, m in enumerate(modules):
        host.register(m, name=getattr(m, "__name__", f"test{i}"), distribution=f"test-dist-{i}")
    set_host(host)
    return get_registry()


def minimal_plugins():
    sys.path.insert(0, str(FIXTURES))
    import minimal_plugins

    return minimal_plugins


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "ueb.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=cwd or REPO,
    )


def pip_install_target(source: Path, target: Path) -> None:
    """Install the package at `source` into folder `target` (no dependencies, no network), as a
    third party's package would be installed; put `target` on PYTHONPATH to use it."""
    pip = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
    )
    assert pip.returncode == 0, pip.stderr
