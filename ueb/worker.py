"""The cell worker: computes poisons and cells from a Plan. One lives in the main process or in
each worker process; it returns records and never writes the store.

A poison is computed once per (poisoner spec, training set, seed, training protocol), checked,
cached with a checksum and shared by every countermeasure and victim. A cached poison is checked
again when loaded (shape, range, budget, sample-wise claim); one that fails is recomputed, never
used.
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ueb import identity
from ueb.artifacts import ArtifactStore
from ueb.errors import DataError, PluginError, UebError
from ueb.imageset import ImageSet
from ueb.integrity import check_poison
from ueb.interfaces import Countermeasure, Poisoner, RunContext, Splits, Victim
from ueb.numerics import apply_numerics, machine_record
from ueb.params import as_dict
from ueb.plan import Cell, Plan, Spec
from ueb.plan_specs import SpecResolver, instantiate
from ueb.poison_cache import PoisonCache
from ueb.policy import error_record, one_line, recoverable
from ueb.progress import Progress, silent
from ueb.registry import Registry
from ueb.splits import load_splits
from ueb.store import CellRecord
from ueb.training import Trainer
from ueb.trainings import SharedTraining, TrainingIndex

# Countermeasure methods that act inside training or on test inputs: a countermeasure that
# overrides one of them enters its trainings' identity; one that only transforms the training
# set is named by the bytes it produced.
# The hooks through which a countermeasure acts on a training beyond the bytes of its data:
# a cell whose countermeasure overrides one of them trains under its own key. A test-time
# transform (`transform_test_set`) counts only where it changed the test set: one that returned
# its input (ISS without `test_too`) leaves the test bytes, and so the probe's inputs, as they
# were.
TRAINING_HOOKS = ("augment", "loss", "fit")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _stderr(message: str) -> None:
    import sys

    print(f"warning: {message.removeprefix('warning: ')}", file=sys.stderr)


def mix_poison(clean: ImageSet, poisoned: ImageSet, fraction: float, seed: int) -> ImageSet:
    """Poison a seeded, fixed subset of `fraction` of the images; keep the rest clean."""
    if fraction >= 1.0:
        return poisoned
    n = len(clean)
    chosen = torch.randperm(n, generator=torch.Generator().manual_seed(10_007 + seed))[
        : round(fraction * n)
    ]
    images = clean.uint8().clone()
    images[chosen] = poisoned.uint8()[chosen]
    return poisoned.with_images(images, poison_fraction=fraction)


def on_grid(images: ImageSet) -> ImageSet:
    """Float images that lie exactly on the 8-bit grid as uint8: the trainer computes the very
    same floats from them, and equal images get equal bytes, so a data stage that changed
    nothing (a 0.1-sigma blur, grayscale of grey images) shares vanilla's training."""
    if images.images.dtype != torch.uint8:
        grid = images.uint8()
        if torch.equal(grid.float().div_(255.0), images.images):
            return images.with_images(grid)
    return images


class PoisonerFailure(UebError):
    """A poisoner raised while generating its poison."""


@dataclass(frozen=True)
class Job:
    """What a worker needs (picklable, sent to every worker process)."""

    plan: Plan
    run_dir: str
    cache_root: str
    device: str
    environment: Mapping[str, str] = field(default_factory=dict)  # git, torch, device name


@dataclass
class Poisoned:
    poisoner: Poisoner
    images: ImageSet
    facts: dict[str, Any]
    seconds: float


class CellWorker:
    def __init__(
        self,
        job: Job,
        registry: Registry,
        progress: Progress | None = None,
        log: Callable[[str], None] = print,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        """`log` gets chatter; `warn` what must be seen even under --quiet (a damaged cache
        entry, waiting for another process): stderr unless the caller routes it."""
        self.job = job
        self.plan = job.plan
        self.registry = registry
        self.device = job.device
        self.progress = progress or silent()
        self.log = log
        self.warn = warn or _stderr
        apply_numerics(self.plan.numerics)
        self.artifacts = ArtifactStore(
            Path(job.cache_root), log=self.warn, numerics=self.plan.numerics.identity()
        )
        self.poisons = PoisonCache(self.artifacts.root / "poisons", log=self.warn)
        self.trainings = TrainingIndex(self.artifacts.root / "trainings", log=self.warn)
        self._poison_memo: tuple[tuple[str, str, int], Poisoned] | None = None
        self._data_stage_memo: tuple[tuple[Any, ...], tuple[ImageSet, ImageSet, bool]] | None = None

    # -- plugins ---------------------------------------------------------------------------

    def create(self, spec: Spec) -> Any:
        """The plugin of `spec`, with exactly the spec's typed parameters."""
        return instantiate(self.registry, spec)

    def provider(
        self, owner: Spec, dataset: str | None = None
    ) -> Callable[[str, str, Mapping[str, Any] | None], Any]:
        """Builds the plugins `owner` declared in requires(), and only those; plus, for a cell,
        the cell's own dataset (already part of the cell's identity), e.g. for a purifier that
        trains on its clean test split."""

        def provide(kind: str, name: str, params: Mapping[str, Any] | None = None) -> Any:
            if kind == "dataset" and name == dataset and not params:
                return self.create(self.plan.spec("dataset", name))
            resolver = SpecResolver(self.registry, self.plan.profile)
            wanted = dict(resolver.spec_with(kind, name, name, dict(params or {})).params)
            for req in owner.requires:
                if req.kind == kind and req.name == name and dict(req.params) == wanted:
                    return self.create(req)
            raise PluginError(
                f"{owner.kind} '{owner.name}' asked for {kind} '{name}' with {dict(params or {})}, which its requires() does not declare",
                "declare every plugin it builds in requires() (so that it enters the cache keys)",
            )

        return provide

    def context(self, seed: int, owner: Spec, dataset: str | None = None) -> RunContext:
        root = self.plan.config.data_root
        return RunContext(
            seed=seed,
            device=self.device,
            artifacts=self.artifacts,
            progress=self.progress,
            training=self.plan.profile.training,
            data_root=Path(root) if root else None,
            log=self.log,
            provider=self.provider(owner, dataset),
        )

    def dataset(self, name: str) -> Splits:
        spec = self.plan.spec("dataset", name)
        splits = load_splits(
            self.create(spec),
            _dataset_digest(spec),
            self.plan.config.data_root,
            self.plan.profile.data,
        )
        found = f"{splits.train.fingerprint()}/{splits.test.fingerprint()}"
        if found != spec.fingerprint:
            raise DataError(
                f"dataset '{name}' changed on disk since the run was planned (fingerprint {found} != {spec.fingerprint})",
                "re-run the command so that the new data gets its own cells",
            )
        return splits

    # -- poisons ---------------------------------------------------------------------------

    def poisoned(self, dataset: str, poisoner_name: str, seed: int) -> Poisoned:
        """The checked, cached poison of one group (kept in memory for the group's cells)."""
        group = (dataset, poisoner_name, seed)
        if self._poison_memo is not None and self._poison_memo[0] == group:
            return self._poison_memo[1]
        self._poison_memo = self._data_stage_memo = None
        train = self.dataset(dataset).train
        spec = self.plan.spec("poisoner", poisoner_name)
        poisoner: Poisoner = self.create(spec)
        key = self.plan.poison_key(dataset, poisoner_name, seed)
        result = self._cached(poisoner, train, key) or self._compute(
            poisoner, spec, train, key, seed
        )
        self._poison_memo = (group, result)
        return result

    def _cached(self, poisoner: Poisoner, train: ImageSet, key: str) -> Poisoned | None:
        cached = self.poisons.load(
            key, verify=lambda images: self._recheck(poisoner, train, images)
        )
        if cached is None:
            return None
        images, facts = cached
        return Poisoned(
            poisoner,
            train.with_images(images, poison=poisoner.name),
            facts,
            float(facts.get("seconds", 0.0)),
        )

    def _recheck(self, poisoner: Poisoner, train: ImageSet, images: torch.Tensor) -> None:
        check_poison(
            train,
            images,
            poisoner.budget(),
            poisoner.sample_wise,
            f"cached poison of '{poisoner.name}'",
        )

    def _compute(
        self, poisoner: Poisoner, spec: Spec, train: ImageSet, key: str, seed: int
    ) -> Poisoned:
        start = time.perf_counter()
        seed_everything(seed)
        try:
            output = poisoner.poison(train, self.context(seed, spec))
        except UebError:
            raise
        except Exception as exc:
            if not recoverable(exc):
                raise
            raise PoisonerFailure(
                f"poisoner '{poisoner.name}' raised {type(exc).__name__}: {exc}"
            ) from exc
        images, stats = check_poison(
            train, output, poisoner.budget(), poisoner.sample_wise, f"poisoner '{poisoner.name}'"
        )
        seconds = time.perf_counter() - start
        try:
            report = dict(poisoner.report())
        except Exception as exc:
            raise PoisonerFailure(
                f"poisoner '{poisoner.name}'.report() raised {type(exc).__name__}: {exc}"
            ) from exc
        facts = {
            **stats,
            **report,
            "seconds": seconds,
            "key": key,
            "sample_wise": poisoner.sample_wise,
            "spec": spec.digest,
        }
        self.poisons.save(key, images, facts)
        return Poisoned(poisoner, train.with_images(images, poison=poisoner.name), facts, seconds)

    # -- cells -----------------------------------------------------------------------------

    def run_cell(self, cell: Cell) -> CellRecord:
        poisoned = self.poisoned(*cell.group)
        splits = self.dataset(cell.dataset)
        cm_spec = self.plan.spec("countermeasure", cell.countermeasure)
        cm: Countermeasure = self.create(cm_spec)
        victim: Victim = self.create(self.plan.spec("victim", cell.victim))
        ctx = self.context(cell.seed, cm_spec, cell.dataset)
        memo_key = (cell.group, cell.seed, cell.fraction, cell.countermeasure)
        if (
            self._data_stage_memo is None or self._data_stage_memo[0] != memo_key
        ):  # shared by all victims
            seed_everything(cell.seed)
            mixed = mix_poison(splits.train, poisoned.images, cell.fraction, cell.poison_seed_used)
            transformed = cm.transform_test_set(splits.test, ctx)
            self._data_stage_memo = (
                memo_key,
                (
                    on_grid(cm.transform_train_set(mixed, ctx)),
                    on_grid(transformed),
                    transformed is not splits.test,
                ),
            )
        train, test, test_transformed = self._data_stage_memo[1]
        key = self.training_key(cell, cm, cm_spec, train, test, test_transformed)
        wants_model = self.wants_model(cell)
        with self.trainings.claim(key, f"{cell.poisoner} x {cell.countermeasure}") as slot:
            shared = slot.shared
            if shared is not None and wants_model and not shared.has_model:
                shared = None  # its model was not kept: train again (same numbers) to save it
            if shared is None:
                seed_everything(cell.seed)
                model = victim.build(
                    splits.train.num_classes, splits.train.image_size, splits.train.channels
                )
                trainer = Trainer(self.plan.profile.training, self.device, cell.seed, self.progress)
                result = cm.fit(model, train, test, trainer, ctx)
                probe = self.probe(
                    poisoned, splits, model, cell, train, lambda s: cm.transform_test_set(s, ctx)
                )
                slot.save(
                    SharedTraining(result, probe, cell.id, self.job.run_dir),
                    model.state_dict() if wants_model else None,
                )
                self.save_model(cell, model.state_dict(), victim)
                training_from = None
            else:
                result, probe = shared.result, shared.probe
                if wants_model:
                    state = self.trainings.load_model(key)
                    if state is not None:
                        self.save_model(cell, state, victim)
                training_from = shared.source_cell
        env = self.job.environment
        return replace(
            error_record(self.plan, cell, None),
            poisoner_version=type(poisoned.poisoner).version,
            countermeasure_version=type(cm).version,
            victim_version=type(victim).version,
            poisoner_params=as_dict(poisoned.poisoner.params),
            countermeasure_params=as_dict(cm.params),
            victim_params=as_dict(victim.params),
            status="ok",
            error=None,
            final_acc=result.final_acc,
            peak_acc=result.peak_acc,
            peak_step=result.peak_step,
            iterations=result.iterations,
            poison_seconds=poisoned.seconds,
            train_seconds=result.seconds,
            poison_facts=poisoned.facts,
            history=result.history,
            extra={
                **result.extra,
                "train_set": {k: v for k, v in train.meta.items() if k != "poison"},
                "training_key": key,
                **({"training_from": training_from} if training_from else {}),
                "numerics": self.plan.numerics.describe(),
            },
            probe=probe,
            git=env.get("git", ""),
            torch=env.get("torch", ""),
            device=machine_record(self.device),
        )

    def training_key(
        self,
        cell: Cell,
        cm: Countermeasure,
        cm_spec: Spec,
        train: ImageSet,
        test: ImageSet,
        test_transformed: bool = True,
    ) -> str:
        """The identity of this cell's victim training (ueb.identity.training_identity).
        `test_transformed`: whether the countermeasure's `transform_test_set` changed the test
        set (it then also acts on the probe's inputs, which the test bytes do not name)."""
        overrides_test = type(cm).transform_test_set is not Countermeasure.transform_test_set
        acts_in_training = (overrides_test and test_transformed) or any(
            getattr(type(cm), hook) is not getattr(Countermeasure, hook) for hook in TRAINING_HOOKS
        )
        return identity.training_identity(
            poison_key=cell.poison_key,
            fraction=cell.fraction,
            train_fingerprint=train.fingerprint(),
            test_fingerprint=test.fingerprint(),
            victim=self.plan.spec("victim", cell.victim).identity(),
            hooks=cm_spec.identity() if acts_in_training else None,
            computation=self.plan.computation,
            seed=cell.seed,
        )

    def wants_model(self, cell: Cell) -> bool:
        mode = self.plan.config.save_models
        return mode == "all" or (mode == "baseline" and cell.countermeasure == self.plan.baseline)

    def probe(
        self,
        poisoned: Poisoned,
        splits: Splits,
        model: torch.nn.Module,
        cell: Cell,
        trained_on: ImageSet,
        test_inputs: Callable[[ImageSet], ImageSet],
    ) -> dict[str, Any]:
        """The shortcut probe for a class-wise poisoner's cell ({} for clean and sample-wise ones):
        does the trained victim follow class k's perturbation on clean test images? Probe images
        reach the victim as its test images do (`test_inputs`), and its training accuracy is
        taken on the set it trained on (`trained_on`, after any data-stage countermeasure)."""
        if (
            poisoned.poisoner.sample_wise
            or cell.poisoner == self.plan.reference
            or cell.fraction < 1.0
        ):
            return {}
        if not bool((poisoned.images.uint8() != splits.train.uint8()).any()):
            return {}
        from ueb.probe import shortcut_probe

        return shortcut_probe(
            model,
            splits.train,
            poisoned.images,
            splits.test,
            device=self.device,
            seed=cell.seed,
            trained_on=trained_on,
            test_inputs=test_inputs,
        )

    def run_cell_safe(self, cell: Cell) -> tuple[CellRecord, BaseException | None]:
        """run_cell, with a recoverable failure turned into an error record; a fatal one is
        returned beside its record so that the caller stores the record, then stops."""
        try:
            return self.run_cell(cell), None
        except Exception as exc:
            record = error_record(self.plan, cell, one_line(exc))
            record.extra = {"traceback": "".join(traceback.format_exception(exc))}
            return record, (None if recoverable(exc) else exc)

    def save_model(self, cell: Cell, state: dict[str, Any], victim: Victim) -> None:
        from ueb.atomic import save_torch

        if not self.wants_model(cell):
            return
        folder = Path(self.job.run_dir) / "models"
        blob = {
            "state_dict": state,
            "victim": cell.victim,
            "params": as_dict(victim.params),
            "version": type(victim).version,
        }
        save_torch(blob, folder / f"{cell.id}.pt", what="a trained victim")


def _dataset_digest(spec: Spec) -> str:
    from ueb import identity

    return identity.digest(spec.target.rpartition(":")[2], spec.version, dict(spec.params))


__all__ = ["CellWorker", "Job", "Poisoned", "PoisonerFailure", "mix_poison", "seed_everything"]
