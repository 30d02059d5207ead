"""Train-stage augmentations of the paper's Table I: vanilla, Cutout, CutMix, Mixup.

They act on each batch after the trainer's base crop and flip, all in whole-batch tensor ops,
and draw every random number from the step's generator, so a run repeats exactly. Settings
are the paper's (Sec. IV-A5, appendix A.1.2); docs/countermeasures.md records each choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ueb.errors import ConfigError
from ueb.interfaces import Batch, Countermeasure, StepContext
from ueb.params import bounded


def _rand(n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=gen.device).to(device)


def _randint(
    high: torch.Tensor | int, n: int, gen: torch.Generator, device: torch.device
) -> torch.Tensor:
    """Uniform integers in [0, high) per sample (`high` may differ per sample)."""
    u = _rand(n, gen, device)
    return (u * high).floor().long()


def partners(n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """For each sample, the index of another sample of the batch (a random cyclic derangement)."""
    if n < 2:
        raise ConfigError(
            "mixing augmentations need batches of at least 2 images", "raise batch_size"
        )
    perm = torch.randperm(n, generator=gen, device=gen.device).to(device)
    out = torch.empty_like(perm)
    out[perm] = perm.roll(-1)
    return out


class Vanilla(Countermeasure):
    """Plain training: only the trainer's base random crop (pad 4) and horizontal flip."""

    version = "1"
    stage = "train"

    @dataclass(frozen=True)
    class Params:
        pass


class Cutout(Countermeasure):
    """Cutout (DeVries & Taylor 2017): one square zeroed per image, at a random place.

    Side 16 px at 32x32 and 112 px at 224x224 (paper Sec. IV-A5; the appendix says 116): by
    default half the image side, so it scales with the image. The square lies wholly inside
    the image, so every image loses the same area ("consistent size", paper A.1.2).
    """

    version = "1"
    stage = "train"

    @dataclass(frozen=True)
    class Params:
        size: int = bounded(0, ge=0)  # side in pixels; 0: `fraction` of the image side
        fraction: float = bounded(0.5, gt=0, le=1)
        fill: float = bounded(0.0, ge=0, le=1)

    def side(self, h: int, w: int) -> int:
        s = self.params.size or round(self.params.fraction * min(h, w))
        if not 0 < s <= min(h, w):
            raise ConfigError(
                f"cutout side {s} px does not fit {h}x{w} images", "set size or fraction"
            )
        return s

    def augment(self, batch: Batch, step: StepContext) -> Batch:
        x = batch.x
        b, _, h, w = x.shape
        s = self.side(h, w)
        top = _randint(h - s + 1, b, step.generator, x.device)
        left = _randint(w - s + 1, b, step.generator, x.device)
        rows = torch.arange(h, device=x.device)[None, :]
        cols = torch.arange(w, device=x.device)[None, :]
        in_r = (rows >= top[:, None]) & (rows < top[:, None] + s)
        in_c = (cols >= left[:, None]) & (cols < left[:, None] + s)
        mask = (in_r[:, :, None] & in_c[:, None, :])[:, None]
        x = torch.where(mask, torch.full_like(x, self.params.fill), x)
        return Batch(x, batch.y, batch.y2, batch.lam)


class CutMix(Countermeasure):
    """CutMix (Yun et al. 2019) as the paper describes it (A.1.2).

    Per image: a square box whose side is a uniform 0..1 fraction of the image side, centred at
    a uniform random pixel and clipped at the border, is filled with the same region of another
    image of the batch. Labels are mixed by area: lam = 1 - box area / image area, the loss is
    lam * CE(own label) + (1 - lam) * CE(partner's label) (the CutMix paper's rule).
    """

    version = "1"
    stage = "train"

    @dataclass(frozen=True)
    class Params:
        prob: float = bounded(1.0, ge=0, le=1)  # chance that an image gets a box at all

    def augment(self, batch: Batch, step: StepContext) -> Batch:
        x = batch.x
        b, _, h, w = x.shape
        gen, dev = step.generator, x.device
        other = partners(b, gen, dev)
        ratio = _rand(b, gen, dev)
        cy = _randint(h, b, gen, dev)
        cx = _randint(w, b, gen, dev)
        active = _rand(b, gen, dev) < self.params.prob
        ch = (ratio * h).floor().long() * active
        cw = (ratio * w).floor().long() * active
        y0 = (cy - ch // 2).clamp(0, h)
        y1 = (cy - ch // 2 + ch).clamp(0, h)
        x0 = (cx - cw // 2).clamp(0, w)
        x1 = (cx - cw // 2 + cw).clamp(0, w)
        rows = torch.arange(h, device=dev)[None, :]
        cols = torch.arange(w, device=dev)[None, :]
        in_r = (rows >= y0[:, None]) & (rows < y1[:, None])
        in_c = (cols >= x0[:, None]) & (cols < x1[:, None])
        mask = (in_r[:, :, None] & in_c[:, None, :])[:, None]
        mixed = torch.where(mask, x[other], x)
        lam = 1.0 - ((y1 - y0) * (x1 - x0)).float() / float(h * w)
        return Batch(mixed, batch.y, batch.y[other], lam)


class Mixup(Countermeasure):
    """Mixup (Zhang et al. 2018) as the paper describes it (A.1.2).

    Each image is blended with another image of the batch with a weight drawn uniformly from
    0..1 (x = w * own + (1 - w) * other) and, as the paper states, keeps its own label only
    (`label="keep"`). `label="mix"` gives original mixup's lam-weighted two-label loss.
    """

    version = "1"
    stage = "train"

    @dataclass(frozen=True)
    class Params:
        label: Literal["keep", "mix"] = "keep"
        prob: float = bounded(1.0, ge=0, le=1)  # chance that an image is blended at all

    def augment(self, batch: Batch, step: StepContext) -> Batch:
        x = batch.x
        b = x.shape[0]
        gen, dev = step.generator, x.device
        other = partners(b, gen, dev)
        weight = _rand(b, gen, dev)
        active = _rand(b, gen, dev) < self.params.prob
        weight = torch.where(active, weight, torch.ones_like(weight))
        wv = weight.view(-1, 1, 1, 1).to(x.dtype)
        mixed = wv * x + (1 - wv) * x[other]
        if self.params.label == "keep":
            return Batch(mixed, batch.y)
        return Batch(mixed, batch.y, batch.y[other], weight)
