"""ImageSet: a labelled image collection held as one tensor, the unit every plugin passes on."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import numpy as np
import torch


@dataclass
class ImageSet:
    """Images as an (N, C, H, W) tensor, uint8 in 0..255 or float32 in [0, 1], plus labels.

    uint8 is the storage format (lossless, 4x smaller); data-stage countermeasures may hand
    back float32 images when their output is not on the 8-bit grid (filters, noise).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str = ""
    meta: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(
                f"ImageSet images must be (N, C, H, W), got shape {tuple(self.images.shape)}"
            )
        if self.images.dtype not in (torch.uint8, torch.float32):
            raise ValueError(f"ImageSet images must be uint8 or float32, got {self.images.dtype}")
        if self.labels.ndim != 1 or len(self.labels) != len(self.images):
            raise ValueError(
                f"ImageSet has {len(self.images)} images but labels of shape {tuple(self.labels.shape)}"
            )
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def float01(self) -> torch.Tensor:
        """Images as float32 in [0, 1]."""
        if self.images.dtype == torch.uint8:
            return self.images.float().div_(255.0)
        return self.images

    def uint8(self) -> torch.Tensor:
        """Images on the 8-bit grid (rounded, clamped)."""
        if self.images.dtype == torch.uint8:
            return self.images
        return quantize(self.images)

    def with_images(self, images: torch.Tensor, **meta: object) -> ImageSet:
        """A copy with other images (same labels and classes)."""
        return replace(self, images=images, meta={**self.meta, **meta})

    def subset(self, index: torch.Tensor | np.ndarray | list[int]) -> ImageSet:
        idx = torch.as_tensor(index, dtype=torch.long)
        return replace(self, images=self.images[idx], labels=self.labels[idx])

    def first_per_class(self, n: int | None) -> ImageSet:
        """The first `n` images of every class, in their original order (deterministic)."""
        if n is None:
            return self
        keep = []
        for c in range(self.num_classes):
            keep.append(torch.nonzero(self.labels == c).flatten()[:n])
        idx = torch.sort(torch.cat(keep)).values
        return self.subset(idx)

    def to(self, device: torch.device | str) -> ImageSet:
        return replace(self, images=self.images.to(device), labels=self.labels.to(device))

    def fingerprint(self) -> str:
        """Content hash of images, labels and classes: the cache key of anything derived."""
        h = hashlib.sha256()
        h.update(str(tuple(self.images.shape)).encode() + str(self.images.dtype).encode())
        h.update(self.images.detach().cpu().contiguous().numpy().tobytes())
        h.update(self.labels.detach().cpu().numpy().astype(np.int64).tobytes())
        h.update("\x00".join(self.classes).encode())
        return h.hexdigest()[:16]


def quantize(images01: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] to uint8 by rounding to the nearest level."""
    return images01.detach().clamp(0, 1).mul(255.0).round_().to(torch.uint8)
