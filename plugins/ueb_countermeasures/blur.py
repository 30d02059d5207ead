"""A Gaussian blur that blurs: kernel 3, sigma 0.8, REM's low-pass setting (Fu et al. 2022).

The paper's `gaussian-filter` (kernel 3, sigma 0.1) is the identity on 8-bit images: its
off-centre weights are about 2e-22. This is the same operation at a sigma where they count
(1-D weights 0.239, 0.522, 0.239), under its own name so that the paper's column stays the
paper's. Not in Table I, so not in `all`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ueb.interfaces import RunContext
from ueb.params import bounded

from . import ops
from .preprocess import SetTransform


class GaussianBlur(SetTransform):
    """Gaussian smoothing, kernel 3, sigma 0.8 (torchvision GaussianBlur(3, 0.8) semantics)."""

    version = "1"

    @dataclass(frozen=True)
    class Params:
        kernel: int = bounded(3, ge=1)
        sigma: float = bounded(0.8, gt=0)

    def apply(self, images: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        return ops.gaussian_filter(images, self.params.kernel, self.params.sigma)
