"""The embedded Fashion-MNIST images composited on natural-photo backgrounds.

Fashion-MNIST's garments sit on a black background, so a victim learns the silhouettes in a few
hundred steps, about as fast as a class-wise high-frequency shortcut; then the shortcut no longer
wins the race, unlike on CIFAR-10 (docs/testbed.md). Pasting every garment on a random crop of a
photo makes the clean features harder without changing the labels, and it also removes the
all-black pixels on which a perturbation's negative half is clipped away.

Backgrounds are random 32x32 crops of photos that scikit-image ships inside its package (no
download; all public domain or CC0, see docs/testbed.md), scaled so that the shorter side is
`photo_size` pixels. The garment's grey level is also its opacity, up to `opaque_at` (a pixel
at that level or brighter hides the background). Crops come from a generator seeded by `seed`
(a property of the dataset, not of the run), train and test from separate streams, so the data
is the same for every run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ueb.errors import ConfigError, DataError
from ueb.imageset import ImageSet
from ueb.interfaces import Dataset, Splits
from ueb.params import bounded
from ueb_datasets.embedded import EmbeddedFashionMNIST

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "brick", "grass", "gravel")


class TexturedFashionMNIST(Dataset):
    version = "1"

    @dataclass(frozen=True)
    class Params:
        photos: tuple[str, ...] = PHOTOS
        photo_size: int = bounded(96, ge=32)
        opaque_at: int = bounded(64, ge=1, le=255)
        seed: int = bounded(0, ge=0)

    def __init__(self, params: Params | None = None, name: str | None = None) -> None:
        super().__init__(params, name)
        self.params: TexturedFashionMNIST.Params = self.params

    def load(self, root: Path | None) -> Splits:
        p = self.params
        if p.photo_size < 32 or not 1 <= p.opaque_at <= 255 or not p.photos:
            raise ConfigError(
                f"dataset '{self.name}': photo_size {p.photo_size}, opaque_at {p.opaque_at}, "
                f"{len(p.photos)} photos",
                "use photo_size >= 32, opaque_at in 1..255 and at least one photo",
            )
        plain = EmbeddedFashionMNIST().load(root)
        photos = [load_photo(name, p.photo_size) for name in p.photos]
        train = self._composite(plain.train, photos, stream=0)
        test = self._composite(plain.test, photos, stream=1)
        return Splits(train, test, source=f"{plain.source}+skimage:{','.join(p.photos)}")

    def _composite(self, data: ImageSet, photos: list[np.ndarray], stream: int) -> ImageSet:
        rng = np.random.default_rng([self.params.seed, stream])
        n, _, h, w = data.images.shape
        backgrounds = np.empty((n, 3, h, w), dtype=np.float32)
        which = rng.integers(0, len(photos), n)
        for i in range(n):
            photo = photos[which[i]]
            top = rng.integers(0, photo.shape[1] - h + 1)
            left = rng.integers(0, photo.shape[2] - w + 1)
            backgrounds[i] = photo[:, top : top + h, left : left + w]
        grey = data.images[:, :1].float().numpy()  # the garment, 0..255, channels are equal
        alpha = np.clip(grey / self.params.opaque_at, 0.0, 1.0)
        mixed = alpha * grey + (1 - alpha) * backgrounds
        images = torch.from_numpy(np.clip(np.rint(mixed), 0, 255).astype(np.uint8))
        return ImageSet(
            images, data.labels.clone(), data.classes, self.name or "fashion-mnist-textured"
        )


def load_photo(name: str, shorter_side: int) -> np.ndarray:
    """A scikit-image sample photo as (3, H, W) float32 0..255, shorter side `shorter_side`."""
    import skimage.data
    from skimage.transform import resize

    loader = getattr(skimage.data, name, None)
    if loader is None:
        raise ConfigError(
            f"scikit-image has no sample photo '{name}'", f"use some of {', '.join(PHOTOS)}"
        )
    try:
        img = np.asarray(loader())
    except Exception as exc:  # photos outside the package would need a download: refuse
        raise DataError(
            f"scikit-image sample photo '{name}' is not available offline ({type(exc).__name__})",
            f"use photos shipped with scikit-image, e.g. {', '.join(PHOTOS)}",
        ) from exc
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    img = img[:, :, :3].astype(np.float32)
    scale = shorter_side / min(img.shape[:2])
    size = (
        max(shorter_side, round(img.shape[0] * scale)),
        max(shorter_side, round(img.shape[1] * scale)),
    )
    small = resize(img, size, order=1, anti_aliasing=True, preserve_range=True)
    return np.ascontiguousarray(small.transpose(2, 0, 1).astype(np.float32))
