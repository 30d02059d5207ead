"""Poisoned training sets on disk, computed once per (poisoner@version, params, dataset, seed).

Stored lossless as the uint8 images themselves (`images.npy`) beside `facts.json`; written to a
temporary name and renamed, so a kill mid-write never leaves a half poison that looks whole.
Every countermeasure and victim of a matrix reuses the same file.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ueb.errors import UebError
from ueb.interfaces import Poisoner
from ueb.params import as_dict, params_hash


def poison_key(poisoner: Poisoner, dataset_fingerprint: str, seed: int) -> str:
    cls = type(poisoner)
    return params_hash(
        {
            "poisoner": poisoner.name,
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "version": cls.version,
            "params": as_dict(poisoner.params),
            "dataset": dataset_fingerprint,
            "seed": seed,
        }
    )


class PoisonCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def folder(self, key: str) -> Path:
        return self.root / key

    def load(self, key: str) -> tuple[torch.Tensor, dict[str, Any]] | None:
        folder = self.folder(key)
        images, facts = folder / "images.npy", folder / "facts.json"
        if not (images.exists() and facts.exists()):
            return None
        try:
            array = np.load(images, allow_pickle=False)
            return torch.from_numpy(array), json.loads(facts.read_text())
        except (OSError, ValueError) as exc:  # a damaged cache entry is recomputed, not fatal
            print(f"warning: poison cache entry {folder} is unreadable ({exc}); recomputing")
            return None

    def save(self, key: str, images: torch.Tensor, facts: dict[str, Any]) -> Path:
        folder = self.folder(key)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f"images.{os.getpid()}.tmp.npy"
            np.save(tmp, images.cpu().numpy(), allow_pickle=False)
            tmp.replace(folder / "images.npy")
            ftmp = folder / f"facts.{os.getpid()}.tmp"
            ftmp.write_text(json.dumps(facts, indent=2, default=str))
            ftmp.replace(folder / "facts.json")
        except OSError as exc:
            for leftover in folder.glob("*.tmp*"):
                leftover.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise UebError(
                    f"disk full while writing the poison cache at {folder}",
                    "free some space or point UEB_CACHE / --cache-dir at a larger disk, then re-run to resume",
                ) from exc
            raise UebError(f"cannot write the poison cache at {folder} ({exc.strerror})", "check permissions of the cache folder") from exc
        return folder
