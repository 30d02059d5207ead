"""Calibration controls: class-wise patterns that no unlearnable method produced.

Each class gets one fixed perturbation, drawn from the run seed and added to every training
image of that class. A victim that learns such a pattern as a shortcut drops to near chance on
clean test images; one that ignores it stays at the clean accuracy. Because the patterns are
method-independent and differ only in spatial scale, they tell which shortcuts a test bed (data,
victim, training length) can learn at all: a method whose perturbation lives at a scale the
test bed cannot learn cannot be judged on it (docs/testbed.md).

  * `cw-uniform`: uniform noise in [-eps, eps] per pixel and channel;
  * `cw-hf`, `cw-mf`, `cw-lf`: a random +-eps sign per channel on blocks of 1, 2 and 8 pixels.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

from ueb.errors import ConfigError
from ueb.imageset import ImageSet
from ueb.interfaces import Budget, Poisoner, RunContext
from ueb.params import bounded


class ClassWiseControl(Poisoner):
    """One pattern per class in [-eps, eps], constant on `block` x `block` squares."""

    version = "1"

    @dataclass(frozen=True)
    class Params:
        eps: float = bounded(8 / 255, gt=0, le=1)
        block: int = bounded(1, ge=1)

    def __init__(self, params: Params | None = None, name: str | None = None) -> None:
        super().__init__(params, name)
        self.params: ClassWiseControl.Params = self.params
        self.facts: dict[str, Any] = {"control": "class-wise", "block": self.params.block}
        if not 0 < self.params.eps <= 1:
            raise ConfigError(
                f"poisoner '{self.name}': eps {self.params.eps} is outside (0, 1]",
                "give eps in [0, 1] pixel units, e.g. 8/255",
            )
        if self.params.block < 1:
            raise ConfigError(
                f"poisoner '{self.name}': block {self.params.block} is below 1",
                "give a block size of at least 1 pixel",
            )

    @property
    def sample_wise(self) -> bool:
        return False

    def budget(self) -> Budget:
        return Budget("linf", self.params.eps)

    @abstractmethod
    def unit_cells(self, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
        """Values in [-1, 1] of shape `shape` (K, C, cells_h, cells_w): one per block."""

    def patterns(
        self, num_classes: int, channels: int, height: int, width: int, seed: int
    ) -> torch.Tensor:
        """The (K, C, H, W) perturbations, each within [-eps, eps]."""
        b = self.params.block
        gen = torch.Generator().manual_seed(seed)
        cells = self.unit_cells((num_classes, channels, -(-height // b), -(-width // b)), gen)
        full = cells.repeat_interleave(b, dim=2).repeat_interleave(b, dim=3)
        return full[:, :, :height, :width] * self.params.eps

    def poison(self, train: ImageSet, ctx: RunContext) -> torch.Tensor:
        x = train.float01()
        _, c, h, w = x.shape
        patterns = self.patterns(train.num_classes, c, h, w, ctx.seed)
        self.facts["haar_detail_share"] = haar_detail_share(patterns)
        return (x + patterns[train.labels]).clamp(0, 1)

    def report(self) -> dict[str, Any]:
        return dict(self.facts)


class ClassWiseUniform(ClassWiseControl):
    """Uniform noise per block, the class-wise random noise of Huang et al. (2021)."""

    def unit_cells(self, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
        return torch.rand(shape, generator=gen) * 2 - 1


class ClassWiseSign(ClassWiseControl):
    """A random sign per block: the largest Linf pattern, at one spatial scale."""

    def unit_cells(self, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
        return torch.randint(0, 2, shape, generator=gen).float() * 2 - 1


def haar_detail_share(patterns: torch.Tensor) -> float:
    """Share of the patterns' energy in the one-level Haar detail bands (LH, HL, HH).

    The detail bands are where pixel-scale structure lives and where Deep Hiding embeds; a
    pattern constant on even-aligned 2x2 squares has none there.
    """
    x = patterns[..., : patterns.shape[-2] // 2 * 2, : patterns.shape[-1] // 2 * 2]
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    low = (a + b + c + d).pow(2).sum() / 4
    total = x.pow(2).sum()
    return float(1 - low / total) if total > 0 else 0.0
