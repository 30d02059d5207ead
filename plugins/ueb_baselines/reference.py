"""Reference poisoners: `clean` (no change) and `random-noise` (what an unlearnable method must beat)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ueb.imageset import ImageSet
from ueb.interfaces import Budget, Poisoner, RunContext
from ueb.params import bounded


class Clean(Poisoner):
    """Leaves the data as it is; its cells are the clean-training reference."""

    version = "1"
    deterministic = True

    @dataclass(frozen=True)
    class Params:
        pass

    def budget(self) -> Budget:
        return Budget("linf", 0.0)

    @property
    def sample_wise(self) -> bool:
        return False

    def poison(self, train: ImageSet, ctx: RunContext) -> torch.Tensor:
        return train.images.clone()


class RandomNoise(Poisoner):
    """Uniform noise in [-eps, eps], fresh per image: the baseline any poison must beat."""

    version = "1"

    @dataclass(frozen=True)
    class Params:
        eps: float = bounded(8 / 255, gt=0, le=1)

    def budget(self) -> Budget:
        return Budget("linf", self.params.eps)

    def poison(self, train: ImageSet, ctx: RunContext) -> torch.Tensor:
        gen = torch.Generator().manual_seed(ctx.seed)
        x = train.float01()
        noise = (torch.rand(x.shape, generator=gen) * 2 - 1) * self.params.eps
        return (x + noise).clamp(0, 1)
