"""The four plugin interfaces: Poisoner, Countermeasure, Victim, Dataset.

Every implementation, built-in or third-party, subclasses one of these and declares:
  * `version`: bump it whenever the plugin's numbers change on purpose (it is part of every
    cache key and every stored result);
  * `Params`: a frozen dataclass of typed parameters (unknown keys are rejected).
The registry gives each instance its registered `name` (one class may be registered under
several names with different default parameters, e.g. DH(C) and DH(S)).

This module does not import torch, so listing plugins stays fast.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ueb.artifacts import ArtifactStore
    from ueb.imageset import ImageSet
    from ueb.profile import Profile
    from ueb.progress import Progress
    from ueb.registry import Registry
    from ueb.training import Trainer


class Plugin(ABC):  # noqa: B024 (abstract per kind below)
    """Common base: a name given by the registry, a version, typed parameters."""

    kind: ClassVar[str] = "plugin"
    version: ClassVar[str] = "1"

    @dataclass(frozen=True)
    class Params:
        pass

    def __init__(self, params: Any = None, name: str | None = None) -> None:
        self.params = params if params is not None else self.Params()
        self.name = name or type(self).__name__.lower()

    def describe(self) -> str:
        return f"{self.kind} {self.name}@{self.version}"


# --------------------------------------------------------------------------- run context


@dataclass
class RunContext:
    """What the framework hands a plugin while a cell runs.

    `artifacts` caches expensive intermediate products (trained surrogates, hiders, semantic
    image banks) by content hash; `progress` shows long work; `registry` lets a plugin build
    another plugin (a surrogate victim, say) by name.
    """

    seed: int
    device: str
    profile: Profile
    artifacts: ArtifactStore
    progress: Progress
    registry: Registry
    data_root: Path | None = None
    log: Callable[[str], None] = print

    def plugin_overrides(self, name: str) -> dict[str, Any]:
        """The profile's scale settings for plugin `name` (e.g. fewer PGD steps on a CPU)."""
        return dict(self.profile.plugins.get(name, {}))


# --------------------------------------------------------------------------- poisoners


Norm = Literal["linf", "l2", "l0", "unbounded"]


@dataclass(frozen=True)
class Budget:
    """A poisoner's threat model, in [0, 1] pixel units (L0: changed pixel positions)."""

    norm: Norm
    eps: float = math.inf

    def describe(self) -> str:
        if self.norm == "unbounded":
            return "unbounded"
        if self.norm == "linf":
            return f"Linf {self.eps * 255:.4g}/255"
        if self.norm == "l0":
            return f"L0 {self.eps:g} px"
        return f"L2 {self.eps:.4g}"


class Poisoner(Plugin):
    """Turns a clean training set into an unlearnable one (labels unchanged)."""

    kind: ClassVar[str] = "poisoner"

    @abstractmethod
    def budget(self) -> Budget:
        """The declared perturbation budget; the framework enforces it after 8-bit rounding."""

    @property
    def sample_wise(self) -> bool:
        """True if perturbations differ between images of one class (checked by the framework)."""
        return True

    @abstractmethod
    def poison(self, train: ImageSet, ctx: RunContext) -> torch.Tensor:
        """Return the poisoned images: float32 in [0, 1] (or uint8), shaped like train.images."""

    def report(self) -> dict[str, Any]:
        """Extra facts to store with the poison (PSNR, which encoder or hider was used, ...)."""
        return {}


# --------------------------------------------------------------------------- training contract


@dataclass
class Batch:
    """One training mini-batch on the device. `x` is float in [0, 1].

    Mixing countermeasures set `y2` and a per-sample weight `lam` (the loss is
    lam * CE(y) + (1 - lam) * CE(y2)); with `y2` None the loss is plain CE(y).
    """

    x: torch.Tensor
    y: torch.Tensor
    y2: torch.Tensor | None = None
    lam: torch.Tensor | None = None

    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        if self.y2 is None or self.lam is None:
            return F.cross_entropy(logits, self.y)
        a = F.cross_entropy(logits, self.y, reduction="none")
        b = F.cross_entropy(logits, self.y2, reduction="none")
        return (self.lam * a + (1 - self.lam) * b).mean()


@dataclass
class StepContext:
    """Where the training loop is, and the generator all in-loop randomness must use."""

    step: int
    total_steps: int
    generator: torch.Generator
    model: nn.Module
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    """Clean test accuracy (in %) at the end and at its best, plus the curve."""

    final_acc: float
    peak_acc: float
    peak_step: int
    iterations: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- countermeasures

Stage = Literal["data", "train", "protocol"]


class Countermeasure(Plugin):
    """What an unauthorised trainer does to learn from protected data anyway.

    One interface serves the three kinds without special cases in the runner:
      * data stage: override `transform_train_set` (and `transform_test_set` if the method
        also changes test inputs);
      * train stage: override `augment` (per batch) and/or `loss` (per step);
      * protocol: override `fit` (e.g. contrastive pre-training plus a linear probe).
    The defaults leave everything as vanilla training does.
    """

    kind: ClassVar[str] = "countermeasure"
    stage: ClassVar[Stage] = "data"

    def transform_train_set(self, train: ImageSet, ctx: RunContext) -> ImageSet:
        return train

    def transform_test_set(self, test: ImageSet, ctx: RunContext) -> ImageSet:
        return test

    def augment(self, batch: Batch, step: StepContext) -> Batch:
        return batch

    def loss(self, model: nn.Module, batch: Batch, step: StepContext) -> torch.Tensor:
        return batch.loss(model(batch.x))

    def fit(
        self, model: nn.Module, train: ImageSet, test: ImageSet, trainer: Trainer, ctx: RunContext
    ) -> TrainResult:
        return trainer.fit(model, train, test, hooks=self)


# --------------------------------------------------------------------------- victims


class Victim(Plugin):
    """An architecture the unauthorised party trains. `build` returns a `ueb.nn.Classifier`."""

    kind: ClassVar[str] = "victim"

    @abstractmethod
    def build(self, num_classes: int, image_size: int, in_channels: int = 3) -> nn.Module:
        """A freshly initialised classifier taking [0, 1] images of the given size."""


# --------------------------------------------------------------------------- datasets


@dataclass
class Splits:
    train: ImageSet
    test: ImageSet
    source: str = ""


class Dataset(Plugin):
    """Loads a train/test split from local files; never downloads."""

    kind: ClassVar[str] = "dataset"

    @abstractmethod
    def load(self, root: Path | None) -> Splits:
        """Read the data (from `root` when the dataset needs files); raise DataError if absent."""
