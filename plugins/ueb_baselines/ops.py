"""OPS: one-pixel shortcut (Wu et al., ICLR 2023, "One-Pixel Shortcut").

Follows cychomatica/One-Pixel-Shotcut (perturb.py, `pixel_search` with `sparsity=1`): classes
are visited in label order; for each, every (pixel position, colour) pair is scored with
mean(|c - x|) / std(|c - x|) over the class's images and channels, where c is one of the 2**C
corners of the colour cube and x the clean pixel values in [0, 1]; the best pair not taken by
an earlier class wins, and that pixel of every image of the class is set to c. No surrogate.

The search is vectorised: per class and position only the sums of the pixel values and of
their squares are needed, so all positions and colours are scored at once, in exact integer
arithmetic on the 8-bit images (float32 matmuls over 256-image chunks, whose sums stay below 2**24). Settings, sources and the deviations (ties, 0/0 scores):
docs/poisoners-surrogate-free.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ueb.errors import DataError
from ueb.imageset import ImageSet
from ueb.interfaces import Budget, Poisoner, RunContext

_CHUNK = 256  # images per chunk of pixel sums: keeps float32 sums of squares exact


def corner_colours(channels: int) -> torch.Tensor:
    """The 2**C corners of the colour cube, (2**C, C) in {0, 1}; index bits read channel 0 first.

    Same order as the official code: for RGB, index 5 = 0b101 is (1, 0, 1).
    """
    idx = torch.arange(2**channels)
    shifts = torch.arange(channels - 1, -1, -1)
    return (idx[:, None] >> shifts[None, :]) & 1


def class_pixel_sums(
    images: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per class: image count, sum and sum of squares of the 0..255 values, (K, C, H, W) int64."""
    n, c, h, w = images.shape
    s1 = torch.zeros(num_classes, c * h * w, dtype=torch.int64)
    s2 = torch.zeros_like(s1)
    for i in range(0, n, _CHUNK):
        x = images[i : i + _CHUNK].cpu().flatten(1).float()
        onehot = F.one_hot(labels[i : i + _CHUNK].cpu(), num_classes).float().t()
        # every partial sum is an integer <= 256 * 255**2 < 2**24, so float32 is exact here
        s1 += (onehot @ x).round().to(torch.int64)
        s2 += (onehot @ (x * x)).round().to(torch.int64)
    s1 = s1.view(num_classes, c, h, w)
    s2 = s2.view(num_classes, c, h, w)
    counts = torch.bincount(labels.cpu(), minlength=num_classes)
    return counts, s1, s2


def ops_scores(count: int, s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
    """mean(|c - x|) / std(|c - x|) for one class, (2**C, H*W) float64.

    `s1`, `s2`: (C, H, W) sums of the class's 0..255 values and of their squares. With
    v = |c - x| * 255 (v = x where c = 0, 255 - x where c = 1), S1 = sum v and S2 = sum v^2 over
    images and channels, M = count * C values: mean / std = S1 / sqrt(M * S2 - S1^2), with the
    population std as numpy's np.std. The radicand is an exact integer. A zero std gives +inf
    (the same change in every image: the perfect shortcut) or, when S1 = 0 as well, -inf: the
    pixel already has colour c in every image, so setting it would change nothing (the official
    code's 0/0 = nan would sort last and win).
    """
    channels = s1.shape[0]
    colours = corner_colours(channels).to(torch.int64)  # (K2, C)
    s1 = s1.flatten(1)  # (C, P)
    s2 = s2.flatten(1)
    top = 255 * count
    ones = colours[:, :, None]  # (K2, C, 1)
    # per channel: v = x (c = 0) or 255 - x (c = 1)
    v1 = torch.where(ones.bool(), top - s1[None], s1[None])
    v2 = torch.where(ones.bool(), 255 * 255 * count - 2 * 255 * s1[None] + s2[None], s2[None])
    big_s1 = v1.sum(1)  # (K2, P)
    big_s2 = v2.sum(1)
    m = count * channels
    radicand = m * big_s2 - big_s1 * big_s1  # exact: M^2 * population variance * 255^2
    score = big_s1.double() / radicand.double().sqrt()
    score = torch.where(radicand == 0, torch.where(big_s1 > 0, torch.inf, -torch.inf), score)
    return score


def search_pixels(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    gen: torch.Generator | None = None,
) -> tuple[list[tuple[int, int]], list[int], list[float]]:
    """The official greedy search: per class (in label order) the best unused (position, colour).

    Returns each class's (row, col), colour index (see `corner_colours`) and score. Ties go to
    a pair drawn with `gen`, or without one to the first pair in (position, colour) order.
    """
    _, c, h, w = images.shape
    if images.dtype != torch.uint8:
        raise DataError("OPS searches on 8-bit images", "pass the ImageSet's uint8() images")
    counts, s1, s2 = class_pixel_sums(images, labels, num_classes)
    used = torch.zeros(2**c, h * w, dtype=torch.bool)
    positions: list[tuple[int, int]] = []
    colours: list[int] = []
    scores: list[float] = []
    for k in range(num_classes):
        n = int(counts[k])
        if n == 0:
            positions.append((-1, -1))
            colours.append(-1)
            scores.append(float("nan"))
            continue
        score = ops_scores(n, s1[k], s2[k])
        score[used] = -torch.inf
        # first maximum in (position, colour) order, the order the official code enumerates
        flat = score.t().reshape(-1)
        best = int(torch.argmax(flat))
        if gen is not None:  # several pairs share the best score: draw one (seeded)
            tied = torch.nonzero(flat == flat[best]).flatten()
            best = int(tied[torch.randint(len(tied), (1,), generator=gen)])
        pos, colour = divmod(best, 2**c)
        used[colour, pos] = True
        positions.append(divmod(pos, w))
        colours.append(colour)
        scores.append(float(flat[best]))
    return positions, colours, scores


class OnePixelShortcut(Poisoner):
    """One pixel per class set to an extreme colour chosen by the official search; L0 = 1."""

    version = "1"
    deterministic = True  # the search is; only ties between equal scores are drawn from the seed

    @dataclass(frozen=True)
    class Params:
        # "random": a tie for the best score goes to a pair drawn with the run's seed (the
        # official argsort leaves the order of ties unspecified); "first": the first pair
        ties: Literal["random", "first"] = "random"

    def __init__(self, params: Params | None = None, name: str | None = None) -> None:
        super().__init__(params, name)
        self.facts: dict[str, object] = {}

    def budget(self) -> Budget:
        return Budget("l0", 1)

    @property
    def sample_wise(self) -> bool:
        return False

    def report(self) -> dict[str, object]:
        return dict(self.facts)

    def poison(self, train: ImageSet, ctx: RunContext) -> torch.Tensor:
        images = train.uint8().cpu()
        labels = train.labels.cpu()
        with ctx.progress.task("OPS pixel search", total=1) as task:
            gen = torch.Generator().manual_seed(ctx.seed) if self.params.ties == "random" else None
            positions, colours, scores = search_pixels(images, labels, train.num_classes, gen)
            task.advance()
        table = corner_colours(train.channels).float()
        out = images.float().div_(255.0)
        for k, ((row, col), colour) in enumerate(zip(positions, colours, strict=True)):
            if colour < 0:
                continue
            idx = torch.nonzero(labels == k).flatten()
            out[idx, :, row, col] = table[colour]
        self.facts = {
            "ops_positions": [list(p) for p in positions],
            "ops_colours": [table[c].int().tolist() if c >= 0 else None for c in colours],
            # strict JSON: +inf (a zero std, the same change in every image) is stored as None
            "ops_scores": [s if math.isfinite(s) else None for s in scores],
        }
        return out
