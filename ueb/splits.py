"""The train/test subsets a run uses, loaded once per process.

The plan loads every dataset before any work (a missing file fails there, in seconds) and
fingerprints the subsets; workers load them again through the same memo and check that the
fingerprints still match, so a dataset file that changes mid-run cannot slip into a cell.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ueb.errors import DataError
from ueb.imageset import ImageSet
from ueb.interfaces import Dataset, Splits
from ueb.profile import DataConfig

_MEMO: dict[tuple[str, str, Any, Any], Splits] = {}


def load_splits(dataset: Dataset, digest: str, data_root: str | None, data: DataConfig) -> Splits:
    """`dataset`'s splits cut to the run's first-N-per-class subsets (memoised per process)."""
    key = (digest, data_root or "", data.train_per_class, data.test_per_class)
    if key not in _MEMO:
        splits = dataset.load(Path(data_root) if data_root else None)
        if not isinstance(splits, Splits):
            raise DataError(
                f"dataset '{dataset.name}' returned {type(splits).__name__}, not Splits",
                "fix the dataset plugin's load()",
            )
        for part, images in (("train", splits.train), ("test", splits.test)):
            _check_labels(dataset.name, part, images)
        _MEMO[key] = Splits(
            splits.train.first_per_class(data.train_per_class),
            splits.test.first_per_class(data.test_per_class),
            splits.source,
        )
    return _MEMO[key]


def _check_labels(name: str, part: str, images: ImageSet) -> None:
    """Labels must name the dataset's classes (0..K-1): a corrupt archive is one line here, not
    a torch error deep inside a poisoner or an integrity check."""
    if len(images) == 0:
        raise DataError(f"dataset '{name}' has an empty {part} split", "check the dataset files")
    low, high = int(images.labels.min()), int(images.labels.max())
    if low < 0 or high >= images.num_classes:
        bad = low if low < 0 else high
        raise DataError(
            f"dataset '{name}' has {part} label {bad}, outside 0..{images.num_classes - 1} "
            f"for its {images.num_classes} classes",
            "the dataset files are damaged or of another dataset: replace them",
        )


def forget() -> None:
    """Drop every loaded dataset (tests that rewrite dataset files use this)."""
    _MEMO.clear()
