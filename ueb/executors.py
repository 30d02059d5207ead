"""Where cells run: in this process, in a local process pool, or as Ray tasks.

Workers compute poisons and cells and *return* records; only the main process writes the
store, so resume works unchanged whatever the executor. Poisons are computed first (one task
per (dataset, poisoner, seed), shared by all its cells through the on-disk cache), then cells.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing as mp
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ueb.config import RunConfig
from ueb.errors import ConfigError
from ueb.plan import Cell
from ueb.policy import one_line, recoverable
from ueb.stopping import init_worker_process
from ueb.store import CellRecord
from ueb.worker import CellWorker, Job

_WORKERS: dict[str, Any] = {}


def _worker_for(job: Job) -> CellWorker:
    """One CellWorker per process and job, so datasets and poisons stay in memory between tasks."""
    from ueb.registry import get_registry

    key = f"{job.run_dir}|{job.cache_root}|{job.plan.run_id()}"
    if key not in _WORKERS:
        _WORKERS.clear()
        _WORKERS[key] = CellWorker(job, get_registry(), log=lambda _m: None)
    return _WORKERS[key]  # type: ignore[no-any-return]


def poison_task(
    job: Job, group: tuple[str, str, int]
) -> tuple[tuple[str, str, int], str | None, bool]:
    """Compute (or find cached) one group's poison: (group, error line or None, fatal)."""
    try:
        _worker_for(job).poisoned(*group)
        return group, None, False
    except Exception as exc:
        if os.environ.get("UEB_DEBUG"):
            import traceback

            traceback.print_exception(exc)  # the worker's stderr is the terminal's
        return group, one_line(exc), not recoverable(exc)


def cell_task(job: Job, cell: Cell) -> tuple[CellRecord, bool]:
    """Run one cell: (record, fatal)."""
    record, fatal = _worker_for(job).run_cell_safe(cell)
    return record, fatal is not None


class ProcessPool:
    """A local pool of spawned processes (safe with torch), each with the plan's intra-op
    threads (part of the numerics, so a cell computes alike in any pool)."""

    def __init__(self, workers: int, threads: int = 1) -> None:
        self.pool = cf.ProcessPoolExecutor(
            workers,
            mp_context=mp.get_context("spawn"),
            initializer=init_worker_process,  # light module: protected before torch loads
            initargs=(os.getpid(), threads),
        )

    def __enter__(self) -> ProcessPool:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        else:  # stopping (a signal, a fatal error): cells in flight are abandoned, not awaited
            self.kill()

    def kill(self) -> None:
        """End every worker now (SIGTERM, then SIGKILL after 2 s) and drop queued cells."""
        processes = list(getattr(self.pool, "_processes", {}).values())
        self.pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            with contextlib.suppress(Exception):
                proc.terminate()
        for proc in processes:
            with contextlib.suppress(Exception):
                proc.join(2.0)
                if proc.is_alive():
                    proc.kill()
                    proc.join(1.0)

    def map_unordered(
        self, fn: Callable[..., Any], args: Iterable[tuple[Any, ...]]
    ) -> Iterator[Any]:
        futures = [self.pool.submit(fn, *a) for a in args]
        for fut in cf.as_completed(futures):
            yield fut.result()

    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future[Any]:
        return self.pool.submit(fn, *args)


class RayPool:
    """Cells as Ray tasks with CPU/GPU requests; `address=None` starts a local Ray instance."""

    def __init__(
        self, address: str | None, cpus_per_task: float, gpus_per_task: float, workers: int
    ) -> None:
        try:
            import ray
        except ImportError as exc:
            raise ConfigError(
                "--executor ray needs Ray", "pip install 'ueb[ray]' (or pip install ray)"
            ) from exc
        self.ray = ray
        env = {k: v for k, v in os.environ.items() if k.startswith("UEB_")}
        self._started = not ray.is_initialized()
        if self._started:
            kwargs: dict[str, Any] = {
                "runtime_env": {"env_vars": env},
                "include_dashboard": False,
                "log_to_driver": False,
            }
            if address:
                kwargs["address"] = address
            else:
                kwargs["num_cpus"] = max(workers, 1) * cpus_per_task
            _keeping_signal_handlers(lambda: ray.init(**kwargs))
        self.options = {"num_cpus": cpus_per_task, "num_gpus": gpus_per_task, "max_retries": 0}

    def __enter__(self) -> RayPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._started:
            self.ray.shutdown()

    def map_unordered(
        self, fn: Callable[..., Any], args: Iterable[tuple[Any, ...]]
    ) -> Iterator[Any]:
        ray: Any = self.ray
        remote = ray.remote(**self.options)(fn)
        pending = [remote.remote(*a) for a in args]
        while pending:
            done, pending = self.ray.wait(pending, num_returns=1)
            yield self.ray.get(done[0])


def _keeping_signal_handlers(start: Callable[[], Any]) -> None:
    """Run `start` and put back the SIGINT/SIGTERM handlers it replaced: ray.init installs its
    own (a SIGTERM then aborts the driver), and the run's stop handlers must stay in charge."""
    if threading.current_thread() is not threading.main_thread():
        start()
        return
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        start()
    finally:
        for s, h in handlers.items():
            if h is not None:
                signal.signal(s, h)


def make_executor(config: RunConfig, threads: int = 1) -> ProcessPool | RayPool | None:
    """None means: run the cells here, one after the other (with nested progress bars).
    `config` is a resolved plan's: its workers are a number."""
    if config.workers == "auto":
        raise ValueError("workers='auto' is resolved by ueb.plan.resolve before execution")
    if config.executor == "ray":
        return RayPool(
            config.ray_address, config.cpus_per_cell, config.gpus_per_cell, config.workers
        )
    if config.workers > 1:
        return ProcessPool(config.workers, threads)
    return None
