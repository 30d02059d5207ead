"""Poisoned training sets on disk, computed once per (poisoner@version, params, dataset, seed).

Stored lossless as the uint8 images themselves (`images.npy`) beside `facts.json`, which also
holds the SHA-256 of the image bytes and their shape. Both files are written atomically under a
per-key lock, and every load re-checks them (checksum, dtype, shape, then the caller's own
`verify`, e.g. the poisoner's budget): an entry that fails is moved aside with one warning and
computed again, never used. Every countermeasure and victim of a matrix reuses the same entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ueb.atomic import save_npy, write_text
from ueb.errors import UebError
from ueb.locks import FileLock

# the cache's own bookkeeping in facts.json; load() hands back the facts as they were saved
_BOOKKEEPING = ("sha256", "images_shape")


def images_sha256(array: np.ndarray) -> str:
    """SHA-256 of the raw image bytes (C order), as `hashlib.sha256(array.tobytes())`."""
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


class PoisonCache:
    def __init__(self, root: Path, log: Callable[[str], None] = print) -> None:
        self.root = Path(root)
        self.log = log

    def folder(self, key: str) -> Path:
        return self.root / key

    def _lock(self, key: str) -> FileLock:
        return FileLock(self.root / f"{key}.lock", on_wait=self.log, what=f"writing poison {key}")

    def _reading_lock(self, key: str) -> contextlib.AbstractContextManager[object]:
        """The key's lock, or none where the lock file cannot be made (a read-only cache that
        nothing writes, or a full disk that fails the write after any recomputation anyway)."""
        try:
            return self._lock(key)
        except UebError:
            return contextlib.nullcontext()

    def load(
        self, key: str, verify: Callable[[torch.Tensor], None] | None = None
    ) -> tuple[torch.Tensor, dict[str, Any]] | None:
        """The stored uint8 images and facts, or None when absent or failing a check.

        `verify(images)` may raise a UebError (e.g. IntegrityError) or ValueError to reject them.
        """
        folder = self.folder(key)
        if not folder.is_dir():
            return None
        with self._reading_lock(key):
            images_path, facts_path = folder / "images.npy", folder / "facts.json"
            if not images_path.exists() and not facts_path.exists():
                return None  # nothing was ever written here
            try:
                array, facts = self._read(images_path, facts_path)
                images = torch.from_numpy(array)
                if verify is not None:
                    verify(images)
            except _Rejected as rejected:
                self._discard(key, rejected.reason)
                return None
            except (UebError, ValueError) as exc:
                line = exc.line() if isinstance(exc, UebError) else str(exc)
                self._discard(key, f"its images fail the poison checks: {line}")
                return None
            return images, {k: v for k, v in facts.items() if k not in _BOOKKEEPING}

    def _read(self, images_path: Path, facts_path: Path) -> tuple[np.ndarray, dict[str, Any]]:
        if not facts_path.exists():
            raise _Rejected("facts.json is missing")
        if not images_path.exists():
            raise _Rejected("images.npy is missing")
        try:
            facts = json.loads(facts_path.read_text())
        except (OSError, ValueError) as exc:
            raise _Rejected(f"facts.json is unreadable: {exc}") from exc
        if not isinstance(facts, dict):
            raise _Rejected("facts.json is not a JSON object")
        try:
            array = np.load(images_path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise _Rejected(f"images.npy is unreadable: {exc}") from exc
        if "sha256" not in facts:
            raise _Rejected("it has no checksum (written by an older ueb)")
        if array.dtype != np.uint8:
            raise _Rejected(f"its images are {array.dtype}, not uint8")
        stored_shape = facts.get("images_shape")
        if array.ndim != 4 or (
            stored_shape is not None and list(array.shape) != list(stored_shape)
        ):
            raise _Rejected(
                f"its images have shape {tuple(array.shape)}, not the stored {stored_shape}"
            )
        if images_sha256(array) != facts["sha256"]:
            raise _Rejected("pixels changed since it was written")
        return array, facts

    def _discard(self, key: str, reason: str) -> None:
        folder = self.folder(key)
        self.log(f"warning: poison cache entry {folder} failed its check ({reason}); recomputing")
        aside = folder.with_name(f"{key}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        n = 1
        while aside.exists():
            aside = folder.with_name(f"{key}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
            n += 1
        with contextlib.suppress(OSError):  # e.g. a read-only cache: save() replaces both files
            folder.rename(aside)

    def save(self, key: str, images: torch.Tensor, facts: dict[str, Any]) -> Path:
        """Store uint8 `images` and their `facts` (atomically, under the key's lock)."""
        array = images.detach().cpu().numpy()
        if array.dtype != np.uint8:
            raise TypeError(f"the poison cache stores uint8 images, got {array.dtype}")
        folder = self.folder(key)
        stored = {**facts, "sha256": images_sha256(array), "images_shape": list(array.shape)}
        with self._lock(key):
            for leftover in folder.glob(".*.tmp"):  # from a process killed mid-write
                leftover.unlink(missing_ok=True)
            save_npy(folder / "images.npy", array, what="the poison cache")
            write_text(
                folder / "facts.json",
                json.dumps(stored, indent=2, default=str),
                what="the poison cache",
            )
        return folder


class _Rejected(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
