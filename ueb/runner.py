"""Orchestration: run a Plan's cells into a run directory's store, resumably.

The run directory is locked while a run writes to it. Each cell's record is written the moment
it ends, by this process alone (workers return records, they never write the store); a failing
cell is recorded with its error and the matrix goes on, as ueb/policy.py decides. Re-running
the same plan skips every finished cell, and a clean-row cell finished in another run directory
with the same cache is reused (its id says it is the same computation).

Cells run in this process (`workers=1`), in a process pool (`workers>1`) or as Ray tasks
(`executor="ray"`); see ueb/executors.py.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ueb.artifacts import ArtifactStore
from ueb.cellindex import CellIndex
from ueb.environment import environment_manifest
from ueb.executors import cell_task, make_executor, poison_task
from ueb.locks import RunLock
from ueb.plan import Cell, Plan
from ueb.policy import FailurePolicy, RunStopped, error_record, one_line
from ueb.progress import Progress
from ueb.registry import Registry
from ueb.store import CellRecord, Store
from ueb.training import resolve_device
from ueb.worker import CellWorker, Job


@dataclass
class RunSummary:
    run_dir: Path
    total: int
    skipped: int
    ok: int
    failed: int
    seconds: float


def cell_costs(plan: Plan, registry: Registry) -> dict[str, float]:
    """Each countermeasure's relative cost (Countermeasure.cost), for scheduling and the ETA."""
    from ueb.params import parse_params

    costs: dict[str, float] = {}
    for name in plan.countermeasures:
        spec = plan.spec("countermeasure", name)
        try:
            cls = registry.get("countermeasure", spec.entry).load_class()
            cm = cls(parse_params(cls.Params, dict(spec.params), where=name), name=name)
            costs[name] = max(0.1, float(cm.cost()))
        except Exception:
            costs[name] = 1.0  # scheduling only: a plugin that cannot say counts as plain
    return costs


class Eta:
    """Time left from measured cell costs: seconds per unit of cost so far, times the cost
    left, over the workers."""

    def __init__(self, total_cost: float, workers: int) -> None:
        self.left = total_cost
        self.workers = max(1, workers)
        self.cost_done = 0.0
        self.seconds = 0.0

    def finished(self, cost: float, seconds: float) -> None:
        self.left = max(0.0, self.left - cost)
        if seconds > 0:
            self.cost_done += cost
            self.seconds += seconds

    def text(self) -> str:
        if self.cost_done <= 0:
            return ""
        minutes = self.seconds / self.cost_done * self.left / self.workers / 60
        return f"ETA ~{minutes:.0f} min (measured cell costs)" if self.left else ""


def default_run_dir(plan: Plan, root: Path = Path("runs")) -> Path:
    return Path(plan.config.run_dir) if plan.config.run_dir else root / plan.run_id()


def cache_root_of(plan: Plan) -> Path:
    return (
        (Path(plan.config.cache_dir) if plan.config.cache_dir else ArtifactStore().root)
        .expanduser()
        .resolve()
    )


def _stderr(message: str) -> None:
    import sys

    print(f"warning: {message.removeprefix('warning: ')}", file=sys.stderr)


class MatrixRunner:
    def __init__(
        self,
        plan: Plan,
        registry: Registry,
        run_dir: Path,
        progress: Progress,
        log: Callable[[str], None] = print,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        """`log` gets progress chatter (one line per finished cell); `warn` gets failures, and is
        what `--quiet` keeps."""
        self.plan = plan
        self.warn = warn or _stderr
        self.registry = registry
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.log = log
        self.device = str(resolve_device(plan.config.device))
        self.lock = RunLock(self.run_dir)
        self.store = Store(self.run_dir)
        self.environment = environment_manifest(registry, self.device, plan.numerics.threads)
        env = {k: str(self.environment.get(k, "")) for k in ("git", "torch", "device_name")}
        self.job = Job(plan, str(self.run_dir), str(cache_root_of(plan)), self.device, env)
        self.counts = {"ok": 0, "failed": 0}
        self.index = CellIndex(Path(self.job.cache_root))

    def preview(self) -> dict[str, int]:
        """What the run will do: cells already in this run directory, cells another run with
        this cache finished (reused), cells and poisons left to compute."""
        done = self.store.done_ids()
        cells = list(self.plan.cells)
        open_cells = [c for c in cells if c.id not in done]
        reusable = [c for c in open_cells if self.index.get(c.id) is not None]
        todo = [c for c in open_cells if c not in reusable]
        from ueb.poison_cache import PoisonCache

        cache = PoisonCache(Path(self.job.cache_root) / "poisons")
        keys = {c.poison_key for c in todo}
        cached = sum(1 for k in keys if (cache.folder(k) / "images.npy").exists())
        return {
            "cells": len(cells),
            "done": len(cells) - len(open_cells),
            "reusable": len(reusable),
            "todo": len(todo),
            "poisons_cached": cached,
            "poisons_todo": len(keys) - cached,
        }

    def execute(self) -> RunSummary:
        start = time.perf_counter()
        try:
            return self._execute(start)
        finally:
            self.lock.release()

    def _execute(self, start: float) -> RunSummary:
        cells = list(self.plan.cells)
        self.store.set_manifest(
            # the roles' names are recorded, so a report reads the run as it was resolved
            config={
                **self.plan.describe(),
                "reference": self.plan.reference,
                "baseline": self.plan.baseline,
            },
            execution={"executor": self.plan.config.executor, "workers": self.plan.config.workers},
            environment=self.environment,
            run_id=self.plan.run_id(),
            cache_root=self.job.cache_root,
            planned_cells=[c.id for c in cells],
        )
        done = self.store.done_ids()
        reused = self.reuse_finished_cells([c for c in cells if c.id not in done])
        done |= reused
        todo = [c for c in cells if c.id not in done]
        if len(todo) < len(cells):
            self.log(
                f"resuming: {len(cells) - len(todo)} of {len(cells)} cells already done"
                + (f" ({len(reused)} reused from other runs)" if reused else "")
            )
        policy = FailurePolicy(self.plan.config.fail_fast)
        with self.progress.task("matrix", total=len(cells)) as bar:
            bar.advance(len(cells) - len(todo))
            executor = make_executor(self.plan.config, self.plan.numerics.threads)
            if executor is None:
                self._sequential(todo, policy, bar)
            else:
                with executor:
                    self._parallel(executor, todo, policy, bar)
        self.backfill_clean_references()
        self.store.set_manifest(last_finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
        return RunSummary(
            self.run_dir,
            len(cells),
            len(cells) - len(todo),
            self.counts["ok"],
            self.counts["failed"],
            time.perf_counter() - start,
        )

    def _sequential(self, todo: list[Cell], policy: FailurePolicy, bar: Any) -> None:
        worker = CellWorker(self.job, self.registry, self.progress, self.log, self.warn)
        for cell in todo:
            bar.update(description=f"{cell.dataset} / {cell.poisoner} / {cell.countermeasure}")
            fatal: BaseException | None = None
            if policy.group_error(cell) is None:
                try:
                    worker.poisoned(*cell.group)
                except Exception as exc:
                    if os.environ.get("UEB_DEBUG"):
                        import traceback

                        traceback.print_exception(exc)
                    policy.poison_failed(cell.group, exc, one_line(exc))
                    self.warn(f"poisoner {cell.poisoner} failed: {policy.group_error(cell)}")
            if policy.group_error(cell) is not None:
                record = error_record(self.plan, cell, policy.group_error(cell))
            else:
                record, fatal = worker.run_cell_safe(cell)
            self.write(record)
            bar.advance()
            if fatal is not None:
                raise fatal
            policy.cell_finished(record, fatal=False)

    def _parallel(self, executor: Any, todo: list[Cell], policy: FailurePolicy, bar: Any) -> None:
        if hasattr(executor, "submit"):
            return self._scheduled(executor, todo, policy, bar)
        groups = list(dict.fromkeys(c.group for c in todo))
        bar.update(description=f"poisons ({len(groups)})")
        for group, error, fatal in executor.map_unordered(
            poison_task, [(self.job, g) for g in groups]
        ):
            if error:
                if fatal:
                    raise RunStopped(error)
                policy.poison_failed(tuple(group), None, error)
                self.warn(f"poisoner {group[1]} failed: {error}")
        runnable = []
        for cell in todo:
            message = policy.group_error(cell)
            if message is not None:
                self.write(error_record(self.plan, cell, message))
                bar.advance()
            else:
                runnable.append(cell)
        bar.update(description="cells")
        for record, fatal in executor.map_unordered(cell_task, [(self.job, c) for c in runnable]):
            self.write(record)
            bar.advance()
            policy.cell_finished(record, fatal)

    def _scheduled(self, executor: Any, todo: list[Cell], policy: FailurePolicy, bar: Any) -> None:
        """As many tasks in flight as workers, chosen as late as possible: a poison first (it
        unlocks cells), else the costliest ready cell (so no long cell is left for the end
        while the other workers idle). A group's cells are ready once its poison is cached, so
        cells whose poison is trivial (the clean row) run while other poisons are built."""
        import concurrent.futures as cf

        cost = cell_costs(self.plan, self.registry)
        waiting: dict[tuple[str, str, int], list[Cell]] = {}
        for cell in todo:
            waiting.setdefault(cell.group, []).append(cell)
        poisons = list(waiting)
        ready: list[Cell] = []
        inflight: dict[Any, tuple[str, Any]] = {}
        slots = self.plan.config.workers if isinstance(self.plan.config.workers, int) else 1
        eta = Eta(sum(cost[c.countermeasure] for c in todo), slots)
        while poisons or ready or inflight:
            while len(inflight) < slots and (poisons or ready):
                if poisons:
                    group = poisons.pop(0)
                    inflight[executor.submit(poison_task, self.job, group)] = ("poison", group)
                else:
                    ready.sort(key=lambda c: (-cost[c.countermeasure], c.ordinal))
                    cell = ready.pop(0)
                    inflight[executor.submit(cell_task, self.job, cell)] = ("cell", cell)
            done, _ = cf.wait(list(inflight), return_when=cf.FIRST_COMPLETED)
            for fut in done:
                kind, what = inflight.pop(fut)
                if kind == "poison":
                    group, error, fatal = fut.result()
                    if error:
                        if fatal:
                            raise RunStopped(error)
                        policy.poison_failed(tuple(group), None, error)
                        self.warn(f"poisoner {group[1]} failed: {error}")
                        for cell in waiting.pop(tuple(group), []):
                            self.write(error_record(self.plan, cell, policy.group_error(cell)))
                            bar.advance()
                    else:
                        ready.extend(waiting.pop(tuple(group), []))
                    continue
                record, fatal = fut.result()
                self.write(record)
                bar.advance()
                eta.finished(cost[what.countermeasure], record.train_seconds or 0.0)
                bar.update(info=eta.text())
                policy.cell_finished(record, fatal)

    def write(self, record: CellRecord) -> None:
        if record.status == "ok":
            clean = self.clean_reference(record)
            if clean:
                record.clean_final_acc, record.clean_peak_acc = clean
            self.counts["ok"] += 1
            self.index.put(record, self.run_dir)
            self.log(
                f"{record.dataset} | {record.poisoner} | {record.countermeasure} | {record.victim} | seed {record.seed}"
                f"{'' if record.poison_fraction >= 1 else f' | {record.poison_fraction:.0%}'}: "
                f"final {record.final_acc:.2f}%  peak {record.peak_acc:.2f}%  ({record.train_seconds:.1f}s)  [{record.cell_id[:10]}]"
            )
        else:
            self.counts["failed"] += 1
            self.warn(
                f"cell failed: {record.poisoner} x {record.countermeasure} x {record.victim} (seed {record.seed}): {record.error}"
            )
            trace = (record.extra or {}).get("traceback")
            if trace and os.environ.get("UEB_DEBUG"):  # --debug: where it failed, in full
                self.warn("traceback of the failure above:\n" + str(trace).rstrip())
        self.store.put(record)
        if record.status == "ok" and record.poisoner == self.plan.reference:
            self.fill_cells_waiting_on(record)

    def fill_cells_waiting_on(self, reference: CellRecord) -> None:
        """The cells of this reference's row that finished before it (parallel runs) get its
        accuracy now, so a run stopped at any point leaves every saved record complete."""
        for cell in self.plan.cells:
            if cell.poisoner == reference.poisoner or (
                cell.dataset,
                cell.seed,
                cell.countermeasure,
                cell.victim,
            ) != (reference.dataset, reference.seed, reference.countermeasure, reference.victim):
                continue
            record = self.store.get(cell.id)
            if record is not None and record.status == "ok" and record.clean_final_acc is None:
                record.clean_final_acc, record.clean_peak_acc = (
                    reference.final_acc,
                    reference.peak_acc,
                )
                self.store.put(record)

    def clean_reference(self, record: CellRecord) -> tuple[float, float] | None:
        reference = self.plan.reference
        if (
            reference is None
            or record.poisoner == reference
            or reference not in self.plan.poisoners
        ):
            return None
        ref_cell = self.plan.find(
            record.dataset, reference, record.seed, record.countermeasure, record.victim
        )
        ref = self.store.get(ref_cell.id) if ref_cell else None
        if ref is None or ref.status != "ok" or ref.final_acc is None or ref.peak_acc is None:
            return None
        return ref.final_acc, ref.peak_acc

    def backfill_clean_references(self) -> None:
        """Cells that finished before their clean reference (parallel runs) get it now."""
        for record in self.store.records():
            if (
                record.status == "ok"
                and record.clean_final_acc is None
                and record.poisoner != self.plan.reference
            ):
                clean = self.clean_reference(record)
                if clean:
                    record.clean_final_acc, record.clean_peak_acc = clean
                    self.store.put(record)

    def reuse_finished_cells(self, todo: list[Cell]) -> set[str]:
        """Cells another run with this cache already finished: same id, so same computation
        (e.g. the clean row shared by every poisoner's run). Their records are copied with a
        note of where they come from."""
        reused: set[str] = set()
        for cell in todo:
            record = self.index.get(cell.id)
            if record is None:
                continue
            record.ordinal = cell.ordinal
            record.extra = {
                **record.extra,
                "reused_from": record.extra.get("reused_from") or self.index.source(cell.id),
            }
            self.store.put(record)
            reused.add(cell.id)
        return reused
