"""Shared bits of the built-in victims: which stem to use for an input size."""

from __future__ import annotations

from typing import Literal

from ueb.errors import ConfigError

Stem = Literal["auto", "cifar", "imagenet"]

# Inputs up to this side use the CIFAR stem (3x3 stride-1 conv, no max-pool) under stem="auto";
# larger ones (the 224x224 ImageNet subset) use torchvision's 7x7 stride-2 conv + max-pool.
CIFAR_STEM_MAX_SIZE = 64


def use_cifar_stem(stem: Stem, image_size: int) -> bool:
    if stem == "auto":
        return image_size <= CIFAR_STEM_MAX_SIZE
    return stem == "cifar"


def check_positive(owner: str, **values: int) -> None:
    for key, value in values.items():
        if value <= 0:
            raise ConfigError(f"{owner}: parameter '{key}' must be positive, got {value}")
