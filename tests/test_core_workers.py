"""`--workers auto` (the CLI's default): one one-thread process per core on a CPU, when the run
has cells enough and the machine memory enough; one process on a GPU; numbers kept as given."""

from __future__ import annotations

import pytest
from core_helpers import isolated_registry, minimal_plugins

from ueb import plan as plan_module
from ueb.config import RunConfig, build_config
from ueb.errors import ConfigError
from ueb.plan import STEPS_PER_WORKER, WORKER_PEAK_GIB, resolve, resolve_workers
from ueb.plugins import set_host


@pytest.fixture
def machine(monkeypatch):
    """A CPU machine with `cores` cores and `gib` GiB available (0: the system does not say)."""

    def set_machine(cores: int, gib: float, cuda: bool = False) -> None:
        monkeypatch.setattr(plan_module, "_usable_cores", lambda: cores)
        monkeypatch.setattr(plan_module, "_available_gib", lambda: gib)
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
