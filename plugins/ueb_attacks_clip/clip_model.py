"""A CLIP model read from a local folder: checked before any work, identified by its files, and
used as a differentiable image (and text) encoder on [0, 1] images of any size.

The folder is what `CLIPModel.save_pretrained` and `CLIPProcessor.save_pretrained` write (e.g.
openai/clip-vit-base-patch32 saved once on a machine with the weights). Nothing is downloaded:
both are loaded with `local_files_only=True`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ueb.errors import ConfigError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# (path, inode, size, mtime, ctime) -> sha256, so a process hashes an unchanged file once
_HASHES: dict[tuple[str, int, int, int, int], str] = {}


def setting_fix(owner: str) -> str:
    return (
        f"set {owner}.clip_path to a folder holding a CLIP model and its processor saved with "
        "save_pretrained (e.g. openai/clip-vit-base-patch32: CLIPModel.from_pretrained(...)"
        ".save_pretrained(DIR) and CLIPProcessor.from_pretrained(...).save_pretrained(DIR))"
    )


def check_folder(clip_path: str, owner: str) -> Path:
    """The folder, or one ConfigError naming the parameter and what to put there."""
    if not clip_path:
        raise ConfigError(
            f"{owner} needs a local CLIP model: parameter clip_path is not set", setting_fix(owner)
        )
    folder = Path(clip_path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{owner}: clip_path {folder} is not a folder", setting_fix(owner))
    if not (folder / "config.json").is_file() or not _weight_files(folder):
        raise ConfigError(
            f"{owner}: clip_path {folder} holds no saved CLIP model (config.json and "
            f"{' or '.join(WEIGHT_FILES)})",
            setting_fix(owner),
        )
    return folder


def _weight_files(folder: Path) -> list[Path]:
    found = [folder / name for name in WEIGHT_FILES if (folder / name).is_file()]
    return found + sorted(folder.glob("model-*.safetensors"))


def folder_identity(folder: Path) -> dict[str, Any]:
    """Size and SHA-256 of every file in the folder: replacing the weights changes the key."""
    files: dict[str, Any] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        stat = path.stat()
        key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        if key not in _HASHES:
            digest = hashlib.sha256()
            with path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            _HASHES[key] = digest.hexdigest()
        files[path.name] = {"bytes": stat.st_size, "sha256": _HASHES[key]}
    return {"clip_files": files}


@dataclass
class LocalCLIP:
    """A frozen CLIP model and the image geometry and normalisation of its processor."""

    model: Any
    tokenizer: Any
    resize_to: int  # the processor's shortest edge
    crop: int  # the processor's centre crop (the encoder's input side)
    mean: torch.Tensor  # (1, 3, 1, 1)
    std: torch.Tensor

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.projection_dim)

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images (N, C, H, W) as the processor prepares them, differentiably: resized
        (bicubic) so the shorter side is `resize_to`, centre-cropped to `crop`, normalised."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h, w = x.shape[-2:]
        scale = self.resize_to / min(h, w)
        size = (max(self.crop, round(h * scale)), max(self.crop, round(w * scale)))
        if size != (h, w):
            x = F.interpolate(
                x, size=size, mode="bicubic", align_corners=False, antialias=scale < 1
            )
        top, left = (size[0] - self.crop) // 2, (size[1] - self.crop) // 2
        x = x[..., top : top + self.crop, left : left + self.crop]
        return (x - self.mean.to(x)) / self.std.to(x)

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """CLIP's projected image embeddings of [0, 1] images (not normalised)."""
        return _embedding(self.model.get_image_features(pixel_values=self.pixels(x)))

    @torch.no_grad()
    def text_features(self, texts: list[str], device: torch.device) -> torch.Tensor:
        """CLIP's projected text embeddings of `texts` (not normalised)."""
        tokens = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        tokens = {k: v.to(device) for k, v in tokens.items()}
        return _embedding(self.model.get_text_features(**tokens))


def _embedding(out: Any) -> torch.Tensor:
    """transformers 4 returns the tensor; 5 a model output whose pooler_output it is."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def load_clip(clip_path: str, owner: str, device: torch.device) -> LocalCLIP:
    """The model in eval mode with frozen weights, on `device`; never downloads."""
    folder = check_folder(clip_path, owner)
    from transformers import CLIPModel, CLIPProcessor
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a run prints one line per cell, not loading bars
    try:
        model: Any = CLIPModel.from_pretrained(str(folder), local_files_only=True)
        processor = CLIPProcessor.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{owner}: cannot load a CLIP model and processor from {folder} ({str(exc).splitlines()[0]})",
            setting_fix(owner),
        ) from exc
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    model = model.to(device).eval().float()
    for p in model.parameters():
        p.requires_grad_(False)
    images = processor.image_processor
    crop = _side(getattr(images, "crop_size", None)) or int(model.config.vision_config.image_size)
    resize_to = _side(getattr(images, "size", None)) or crop
    mean = torch.tensor(list(images.image_mean), dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(list(images.image_std), dtype=torch.float32).view(1, -1, 1, 1)
    return LocalCLIP(model, processor.tokenizer, resize_to, crop, mean, std)


def _side(size: Any) -> int | None:
    """A processor size (dict, SizeDict or int) as one side length."""
    if size is None:
        return None
    if isinstance(size, int):
        return size
    get = size.get if isinstance(size, dict) else lambda k: getattr(size, k, None)
    for key in ("shortest_edge", "height", "width"):
        value = get(key)
        if value:
            return int(value)
    return None
