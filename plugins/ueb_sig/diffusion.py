"""The real backend: Stable Diffusion + ControlNet (canny), from local weight folders only.

Per class: one prompt, one canny edge map, M samples drawn in batches with per-(seed, class,
batch) generators, so all samples of a class share the global shape while their textures
differ (paper Sec. III-B3 and Sec. IV-A: 100 images per class). Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ueb.errors import ConfigError


@dataclass(frozen=True)
class DiffusionOptions:
    steps: int = 20  # the diffusers ControlNet examples use UniPC with 20 steps
    guidance_scale: float = 7.5
    conditioning_scale: float = 1.0
    gen_size: int = 512  # SD 1.x native resolution; images are area-resized to the bank size
    batch_size: int = 8
    negative_prompt: str = "lowres, blurry, watermark, text"
    scheduler: str = "unipc"  # "unipc" | "as-saved"
    canny_low: int = 100
    canny_high: int = 200


def check_folder(path: str | Path | None, flag: str, what: str, marker: str) -> Path:
    """A local weights folder, or a one-line error naming the flag."""
    if path is None:
        raise ConfigError(f"the diffusers backend needs {what} weights", f"pass {flag} DIR (a local folder; nothing is downloaded)")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ConfigError(f"{flag} {p} does not exist", f"pass {flag} DIR pointing at locally saved {what} weights")
    if not (p / marker).is_file():
        raise ConfigError(f"{flag} {p} holds no {marker}", f"pass {flag} DIR saved with diffusers' save_pretrained ({what})")
    return p


def fingerprint(folder: Path) -> str:
    """Cheap identity of a weights folder: every config's text plus every file's name and size."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = f.relative_to(folder).as_posix()
        h.update(rel.encode())
        h.update(str(f.stat().st_size).encode())
        if f.suffix in (".json", ".txt") and f.stat().st_size < 1_000_000:
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def describe_weights(sd_model: str | Path | None, controlnet: str | Path | None) -> dict[str, Any]:
    sd = check_folder(sd_model, "--sd-model", "Stable Diffusion", "model_index.json")
    cn = check_folder(controlnet, "--controlnet", "ControlNet", "config.json")
    return {"sd_model": sd.name, "sd_fingerprint": fingerprint(sd), "controlnet": cn.name, "controlnet_fingerprint": fingerprint(cn)}


def load_pipeline(sd_model: str | Path, controlnet: str | Path, device: str, options: DiffusionOptions):
    sd = check_folder(sd_model, "--sd-model", "Stable Diffusion", "model_index.json")
    cn = check_folder(controlnet, "--controlnet", "ControlNet", "config.json")
    import importlib.util

    import torch
    from diffusers import (
        ControlNetModel,
        StableDiffusionControlNetPipeline,
        UniPCMultistepScheduler,
    )

    # Load in float32 and cast after: `torch_dtype` is deprecated in new diffusers and `dtype`
    # unknown to old ones. Without accelerate, say so up front instead of warning each time.
    extra = {} if importlib.util.find_spec("accelerate") else {"low_cpu_mem_usage": False}
    control = ControlNetModel.from_pretrained(str(cn), local_files_only=True, **extra)
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        str(sd),
        controlnet=control,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        local_files_only=True,
        **extra,
    )
    if options.scheduler == "unipc":
        pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
    elif options.scheduler != "as-saved":
        raise ConfigError(f"unknown scheduler '{options.scheduler}'", "use 'unipc' or 'as-saved'")
    dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
    pipe = pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate_class(pipe, prompt: str, edges, count: int, size: int, seed: int, options: DiffusionOptions, device: str):
    """`count` images (uint8 (count, 3, size, size)) for one prompt and one canny map (H, W)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    control = Image.fromarray(np.repeat(edges[..., None], 3, axis=2))
    out = torch.empty(count, 3, size, size, dtype=torch.uint8)
    gen_device = "cuda" if str(device).startswith("cuda") else "cpu"
    for b, start in enumerate(range(0, count, options.batch_size)):
        n = min(options.batch_size, count - start)
        gen = torch.Generator(gen_device).manual_seed(int(seed) * 100_003 + b)
        result = pipe(
            prompt,
            image=control,
            num_inference_steps=options.steps,
            guidance_scale=options.guidance_scale,
            controlnet_conditioning_scale=options.conditioning_scale,
            negative_prompt=options.negative_prompt or None,
            num_images_per_prompt=n,
            height=options.gen_size,
            width=options.gen_size,
            generator=gen,
            output_type="pt",
        ).images
        imgs = result.float().cpu().clamp(0, 1)
        if imgs.shape[-1] != size:
            imgs = F.interpolate(imgs, size=(size, size), mode="area" if imgs.shape[-1] > size else "bicubic")
        out[start : start + n] = (imgs.clamp(0, 1) * 255).round().to(torch.uint8)
    return out


def pipeline_facts(pipe) -> dict[str, Any]:
    return {"scheduler": type(pipe.scheduler).__name__, "dtype": str(pipe.unet.dtype), "unet_config": json.loads(json.dumps(dict(pipe.unet.config), default=str)).get("_name_or_path", "")}
