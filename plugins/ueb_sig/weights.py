"""Local weight folders for SIG: what each must hold, and the identity that keys a bank.

Three folders can feed SIG: Stable Diffusion 1.x and a canny ControlNet (the `diffusers`
backend) and a CLIP text model (TPC with `encoder="clip"`). Nothing is downloaded, so a folder
that is missing or incomplete is a one-line error naming the setting to fix, raised before any
work. Each error names the setting the caller uses (`--sd-model` on the command line,
`deephiding.sig_sd_dir` in a run).

A folder's identity is a SHA-256 over its files' relative paths, sizes and contents. Two
fine-tunes of one model have identical configs and file sizes, so only the weights' bytes tell
them apart; hashing a few GB costs seconds, and the per-file digests are remembered by
(path, size, mtime) in the artifact store, so only the first bank built from a folder pays.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ueb.errors import ConfigError

WEIGHT_SUFFIXES = (".safetensors", ".bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")
SD_MODELS = ("unet", "vae", "text_encoder")  # sub-folders holding a config and weights
SD_LAYOUT = "model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/"
MEMO_NAME = "file-digests.json"


@dataclass(frozen=True)
class Settings:
    """The names the user sets each folder by, for error messages."""

    sd_model: str = "--sd-model"
    controlnet: str = "--controlnet"
    clip_model: str = "--clip-model"
    prompts: str = "--prompts"


CLI = Settings()


def _folder(path: str | Path | None, setting: str, what: str) -> Path:
    if path is None or str(path) == "":
        raise ConfigError(
            f"SIG needs {what} weights but {setting} is not set",
            f"set {setting} to a local folder; nothing is downloaded",
        )
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ConfigError(
            f"{setting} {p} does not exist or is not a folder",
            f"point {setting} at locally saved {what} weights",
        )
    return p


def _has_weights(folder: Path) -> bool:
    return any(
        f.suffix in WEIGHT_SUFFIXES or f.name.endswith(".index.json")
        for f in folder.iterdir()
        if f.is_file()
    )


def _missing(folder: Path, setting: str, what: str, missing: str, layout: str) -> ConfigError:
    return ConfigError(
        f"{setting} {folder} lacks {missing}",
        f"point {setting} at {what} weights saved with save_pretrained ({layout})",
    )


def check_model_folder(path: str | Path | None, setting: str, what: str) -> Path:
    """A folder with `config.json` and weights (a ControlNet, a single model)."""
    p = _folder(path, setting, what)
    layout = "config.json + *.safetensors or *.bin"
    if not (p / "config.json").is_file():
        raise _missing(p, setting, what, "config.json", layout)
    if not _has_weights(p):
        raise _missing(p, setting, what, "a weights file (*.safetensors or *.bin)", layout)
    return p


def check_stable_diffusion(path: str | Path | None, setting: str = CLI.sd_model) -> Path:
    """A diffusers Stable Diffusion folder with every component the ControlNet pipeline loads."""
    what = "Stable Diffusion"
    p = _folder(path, setting, what)
    if not (p / "model_index.json").is_file():
        raise _missing(p, setting, what, "model_index.json", SD_LAYOUT)
    for sub in SD_MODELS:
        d = p / sub
        if not (d / "config.json").is_file():
            raise _missing(p, setting, what, f"{sub}/config.json", SD_LAYOUT)
        if not _has_weights(d):
            raise _missing(p, setting, what, f"weights in {sub}/", SD_LAYOUT)
    if not (p / "scheduler" / "scheduler_config.json").is_file():
        raise _missing(p, setting, what, "scheduler/scheduler_config.json", SD_LAYOUT)
    if not any((p / "tokenizer" / f).is_file() for f in TOKENIZER_FILES):
        raise _missing(p, setting, what, "tokenizer files in tokenizer/", SD_LAYOUT)
    return p


def check_controlnet(path: str | Path | None, setting: str = CLI.controlnet) -> Path:
    return check_model_folder(path, setting, "ControlNet")


def check_clip(path: str | Path | None, setting: str = CLI.clip_model) -> Path:
    """A CLIP text model with its projection and tokenizer (TPC's paper encoder)."""
    p = check_model_folder(path, setting, "CLIP text encoder")
    if not any((p / f).is_file() for f in TOKENIZER_FILES):
        raise _missing(
            p,
            setting,
            "CLIP text encoder",
            "tokenizer files",
            "config.json, weights and the CLIPTokenizer's files",
        )
    return p


# --------------------------------------------------------------------------- identity


class DigestMemo:
    """Per-file SHA-256 digests remembered by (resolved path, size, mtime_ns) in a JSON file.

    Several processes may share the file: each rewrites it atomically, and a lost update only
    means a digest is computed again.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, list[Any]] = {}
        self.changed = False
        if path is not None and path.is_file():
            try:
                data = json.loads(path.read_text())
                self.entries = data if isinstance(data, dict) else {}
            except (OSError, ValueError):
                self.entries = {}

    def digest(self, f: Path) -> str:
        st = f.stat()
        key = str(f.resolve())
        hit = self.entries.get(key)
        if hit is not None and hit[:2] == [st.st_size, st.st_mtime_ns]:
            return str(hit[2])
        h = hashlib.sha256()
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        value = h.hexdigest()
        self.entries[key] = [st.st_size, st.st_mtime_ns, value]
        self.changed = True
        return value

    def save(self) -> None:
        if self.path is None or not self.changed:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.entries))
            tmp.replace(self.path)
            self.changed = False
        except OSError:  # a read-only cache only costs re-hashing next time
            pass


def _visible_files(root: Path) -> Iterable[Path]:
    """Files under `root`, skipping hidden names (download tools keep metadata in `.cache/`)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def folder_identity(
    folder: Path, memo: DigestMemo | None = None, only: Iterable[str] | None = None
) -> dict[str, Any]:
    """`{"digest", "files", "bytes"}` of `folder` (or of the entries `only` names in it)."""
    memo = memo if memo is not None else DigestMemo(None)
    roots = [folder / name for name in only] if only is not None else [folder]
    files: list[Path] = []
    for r in roots:
        files.extend([r] if r.is_file() else _visible_files(r))
    h = hashlib.sha256()
    total = 0
    for f in sorted(files, key=lambda q: q.relative_to(folder).as_posix()):
        size = f.stat().st_size
        total += size
        h.update(f"{f.relative_to(folder).as_posix()}\t{size}\t{memo.digest(f)}\n".encode())
    return {"digest": h.hexdigest()[:16], "files": len(files), "bytes": total}


def stable_diffusion_identity(folder: Path, memo: DigestMemo | None = None) -> dict[str, Any]:
    """Identity of what the pipeline loads: model_index.json and the five components (a
    safety checker or root-level checkpoint files in the same folder are never loaded)."""
    return folder_identity(
        folder, memo, only=["model_index.json", *SD_MODELS, "tokenizer", "scheduler"]
    )


def memo_for(cache_root: Path | None) -> DigestMemo:
    return DigestMemo(None if cache_root is None else Path(cache_root) / "sig-weights" / MEMO_NAME)
