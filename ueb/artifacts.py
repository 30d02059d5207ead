"""Content-addressed store for expensive intermediate products.

A trained surrogate, a trained hider, a semantic-image bank: each is built once from a
*recipe* (a JSON-able dict naming everything that determines it), stored under
`<root>/<kind>/<hash(recipe)>/`, and reused. A build that is interrupted leaves its work
folder (checkpoints) behind so the next attempt resumes; only `finish` marks it complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ueb.params import params_hash


def default_cache_root() -> Path:
    return Path(os.environ.get("UEB_CACHE", Path.home() / ".cache" / "ueb"))


@dataclass
class Artifact:
    kind: str
    key: str
    path: Path
    recipe: dict[str, Any]

    @property
    def done(self) -> bool:
        return (self.path / "manifest.json").exists()

    def manifest(self) -> dict[str, Any]:
        return json.loads((self.path / "manifest.json").read_text())

    @property
    def content_hash(self) -> str:
        return str(self.manifest()["content_hash"])


class ArtifactStore:
    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_root()

    def get(self, kind: str, recipe: dict[str, Any]) -> Artifact:
        """The artifact for `recipe`, its folder created (check `.done` before building)."""
        key = params_hash(recipe)
        path = self.root / kind / key
        path.mkdir(parents=True, exist_ok=True)
        return Artifact(kind, key, path, recipe)

    def finish(self, artifact: Artifact, **facts: Any) -> Artifact:
        """Hash the artifact's files and mark it complete; `facts` are stored beside."""
        h = hashlib.sha256()
        for f in sorted(p for p in artifact.path.rglob("*") if p.is_file() and p.name != "manifest.json"):
            if f.parent.name == "checkpoints":
                continue
            h.update(f.relative_to(artifact.path).as_posix().encode())
            h.update(f.read_bytes())
        manifest = {
            "kind": artifact.kind,
            "key": artifact.key,
            "recipe": artifact.recipe,
            "content_hash": h.hexdigest()[:16],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **facts,
        }
        tmp = artifact.path / "manifest.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=2, default=str))
        tmp.replace(artifact.path / "manifest.json")
        return artifact
