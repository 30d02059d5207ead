"""Victim trainings by identity, shared by every cell and run that uses one cache.

Several cells of a matrix train on the very same bytes: an ISS variant and the plain
transformation it wraps, a filter that is the identity on 8-bit images, grayscale on grey
images. Their trainings have one identity (ueb.identity.training_identity) and are computed
once: the first cell to reach one claims it (a lock in the cache; another process waits for it
instead of training it too), trains, and stores the result with a checksum; the others read it.
Sharing is exact: the identity names everything the training depends on, so a shared result is
bit-identical to training again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ueb.atomic import write_text
from ueb.identity import record_checksum
from ueb.interfaces import TrainResult
from ueb.locks import FileLock


@dataclass
class SharedTraining:
    """A stored training: its result, the probe taken on its model, where it came from."""

    result: TrainResult
    probe: dict[str, Any] = field(default_factory=dict)
    source_cell: str = ""
    source_run: str = ""
    has_model: bool = False


class TrainingSlot:
    """One claimed training identity: `shared` when it is already stored, else `save` it."""

    def __init__(self, index: TrainingIndex, key: str) -> None:
        self.index = index
        self.key = key
        self.shared = index.get(key)

    def save(self, shared: SharedTraining, model_state: dict[str, Any] | None = None) -> None:
        self.index.put(self.key, shared, model_state)


class TrainingIndex:
    def __init__(self, root: Path, log: Callable[[str], None] = print) -> None:
        self.root = Path(root)
        self.log = log

    def _folder(self, key: str) -> Path:
        return self.root / key[:2]

    def _path(self, key: str) -> Path:
        return self._folder(key) / f"{key}.json"

    def model_path(self, key: str) -> Path:
        return self._folder(key) / f"{key}.pt"

    @contextmanager
    def claim(self, key: str, what: str = "") -> Iterator[TrainingSlot]:
        """Hold the training `key` while it is computed; another process waits, then reads it."""
        lock = FileLock(
            self._folder(key) / f"{key}.lock",
            on_wait=self.log,
            what=f"training {what or key}",
        )
        try:
            yield TrainingSlot(self, key)
        finally:
            lock.release()

    def put(
        self, key: str, shared: SharedTraining, model_state: dict[str, Any] | None = None
    ) -> None:
        if model_state is not None:
            from ueb.atomic import save_torch

            save_torch(model_state, self.model_path(key), what="a shared training's model")
            shared.has_model = True
        body = {"key": key, **asdict(shared)}
        body = json.loads(json.dumps(body, default=str))
        blob = {"entry": body, "sha256": record_checksum(body)}
        write_text(self._path(key), json.dumps(blob), what="the training index")

    def get(self, key: str) -> SharedTraining | None:
        """The stored training, or None when absent, damaged or tampered with (recomputed)."""
        try:
            blob = json.loads(self._path(key).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(blob, dict) or not isinstance(blob.get("entry"), dict):
            return None
        body = blob["entry"]
        if blob.get("sha256") != record_checksum(body) or body.get("key") != key:
            self.log(f"warning: training index entry {key} is damaged; training again")
            return None
        try:
            result = TrainResult(**body["result"])
            shared = SharedTraining(
                result=result,
                probe=dict(body.get("probe") or {}),
                source_cell=str(body.get("source_cell", "")),
                source_run=str(body.get("source_run", "")),
                has_model=bool(body.get("has_model", False)),
            )
        except (TypeError, KeyError):
            return None
        if shared.has_model and not self.model_path(key).exists():
            shared.has_model = False
        return shared

    def load_model(self, key: str) -> dict[str, Any] | None:
        import torch

        try:
            return torch.load(self.model_path(key), map_location="cpu", weights_only=True)  # type: ignore[no-any-return]
        except Exception:
            return None
