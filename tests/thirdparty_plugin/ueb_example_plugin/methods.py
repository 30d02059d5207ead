from __future__ import annotations

from dataclasses import dataclass

import torch

from ueb.interfaces import Budget, Countermeasure, Poisoner
from ueb.params import bounded


class CornerPatch(Poisoner):
    """Each class gets its own 3x3 grey level in the top-left corner (L0 = 9 pixels)."""

    version = "1"
    deterministic = True  # no randomness: every seed gives the same poison

    @dataclass(frozen=True)
    class Params:
        size: int = bounded(3, ge=1)

    def budget(self) -> Budget:
        return Budget("l0", self.params.size**2)

    @property
    def sample_wise(self) -> bool:
        return False

    def poison(self, train, ctx):
        x = train.float01().clone()
        s = self.params.size
        levels = torch.linspace(0, 1, train.num_classes)
        x[:, :, :s, :s] = levels[train.labels][:, None, None, None]
        return x


class FlipAll(Countermeasure):
    stage = "data"

    def transform_train_set(self, train, ctx):
        return train.with_images(train.images.flip(3))
