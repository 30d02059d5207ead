"""Small, structured image sets for tests (shapes and colours per class, not pure noise)."""

from __future__ import annotations

import torch

from ueb.imageset import ImageSet


def make_imageset(
    per_class: int = 8,
    num_classes: int = 4,
    size: int = 32,
    channels: int = 3,
    seed: int = 0,
    name: str = "synthetic",
) -> ImageSet:
    """Each class: a bright square at a class-specific place and tint, on textured background.

    Learnable in a few steps (so training tests can assert accuracy moves) yet every image
    differs (so sample-wise checks are meaningful).
    """
    gen = torch.Generator().manual_seed(seed)
    n = per_class * num_classes
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    x = torch.rand(n, channels, size, size, generator=gen) * 0.35 + 0.1
    side = max(4, size // 4)
    for i in range(n):
        c = int(labels[i])
        row = (c * 7) % (size - side)
        col = (c * 13) % (size - side)
        jitter = torch.randint(-1, 2, (2,), generator=gen)
        r0 = int(max(0, min(size - side, row + int(jitter[0]))))
        c0 = int(max(0, min(size - side, col + int(jitter[1]))))
        tint = torch.linspace(0.5, 1.0, channels).roll(c % channels)
        x[i, :, r0 : r0 + side, c0 : c0 + side] = tint[:, None, None]
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageSet(images, labels, tuple(f"class{c}" for c in range(num_classes)), name)
