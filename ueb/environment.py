"""What a result was computed with: versions, git commit, device, plugin distributions."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

import ueb
from ueb.numerics import cpu_model, machine_record
from ueb.registry import Registry


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(ueb.__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=Path(ueb.__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        if out.returncode == 0:
            return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def device_name(device: str, threads: int | None = None) -> str:
    return machine_record(device, threads)


def environment_manifest(
    registry: Registry, device: str, threads: int | None = None
) -> dict[str, Any]:
    """`threads`: the intra-op threads the run's cells use (the plan's numerics)."""
    import torch

    return {
        "ueb": ueb.__version__,
        "git": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": device,
        "device_name": device_name(device, threads),
        "cpu": cpu_model(),
        "plugins": {
            name: {
                "distribution": rec.distribution,
                "version": rec.version,
                "ok": rec.ok,
                "error": rec.error,
            }
            for name, rec in sorted(registry.host.records.items())
        },
    }
