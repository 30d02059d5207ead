"""RSK + FF: random sharpening kernel, then DCT low-pass filtering, at every step.

Method: Kim and Sandoval-Segura, "Learning from Convolution-Based Unlearnable Datasets"
(AdvML-Frontiers workshop at NeurIPS 2024); official code aseriesof-tubes/RSK (`augments.py`:
`sharpen_image`, `get_dct_image`; `main.py` defaults). Each training image, each time it is
drawn:

1. is sharpened by a random 3x3 cross kernel: centre c ~ N(2.5, 0.1^2) and each of the four
   neighbours -n_k with n_k ~ N((c - 1) / 4, 0.1^2) drawn independently (their mean keeps the
   kernel's sum near 1); one kernel per image, shared by its channels, applied without padding
   (a valid convolution: H x W becomes H-2 x W-2), clipped to [0, 1];
2. is low-pass filtered in the 2-D orthonormal DCT-II domain, keeping the lowest
   int(30% of the rows) x int(30% of the columns) coefficients, clipped to [0, 1].

The official pipeline applies both before the random crop (pad 4), which brings the 30x30
result back to 32x32; here the trainer's crop and flip come first and the filtered
(H-2) x (W-2) image is placed back in the middle of a zero frame one pixel wide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from ueb.interfaces import Batch, Countermeasure, Stage, StepContext, ThreatModel
from ueb.params import bounded


def dct_matrix(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The orthonormal DCT-II matrix D (n x n): D @ v is the DCT of v, D.T @ V its inverse."""
    k = torch.arange(n, dtype=torch.float64).view(n, 1)
    i = torch.arange(n, dtype=torch.float64).view(1, n)
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(device=device, dtype=torch.float32)


def low_pass_projector(n: int, keep: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """P = D.T diag(1 for the first `keep` frequencies) D: keeps the lowest `keep` DCT terms."""
    d = dct_matrix(n, device)
    return d[:keep].t() @ d[:keep]


def dct_low_pass(x: torch.Tensor, percentage: float) -> torch.Tensor:
    """Keep the lowest int(H * p / 100) x int(W * p / 100) 2-D DCT coefficients; clip to [0, 1]."""
    h, w = x.shape[-2:]
    keep_h, keep_w = int(h * percentage / 100), int(w * percentage / 100)
    ph = low_pass_projector(h, keep_h, x.device)
    pw = low_pass_projector(w, keep_w, x.device)
    return (ph @ x.float() @ pw.t()).clamp(0, 1)


def random_sharpen_kernels(
    n: int, center_mean: float, std: float, random: bool, gen: torch.Generator
) -> torch.Tensor:
    """(n, 3, 3) cross kernels [[0, -a, 0], [-b, c, -d], [0, -e, 0]] as the official sampler draws them."""
    if random:
        center = center_mean + std * torch.randn(n, generator=gen, device=gen.device)
        neighbours = (center - 1).unsqueeze(1) / 4 + std * torch.randn(
            n, 4, generator=gen, device=gen.device
        )
    else:
        center = torch.full((n,), center_mean, device=gen.device)
        neighbours = ((center - 1) / 4).unsqueeze(1).expand(n, 4)
    k = torch.zeros(n, 3, 3, device=gen.device)
    k[:, 1, 1] = center
    k[:, 0, 1] = -neighbours[:, 0]
    k[:, 1, 0] = -neighbours[:, 1]
    k[:, 1, 2] = -neighbours[:, 2]
    k[:, 2, 1] = -neighbours[:, 3]
    return k


def sharpen(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Valid 3x3 convolution of image b with kernels[b] on every channel; clip to [0, 1]."""
    b, c, h, w = x.shape
    weight = kernels.to(x.device, torch.float32).repeat_interleave(c, dim=0).unsqueeze(1)
    out = F.conv2d(x.float().reshape(1, b * c, h, w), weight, groups=b * c)
    return out.reshape(b, c, h - 2, w - 2).clamp(0, 1)


class RskFF(Countermeasure):
    """RSK + FF (Kim and Sandoval-Segura 2024): random sharpening, then a 30% DCT low-pass."""

    stage: ClassVar[Stage] = "train"
    threat: ClassVar[ThreatModel] = ThreatModel()
    version: ClassVar[str] = "1"
    # an augmentation costs the same at every scale: the official setting everywhere
    presets: ClassVar[dict[str, dict[str, Any]]] = {"smoke": {}, "quick": {}}

    @dataclass(frozen=True)
    class Params:
        sharp_center: float = bounded(2.5, ge=1, le=16)
        kernel_std: float = bounded(0.1, ge=0, le=4)
        # "random": RSK (a kernel drawn per image); "fixed": SSK (the mean kernel)
        kernel: Literal["random", "fixed"] = "random"
        ff_percentage: float = bounded(30.0, gt=0, le=100)
        frequency_filter: bool = True

    def augment(self, batch: Batch, step: StepContext) -> Batch:
        p = self.params
        x = batch.x
        kernels = random_sharpen_kernels(
            x.shape[0], p.sharp_center, p.kernel_std, p.kernel == "random", step.generator
        )
        out = sharpen(x, kernels)
        if p.frequency_filter:
            out = dct_low_pass(out, p.ff_percentage)
        out = F.pad(out, (1, 1, 1, 1))
        return Batch(out.to(x.dtype), batch.y, batch.y2, batch.lam)
