"""SVHN (Netzer et al. 2011), cropped digits, from the official .mat files; never downloaded.

`--data-root` holds `train_32x32.mat` and `test_32x32.mat` (and `extra_32x32.mat` with
`extra=true`), as published at ufldl.stanford.edu/housenumbers. Each holds `X`, a
(32, 32, 3, N) uint8 array (row, column, channel, image), and `y`, N labels 1..10 where 10
is the digit 0; as in the official convention (and torchvision) label 10 becomes 0, so
label k is the digit k.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ueb.errors import DataError
from ueb.imageset import ImageSet
from ueb.interfaces import Dataset, Splits

CLASSES = tuple(str(d) for d in range(10))
TRAIN, TEST, EXTRA = "train_32x32.mat", "test_32x32.mat", "extra_32x32.mat"
LAYOUT = f"{TRAIN} and {TEST} from ufldl.stanford.edu/housenumbers (ueb never downloads)"


def read_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, 32, 32) uint8, labels (N,) int64 with 10 -> 0) of one official file."""
    import scipy.io

    if not path.is_file():
        raise DataError(f"svhn: {path} does not exist", f"put {LAYOUT} under --data-root")
    try:
        mat: dict[str, Any] = scipy.io.loadmat(path)
    except Exception as exc:  # scipy raises ValueError, TypeError, OSError, ... on a bad file
        raise DataError(
            f"svhn: {path} is not a readable MATLAB file ({type(exc).__name__}: {exc})",
            "download the official file again",
        ) from exc
    if "X" not in mat or "y" not in mat:
        raise DataError(f"svhn: {path} lacks the arrays 'X' and 'y'", f"expected {LAYOUT}")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
        raise DataError(
            f"svhn: {path.name} holds X of shape {x.shape} {x.dtype}, not (32, 32, 3, N) uint8",
            "use the cropped-digits files (*_32x32.mat), not the full-numbers archives",
        )
    if len(y) != x.shape[3]:
        raise DataError(
            f"svhn: {path.name} has {x.shape[3]} images but {len(y)} labels",
            "download the official file again",
        )
    labels = y.astype(np.int64)
    bad = (labels < 1) | (labels > 10)
    if bad.any():
        first = int(np.argmax(bad))
        raise DataError(
            f"svhn: {path.name} label {labels[first]} (image {first}) is outside 1..10",
            "the official files label digits 1..10 (10 is the digit 0); download them again",
        )
    labels[labels == 10] = 0
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), labels


class SVHN(Dataset):
    version = "1"

    @dataclass(frozen=True)
    class Params:
        extra: bool = False  # also train on extra_32x32.mat (531,131 easier digits)

    def load(self, root: Path | None) -> Splits:
        if root is None:
            raise DataError("svhn needs --data-root", f"point it at a folder with {LAYOUT}")
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DataError(
                f"svhn: data root {root} does not exist",
                f"point --data-root at a folder with {LAYOUT}",
            )
        x_train, y_train = read_split(root / TRAIN)
        if self.params.extra:
            x_extra, y_extra = read_split(root / EXTRA)
            x_train, y_train = (
                np.concatenate([x_train, x_extra]),
                np.concatenate([y_train, y_extra]),
            )
        x_test, y_test = read_split(root / TEST)
        train = ImageSet(torch.from_numpy(x_train), torch.from_numpy(y_train), CLASSES, self.name)
        test = ImageSet(torch.from_numpy(x_test), torch.from_numpy(y_test), CLASSES, self.name)
        return Splits(train, test, source=str(root))
