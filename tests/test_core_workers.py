"""`--workers auto` (the CLI's default): one one-thread process per core on a CPU, when the run
has cells enough and the machine memory enough; on a GPU, the process count measured for a GPU
of that name (one where none was measured); numbers kept as given."""

from __future__ import annotations

import pytest
from core_helpers import isolated_registry, minimal_plugins

from ueb import worker_count
from ueb.config import RunConfig, build_config
from ueb.errors import ConfigError
from ueb.plan import resolve
from ueb.plugins import set_host
from ueb.worker_count import (
    STEPS_PER_WORKER,
    WORKER_PEAK_GIB,
    measured_processes,
    record_sharing,
    resolve_workers,
    sharing_record,
)


@pytest.fixture
def machine(monkeypatch):
    """A CPU machine with `cores` cores and `gib` GiB available (0: the system does not say)."""

    def set_machine(cores: int, gib: float, cuda: bool = False) -> None:
        monkeypatch.setattr(worker_count, "_usable_cores", lambda: cores)
        monkeypatch.setattr(worker_count, "_available_gib", lambda: gib)
        monkeypatch.setattr("torch.cuda.is_available", lambda: cuda)

    return set_machine


def test_auto_uses_every_core_for_a_large_run_on_a_cpu(machine):
    machine(cores=2, gib=20)
    assert resolve_workers(RunConfig(workers="auto"), 126, 600) == 2  # the quick main job
    machine(cores=16, gib=100)
    assert resolve_workers(RunConfig(workers="auto"), 126, 600) == 16
    assert resolve_workers(RunConfig(workers="auto"), None, 600) == 16  # cells not known yet


def test_auto_stays_in_one_process_when_a_pool_cannot_pay_for_itself(machine):
    machine(cores=16, gib=100)
    assert resolve_workers(RunConfig(workers="auto"), 8, 12) == 1  # a smoke run: seconds of work
    assert resolve_workers(RunConfig(workers="auto"), 3, STEPS_PER_WORKER) == 3
    assert (
        resolve_workers(RunConfig(workers="auto"), 3, 100 * STEPS_PER_WORKER) == 3
    )  # one per cell


def test_auto_starts_no_more_workers_than_memory_holds(machine):
    machine(cores=16, gib=3.5 * WORKER_PEAK_GIB)
    assert resolve_workers(RunConfig(workers="auto"), 500, 600) == 3
    machine(cores=16, gib=0.5 * WORKER_PEAK_GIB)
    assert resolve_workers(RunConfig(workers="auto"), 500, 600) == 1
    machine(cores=4, gib=0)  # the system does not say: cores decide
    assert resolve_workers(RunConfig(workers="auto"), 500, 600) == 4


def test_auto_is_one_process_on_a_gpu_and_a_given_number_is_kept(machine):
    machine(cores=16, gib=100, cuda=True)
    assert resolve_workers(RunConfig(workers="auto", device="auto"), 500, 600) == 1
    assert resolve_workers(RunConfig(workers="auto", device="cuda:0"), 500, 600) == 1
    machine(cores=16, gib=100)
    assert resolve_workers(RunConfig(workers=1), 500, 600) == 1
    assert resolve_workers(RunConfig(workers=5), 500, 600) == 5


H200 = "NVIDIA H200"
# benchmarks/gpu/paper_speed.py's sharing section: processes, cells per GPU-hour, overlap
SHARING = [
    {"processes": 1, "cells_per_gpu_hour": 10.0, "overlap_fraction": 1.0},
    {"processes": 2, "cells_per_gpu_hour": 18.0, "overlap_fraction": 0.97},
    {"processes": 4, "cells_per_gpu_hour": 31.0, "overlap_fraction": 0.95},
    {"processes": 8, "cells_per_gpu_hour": 29.0, "overlap_fraction": 0.93},
]


def test_auto_on_a_gpu_uses_the_process_count_measured_for_that_gpu(machine, tmp_path):
    machine(cores=16, gib=100, cuda=True)
    config = RunConfig(workers="auto", device="cuda", cache_dir=str(tmp_path))
    assert resolve_workers(config, 500, 600, accelerator=H200) == 1  # nothing measured yet
    written = record_sharing(tmp_path, H200, SHARING, source="paper_speed.py")
    assert written == sharing_record(tmp_path, H200) and written.exists()
    assert measured_processes(tmp_path, H200) == 4  # the most cells per GPU-hour
    assert resolve_workers(config, 500, 600, accelerator=H200) == 4
    assert resolve_workers(config, 3, 600, accelerator=H200) == 3  # no more than cells
    assert resolve_workers(config, 500, 600, accelerator="NVIDIA A100-SXM4-80GB") == 1
    assert resolve_workers(RunConfig(workers=2, device="cuda"), 500, 600, accelerator=H200) == 2


def test_a_sharing_measurement_that_did_not_overlap_or_a_damaged_record_counts_for_nothing(
    machine, tmp_path
):
    machine(cores=16, gib=100, cuda=True)
    serial = [dict(s, overlap_fraction=0.1) for s in SHARING[1:]]  # ran one after another
    assert record_sharing(tmp_path, H200, serial, source="paper_speed.py") is None
    assert measured_processes(tmp_path, H200) is None
    record_sharing(tmp_path, H200, SHARING, source="paper_speed.py")
    sharing_record(tmp_path, H200).write_text("{ not json")
    config = RunConfig(workers="auto", device="cuda", cache_dir=str(tmp_path))
    assert resolve_workers(config, 500, 600, accelerator=H200) == 1


def test_the_plan_carries_a_number_and_bad_values_fail_in_the_plan(machine):
    machine(cores=2, gib=20)
    registry = isolated_registry(minimal_plugins())
    try:
        config = build_config(
            {},
            {
                "poisoners": ("clean",),
                "countermeasures": ("identity",),
                "victims": ("tiny",),
                "profile": "smoke",
                "workers": "auto",
            },
        )
        plan = resolve(config, registry)
        assert isinstance(plan.config.workers, int)
        work = len(plan.cells) * plan.profile.training.iterations
        assert plan.config.workers == max(1, min(2, work // STEPS_PER_WORKER))
        with pytest.raises(ConfigError, match="workers"):
            build_config({}, {"workers": "many"})
        with pytest.raises(ConfigError, match="--workers is 0"):
            resolve(build_config({}, {**config.__dict__, "workers": 0}), registry)
    finally:
        set_host(None)
