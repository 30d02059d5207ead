"""The dataset kit: the Splits a Dataset loads from its local files."""

from __future__ import annotations

import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ueb.imageset import ImageSet

if typing.TYPE_CHECKING:
    from ueb.interfaces import Splits
from ueb.testing.contexts import tiny_training
from ueb.testing.declarations import _instantiate, _who

# --------------------------------------------------------------------------- datasets


def check_dataset(
    plugin: Any, *, params: Mapping[str, Any] | None = None, root: str | Path | None = None
) -> Splits:
    """Load a Dataset (class or instance) from `root` twice and check the splits.

    Splits of two non-empty ImageSets with the same classes, channels and square image size,
    uint8 or float32 in [0, 1], labels in range, every class in the training split, and the
    same content on a second load. Returns the splits.
    """
    from ueb.interfaces import Dataset, Splits

    dataset = _instantiate(plugin, Dataset, params, tiny_training())
    who = _who(dataset)
    where = f"{who}.load({str(root) if root is not None else 'None'})"
    splits = dataset.load(Path(root) if root is not None else None)
    if not isinstance(splits, Splits):
        raise AssertionError(
            f"{where} returned {type(splits).__name__}; return ueb.interfaces.Splits(train, test)"
        )
    for part in ("train", "test"):
        images = getattr(splits, part)
        if not isinstance(images, ImageSet):
            raise AssertionError(f"{where}: {part} is {type(images).__name__}; make it an ImageSet")
        if len(images) == 0:
            raise AssertionError(f"{where}: the {part} split is empty")
        if images.images.shape[-1] != images.images.shape[-2]:
            raise AssertionError(
                f"{where}: {part} images are {tuple(images.images.shape[-2:])}; victims take square images"
            )
        labels = images.labels
        if int(labels.min()) < 0 or int(labels.max()) >= images.num_classes:
            raise AssertionError(
                f"{where}: {part} labels span [{int(labels.min())}, {int(labels.max())}] but there are {images.num_classes} classes"
            )
        if images.images.is_floating_point():
            lo, hi = float(images.images.min()), float(images.images.max())
            if not (lo >= 0 and hi <= 1):
                raise AssertionError(
                    f"{where}: {part} float images span [{lo:.4f}, {hi:.4f}]; use [0, 1] (or uint8)"
                )
    train, test = splits.train, splits.test
    if train.classes != test.classes:
        raise AssertionError(
            f"{where}: train and test list different classes; give both the same tuple"
        )
    if train.images.shape[1:] != test.images.shape[1:]:
        raise AssertionError(
            f"{where}: train images are {tuple(train.images.shape[1:])}, test images {tuple(test.images.shape[1:])}; use one shape"
        )
    missing = sorted(set(range(train.num_classes)) - set(train.labels.tolist()))
    if missing:
        raise AssertionError(f"{where}: classes {missing[:5]} have no training image")
    again = type(dataset)(dataset.params, name=dataset.name).load(
        Path(root) if root is not None else None
    )
    if (again.train.fingerprint(), again.test.fingerprint()) != (
        train.fingerprint(),
        test.fingerprint(),
    ):
        raise AssertionError(
            f"{where} returns different data on a second load; keep the order and content fixed"
        )
    return splits
