"""The matrix runner: dataset x poisoner x seed x fraction x countermeasure x victim, resumable.

Order is stable: datasets, then poisoners (clean first), seeds, poison fractions,
countermeasures, victims, each in the order the configuration lists them. A poison is computed
once per (poisoner@version, params, dataset, seed), checked, cached on disk and shared by every
countermeasure and victim. Each cell's record is written the moment it ends, by this process
alone (workers return records, they never write the store); a failing cell is recorded with
its error and the matrix goes on (unless fail_fast). Re-running the same configuration skips
every finished cell.

Cells run in this process (`executor="local"`, `workers=1`), in a process pool (`workers>1`)
or as Ray tasks (`executor="ray"`); see ueb/executors.py.
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ueb.artifacts import ArtifactStore
from ueb.config import ResolvedRun
from ueb.environment import environment_manifest
from ueb.errors import UebError
from ueb.imageset import ImageSet
from ueb.integrity import check_poison
from ueb.interfaces import Countermeasure, Poisoner, RunContext, Splits, Victim
from ueb.params import as_dict, params_hash
from ueb.poison_cache import PoisonCache, poison_key
from ueb.progress import Progress, silent
from ueb.registry import Registry
from ueb.store import CellRecord, Store
from ueb.training import Trainer, resolve_device


@dataclass(frozen=True)
class Cell:
    ordinal: int
    dataset: str
    poisoner: str
    seed: int
    countermeasure: str
    victim: str
    fraction: float = 1.0

    @property
    def group(self) -> tuple[str, str, int]:
        """Cells of one group share one poison."""
        return (self.dataset, self.poisoner, self.seed)


def plan(run: ResolvedRun) -> list[Cell]:
    cells = []
    for d in run.datasets:
        for p in run.poisoners:
            for s in run.seeds:
                for f in run.config.poison_fractions if p != "clean" else (1.0,):
                    for c in run.countermeasures:
                        for v in run.victims:
                            cells.append(Cell(len(cells), d, p, s, c, v, f))
    return cells


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cell_identity(run: ResolvedRun, registry: Registry, cell: Cell) -> str:
    """Hash of everything that determines a cell's numbers (plugin versions included)."""
    versions = {
        kind: registry.get(kind, name).load_class().version
        for kind, name in (("poisoner", cell.poisoner), ("countermeasure", cell.countermeasure), ("victim", cell.victim))
    }
    return params_hash(
        cell.dataset,
        cell.poisoner,
        run.plugin_params(cell.poisoner),
        cell.countermeasure,
        run.plugin_params(cell.countermeasure),
        cell.victim,
        run.plugin_params(cell.victim),
        cell.seed,
        cell.fraction,
        as_dict(run.profile.training),
        as_dict(run.profile.data),
        run.plugin_params(cell.dataset),
        versions,
    )


def mix_poison(clean: ImageSet, poisoned: ImageSet, fraction: float, seed: int) -> ImageSet:
    """Poison a seeded, fixed subset of `fraction` of the images; keep the rest clean."""
    if fraction >= 1.0:
        return poisoned
    n = len(clean)
    chosen = torch.randperm(n, generator=torch.Generator().manual_seed(10_007 + seed))[: round(fraction * n)]
    images = clean.uint8().clone()
    images[chosen] = poisoned.uint8()[chosen]
    return poisoned.with_images(images, poison_fraction=fraction)


@dataclass(frozen=True)
class Job:
    """What a worker needs to compute poisons and cells (picklable, sent to every worker)."""

    run: ResolvedRun
    run_dir: str
    cache_root: str
    device: str


class PoisonerFailure(UebError):
    """A poisoner raised while generating its poison."""


class CellWorker:
    """Computes poisons and cells. One lives in the main process or in each worker process."""

    def __init__(
        self, job: Job, registry: Registry, progress: Progress | None = None, log: Callable[[str], None] = print
    ) -> None:
        self.job = job
        self.run = job.run
        self.registry = registry
        job.run.register_variants(registry)
        self.device = job.device
        self.progress = progress or silent()
        self.log = log
        self.artifacts = ArtifactStore(Path(job.cache_root))
        self.poisons = PoisonCache(self.artifacts.root / "poisons")
        self._datasets: dict[str, Splits] = {}
        self._poison_memo: tuple[tuple[str, str, int], Any] | None = None
        self._data_stage_memo: tuple[tuple[Any, ...], tuple[ImageSet, ImageSet]] | None = None

    def create(self, kind: str, name: str) -> Any:
        return self.registry.create(kind, name, self.run.plugin_params(name))

    def context(self, seed: int) -> RunContext:
        root = self.run.config.data_root
        return RunContext(
            seed=seed,
            device=self.device,
            profile=self.run.profile,
            artifacts=self.artifacts,
            progress=self.progress,
            registry=self.registry,
            data_root=Path(root) if root else None,
            log=self.log,
        )

    def dataset(self, name: str) -> Splits:
        if name not in self._datasets:
            root = self.run.config.data_root
            splits = self.create("dataset", name).load(Path(root) if root else None)
            data = self.run.profile.data
            self._datasets[name] = Splits(
                splits.train.first_per_class(data.train_per_class), splits.test.first_per_class(data.test_per_class), splits.source
            )
        return self._datasets[name]

    def poisoned(self, dataset: str, poisoner_name: str, seed: int) -> tuple[Poisoner, ImageSet, dict[str, Any], float]:
        """The checked, cached poison of one group (kept in memory for the group's cells)."""
        group = (dataset, poisoner_name, seed)
        if self._poison_memo is not None and self._poison_memo[0] == group:
            return self._poison_memo[1]  # type: ignore[no-any-return]
        self._poison_memo = self._data_stage_memo = None
        train = self.dataset(dataset).train
        poisoner: Poisoner = self.create("poisoner", poisoner_name)
        key = poison_key(poisoner, train.fingerprint(), seed)
        cached = self.poisons.load(key)
        if cached is not None:
            images, facts = cached
            result = (poisoner, train.with_images(images, poison=poisoner.name), facts, float(facts.get("seconds", 0.0)))
        else:
            start = time.perf_counter()
            seed_everything(seed)
            try:
                output = poisoner.poison(train, self.context(seed))
            except UebError:
                raise
            except Exception as exc:
                raise PoisonerFailure(f"poisoner '{poisoner.name}' raised {type(exc).__name__}: {exc}") from exc
            images, stats = check_poison(train, output, poisoner.budget(), poisoner.sample_wise, f"poisoner '{poisoner.name}'")
            seconds = time.perf_counter() - start
            facts = {**stats, **poisoner.report(), "seconds": seconds, "key": key, "sample_wise": poisoner.sample_wise}
            self.poisons.save(key, images, facts)
            result = (poisoner, train.with_images(images, poison=poisoner.name), facts, seconds)
        self._poison_memo = (group, result)
        return result

    def run_cell(self, cell: Cell, cell_id: str) -> CellRecord:
        poisoner, poisoned, facts, poison_seconds = self.poisoned(cell.dataset, cell.poisoner, cell.seed)
        splits = self.dataset(cell.dataset)
        cm: Countermeasure = self.create("countermeasure", cell.countermeasure)
        victim: Victim = self.create("victim", cell.victim)
        ctx = self.context(cell.seed)
        memo_key = (cell.group, cell.fraction, cell.countermeasure)
        if self._data_stage_memo is None or self._data_stage_memo[0] != memo_key:  # shared by all victims
            seed_everything(cell.seed)
            mixed = mix_poison(splits.train, poisoned, cell.fraction, cell.seed)
            self._data_stage_memo = (memo_key, (cm.transform_train_set(mixed, ctx), cm.transform_test_set(splits.test, ctx)))
        train, test = self._data_stage_memo[1]
        seed_everything(cell.seed)
        model = victim.build(splits.train.num_classes, splits.train.image_size, splits.train.channels)
        trainer = Trainer(self.run.profile.training, self.device, cell.seed, self.progress)
        result = cm.fit(model, train, test, trainer, ctx)
        self.save_model(cell, cell_id, model, victim)
        return replace(
            error_record(self.run, cell, cell_id, None),
            poisoner_version=type(poisoner).version,
            countermeasure_version=type(cm).version,
            victim_version=type(victim).version,
            poisoner_params=as_dict(poisoner.params),
            countermeasure_params=as_dict(cm.params),
            victim_params=as_dict(victim.params),
            params_hash=cell_id,
            status="ok",
            final_acc=result.final_acc,
            peak_acc=result.peak_acc,
            peak_step=result.peak_step,
            iterations=result.iterations,
            poison_seconds=poison_seconds,
            train_seconds=result.seconds,
            poison_facts=facts,
            history=result.history,
            extra={**result.extra, "train_set": {k: v for k, v in train.meta.items() if k != "poison"}},
        )

    def run_cell_safe(self, cell: Cell, cell_id: str) -> CellRecord:
        """run_cell, with a recoverable failure turned into an error record."""
        try:
            return self.run_cell(cell, cell_id)
        except Exception as exc:
            if not recoverable(exc):
                raise
            return error_record(self.run, cell, cell_id, one_line(exc))

    def save_model(self, cell: Cell, cell_id: str, model: torch.nn.Module, victim: Victim) -> None:
        mode = self.run.config.save_models
        if mode == "none" or (mode == "vanilla" and cell.countermeasure != "vanilla"):
            return
        folder = Path(self.job.run_dir) / "models"
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{cell_id}.pt.tmp"
        blob = {"state_dict": model.state_dict(), "victim": cell.victim, "params": as_dict(victim.params), "version": type(victim).version}
        torch.save(blob, tmp)
        tmp.replace(folder / f"{cell_id}.pt")


def error_record(run: ResolvedRun, cell: Cell, cell_id: str, message: str | None) -> CellRecord:
    """A cell's identity fields with status 'error' (run_cell fills in the rest on success)."""
    return CellRecord(
        cell_id=cell_id,
        ordinal=cell.ordinal,
        dataset=cell.dataset,
        poisoner=cell.poisoner,
        countermeasure=cell.countermeasure,
        victim=cell.victim,
        seed=cell.seed,
        poison_fraction=cell.fraction,
        profile=run.profile.name,
        status="error",
        error=message,
    )


@dataclass
class RunSummary:
    run_dir: Path
    total: int
    skipped: int
    ok: int
    failed: int
    seconds: float


class MatrixRunner:
    def __init__(
        self,
        run: ResolvedRun,
        registry: Registry,
        run_dir: Path,
        progress: Progress,
        log: Callable[[str], None] = print,
    ) -> None:
        self.run = run
        self.registry = registry
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.log = log
        self.device = str(resolve_device(run.config.device))
        cache_root = Path(run.config.cache_dir) if run.config.cache_dir else ArtifactStore().root
        self.job = Job(run, str(self.run_dir), str(cache_root.resolve()), self.device)
        self.store = Store(self.run_dir)

    def execute(self) -> RunSummary:
        from ueb.executors import make_executor

        start = time.perf_counter()
        cells = plan(self.run)
        ids = {cell: cell_identity(self.run, self.registry, cell) for cell in cells}
        self.store.set_manifest(
            config=self.run.describe(),
            execution={"executor": self.run.config.executor, "workers": self.run.config.workers},
            environment=environment_manifest(self.registry, self.device),
            run_id=self.run.run_id(),
            cache_root=self.job.cache_root,
        )
        done = self.store.done_ids()
        todo = [c for c in cells if ids[c] not in done]
        if len(todo) < len(cells):
            self.log(f"resuming: {len(cells) - len(todo)} of {len(cells)} cells already done")
        self.counts = {"ok": 0, "failed": 0}
        with self.progress.task("matrix", total=len(cells)) as bar:
            bar.advance(len(cells) - len(todo))
            executor = make_executor(self.run.config)
            if executor is None:
                self._sequential(todo, ids, bar)
            else:
                with executor:
                    self._parallel(executor, todo, ids, bar)
        self.backfill_clean_references()
        self.store.set_manifest(last_finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
        return RunSummary(self.run_dir, len(cells), len(cells) - len(todo), self.counts["ok"], self.counts["failed"], time.perf_counter() - start)

    def _sequential(self, todo: list[Cell], ids: dict[Cell, str], bar: Any) -> None:
        worker = CellWorker(self.job, self.registry, self.progress, self.log)
        failed_groups: dict[tuple[str, str, int], str] = {}
        for cell in todo:
            bar.update(description=f"{cell.dataset} / {cell.poisoner} / {cell.countermeasure}")
            if cell.group in failed_groups:
                record = error_record(self.run, cell, ids[cell], failed_groups[cell.group])
            else:
                try:
                    worker.poisoned(*cell.group)
                except Exception as exc:
                    if self.run.config.fail_fast or not recoverable(exc):
                        raise
                    failed_groups[cell.group] = one_line(exc)
                    self.log(f"[red]poisoner {cell.poisoner} failed:[/red] {failed_groups[cell.group]}")
                    record = error_record(self.run, cell, ids[cell], failed_groups[cell.group])
                else:
                    record = worker.run_cell(cell, ids[cell]) if self.run.config.fail_fast else worker.run_cell_safe(cell, ids[cell])
            self.write(record)
            bar.advance()

    def _parallel(self, executor: Any, todo: list[Cell], ids: dict[Cell, str], bar: Any) -> None:
        from ueb.executors import cell_task, poison_task

        groups = list(dict.fromkeys(c.group for c in todo))
        failed_groups: dict[tuple[str, str, int], str] = {}
        bar.update(description=f"poisons ({len(groups)})")
        for group, error in executor.map_unordered(poison_task, [(self.job, g) for g in groups]):
            if error:
                if self.run.config.fail_fast:
                    raise UebError(error)
                failed_groups[tuple(group)] = error  # type: ignore[index]
                self.log(f"[red]poisoner {group[1]} failed:[/red] {error}")
        runnable = []
        for cell in todo:
            if cell.group in failed_groups:
                self.write(error_record(self.run, cell, ids[cell], failed_groups[cell.group]))
                bar.advance()
            else:
                runnable.append(cell)
        bar.update(description="cells")
        for record, fatal in executor.map_unordered(cell_task, [(self.job, c, ids[c]) for c in runnable]):
            self.write(record)
            bar.advance()
            if fatal or (record.status == "error" and self.run.config.fail_fast):
                raise UebError(record.error or "a cell failed")

    def write(self, record: CellRecord) -> None:
        if record.status == "ok":
            clean = self.clean_reference(record)
            if clean:
                record.clean_final_acc, record.clean_peak_acc = clean
            self.counts["ok"] += 1
            self.log(
                f"{record.dataset} | {record.poisoner} | {record.countermeasure} | {record.victim} | seed {record.seed}"
                f"{'' if record.poison_fraction >= 1 else f' | {record.poison_fraction:.0%}'}: "
                f"final {record.final_acc:.2f}%  peak {record.peak_acc:.2f}%  ({record.train_seconds:.1f}s)"
            )
        else:
            self.counts["failed"] += 1
            self.log(f"[red]cell failed[/red] {record.poisoner} x {record.countermeasure} x {record.victim}: {record.error}")
        self.store.put(record)

    def clean_reference(self, record: CellRecord) -> tuple[float, float] | None:
        if record.poisoner == "clean" or "clean" not in self.run.poisoners:
            return None
        ref_cell = Cell(0, record.dataset, "clean", record.seed, record.countermeasure, record.victim)
        ref = self.store.get(cell_identity(self.run, self.registry, ref_cell))
        if ref is None or ref.status != "ok" or ref.final_acc is None or ref.peak_acc is None:
            return None
        return ref.final_acc, ref.peak_acc

    def backfill_clean_references(self) -> None:
        """Cells that finished before their clean reference (parallel runs) get it now."""
        for record in self.store.records():
            if record.status == "ok" and record.clean_final_acc is None and record.poisoner != "clean":
                clean = self.clean_reference(record)
                if clean:
                    record.clean_final_acc, record.clean_peak_acc = clean
                    self.store.put(record)


def recoverable(exc: BaseException) -> bool:
    """Errors that fail one cell; a full disk, Ctrl-C or exhausted memory stop the run."""
    if isinstance(exc, KeyboardInterrupt | MemoryError):
        return False
    if isinstance(exc, UebError) and "disk full" in exc.problem:
        return False
    return isinstance(exc, Exception)


def one_line(exc: BaseException) -> str:
    if isinstance(exc, UebError):
        return exc.line()
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}".replace("\n", " ")
