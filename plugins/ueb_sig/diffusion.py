"""The real backend: Stable Diffusion + ControlNet (canny), from local weight folders only.

Per class: one prompt, one canny edge map, M samples drawn in batches with per-(seed, class,
batch) generators, so all samples of a class share the global shape while their textures
differ (paper Sec. III-B3 and Sec. IV-A: 100 images per class). Nothing is ever downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ueb.errors import ConfigError
from ueb.params import bounded

from .weights import (
    CLI,
    DigestMemo,
    Settings,
    check_controlnet,
    check_stable_diffusion,
    folder_identity,
    stable_diffusion_identity,
)


@dataclass(frozen=True)
class DiffusionOptions:
    steps: int = bounded(20, ge=1)  # the diffusers ControlNet examples use UniPC with 20 steps
    guidance_scale: float = bounded(7.5, ge=0)
    conditioning_scale: float = bounded(1.0, ge=0)
    gen_size: int = bounded(
        512, ge=8
    )  # SD 1.x native resolution; images are area-resized to the bank size
    batch_size: int = bounded(8, ge=1)
    negative_prompt: str = "lowres, blurry, watermark, text"
    scheduler: str = "unipc"  # "unipc" | "as-saved"
    canny_low: int = bounded(100, ge=0, le=255)
    canny_high: int = bounded(200, ge=0, le=255)


def describe_weights(
    sd_model: str | Path | None,
    controlnet: str | Path | None,
    settings: Settings = CLI,
    memo: DigestMemo | None = None,
) -> dict[str, Any]:
    """The content identity of both folders (what enters the bank's cache key)."""
    sd = check_stable_diffusion(sd_model, settings.sd_model)
    cn = check_controlnet(controlnet, settings.controlnet)
    return {
        "stable_diffusion": stable_diffusion_identity(sd, memo),
        "controlnet": folder_identity(cn, memo),
    }


def load_pipeline(
    sd_model: str | Path,
    controlnet: str | Path,
    device: str,
    options: DiffusionOptions,
    settings: Settings = CLI,
):
    sd = check_stable_diffusion(sd_model, settings.sd_model)
    cn = check_controlnet(controlnet, settings.controlnet)
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
    # float16 on CUDA; on the CPU it stays float32 (a no-op cast there only adds warnings).
    pipe = pipe.to(device, torch.float16) if str(device).startswith("cuda") else pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate_class(
    pipe,
    prompt: str,
    edges,
    count: int,
    size: int,
    seed: int,
    options: DiffusionOptions,
    device: str,
):
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
            imgs = F.interpolate(
                imgs, size=(size, size), mode="area" if imgs.shape[-1] > size else "bicubic"
            )
        out[start : start + n] = (imgs.clamp(0, 1) * 255).round().to(torch.uint8)
    return out


def pipeline_facts(pipe) -> dict[str, Any]:
    """What generated the images beyond the recipe: the scheduler class and the precision."""
    return {"scheduler": type(pipe.scheduler).__name__, "dtype": str(pipe.unet.dtype)}
