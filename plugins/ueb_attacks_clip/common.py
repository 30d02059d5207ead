"""What the two CLIP poisoners share: the official training crop, batches, and cached tensors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from ueb.atomic import save_torch
from ueb.interfaces import RunContext

# The official training transform, Resize(256) then RandomCrop(224) and a horizontal flip,
# as a ratio, so that it applies at any image side.
CROP_RATIO = 256 / 224


def random_crop_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each image enlarged by CROP_RATIO (bilinear), cropped back to its side at a random
    place and flipped with probability 1/2, all draws from `gen` (on the CPU)."""
    n, _, h, w = x.shape
    big_h, big_w = round(h * CROP_RATIO), round(w * CROP_RATIO)
    big = F.interpolate(x, size=(big_h, big_w), mode="bilinear", align_corners=False)
    tops = torch.randint(0, big_h - h + 1, (n,), generator=gen).tolist()
    lefts = torch.randint(0, big_w - w + 1, (n,), generator=gen).tolist()
    flips = (torch.rand(n, generator=gen) < 0.5).tolist()
    crops = []
    for i in range(n):
        crop = big[i, :, tops[i] : tops[i] + h, lefts[i] : lefts[i] + w]
        crops.append(crop.flip(-1) if flips[i] else crop)
    return torch.stack(crops)


def batches(n: int, size: int, gen: torch.Generator | None) -> Iterator[torch.Tensor]:
    """One pass of index batches (the last one partial): shuffled with `gen`, in order without."""
    order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
    for i in range(0, n, size):
        yield order[i : i + size]


def cached_tensors(
    ctx: RunContext, kind: str, recipe: dict[str, Any], build: Callable[[], dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Tensors for `recipe` from the artifact store, built (and stored) when missing."""
    art = ctx.artifacts.get(kind, recipe)
    out = art.path / "tensors.pt"
    if art.done and out.exists():
        loaded: dict[str, torch.Tensor] = torch.load(out, map_location="cpu", weights_only=True)
        return loaded
    value = {k: v.detach().cpu() for k, v in build().items()}
    save_torch(value, out, what=f"the {kind} artifact")
    ctx.artifacts.finish(art)
    return value
