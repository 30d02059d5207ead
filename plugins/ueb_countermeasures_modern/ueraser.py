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
  `standard`: K copies for the first part of training, then one augmented copy (the
  augmentation stays on, as in the official code). The official CIFAR-10 training code
  (`LSP/cifar_train.py`, `EM/QuickStart.ipynb`) runs 200 epochs with K copies while
  `epoch < 50`, so `adversarial_fraction` = 50/200 = 0.25 of the run (APBench, from the same
  lab, also uses 50 epochs); the README's usage snippet says 60 of 200 (0.30);
  `max` ("em"): K copies for the whole run (the paper trains UEraser-Max longer; the length of
  training is the profile's, not this plugin's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ueb.interfaces import Batch, Countermeasure, Stage, StepContext
from ueb.params import bounded

from ._rng import global_rng_from

Level = Literal["lite", "standard", "max"]


class UEraser(Countermeasure["UEraser.Params"]):
    """UEraser (Qin et al. 2023): plasma, channel shuffle and TrivialAugment, max loss over K copies."""

    stage: ClassVar[Stage] = "train"
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
        return float(self.params.repeats)  # K augmented copies per image while maximising

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
