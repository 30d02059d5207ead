"""The paper's ImageNet subset from local class folders (`train/<wnid>/*`, `val/<wnid>/*`).

Sec. IV-A3: the first 100 classes (sorted folder names), 20% of each class's training images
(the first 20% by file name, so the subset is reproducible), all matching validation images;
images resized (shorter side) and centre-cropped to 224x224 and held as uint8.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ueb.errors import DataError
from ueb.imageset import ImageSet
from ueb.interfaces import Dataset, Splits
from ueb.params import bounded

EXTENSIONS = {".jpeg", ".jpg", ".png", ".bmp", ".webp"}


def load_image(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as src:
            im = src.convert("RGB")
            w, h = im.size
            scale = size / min(w, h)
            im = im.resize(
                (max(size, round(w * scale)), max(size, round(h * scale))),
                Image.Resampling.BILINEAR,
            )
            w, h = im.size
            left, top = (w - size) // 2, (h - size) // 2
            im = im.crop((left, top, left + size, top + size))
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(
            f"cannot read image {path} ({exc})", "remove or replace the corrupt file"
        ) from exc


class ImageNetSubset(Dataset):
    version = "1"

    @dataclass(frozen=True)
    class Params:
        num_classes: int = bounded(100, ge=1)
        train_fraction: float = bounded(0.2, gt=0, le=1)
        size: int = bounded(224, ge=1)

    def load(self, root: Path | None) -> Splits:
        if root is None:
            raise DataError(
                "imagenet-subset needs --data-root",
                "point it at a folder with train/<class>/ and val/<class>/ image folders",
            )
        root = Path(root).expanduser()
        train_dir, val_dir = root / "train", root / "val"
        for d in (train_dir, val_dir):
            if not d.is_dir():
                raise DataError(
                    f"{d} does not exist",
                    "expected train/<class>/*.JPEG and val/<class>/*.JPEG under --data-root",
                )
        classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())[
            : self.params.num_classes
        ]
        if not classes:
            raise DataError(f"{train_dir} holds no class folders", "expected train/<class>/*.JPEG")
        p = self.params
        train = self._split(train_dir, classes, p.train_fraction)
        test = self._split(val_dir, classes, 1.0)
        return Splits(train, test, source=str(root))

    def _split(self, folder: Path, classes: list[str], fraction: float) -> ImageSet:
        images, labels = [], []
        for label, cls in enumerate(classes):
            files = (
                sorted(f for f in (folder / cls).glob("*") if f.suffix.lower() in EXTENSIONS)
                if (folder / cls).is_dir()
                else []
            )
            take = files[: max(1, int(round(len(files) * fraction)))] if files else []
            for f in take:
                images.append(load_image(f, self.params.size))
                labels.append(label)
        if not images:
            raise DataError(
                f"no images found under {folder} for the selected classes",
                "check the folder layout",
            )
        return ImageSet(
            torch.from_numpy(np.stack(images)), torch.tensor(labels), tuple(classes), self.name
        )
