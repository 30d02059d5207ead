"""Resumable expensive work: EM and REM resume an interrupted noise search from their checkpoint
to the very bytes of an uninterrupted search, and AVATAR's trained DDPM, once in the artifact
store, is loaded by a later run instead of trained again, purifying to the same images."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from ueb.artifacts import ArtifactStore
from ueb.interfaces import RunContext, Splits, Victim
from ueb.nn import Classifier
from ueb.profile import load_profile
from ueb.progress import silent
from ueb.registry import Entry, Registry, get_registry, registry_provider
from ueb.testing import make_imageset


class TinyNet(Victim):
    """A surrogate small enough for a search of a few rounds in a second (BatchNorm included,
    so the checkpoint must carry running statistics too)."""

    version = "1"

    @dataclass(frozen=True)
    class Params:
        width: int = 8

    def build(self, num_classes: int, image_size: int, in_channels: int = 3) -> nn.Module:
        w = self.params.width
        body = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        return Classifier(body, w, num_classes)


class Killed(Exception):
    """Stands in for a kill: raised from the progress display, inside the search loop."""


class RecordingProgress:
    """A progress display that records each task and its advances, and raises Killed once
    `kill_after` units have advanced in all (None: never)."""

    def __init__(self, kill_after: int | None = None) -> None:
        self.kill_after = kill_after
        self.tasks: list[tuple[str, list[float]]] = []

    @contextlib.contextmanager
    def task(self, description: str, total: Any = None) -> Iterator[Any]:
        advances: list[float] = []
        self.tasks.append((description, advances))
        outer = self

        class _Task:
            def advance(self, n: float = 1) -> None:
                advances.append(n)
                done = sum(sum(a) for _, a in outer.tasks)
                if outer.kill_after is not None and done >= outer.kill_after:
                    raise Killed()

            def update(self, **fields: Any) -> None:
                pass

        yield _Task()


@pytest.fixture(scope="module")
def registry() -> Registry:
    reg = Registry()
    reg.entries["victim"]["tiny"] = Entry("victim", "tiny", TinyNet, "test surrogate", "t", "t")
    return reg


def context(registry: Registry, root: Path, progress: Any = None) -> RunContext:
    return RunContext(
        seed=3,
        device="cpu",
        training=load_profile("smoke").training,
        artifacts=ArtifactStore(root),
        progress=progress or silent(),
        provider=registry_provider(registry),
    )


# 24 images: a search's training batches do not line up with passes over the data, so a
# resume that lost its place in the batch stream would train on other batches.
DATA = {"per_class": 6, "num_classes": 4, "size": 8, "seed": 2}
SEARCHES = {
    # stop_error 0: every round of max_rounds runs; kill in round 2 (round 1 is checkpointed)
    "em": ({"surrogate": "tiny", "max_rounds": 3, "steps": 2, "batch_size": 16,
            "train_steps": 3, "stop_error": 0.0}, 2),
    # class-wise: a 16-image subset in two update batches, so their shuffled order matters
    "em-class": ({"surrogate": "tiny", "max_rounds": 3, "batch_size": 8, "train_steps": 2,
                  "class_subset": 0.75, "stop_error": 0.0}, 2),
    # a checkpoint every 2 of 4 surrogate steps; kill at step 3
    "rem": ({"surrogate": "tiny", "train_steps": 4, "checkpoint_every": 2, "batch_size": 16,
             "samples": 2, "steps": 2, "atk_steps": 1}, 3),
}  # fmt: skip


# REM once rebuilt its surrogate in train mode on resume (the uninterrupted search has it in
# eval mode after every step), so BatchNorm gave other noise: "rem" is the regression test.
@pytest.mark.parametrize("name", ["em", "em-class", "rem"])
def test_an_interrupted_search_resumes_to_the_bytes_of_an_uninterrupted_one(
    name, registry, tmp_path
):
    params, kill_after = SEARCHES[name]
    data = make_imageset(**DATA)
    straight = registry.create("poisoner", name, params).poison(
        data, context(registry, tmp_path / "straight")
    )

    root = tmp_path / "interrupted"
    with pytest.raises(Killed):
        registry.create("poisoner", name, params).poison(
            data, context(registry, root, RecordingProgress(kill_after))
        )
    checkpoints = list(root.rglob("checkpoints/state.pt"))
    assert len(checkpoints) == 1 and not list(root.rglob("tensor.pt"))

    resumed = RecordingProgress()
    out = registry.create("poisoner", name, params).poison(data, context(registry, root, resumed))
    # the search started where the checkpoint left it (one round, two steps), not from scratch
    first_description, first_advances = resumed.tasks[0]
    assert first_advances[0] == kill_after - 1, (first_description, first_advances)
    assert out.dtype == straight.dtype and out.shape == straight.shape
    assert out.numpy().tobytes() == straight.numpy().tobytes()


class CleanSource:
    """The dataset AVATAR takes its clean images from (its test split trains the DDPM)."""

    def load(self, root: Any) -> Splits:
        return Splits(
            make_imageset(per_class=8, num_classes=4, size=16, seed=0),
            make_imageset(per_class=4, num_classes=4, size=16, seed=5),
        )


def avatar_context(root: Path, progress: RecordingProgress) -> RunContext:
    def provide(kind: str, name: str, params: Any = None) -> Any:
        assert (kind, name) == ("dataset", "synthetic"), (kind, name)
        return CleanSource()

    base = context(get_registry(), root, progress)
    return dataclasses.replace(base, provider=provide)


AVATAR = {
    "t_star": 10, "reverse_steps": 2, "train_steps": 3, "train_batch_size": 8, "channels": [8, 16],
    "layers_per_block": 1, "attention_levels": [], "warmup_steps": 1, "clean_source": "synthetic",
}  # fmt: skip


def _training_tasks(progress: RecordingProgress) -> list[list[float]]:
    return [advances for what, advances in progress.tasks if "training DDPM" in what]


def test_avatar_loads_its_trained_ddpm_on_a_later_run_and_purifies_alike(tmp_path):
    poisoned = make_imageset(per_class=4, num_classes=4, size=16, seed=9)
    first = RecordingProgress()
    cm = get_registry().create("countermeasure", "avatar", AVATAR)
    purified = cm.transform_train_set(poisoned, avatar_context(tmp_path / "cache", first))
    assert [sum(a) for a in _training_tasks(first)] == [AVATAR["train_steps"]]
    weights = next((tmp_path / "cache").rglob("diffusion_pytorch_model.safetensors"))
    written = weights.stat().st_mtime_ns

    # a later run: a new countermeasure and a new store object on the same cache folder
    later = RecordingProgress()
    again = get_registry().create("countermeasure", "avatar", AVATAR)
    repurified = again.transform_train_set(poisoned, avatar_context(tmp_path / "cache", later))
    assert _training_tasks(later) == []  # loaded, not trained
    assert [what for what, _ in later.tasks] == [what for what, _ in first.tasks][-1:]
    assert weights.stat().st_mtime_ns == written
    assert again.model_source == cm.model_source
    assert torch.equal(repurified.images, purified.images)
    assert not torch.equal(purified.images, poisoned.images)  # it did purify
