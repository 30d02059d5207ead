"""CIFAR-10 and CIFAR-100 from the official "python version" archives, never downloaded.

`--data-root` may point at the .tar.gz itself, at the extracted folder
(`cifar-10-batches-py/`, `cifar-100-python/`), or at a folder containing either.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ueb.errors import DataError
from ueb.imageset import ImageSet
from ueb.interfaces import Dataset, Splits


class _CIFAR(Dataset):
    version = "1"
    folder: ClassVar[str]
    archive: ClassVar[str]
    train_files: ClassVar[tuple[str, ...]]
    test_files: ClassVar[tuple[str, ...]]
    meta_file: ClassVar[str]
    label_key: ClassVar[bytes]
    names_key: ClassVar[bytes]

    @dataclass(frozen=True)
    class Params:
        pass

    def layout(self) -> str:
        return (
            f"{self.archive} or its folder {self.folder}/ with "
            f"{', '.join(self.train_files + self.test_files + (self.meta_file,))}"
        )

    def load(self, root: Path | None) -> Splits:
        if root is None:
            raise DataError(
                f"{self.name} needs --data-root",
                f"point it at {self.layout()} (ueb never downloads)",
            )
        root = Path(root).expanduser()
        members = self._open(root)
        train_parts = [self._batch(members, f) for f in self.train_files]
        test_data, test_labels = self._batch(members, self.test_files[0])
        meta = self._unpickle(members, self.meta_file)
        names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta[self.names_key])
        x_train = np.concatenate([p[0] for p in train_parts])
        y_train = np.concatenate([p[1] for p in train_parts])
        train = ImageSet(torch.from_numpy(x_train), torch.from_numpy(y_train), names, self.name)
        test = ImageSet(
            torch.from_numpy(test_data), torch.from_numpy(test_labels), names, self.name
        )
        return Splits(train, test, source=str(root))

    # -- file access ----------------------------------------------------------------------

    def _open(self, root: Path) -> dict[str, Any]:
        """Map of member file name -> bytes loader, from an archive or a folder."""
        candidates = [root, root / self.folder, root / self.archive]
        for cand in candidates:
            if cand.is_dir() and all(
                (cand / f).is_file() for f in self.train_files + self.test_files + (self.meta_file,)
            ):
                return {
                    f: (lambda p=cand / f: p.read_bytes())
                    for f in self.train_files + self.test_files + (self.meta_file,)
                }
            if cand.is_file() and cand.name.endswith((".tar.gz", ".tgz", ".tar")):
                try:
                    with tarfile.open(cand) as tar:
                        data = {
                            Path(m.name).name: tar.extractfile(m).read()  # type: ignore[union-attr]
                            for m in tar.getmembers()
                            if m.isfile() and Path(m.name).parent.name == self.folder
                        }
                except (tarfile.TarError, OSError, EOFError) as exc:
                    raise DataError(
                        f"{cand} is not a readable CIFAR archive ({exc})",
                        f"expected {self.layout()}",
                    ) from exc
                missing = [
                    f
                    for f in self.train_files + self.test_files + (self.meta_file,)
                    if f not in data
                ]
                if missing:
                    raise DataError(
                        f"{cand} lacks {', '.join(missing)}", f"expected {self.layout()}"
                    )
                return {k: (lambda b=v: b) for k, v in data.items()}
        if not root.exists():
            raise DataError(
                f"data root {root} does not exist", f"point --data-root at {self.layout()}"
            )
        raise DataError(f"no {self.name} data found under {root}", f"expected {self.layout()}")

    def _unpickle(self, members: dict[str, Any], name: str) -> dict[bytes, Any]:
        try:
            obj = pickle.load(io.BytesIO(members[name]()), encoding="bytes")
        except Exception as exc:
            raise DataError(
                f"{self.name} file {name} is corrupt ({type(exc).__name__}: {exc})",
                "re-extract the official archive",
            ) from exc
        if not isinstance(obj, dict):
            raise DataError(
                f"{self.name} file {name} is not a CIFAR batch", f"expected {self.layout()}"
            )
        return obj

    def _batch(self, members: dict[str, Any], name: str) -> tuple[np.ndarray, np.ndarray]:
        d = self._unpickle(members, name)
        try:
            data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            labels = np.asarray(d[self.label_key], dtype=np.int64)
        except (KeyError, ValueError) as exc:
            raise DataError(
                f"{self.name} file {name} has an unexpected layout ({exc})",
                f"expected {self.layout()}",
            ) from exc
        if len(labels) != len(data):
            raise DataError(
                f"{self.name} file {name} has {len(data)} images but {len(labels)} labels",
                "re-extract the official archive",
            )
        return data, labels


class CIFAR10(_CIFAR):
    folder = "cifar-10-batches-py"
    archive = "cifar-10-python.tar.gz"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    meta_file = "batches.meta"
    label_key = b"labels"
    names_key = b"label_names"


class CIFAR100(_CIFAR):
    folder = "cifar-100-python"
    archive = "cifar-100-python.tar.gz"
    train_files = ("train",)
    test_files = ("test",)
    meta_file = "meta"
    label_key = b"fine_labels"
    names_key = b"fine_label_names"
