"""How many worker processes `--workers auto` starts.

On a CPU: one one-thread process per usable core, when the run has work enough to pay for a
process's start-up and the machine's available memory holds them. On an accelerator: as many
processes as share one device well, as `benchmarks/gpu/paper_speed.py` measured on a device of
the same name and recorded under the cache (`<cache>/devices/<name>.json`); one where nothing
was measured. The count is execution only: every process computes with the same threads, so
it never changes a number.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ueb.atomic import write_text
from ueb.config import RunConfig
from ueb.numerics import device_type

# A spawned worker spends seconds importing torch and the plugins before its first cell, about
# what a CPU needs for a few hundred training steps of a small victim: a worker is worth
# starting only with this many training steps of work for it (the quick main job has 75,600;
# a smoke run of 8 cells, 96).
STEPS_PER_WORKER = 1_000
# Peak resident memory of one process of the quick profile's main job (2.06 GiB measured,
# benchmarks/RESULTS.md), with headroom: "auto" starts no more workers than memory holds.
WORKER_PEAK_GIB = 2.5
# A sharing measurement counts only where its processes ran side by side for most of the span.
MIN_OVERLAP = 0.5
SHARING_FORMAT = 1


def resolve_workers(
    config: RunConfig,
    n_cells: int | None,
    steps_per_cell: int = 1,
    accelerator: str = "",
) -> int:
    """`config.workers` as a number; "auto" as the module doc says. `accelerator` is the
    device's name as the numerics record it (a GPU's name)."""
    if config.workers != "auto":
        return config.workers
    cores = _usable_cores()
    if config.executor == "ray":
        return cores
    if device_type(config.device) != "cpu":
        measured = measured_processes(_cache_root(config), accelerator) if accelerator else None
        return max(1, min(measured or 1, n_cells or measured or 1))
    gib = _available_gib()
    by_memory = int(gib // WORKER_PEAK_GIB) if gib else cores
    by_work = cores if n_cells is None else n_cells * steps_per_cell // STEPS_PER_WORKER
    return max(1, min(cores, by_memory, by_work, n_cells or cores))


# --------------------------------------------------------------------------- measured sharing


def sharing_record(cache_root: Path, accelerator: str) -> Path:
    """Where the sharing measurement of devices named `accelerator` lives."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", accelerator).strip("-").lower() or "device"
    return Path(cache_root) / "devices" / f"{slug}.json"


def record_sharing(
    cache_root: Path, accelerator: str, sharing: Sequence[dict[str, Any]], source: str
) -> Path | None:
    """Record how many processes share a device named `accelerator` best: the measured count
    with the most cells per device-hour, among runs whose processes overlapped. `sharing` is
    `paper_speed.py`'s list (`processes`, `cells_per_gpu_hour`, `overlap_fraction`). Returns
    the file written (atomically; UebError when it cannot be), or None when no measurement
    qualifies."""
    valid = [
        s
        for s in sharing
        if int(s.get("processes", 0)) >= 1
        and float(s.get("cells_per_gpu_hour", 0)) > 0
        and (int(s["processes"]) == 1 or float(s.get("overlap_fraction", 0)) >= MIN_OVERLAP)
    ]
    if not valid:
        return None
    best = max(valid, key=lambda s: float(s["cells_per_gpu_hour"]))
    path = sharing_record(cache_root, accelerator)
    body = {
        "format": SHARING_FORMAT,
        "accelerator": accelerator,
        "processes": int(best["processes"]),
        "cells_per_hour": {str(s["processes"]): float(s["cells_per_gpu_hour"]) for s in valid},
        "measured": time.strftime("%Y-%m-%d"),
        "source": source,
    }
    return write_text(path, json.dumps(body, indent=2), what="the GPU sharing record")


def measured_processes(cache_root: Path, accelerator: str) -> int | None:
    """The recorded process count for devices named `accelerator`; None when none was
    recorded, or the record is unreadable or names another device."""
    path = sharing_record(cache_root, accelerator)
    try:
        body = json.loads(path.read_text())
        if body.get("format") != SHARING_FORMAT or body.get("accelerator") != accelerator:
            return None
        processes = int(body["processes"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return processes if processes >= 1 else None


# --------------------------------------------------------------------------- the machine


def _cache_root(config: RunConfig) -> Path:
    from ueb.artifacts import default_cache_root

    return Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_root()


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _available_gib() -> float:
    """MemAvailable in GiB, 0.0 where the system does not say."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0
