"""The four plugin interfaces: Poisoner, Countermeasure, Victim, Dataset.

Every implementation, built-in or third-party, subclasses one of these and declares:
  * `version`: bump it whenever the plugin's numbers change on purpose (it is part of every
    cache key and every stored result);
  * `Params`: a frozen dataclass of typed parameters (unknown keys are rejected).
The registry gives each instance its registered `name` (one class may be registered under
several names with different default parameters, e.g. DH(C) and DH(S)).

The interfaces are generic over the Params type, so that `self.params` is typed in a plugin
that names it (`class Blur(Countermeasure["Blur.Params"])`, or a module-level dataclass); a
plain `class Blur(Countermeasure)` works as before, its `self.params` typed `Any`.

This module does not import torch, so listing plugins stays fast.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, Protocol, TypeVar, cast

if TYPE_CHECKING:
    import contextlib
    from collections.abc import Iterator

    import torch
    from torch import nn

    from ueb.artifacts import ArtifactStore
    from ueb.imageset import ImageSet
    from ueb.profile import TrainingConfig
    from ueb.progress import Progress

# The training loop's data types live beside nothing else (ueb.training_types), so the Trainer
# needs no import of this module; they are part of the plugin contract and re-exported here.
from ueb.training_types import Batch, StepContext, TrainResult  # noqa: E402


@dataclass(frozen=True)
class Requirement:
    """Another plugin this one builds while it runs (a surrogate victim, a source dataset).

    Declared by `Plugin.requires()` so that the plan can resolve it into a spec (version and
    typed parameters) whose digest enters this plugin's cache keys; `RunContext.plugin` only
    builds declared requirements.
    """

    kind: str
    name: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NoParams:
    """The Params of a plugin that takes none."""


# The frozen dataclass a plugin's `Params` is; `Any` where a subclass does not name it.
P = TypeVar("P")


class Plugin(ABC, Generic[P]):  # noqa: B024 (abstract per kind below)
    """Common base: a name given by the registry, a version, typed parameters.

    `Params` is the plugin's frozen dataclass of parameters (a nested class or an assigned
    module-level one); `params` is an instance of it. `presets` are scale settings a plugin
    ships for the profiles (`{"smoke": {...}, "quick": {...}, "paper": {...}}`); they sit
    under the profile's `[plugins.NAME]` table and the user's parameters, so a plugin gets
    CPU-scale settings without editing a profile.
    """

    kind: ClassVar[str] = "plugin"
    version: ClassVar[str] = "1"
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    Params: ClassVar[type[Any]] = NoParams
    params: P

    def __init__(self, params: P | None = None, name: str | None = None) -> None:
        self.params = params if params is not None else cast(P, self.Params())
        self.name = name or type(self).__name__.lower()

    def describe(self) -> str:
        return f"{self.kind} {self.name}@{self.version}"

    def requires(self) -> list[Requirement]:
        """Plugins this one builds through `ctx.plugin` (resolved and hashed by the plan)."""
        return []

    def bind(self, training: TrainingConfig) -> P:
        """This plugin's Params with settings that depend on the run filled in.

        The plan calls it once; what it returns is what is hashed, stored and printed. A
        plugin whose parameter means "the run's value" (say `extractor_iterations=0`: as long
        as the victim's training) returns Params with the real number.
        """
        return self.params

    def input_identity(self) -> Mapping[str, Any]:
        """What local files this plugin reads say about themselves (sizes, dates, hashes), so
        that files replaced in place under the same path change the cache keys. JSON-able."""
        return {}

    def preflight(self) -> None:  # noqa: B027 (optional hook; most plugins need none)
        """Check local inputs (files, folders) before any work; raise ConfigError."""


# --------------------------------------------------------------------------- run context


PluginProvider = Callable[[str, str, "Mapping[str, Any] | None"], Any]


@dataclass
class RunContext:
    """What the framework hands a plugin while it runs, and nothing else.

    Every input here is part of the keys of what the plugin produces: `seed`, `training` (the
    run's victim-training protocol) and the specs of the plugins it `requires()`. `artifacts`
    caches expensive intermediate products (trained surrogates, hiders, semantic image banks)
    by recipe; `progress` shows long work. `device`, `data_root` and `log` say where, not what.
    """

    seed: int
    device: str
    artifacts: ArtifactStore
    progress: Progress
    training: TrainingConfig
    data_root: Path | None = None
    log: Callable[[str], None] = print
    provider: PluginProvider | None = None

    def plugin(self, kind: str, name: str, params: Mapping[str, Any] | None = None) -> Any:
        """An instance of another plugin the caller declared in `requires()`."""
        if self.provider is None:
            from ueb.errors import PluginError

            raise PluginError(
                f"no plugin provider in this context (asked for {kind} '{name}')",
                "build the context with provider=...",
            )
        return self.provider(kind, name, params)


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


class Poisoner(Plugin[P]):
    """Turns a clean training set into an unlearnable one (labels unchanged)."""

    kind: ClassVar[str] = "poisoner"
    # True only when the method has no randomness (a fixed published pattern, a deterministic
    # search, the clean reference): its poison may be the same for every seed. Every other
    # poisoner draws all its randomness from `ctx.seed`, so the spread over seeds samples the
    # poison too; the conformance kit checks that two seeds give two poisons.
    deterministic: ClassVar[bool] = False

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


class Fitter(Protocol):
    """What `Countermeasure.fit` receives: ueb.training.Trainer, configured for the run (its
    protocol, device and seed). A protocol needing only whole trainings calls `fit`; one that
    writes its own loop uses the building blocks (`prepare_model`, `optimizer`, `batches`,
    `autocast`, `evaluate`). Declared here as a protocol because the interfaces sit upstream
    of the training loop (ueb.training imports none of them)."""

    cfg: TrainingConfig
    device: torch.device
    seed: int

    def fit(
        self,
        model: nn.Module,
        train: ImageSet,
        test: ImageSet,
        hooks: Any = None,
        description: str = "training",
    ) -> TrainResult: ...

    def prepare_model(self, model: nn.Module) -> nn.Module: ...

    def optimizer(
        self, params: list[torch.nn.Parameter] | object
    ) -> tuple[torch.optim.Optimizer, object]: ...

    def batches(self, n: int, gen: torch.Generator) -> Iterator[torch.Tensor]: ...

    def autocast(self) -> contextlib.AbstractContextManager[None]: ...

    def evaluate(self, model: nn.Module, test: ImageSet) -> float: ...

    def protocol(self) -> dict[str, Any]: ...


# --------------------------------------------------------------------------- countermeasures

Stage = Literal["data", "train", "protocol"]


@dataclass(frozen=True)
class ThreatModel:
    """What a countermeasure assumes the defender has, so tables never mix tracks silently.

    clean_data: it uses clean (unpoisoned) images or labels beyond the poisoned training set;
    pretrained: it uses a model trained outside the poisoned set (a purifier's checkpoint,
    CLIP); test_time: it also transforms test inputs.
    """

    clean_data: bool = False
    pretrained: bool = False
    test_time: bool = False

    def tags(self) -> list[str]:
        """Short labels of the assumptions that hold (empty: the plain track)."""
        names = {"clean_data": "clean data", "pretrained": "pretrained", "test_time": "test-time"}
        return [label for key, label in names.items() if getattr(self, key)]


class Countermeasure(Plugin[P]):
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
    threat: ClassVar[ThreatModel] = ThreatModel()

    def cost(self) -> float:
        """Roughly how many plain trainings one cell costs (adversarial training with k PGD
        steps: k + 1). Scheduling (longest first) and the ETA only; never part of an identity."""
        return 2.0 if self.stage == "protocol" else 1.0

    def transform_train_set(self, train: ImageSet, ctx: RunContext) -> ImageSet:
        return train

    def transform_test_set(self, test: ImageSet, ctx: RunContext) -> ImageSet:
        return test

    def augment(self, batch: Batch, step: StepContext) -> Batch:
        return batch

    def loss(self, model: nn.Module, batch: Batch, step: StepContext) -> torch.Tensor:
        return batch.loss(model(batch.x))

    def fit(
        self, model: nn.Module, train: ImageSet, test: ImageSet, trainer: Fitter, ctx: RunContext
    ) -> TrainResult:
        return trainer.fit(model, train, test, hooks=self)


# --------------------------------------------------------------------------- victims


class Victim(Plugin[P]):
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


class Dataset(Plugin[P]):
    """Loads a train/test split from local files; never downloads."""

    kind: ClassVar[str] = "dataset"

    @abstractmethod
    def load(self, root: Path | None) -> Splits:
        """Read the data (from `root` when the dataset needs files); raise DataError if absent."""


# --------------------------------------------------------------------------- detectors


@dataclass(frozen=True)
class Detection:
    """What a detector says about one training set.

    `scores` holds one finite float per image, in the set's order (numpy, shape (N,)): higher
    means more likely poisoned. The set-level verdict is `poisoned`, decided by comparing
    `set_score` with `threshold` the way the method does; `extra` carries JSON-able facts (the
    validation accuracy, the number of filtering rounds, ...).
    """

    scores: Any
    set_score: float
    threshold: float
    poisoned: bool
    extra: Mapping[str, Any] = field(default_factory=dict)


class Detector(Plugin[P]):
    """Says whether a training set (fully, partly or not poisoned) holds unlearnable examples.

    `detect` returns a score per image and a verdict per set. It may train models (draw all
    randomness from `ctx.seed`) and build the plugins it declares in `requires()`.
    """

    kind: ClassVar[str] = "detector"

    @abstractmethod
    def detect(self, train: ImageSet, ctx: RunContext) -> Detection:
        """Score every image of `train` and decide whether the set is poisoned."""
