"""The matrix runner: dataset x poisoner x countermeasure x victim x seed, resumable.

Order is stable: datasets, then poisoners (clean first), seeds, countermeasures, victims, each
in the order the configuration lists them. A poison is computed once per
(poisoner@version, params, dataset, seed), checked, cached on disk and shared by every
countermeasure and victim. Each cell's record is written the moment it ends; a failing cell
is recorded with its error and the matrix goes on (unless fail_fast). Re-running the same
configuration skips every finished cell.
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
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
from ueb.progress import Progress
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
        cache_root = Path(run.config.cache_dir) if run.config.cache_dir else None
        self.artifacts = ArtifactStore(cache_root)
        self.poisons = PoisonCache(self.artifacts.root / "poisons")
        self.store = Store(self.run_dir)

    # -- plugin instances -------------------------------------------------------------------

    def _create(self, kind: str, name: str) -> Any:
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

    # -- main loop --------------------------------------------------------------------------

    def execute(self) -> RunSummary:
        start = time.perf_counter()
        cells = plan(self.run)
        done = self.store.done_ids()
        ids = {cell: self.cell_id(cell) for cell in cells}
        self.store.set_manifest(
            config=self.run.describe(),
            environment=environment_manifest(self.registry, self.device),
            run_id=self.run.run_id(),
            cache_root=str(self.artifacts.root.resolve()),
        )
        todo = [c for c in cells if ids[c] not in done]
        ok = failed = 0
        if len(todo) < len(cells):
            self.log(f"resuming: {len(cells) - len(todo)} of {len(cells)} cells already done")
        with self.progress.task("matrix", total=len(cells)) as bar:
            bar.advance(len(cells) - len(todo))
            for dataset in self.run.datasets:
                dataset_cells = [c for c in todo if c.dataset == dataset]
                if not dataset_cells:
                    continue
                splits = self.load_dataset(dataset)
                for poisoner_name in self.run.poisoners:
                    for seed in self.run.seeds:
                        group = [c for c in dataset_cells if c.poisoner == poisoner_name and c.seed == seed]
                        if not group:
                            continue
                        bar.update(description=f"{dataset} / {poisoner_name} / seed {seed}")
                        n_ok, n_failed = self.run_group(group, splits, ids, bar)
                        ok += n_ok
                        failed += n_failed
        self.store.set_manifest(last_finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
        return RunSummary(self.run_dir, len(cells), len(cells) - len(todo), ok, failed, time.perf_counter() - start)

    def cell_id(self, cell: Cell) -> str:
        versions = {
            kind: self.registry.get(kind, name).load_class().version
            for kind, name in (("poisoner", cell.poisoner), ("countermeasure", cell.countermeasure), ("victim", cell.victim))
        }
        return params_hash(
            cell.dataset,
            cell.poisoner,
            self.run.plugin_params(cell.poisoner),
            cell.countermeasure,
            self.run.plugin_params(cell.countermeasure),
            cell.victim,
            self.run.plugin_params(cell.victim),
            cell.seed,
            cell.fraction,
            as_dict(self.run.profile.training),
            as_dict(self.run.profile.data),
            self.run.plugin_params(cell.dataset),
            versions,
        )

    def load_dataset(self, name: str) -> Splits:
        dataset = self._create("dataset", name)
        root = self.run.config.data_root
        splits = dataset.load(Path(root) if root else None)
        data = self.run.profile.data
        return Splits(
            splits.train.first_per_class(data.train_per_class),
            splits.test.first_per_class(data.test_per_class),
            splits.source,
        )

    def run_group(self, group: list[Cell], splits: Splits, ids: dict[Cell, str], bar: Any) -> tuple[int, int]:
        """All cells of one (dataset, poisoner, seed): poison once, then every cm x victim."""
        first = group[0]
        ok = failed = 0
        try:
            poisoner: Poisoner = self._create("poisoner", first.poisoner)
            poisoned, facts, poison_seconds = self.poison(poisoner, splits.train, first.seed)
        except Exception as exc:
            if self.run.config.fail_fast or not _recoverable(exc):
                raise
            message = _one_line(exc)
            self.log(f"[red]poisoner {first.poisoner} failed:[/red] {message}")
            for cell in group:
                self.record_error(cell, ids[cell], message)
                bar.advance()
            return 0, len(group)
        for fraction, cm_name in dict.fromkeys((c.fraction, c.countermeasure) for c in group):
            transformed: dict[str, tuple[ImageSet, ImageSet]] = {}
            mixed = mix_poison(splits.train, poisoned, fraction, first.seed)
            for cell in (c for c in group if c.countermeasure == cm_name and c.fraction == fraction):
                try:
                    record = self.run_cell(cell, ids[cell], poisoner, mixed, facts, poison_seconds, splits, transformed)
                    self.store.put(record)
                    ok += 1
                    self.log(
                        f"{cell.dataset} | {cell.poisoner} | {cell.countermeasure} | {cell.victim} | seed {cell.seed}: "
                        f"final {record.final_acc:.2f}%  peak {record.peak_acc:.2f}%  ({record.train_seconds:.1f}s)"
                    )
                except Exception as exc:
                    if self.run.config.fail_fast or not _recoverable(exc):
                        raise
                    failed += 1
                    message = _one_line(exc)
                    self.record_error(cell, ids[cell], message)
                    self.log(f"[red]cell failed[/red] {cell.poisoner} x {cell.countermeasure} x {cell.victim}: {message}")
                bar.advance()
        return ok, failed

    def poison(self, poisoner: Poisoner, train: ImageSet, seed: int) -> tuple[ImageSet, dict[str, Any], float]:
        key = poison_key(poisoner, train.fingerprint(), seed)
        cached = self.poisons.load(key)
        if cached is not None:
            images, facts = cached
            return train.with_images(images, poison=poisoner.name), facts, float(facts.get("seconds", 0.0))
        start = time.perf_counter()
        seed_everything(seed)
        ctx = self.context(seed)
        try:
            output = poisoner.poison(train, ctx)
        except UebError:
            raise
        except Exception as exc:
            raise PoisonerFailure(f"poisoner '{poisoner.name}' raised {type(exc).__name__}: {exc}") from exc
        images, stats = check_poison(train, output, poisoner.budget(), poisoner.sample_wise, f"poisoner '{poisoner.name}'")
        seconds = time.perf_counter() - start
        facts = {**stats, **poisoner.report(), "seconds": seconds, "key": key, "sample_wise": poisoner.sample_wise}
        self.poisons.save(key, images, facts)
        return train.with_images(images, poison=poisoner.name), facts, seconds

    def run_cell(
        self,
        cell: Cell,
        cell_id: str,
        poisoner: Poisoner,
        poisoned: ImageSet,
        facts: dict[str, Any],
        poison_seconds: float,
        splits: Splits,
        transformed: dict[str, tuple[ImageSet, ImageSet]],
    ) -> CellRecord:
        cm: Countermeasure = self._create("countermeasure", cell.countermeasure)
        victim: Victim = self._create("victim", cell.victim)
        ctx = self.context(cell.seed)
        seed_everything(cell.seed)
        if cell.countermeasure not in transformed:  # data-stage work is shared by all victims
            train = cm.transform_train_set(poisoned, ctx)
            test = cm.transform_test_set(splits.test, ctx)
            transformed[cell.countermeasure] = (train, test)
        train, test = transformed[cell.countermeasure]
        seed_everything(cell.seed)
        model = victim.build(splits.train.num_classes, splits.train.image_size, splits.train.channels)
        trainer = Trainer(self.run.profile.training, self.device, cell.seed, self.progress)
        result = cm.fit(model, train, test, trainer, ctx)
        self.save_model(cell, cell_id, model)
        clean = self.clean_reference(cell)
        return CellRecord(
            cell_id=cell_id,
            ordinal=cell.ordinal,
            dataset=cell.dataset,
            poisoner=cell.poisoner,
            countermeasure=cell.countermeasure,
            victim=cell.victim,
            seed=cell.seed,
            poison_fraction=cell.fraction,
            profile=self.run.profile.name,
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
            clean_final_acc=clean[0] if clean else None,
            clean_peak_acc=clean[1] if clean else None,
            iterations=result.iterations,
            poison_seconds=poison_seconds,
            train_seconds=result.seconds,
            poison_facts=facts,
            history=result.history,
            extra=result.extra,
        )

    def save_model(self, cell: Cell, cell_id: str, model: torch.nn.Module) -> None:
        mode = self.run.config.save_models
        if mode == "none" or (mode == "vanilla" and cell.countermeasure != "vanilla"):
            return
        folder = self.run_dir / "models"
        folder.mkdir(exist_ok=True)
        tmp = folder / f"{cell_id}.pt.tmp"
        torch.save({"state_dict": model.state_dict(), "victim": cell.victim, "params": self.run.plugin_params(cell.victim)}, tmp)
        tmp.replace(folder / f"{cell_id}.pt")

    def clean_reference(self, cell: Cell) -> tuple[float, float] | None:
        if cell.poisoner == "clean" or "clean" not in self.run.poisoners:
            return None
        ref = self.store.get(self.cell_id(Cell(0, cell.dataset, "clean", cell.seed, cell.countermeasure, cell.victim)))
        if ref is None or ref.status != "ok" or ref.final_acc is None or ref.peak_acc is None:
            return None
        return ref.final_acc, ref.peak_acc

    def record_error(self, cell: Cell, cell_id: str, message: str) -> None:
        self.store.put(
            CellRecord(
                cell_id=cell_id,
                ordinal=cell.ordinal,
                dataset=cell.dataset,
                poisoner=cell.poisoner,
                countermeasure=cell.countermeasure,
                victim=cell.victim,
                seed=cell.seed,
                poison_fraction=cell.fraction,
                profile=self.run.profile.name,
                status="error",
                error=message,
            )
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


class PoisonerFailure(UebError):
    """A poisoner raised while generating its poison."""


def _recoverable(exc: BaseException) -> bool:
    """Errors that fail one cell; anything like a full disk or Ctrl-C stops the run."""
    if isinstance(exc, KeyboardInterrupt | MemoryError):
        return False
    if isinstance(exc, UebError) and "disk full" in exc.problem:
        return False
    return isinstance(exc, Exception)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, UebError):
        return exc.line()
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}".replace("\n", " ")
