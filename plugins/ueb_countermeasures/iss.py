"""Image Shortcut Squeezing (ISS; Liu, Zhao & Larson, ICML 2023): compress the poisons away.

ISS trains on compressed poisoned images: grayscale (ISS-G), JPEG (ISS-J, quality 10 in the
paper's main results) or bit-depth reduction. The operations are those of the official code
(github.com/liuzrcc/ImageShortcutSqueezing, `augmentations.py`): torchvision Grayscale(3)
(ITU-R 601 luma), PIL JPEG at quality q with default 4:2:0 chroma, torchvision posterize to
`bits` bits. Its `--ISS_both_train_test` switch (default off) also compresses the test
images; here that is `test_too`. `quality` and `bits` are the sweep parameters (the ISS
appendix sweeps JPEG quality); run one cell per value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ueb.imageset import ImageSet
from ueb.interfaces import Countermeasure, RunContext
from ueb.params import bounded

from . import ops


class ImageShortcutSqueezing(Countermeasure):
    """ISS: grayscale, JPEG or bit-depth compression of the training (and optionally test) set."""

    version = "1"
    stage = "data"

    @dataclass(frozen=True)
    class Params:
        method: Literal["grayscale", "jpeg", "bdr"] = "jpeg"
        quality: int = bounded(10, ge=1, le=100)  # JPEG quality (method "jpeg")
        bits: int = bounded(2, ge=1, le=8)  # bit depth (method "bdr")
        test_too: bool = False  # the official --ISS_both_train_test switch
        encoder: Literal["opencv", "simplejpeg", "pil"] = "opencv"
        workers: int = bounded(0, ge=0)

        def __post_init__(self) -> None:
            if not 1 <= self.quality <= 100:
                raise ValueError(f"quality must be within 1..100, got {self.quality}")
            if not 1 <= self.bits <= 8:
                raise ValueError(f"bits must be within 1..8, got {self.bits}")

    def squeeze(self, images: torch.Tensor) -> torch.Tensor:
        p = self.params
        if p.method == "grayscale":
            return ops.grayscale(images)
        if p.method == "bdr":
            return ops.bit_depth_reduction(images, p.bits, "posterize")
        return ops.jpeg(images, p.quality, "420", p.encoder, p.workers)

    def _apply(self, images: ImageSet, ctx: RunContext, which: str) -> ImageSet:
        with ctx.progress.task(f"{self.name}: {len(images)} {which} images", total=1) as task:
            out = self.squeeze(images.images)
            task.advance()
        return images.with_images(out, countermeasure=self.name)

    def transform_train_set(self, train: ImageSet, ctx: RunContext) -> ImageSet:
        return self._apply(train, ctx, "training")

    def transform_test_set(self, test: ImageSet, ctx: RunContext) -> ImageSet:
        return self._apply(test, ctx, "test") if self.params.test_too else test
