"""The strength-scaled contrastive augmentation AUE and AAP optimise through (kornia, differentiable).

EhanW/AUE-AAP (utils.py, `Augment`): random resized crop with scale (max(1 - 0.9 s, 0.05), 1),
horizontal flip (p 0.5), colour jitter (brightness, contrast, saturation 0.4 s, hue 0.1 s, applied
with p min(0.99, 0.8 s)) and random grayscale (p 0.2 s); s = 1 is SimCLR's CIFAR policy, s = 0
leaves only crop-free flips. kornia draws its parameters from torch's global generator, so every
call runs in a forked global state seeded from the caller's generator: the same generator state
gives the same views, and the global state outside is untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ueb.errors import ConfigError


def _kornia() -> Any:
    try:
        import kornia.augmentation as K
    except ImportError as exc:
        raise ConfigError(
            "AUE and AAP need kornia for their differentiable augmentations",
            "pip install kornia",
        ) from exc
    return K


@contextmanager
def seeded_from(gen: torch.Generator) -> Iterator[None]:
    """Run the body with torch's global RNG seeded from `gen` (which advances)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device))
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class ContrastiveAugment:
    """Batched, differentiable views of strength `strength` for images of side `size`."""

    def __init__(self, strength: float, size: int) -> None:
        K = _kornia()
        s = strength
        self.strength = s
        self.policy = K.AugmentationSequential(
            K.RandomResizedCrop((size, size), scale=(max(1 - 0.9 * s, 0.05), 1.0)),
            K.RandomHorizontalFlip(p=0.5),
            K.ColorJitter(0.4 * s, 0.4 * s, 0.4 * s, 0.1 * s, p=min(0.99, 0.8 * s)),
            K.RandomGrayscale(p=0.2 * s),
        )

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Views of a [0, 1] batch; grey images go through as RGB and come back grey."""
        grey = x.shape[1] == 1
        xin = x.expand(-1, 3, -1, -1) if grey else x
        with seeded_from(gen):
            out = self.policy(xin)
        return out.mean(1, keepdim=True) if grey else out


def crop_flip_policy(size: int) -> Any:
    """AAP's 'standard' mode: random crop (padding size/8) and horizontal flip."""
    K = _kornia()
    return K.AugmentationSequential(
        K.RandomCrop((size, size), padding=size // 8), K.RandomHorizontalFlip(p=0.5)
    )
