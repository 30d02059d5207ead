"""Content-addressed store for expensive intermediate products.

A trained surrogate, a trained hider, a semantic-image bank: each is built once from a
*recipe* (a JSON-able dict naming everything that determines it), stored under
`<root>/<kind>/<hash(recipe)>/`, and reused. A build that is interrupted leaves its work
folder (checkpoints) behind so the next attempt resumes; only `finish` marks it complete.

Reading verifies: `Artifact.done` recomputes the content hash of the files and compares it with
the one `finish` stored, so a changed or truncated file is rebuilt instead of used. Building is
serialized across processes: `get` takes the artifact's lock when it is not done (and waits
while another process builds it), `finish` releases it.

    art = store.get(kind, recipe)        # or: with store.get(kind, recipe) as art:
    if not art.done:
        build(art.path)
        store.finish(art, **facts)
    load(art.path)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ueb.atomic import write_error, write_text
from ueb.identity import artifact_identity
from ueb.locks import FileLock

MANIFEST = "manifest.json"


def default_cache_root() -> Path:
    return Path(os.environ.get("UEB_CACHE", Path.home() / ".cache" / "ueb"))


def _hashed(rel: Path) -> bool:
    """Which files make up an artifact: not its manifest (or a damaged or half-written one),
    nor resumable work under `checkpoints/` that builds may delete once finished."""
    if rel.name == MANIFEST or rel.parent.name == "checkpoints" or rel.parts[0] == "checkpoints":
        return False
    return not (len(rel.parts) == 1 and rel.name.lstrip(".").startswith(MANIFEST))


def content_hash(folder: Path) -> str:
    """Hash of the artifact's file names and bytes (16 hex digits)."""
    h = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and _hashed(p.relative_to(folder)))
    for f in files:
        h.update(f.relative_to(folder).as_posix().encode())
        with f.open("rb") as stream:
            while chunk := stream.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()[:16]


@dataclass(eq=False)
class Artifact:
    kind: str
    key: str
    path: Path
    recipe: dict[str, Any]
    log: Callable[[str], None] = field(default=print, repr=False)
    _lock: FileLock | None = field(default=None, init=False, repr=False)
    _verified: bool = field(default=False, init=False, repr=False)

    @property
    def done(self) -> bool:
        """Finished, and its files still have the content hash `finish` stored (checked once)."""
        if self._verified:
            return True
        if not (self.path / MANIFEST).exists():
            return False
        problem = self._problem()
        if problem is None:
            self._verified = True
            return True
        self.log(
            f"warning: artifact {self.kind} {self.key} at {self.path} failed its check ({problem}); rebuilding"
        )
        # another process may have moved it first, or the cache is read-only: still not done
        with contextlib.suppress(OSError):
            (self.path / MANIFEST).replace(self.path / f"{MANIFEST}.damaged")
        return False

    def _problem(self) -> str | None:
        try:
            stored = json.loads((self.path / MANIFEST).read_text()).get("content_hash")
        except (OSError, ValueError, AttributeError) as exc:
            return f"{MANIFEST} is unreadable: {exc}"
        if not stored:
            return f"{MANIFEST} has no content hash"
        found = content_hash(self.path)
        if found != stored:
            return f"its files changed since it was built: content hash {found}, stored {stored}"
        return None

    def manifest(self) -> dict[str, Any]:
        return dict(json.loads((self.path / MANIFEST).read_text()))

    @property
    def content_hash(self) -> str:
        return str(self.manifest()["content_hash"])

    @property
    def locked(self) -> bool:
        """Whether this object holds the build lock (from `get` until `finish`/`release`)."""
        return self._lock is not None and self._lock.held

    def release(self) -> None:
        """Give up the build lock without finishing (also happens when the object is collected)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Artifact:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class ArtifactStore:
    def __init__(
        self,
        root: Path | None = None,
        log: Callable[[str], None] = print,
        numerics: dict[str, Any] | None = None,
    ) -> None:
        """`numerics` (a run's resolved numerics) enters every key: a surrogate or hider built
        under other numerics is another artifact."""
        self.root = Path(root) if root is not None else default_cache_root()
        self.log = log
        self.numerics = numerics

    def get(self, kind: str, recipe: dict[str, Any]) -> Artifact:
        """The artifact for `recipe`, its folder created; when it is not done, this process
        holds its build lock (waiting while another process builds it) until `finish`."""
        key = artifact_identity(kind, recipe, self.numerics)
        path = self.root / kind / key
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(exc, f"the {kind} artifact", path.parent) from exc
        art = Artifact(kind, key, path, recipe, self.log)
        if not art.done:
            art._lock = FileLock(
                self.root / kind / f"{key}.lock", on_wait=self.log, what=f"building {kind} {key}"
            )
            if art.done:  # another process finished it while we waited
                art.release()
        return art

    def finish(self, artifact: Artifact, **facts: Any) -> Artifact:
        """Hash the artifact's files, mark it complete (`facts` stored beside), release its lock."""
        try:
            manifest = {
                "kind": artifact.kind,
                "key": artifact.key,
                "recipe": artifact.recipe,
                "content_hash": content_hash(artifact.path),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                **facts,
            }
            write_text(
                artifact.path / MANIFEST,
                json.dumps(manifest, indent=2, default=str),
                what=f"the {artifact.kind} artifact",
            )
            artifact._verified = True
        finally:
            artifact.release()
        return artifact
