"""Data-stage countermeasures of the paper's Table I: filters, BDR, grayscale, noise, JPEG.

Settings are the paper's (Sec. IV-A5, appendix A.1.2); the operations follow the code the
paper's evaluation descends from (ISS, Liu et al. 2023: torchvision/PIL/OpenCV on 8-bit
images). Each transforms the whole (poisoned) training set once, vectorised or pooled; the
test set stays clean. docs/countermeasures.md records every choice.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch

from ueb.imageset import ImageSet
from ueb.interfaces import Batch, Countermeasure, RunContext, StepContext
from ueb.params import bounded

from . import ops


class SetTransform(Countermeasure):
    """A data-stage countermeasure: one deterministic operation over the whole training set."""

    stage = "data"

    @abstractmethod
    def apply(self, images: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        """The operation over all training images (uint8 or float in [0, 1])."""

    def transform_train_set(self, train: ImageSet, ctx: RunContext) -> ImageSet:
        with ctx.progress.task(f"{self.name}: {len(train)} training images", total=1) as task:
            out = self.apply(train.images, ctx)
            task.advance()
        return train.with_images(out, countermeasure=self.name)


class MeanFilter(SetTransform):
    """Mean (box) filter, kernel 3 (paper A.1.2); OpenCV `blur` semantics (reflect-101 border)."""

    version = "1"

    @dataclass(frozen=True)
    class Params:
        kernel: int = bounded(3, ge=1)

    def apply(self, images: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        return ops.mean_filter(images, self.params.kernel)


class MedianFilter(SetTransform):
    """Median filter, kernel 3 (paper A.1.2); OpenCV `medianBlur` semantics (replicated border)."""

    version = "1"

    @dataclass(frozen=True)
    class Params:
        kernel: int = bounded(3, ge=1)

    def apply(self, images: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        return ops.median_filter(images, self.params.kernel)


class GaussianFilter(SetTransform):
    """Gaussian smoothing, kernel 3, sigma 0.1 (paper A.1.2; torchvision GaussianBlur(3, 0.1)).

    At sigma 0.1 the off-centre weights are about 2e-22, so on 8-bit images the filter is the
    identity; that is the paper's setting and it is kept (sigma is a parameter).
    """

    version = "1"

    @dataclass(frozen=True)
    class Params:
        kernel: int = bounded(3, ge=1)
        sigma: float = bounded(0.1, gt=0)

    def apply(self, images: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        return ops.gaussian_filter(images, self.params.kernel, self.params.sigma)


class BitDepthReduction(SetTransform):
    """Bit-depth reduction to 2 bits (paper A.1.2), as torchvision's posterize (ISS/APBench code)."""

    version = "1"

    @dataclass(frozen=True)
    class Params:
        bits: int = bounded(2, ge=1, le=8)
        mode: Literal["posterize", "uniform"] = "posterize"

    def apply(self, images: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        return ops.bit_depth_reduction(images, self.params.bits, self.params.mode)


class Grayscale(SetTransform):
    """Weighted sum of R, G, B (ITU-R 601 weights) replicated to the three channels (paper A.1.2)."""

    version = "1"

    @dataclass(frozen=True)
    class Params:
        pass

    def apply(self, images: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        return ops.grayscale(images)


class Jpeg(SetTransform):
    """JPEG compression at quality 10 or 50 (paper Sec. IV-A5), 4:2:0 chroma like PIL's default."""

    version = "1"

    @dataclass(frozen=True)
    class Params:
        quality: int = bounded(10, ge=1, le=100)
        subsampling: Literal["444", "422", "420"] = "420"
        encoder: Literal["opencv", "simplejpeg", "pil"] = "opencv"
        workers: int = bounded(0, ge=0)  # threads; 0: one per CPU core

    def apply(self, images: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        p = self.params
        return ops.jpeg(images, p.quality, p.subsampling, p.encoder, p.workers)


class GaussianNoise(Countermeasure):
    """Additive Gaussian noise N(0, 0.1) per sample (paper A.1.2: std 0.1), clamped to [0, 1]:
    one draw per image, fixed for the whole training (a data preprocessing, as the paper groups
    it), seeded by the run seed. Fresh noise at every step is `gaussian-noise-every-step`, a
    train-stage countermeasure."""

    version = "1"
    stage = "data"

    @dataclass(frozen=True)
    class Params:
        std: float = bounded(0.1, ge=0)
        mean: float = bounded(0.0, ge=-1, le=1)

        def __post_init__(self) -> None:
            if self.std < 0:
                raise ValueError(f"std must be >= 0, got {self.std}")

    def transform_train_set(self, train: ImageSet, ctx: RunContext) -> ImageSet:
        gen = torch.Generator().manual_seed(ctx.seed + 7919)  # its own stream, fixed by the seed
        out = ops.gaussian_noise(train.images, self.params.std, gen, self.params.mean)
        return train.with_images(out, countermeasure=self.name)


class GaussianNoiseEveryStep(Countermeasure):
    """The same noise drawn afresh each time an image enters a batch (after crop and flip), an
    augmentation rather than a preprocessing; not in the paper's Table I."""

    version = "1"
    stage = "train"
    Params = GaussianNoise.Params

    def augment(self, batch: Batch, step: StepContext) -> Batch:
        noise = torch.randn(batch.x.shape, generator=step.generator, device=step.generator.device)
        x = (batch.x + noise.to(batch.x.device) * self.params.std + self.params.mean).clamp(0, 1)
        return Batch(x, batch.y, batch.y2, batch.lam)
