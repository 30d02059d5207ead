"""Tiny-ImageNet (Stanford CS231N): 200 classes of 64x64 images from the official layout.

`--data-root` is `tiny-imagenet-200/` or a folder containing it (the extracted
`tiny-imagenet-200.zip`; ueb never downloads):

    wnids.txt                         the 200 class ids, one a line
    train/<wnid>/images/*.JPEG        500 training images per class
    val/images/*.JPEG                 10,000 validation images
    val/val_annotations.txt           "<file>\\t<wnid>\\t<x>\\t<y>\\t<w>\\t<h>" per image

The validation set is the test split (the official test images carry no labels). Classes are
the wnids sorted by name, the order of torchvision's ImageFolder over `train/`, which the
unlearnable-examples code bases use; files are read in sorted order. Grey JPEGs (there are
some) are converted to RGB. Every image must be 64x64.
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

FOLDER = "tiny-imagenet-200"
SIZE = 64
LAYOUT = (
    f"{FOLDER}/ with wnids.txt, train/<wnid>/images/*.JPEG, val/images/ and val/val_annotations.txt"
)


def read_image(path: Path) -> np.ndarray:
    """One 64x64 image as (3, 64, 64) uint8, or one DataError line."""
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(
            f"tiny-imagenet: cannot read image {path} ({exc})", "extract the official archive again"
        ) from exc
    if rgb.size != (SIZE, SIZE):
        raise DataError(
            f"tiny-imagenet: {path} is {rgb.size[0]}x{rgb.size[1]}, not {SIZE}x{SIZE}",
            "use the official tiny-imagenet-200 images",
        )
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def find_root(root: Path) -> Path:
    for cand in (root, root / FOLDER):
        if (cand / "wnids.txt").is_file():
            return cand
    if not root.exists():
        raise DataError(
            f"tiny-imagenet: data root {root} does not exist", f"point --data-root at {LAYOUT}"
        )
    raise DataError(
        f"tiny-imagenet: no wnids.txt in {root} or {root / FOLDER}", f"expected {LAYOUT}"
    )


def read_wnids(base: Path) -> list[str]:
    wnids = [w.strip() for w in (base / "wnids.txt").read_text().splitlines() if w.strip()]
    if not wnids:
        raise DataError(f"tiny-imagenet: {base / 'wnids.txt'} is empty", f"expected {LAYOUT}")
    if len(set(wnids)) != len(wnids):
        raise DataError(
            f"tiny-imagenet: {base / 'wnids.txt'} lists a class twice",
            "extract the official archive again",
        )
    return sorted(wnids)


def read_val_annotations(
    base: Path, label_of: dict[str, int], known: set[str]
) -> list[tuple[str, int]]:
    """(file name, label) of every validation image of the selected classes, sorted by file."""
    path = base / "val" / "val_annotations.txt"
    if not path.is_file():
        raise DataError(f"tiny-imagenet: {path} does not exist", f"expected {LAYOUT}")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise DataError(
                f"tiny-imagenet: {path.name} line {number} is not '<file>\\t<wnid>\\t...'",
                "extract the official archive again",
            )
        name, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in known:
            raise DataError(
                f"tiny-imagenet: {path.name} line {number} labels {name} with '{wnid}', which wnids.txt does not list",
                "extract the official archive again (wnids.txt and val/ belong together)",
            )
        if wnid in label_of:
            rows.append((name, label_of[wnid]))
    return sorted(rows)


class TinyImageNet(Dataset):
    version = "1"

    @dataclass(frozen=True)
    class Params:
        num_classes: int | None = bounded(None, ge=1)  # None: every class of wnids.txt (200)

    def load(self, root: Path | None) -> Splits:
        if root is None:
            raise DataError("tiny-imagenet needs --data-root", f"point it at {LAYOUT}")
        base = find_root(Path(root).expanduser())
        known = read_wnids(base)
        n = self.params.num_classes
        if n is not None and n > len(known):
            raise DataError(
                f"tiny-imagenet: num_classes is {n} but wnids.txt lists {len(known)}",
                f"use num_classes <= {len(known)}",
            )
        wnids = known[:n] if n is not None else known
        label_of = {w: i for i, w in enumerate(wnids)}
        images, labels = [], []
        for wnid in wnids:
            folder = base / "train" / wnid / "images"
            files = sorted(folder.glob("*.JPEG")) if folder.is_dir() else []
            if not files:
                raise DataError(
                    f"tiny-imagenet: no training images in {folder}", f"expected {LAYOUT}"
                )
            images += [read_image(f) for f in files]
            labels += [label_of[wnid]] * len(files)
        train = self._imageset(images, labels, wnids)
        val = read_val_annotations(base, label_of, set(known))
        if not val:
            raise DataError(
                "tiny-imagenet: val/val_annotations.txt lists no image of the selected classes",
                f"expected {LAYOUT}",
            )
        test = self._imageset(
            [read_image(base / "val" / "images" / name) for name, _ in val],
            [lab for _, lab in val],
            wnids,
        )
        return Splits(train, test, source=str(base))

    def _imageset(self, images: list[np.ndarray], labels: list[int], wnids: list[str]) -> ImageSet:
        return ImageSet(
            torch.from_numpy(np.stack(images)),
            torch.tensor(labels, dtype=torch.int64),
            tuple(wnids),
            self.name,
        )
