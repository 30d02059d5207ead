"""A countermeasure's official training recipe, run on ueb's trainer.

`recipe = "shared"` trains the victim with the run's protocol (the profile's `[training]`), as
every other countermeasure does; `recipe = "official"` replaces the protocol with the settings
of the method's official training script: its epochs, batch size, SGD settings and step
schedule. The trainer counts iterations, so an epoch is one pass of the trainer's batches: it
draws a fresh permutation per epoch and drops the last partial batch, so an epoch of n images
at batch b is n // b iterations (390 on CIFAR-10 at batch 128), and a learning-rate decay at
epoch e is a milestone at e * (n // b).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from torch import nn

    from ueb.imageset import ImageSet
    from ueb.interfaces import Fitter, RunContext, TrainResult
    from ueb.profile import TrainingConfig

Recipe = Literal["shared", "official"]


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Trainer iterations in one epoch of `n` images (the batch is capped at n, as the trainer does)."""
    return max(1, n // min(batch_size, n))


@dataclass(frozen=True)
class EpochRecipe:
    """An official script's SGD recipe, counted in epochs."""

    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    gamma: float = 0.1  # the learning rate's factor at each decay
    crop_padding: int = 4  # the trainer's own random crop (0: none) and flip
    flip: bool = True

    def training(
        self, cfg: TrainingConfig, n: int, epochs: int, decay_epochs: tuple[int, ...]
    ) -> TrainingConfig:
        """`cfg` with this recipe's protocol for `epochs` epochs of `n` images; the run's
        evaluation, precision and kernel settings stay."""
        per_epoch = steps_per_epoch(n, self.batch_size)
        return replace(
            cfg,
            iterations=epochs * per_epoch,
            batch_size=self.batch_size,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            nesterov=False,
            schedule="step",
            milestones=tuple(max(1, e * per_epoch) for e in decay_epochs),
            gamma=self.gamma,
            crop_padding=self.crop_padding,
            flip=self.flip,
            grad_clip=0.0,
        )


def fit_by_recipe(
    recipe: Recipe,
    official: TrainingConfig,
    model: nn.Module,
    train: ImageSet,
    test: ImageSet,
    trainer: Fitter,
    ctx: RunContext,
    hooks: Any,
    official_hooks: Any,
    name: str,
) -> TrainResult:
    """`shared`: the run's trainer with `hooks`; `official`: a Trainer of its own under
    `official` (the run's device and seed) with `official_hooks`."""
    if recipe == "shared":
        return trainer.fit(model, train, test, hooks=hooks)
    from ueb.training import Trainer

    own = Trainer(official, trainer.device, trainer.seed, ctx.progress)
    return own.fit(model, train, test, hooks=official_hooks, description=f"{name}: official recipe")


def recipe_facts(recipe: Recipe, epochs: int, n: int, batch_size: int) -> dict[str, Any]:
    """What the TrainResult's `extra` records about the recipe that ran."""
    if recipe == "shared":
        return {"recipe": "shared"}
    return {
        "recipe": "official",
        "recipe_epochs": epochs,
        "recipe_steps_per_epoch": steps_per_epoch(n, batch_size),
    }
