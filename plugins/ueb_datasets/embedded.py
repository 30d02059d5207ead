"""The embedded default dataset: a real Fashion-MNIST subset shipped inside the package."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from ueb.errors import DataError
from ueb.imageset import ImageSet
from ueb.interfaces import Dataset, Splits

CLASSES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip
FILE = "fashion_mnist_subset.npz"


def to_rgb32(images: np.ndarray) -> torch.Tensor:
    """(N, 28, 28) grey uint8 -> (N, 3, 32, 32) uint8, zero-padded by 2 and replicated."""
    x = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    return torch.from_numpy(np.ascontiguousarray(np.repeat(x[:, None], 3, axis=1)))


class EmbeddedFashionMNIST(Dataset):
    version = "1"

    @dataclass(frozen=True)
    class Params:
        rgb: bool = True

    def load(self, root: Path | None) -> Splits:
        path = resources.files("ueb_datasets") / "embedded" / FILE
        try:
            with resources.as_file(path) as p, np.load(p) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(
                f"the embedded dataset {path} is missing or corrupt ({exc})", "reinstall ueb"
            ) from exc
        conv = (
            to_rgb32
            if self.params.rgb
            else (lambda a: torch.from_numpy(np.pad(a, ((0, 0), (2, 2), (2, 2)))[:, None].copy()))
        )
        train = ImageSet(
            conv(arrays["train_images"]),
            torch.from_numpy(arrays["train_labels"].astype(np.int64)),
            CLASSES,
            "fashion-mnist",
        )
        test = ImageSet(
            conv(arrays["test_images"]),
            torch.from_numpy(arrays["test_labels"].astype(np.int64)),
            CLASSES,
            "fashion-mnist",
        )
        return Splits(train, test, source=f"embedded:{FILE}")
