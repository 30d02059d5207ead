"""UEraser: adversarial (loss-maximising) augmentations against unlearnable examples.

Method: Qin et al. 2023, "Learning the unlearnable: adversarial augmentations suppress
unlearnable example attacks" (arXiv 2303.15127, ICCV 2023 AROW workshop). Settings from the
official repository (lafeat/ueraser, `ueraser.py` and `LSP/cifar_train.py`):

* augmentation policy, applied after the usual crop and flip, all from kornia:
  RandomPlasmaBrightness(roughness 0.3..0.7, intensity 0.5..1.0, p 0.5),
  RandomPlasmaContrast(roughness 0.3..0.7, p 0.5), RandomChannelShuffle(p 0.5) and kornia's
  TrivialAugment (one operation per call, magnitude drawn per image);
* error-maximising augmentation: K = 5 augmented copies of every image, the loss of each
  image is the largest of its K losses, averaged over the batch;
* levels, as the official training script's modes define them:
  `lite` ("fast"): one augmented copy throughout (no loss maximisation);
  `standard`: K copies for the first `adversarial_fraction` of the iterations, then one
  augmented copy (the augmentation stays on, as in the official code); the official CIFAR-10
  training code (`LSP/cifar_train.py`, `EM/QuickStart.ipynb`) runs 200 epochs with K copies
  while `epoch < 50`: 0.25 of the run (the README's usage snippet says 60 of 200);
  `max` ("em"): K copies for the whole run;
* recipe: `shared` trains under the run's protocol; `official` under `LSP/cifar_train.py`'s:
  `epochs` epochs (`--epoch 200`) at batch 128 (`--batchsize`), SGD lr 0.01 (`--lr`),
  momentum 0.9, weight decay 5e-4, the rate divided by 10 from the first epoch >= 0.5 E and by
  100 from the first >= 0.75 E (`util.adjust_learning_rate`), crop (padding 4) and flip, no
  gradient clipping. The adversarial phase is the first `adversarial_fraction` of that run
  (epochs 0-49 of 200). Stage: protocol, since the official recipe replaces the protocol.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ueb.imageset import ImageSet
from ueb.interfaces import (
    Batch,
    Countermeasure,
    Fitter,
    RunContext,
    Stage,
    StepContext,
    TrainResult,
)
from ueb.params import bounded
from ueb.profile import TrainingConfig

from ._recipe import EpochRecipe, Recipe, fit_by_recipe, recipe_facts
from ._rng import global_rng_from

Level = Literal["lite", "standard", "max"]

# LSP/cifar_train.py: --batchsize 128, --lr 0.01, SGD(momentum=0.9, weight_decay=5e-4), the
# trainer's RandomCrop(32, padding=4) and RandomHorizontalFlip, no gradient clipping.
OFFICIAL = EpochRecipe(batch_size=128, lr=0.01, momentum=0.9, weight_decay=5e-4)


def official_decay_epochs(epochs: int) -> tuple[int, int]:
    """The first epochs at lr/10 and lr/100: `util.adjust_learning_rate` keeps the rate while
    epoch < 0.5 E and divides it by 10 while epoch < 0.75 E, by 100 after."""
    return math.ceil(0.5 * epochs), math.ceil(0.75 * epochs)


class UEraser(Countermeasure["UEraser.Params"]):
    """UEraser (Qin et al. 2023): plasma, channel shuffle and TrivialAugment, max loss over K copies."""

    stage: ClassVar[Stage] = "protocol"
    version: ClassVar[str] = "2"  # 2: adversarial phase 25% of the run (was 30%)

    @dataclass(frozen=True)
    class Params:
        level: Level = "standard"
        repeats: int = bounded(5, ge=1)  # K, copies per image while the loss is maximised
        # `standard` only: share of iterations with K copies (official scripts: 50 of 200 epochs)
        adversarial_fraction: float = bounded(0.25, ge=0, le=1)
        plasma_p: float = bounded(0.5, ge=0, le=1)
        plasma_roughness: tuple[float, float] = bounded((0.3, 0.7), gt=0, lt=1)
        brightness_intensity: tuple[float, float] = bounded((0.5, 1.0), ge=0)
        channel_shuffle_p: float = bounded(0.5, ge=0, le=1)
        trivial_augment: bool = True
        recipe: Recipe = "shared"  # "official": LSP/cifar_train.py's epochs, SGD and schedule
        epochs: int = bounded(200, ge=1)  # the official recipe's epochs (`--epoch 200`)

        def __post_init__(self) -> None:
            if self.repeats < 1:
                raise ValueError(f"repeats must be at least 1, got {self.repeats}")
            if not 0.0 <= self.adversarial_fraction <= 1.0:
                raise ValueError(
                    f"adversarial_fraction must be in [0, 1], got {self.adversarial_fraction}"
                )
            for name in ("plasma_p", "channel_shuffle_p"):
                if not 0.0 <= getattr(self, name) <= 1.0:
                    raise ValueError(f"{name} must be a probability, got {getattr(self, name)}")

    def cost(self) -> float:
        # K augmented copies per image while maximising; 100 CIFAR-10 epochs at batch 128 are
        # about the paper profile's 40,000 iterations
        p = self.params
        length = p.epochs / 100 if p.recipe == "official" else 1.0
        return float(p.repeats) * length

    def __init__(self, params: Any = None, name: str | None = None) -> None:
        super().__init__(params, name)
        self._policy: nn.Module | None = None

    # -- the augmentation policy ----------------------------------------------------------

    def policy(self) -> nn.Module:
        if self._policy is None:
            import kornia.augmentation as K

            p = self.params
            ops: list[Any] = [
                K.RandomPlasmaBrightness(
                    roughness=p.plasma_roughness,
                    intensity=p.brightness_intensity,
                    p=p.plasma_p,
                    keepdim=True,
                ),
                K.RandomPlasmaContrast(roughness=p.plasma_roughness, p=p.plasma_p, keepdim=True),
                K.RandomChannelShuffle(p=p.channel_shuffle_p, keepdim=True),
            ]
            if p.trivial_augment:
                ops.append(K.auto.TrivialAugment())
            self._policy = K.AugmentationSequential(*ops)
        return self._policy

    def augmented_copies(self, x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
        """K independently augmented copies of the batch, stacked as (K * B, C, H, W), copy-major."""
        policy = self.policy()
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False), global_rng_from(gen):
            copies = [policy(x.float()) for _ in range(k)]
        return torch.cat(copies).clamp_(0, 1)

    def repeats_at(self, step: int, total_steps: int) -> int:
        """How many copies the loss maximises over at this iteration."""
        p = self.params
        if p.level == "lite":
            return 1
        if p.level == "max":
            return p.repeats
        return p.repeats if step < p.adversarial_fraction * total_steps else 1

    # -- the training objective -----------------------------------------------------------

    def max_loss(
        self, model: nn.Module, batch: Batch, k: int, gen: torch.Generator
    ) -> torch.Tensor:
        """Mean over images of the largest cross-entropy among the image's K augmented copies."""
        b = batch.x.shape[0]
        xs = self.augmented_copies(batch.x, k, gen)
        logits = model(xs)
        losses = F.cross_entropy(logits.float(), batch.y.repeat(k), reduction="none").view(k, b)
        return losses.max(dim=0).values.mean()

    def loss(self, model: nn.Module, batch: Batch, step: StepContext) -> torch.Tensor:
        return self.max_loss(
            model, batch, self.repeats_at(step.step, step.total_steps), step.generator
        )

    # -- the training protocol ------------------------------------------------------------

    def official_training(self, cfg: TrainingConfig, n: int) -> TrainingConfig:
        """The run's `cfg` with LSP/cifar_train.py's protocol for `epochs` epochs of n images."""
        epochs = self.params.epochs
        return OFFICIAL.training(cfg, n, epochs, official_decay_epochs(epochs))

    def fit(
        self, model: nn.Module, train: ImageSet, test: ImageSet, trainer: Fitter, ctx: RunContext
    ) -> TrainResult:
        p = self.params
        official = self.official_training(trainer.cfg, len(train))
        result = fit_by_recipe(
            p.recipe, official, model, train, test, trainer, ctx, self, self, self.name
        )
        result.extra.update(recipe_facts(p.recipe, p.epochs, len(train), OFFICIAL.batch_size))
        return result
