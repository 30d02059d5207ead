"""COIN: random pixel interpolation against convolution-based unlearnable datasets.

Method: Wang et al., "Corrupting Convolution-based Unlearnable Datasets with Pixel-based
Image Transformations" (AAAI 2025, arXiv 2311.18403); official code wxldragon/COIN
(`train.py`, `COIN_trans`). Every training image, at every step, after the random crop and
flip, is resampled at jittered coordinates: pixel (i, j) takes the bilinear interpolation of
the image at (i + dy, j + dx), with dx and dy drawn uniformly from [-alpha, alpha] for every
pixel position (one draw shared by the channels). Out-of-range coordinates wrap around the
way scipy's `map_coordinates(order=1, mode="wrap")` does (period n - 1: the first and last
rows coincide), the result is clipped to [0, 1] and truncated to 8 bits (`np.uint8` of the
0..255 float) before the victim sees it. The official default is severity 4, alpha = 2.0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from ueb.interfaces import Batch, Countermeasure, Stage, StepContext, ThreatModel
from ueb.params import bounded


def wrap_coordinates(coords: torch.Tensor, n: int) -> torch.Tensor:
    """Coordinates folded into [0, n - 1] with period n - 1, as scipy's 'wrap' mode folds them:
    inside values stay, those below 0 land in (0, n - 1], those above n - 1 in [0, n - 1)."""
    if n == 1:
        return torch.zeros_like(coords)
    period = n - 1
    below = period - torch.remainder(-coords, period)
    above = torch.remainder(coords, period)
    return torch.where(coords < 0, below, torch.where(coords > period, above, coords))


def interpolate_at(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of `x` (B, C, H, W) at per-pixel coordinates `rows`, `cols` (B, H, W).

    The coordinates must already lie in [0, H - 1] x [0, W - 1].
    """
    b, c, h, w = x.shape
    r0 = rows.floor().clamp(0, h - 1)
    c0 = cols.floor().clamp(0, w - 1)
    fr = (rows - r0).unsqueeze(1)
    fc = (cols - c0).unsqueeze(1)
    r0i, c0i = r0.long(), c0.long()
    r1i = (r0i + 1).clamp(max=h - 1)
    c1i = (c0i + 1).clamp(max=w - 1)
    flat = x.reshape(b, c, h * w)

    def take(ri: torch.Tensor, ci: torch.Tensor) -> torch.Tensor:
        index = (ri * w + ci).reshape(b, 1, h * w).expand(b, c, h * w)
        return flat.gather(2, index).reshape(b, c, h, w)

    top = take(r0i, c0i) * (1 - fc) + take(r0i, c1i) * fc
    bottom = take(r1i, c0i) * (1 - fc) + take(r1i, c1i) * fc
    return top * (1 - fr) + bottom * fr


def coin_transform(
    x: torch.Tensor, alpha: float, gen: torch.Generator, quantize: str
) -> torch.Tensor:
    """COIN on a batch in [0, 1]: per-pixel uniform jitter in [-alpha, alpha], bilinear, wrapped."""
    b, _, h, w = x.shape
    shape = (b, h, w)
    dx = (torch.rand(shape, generator=gen, device=gen.device) * 2 - 1) * alpha
    dy = (torch.rand(shape, generator=gen, device=gen.device) * 2 - 1) * alpha
    out = displace(x, dy.to(x.device), dx.to(x.device))
    if quantize == "floor":
        # 1e-3 of a level absorbs float rounding, so that an unmoved pixel keeps its level
        out = torch.floor(out * 255.0 + 1e-3) / 255.0
    return out


def displace(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Pixel (i, j) of every image becomes its bilinear value at (i + dy, j + dx), wrapped."""
    _, _, h, w = x.shape
    grid_r = torch.arange(h, device=x.device, dtype=torch.float32).view(1, h, 1)
    grid_c = torch.arange(w, device=x.device, dtype=torch.float32).view(1, 1, w)
    rows = wrap_coordinates(grid_r + dy, h)
    cols = wrap_coordinates(grid_c + dx, w)
    return interpolate_at(x.float(), rows, cols).clamp(0, 1)


class Coin(Countermeasure):
    """COIN (Wang et al., AAAI 2025): random pixel-interpolation at every step, alpha 2.0."""

    stage: ClassVar[Stage] = "train"
    threat: ClassVar[ThreatModel] = ThreatModel()
    version: ClassVar[str] = "1"
    # an augmentation costs the same at every scale: the official setting everywhere
    presets: ClassVar[dict[str, dict[str, Any]]] = {"smoke": {}, "quick": {}}

    @dataclass(frozen=True)
    class Params:
        # severity 4 of the official table [0.8, 1.2, 1.6, 2.0, 2.4, 2.8, 3.2]
        alpha: float = bounded(2.0, ge=0, le=16)
        # "floor": 8-bit truncation as the official np.uint8 cast; "none": keep the float
        quantize: Literal["floor", "none"] = "floor"

    def augment(self, batch: Batch, step: StepContext) -> Batch:
        x = coin_transform(batch.x, self.params.alpha, step.generator, self.params.quantize)
        return Batch(x.to(batch.x.dtype), batch.y, batch.y2, batch.lam)
