"""AVATAR: purify the training set with a diffusion model before training on it.

Method: Dolatabadi, Erfani and Leckie 2024, "The devil's advocate: shattering the illusion of
unexploitable data using diffusion models" (IEEE SaTML 2024, arXiv 2303.08500); official code
hmdolatabadi/AVATAR, built on DiffPure (Nie et al. 2022). Every training image x0 (scaled to
[-1, 1]) is diffused forward to time t* in one draw, x_t* ~ q(x_t* | x0), then carried back to
t = 0 by the reverse chain of the diffusion model; the victim trains on the result. The
official CIFAR-10 runs use a score model trained on clean CIFAR-10 (from DiffPure / ScoreSDE)
with t* = 100 of 1000 steps (the "_Sanitized_100" files of the official README); the paper
also reports that models trained on other data (CIFAR-100, ImageNet-32) still work, i.e. the
method tolerates a mismatch between the diffusion model's data and the protected data.

Here the model is a diffusers DDPM (`UNet2DModel` + `DDPMScheduler`, the discrete form of the
same VP diffusion) read from a local folder, `model_dir`, never downloaded. It may be a
`DDPMPipeline.save_pretrained` folder (`unet/`, `scheduler/`) or a bare `UNet2DModel` folder
(then the DDPM schedule of Ho et al. 2020 is used: 1000 steps, betas 1e-4..0.02, linear).
Images whose size differs from the model's are resized to it and back (as AVATAR does for
ImageNet).

Without `model_dir` (what a fresh machine has), AVATAR trains a DDPM on **clean** images of the
same distribution, never on the set it then purifies: the method's premise is a score model of
clean data (the official CIFAR-10 model is ScoreSDE's, trained on the clean CIFAR-10 training
set). The clean images come from a dataset plugin, built through `ctx.plugin("dataset", ...)`:
`clean_source` names it ("" = the dataset the training set comes from, `ImageSet.name`) and
`clean_split` picks its split. Default `test`: the DDPM then sees none of the images the victim
trains on, neither poisoned nor their clean originals, which is the defender of the threat
model (clean data of the distribution, not the protected images). `clean_split="train"` trains on
the clean originals of the training set, the data of the official pretrained model (the `paper`
profile's setting). The training follows Ho et al. 2020 for CIFAR-10 (the U-Net with 128
channels, multipliers 1,2,2,2, attention at 16x16, dropout 0.1; Adam 2e-4, batch 128, 5000
warm-up steps, EMA 0.9999, gradient clipping 1, horizontal flips, 800k steps); every size is a
parameter for smaller profiles. The trained model depends only on the clean data, so every
poison of a dataset shares one. The purified set's meta (`avatar_model`) says which model was
used. `train_if_missing=false` turns training off: a missing `model_dir` is then an error.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from ueb.errors import ConfigError, PluginError
from ueb.imageset import ImageSet, quantize
from ueb.interfaces import Countermeasure, Requirement, RunContext, Stage
from ueb.params import as_dict, bounded
from ueb.training import resolve_device


def _fix_model_dir_hint() -> str:
    return (
        "set model_dir to a local diffusers DDPM folder (DDPMPipeline.save_pretrained output, or a "
        "UNet2DModel folder with config.json), or leave model_dir empty with train_if_missing=true"
    )


def load_ddpm(model_dir: str | Path) -> tuple[Any, Any]:
    """(UNet2DModel, DDPMScheduler) from a local folder; a missing or invalid folder is a ConfigError."""
    from diffusers import DDPMScheduler, UNet2DModel

    root = Path(model_dir).expanduser()
    if not root.is_dir():
        raise ConfigError(
            f"avatar: model_dir '{root}' does not exist or is not a folder", _fix_model_dir_hint()
        )
    unet_dir = root / "unet" if (root / "unet" / "config.json").exists() else root
    if not (unet_dir / "config.json").exists():
        raise ConfigError(
            f"avatar: no UNet config.json in '{root}' or '{root / 'unet'}'", _fix_model_dir_hint()
        )
    try:
        unet = UNet2DModel.from_pretrained(unet_dir, local_files_only=True, low_cpu_mem_usage=False)
    except Exception as exc:  # diffusers raises several types for a broken folder
        raise ConfigError(
            f"avatar: cannot load a UNet2DModel from '{unet_dir}': {type(exc).__name__}: {str(exc).splitlines()[0]}",
            _fix_model_dir_hint(),
        ) from exc
    sched_dir = root / "scheduler"
    if (sched_dir / "scheduler_config.json").exists():
        try:
            scheduler = DDPMScheduler.from_pretrained(sched_dir, local_files_only=True)
        except Exception as exc:
            raise ConfigError(
                f"avatar: cannot load a DDPMScheduler from '{sched_dir}': {type(exc).__name__}: {exc}",
                _fix_model_dir_hint(),
            ) from exc
    else:
        scheduler = DDPMScheduler(
            num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear"
        )
    return unet, scheduler


def reverse_timesteps(t_star: int, steps: int) -> list[int]:
    """Descending scheduler indices from t*-1 to 0: every one, or `steps` evenly spaced."""
    if steps <= 0 or steps >= t_star:
        return list(range(t_star - 1, -1, -1))
    grid = torch.linspace(t_star - 1, 0, steps).round().long().tolist()
    return sorted(set(grid), reverse=True)


@torch.no_grad()
def purify(
    x01: torch.Tensor,
    unet: Any,
    scheduler: Any,
    t_star: int,
    reverse_steps: int,
    gen: torch.Generator,
) -> torch.Tensor:
    """DiffPure-style purification of a batch in [0, 1]: diffuse to t*, run the reverse DDPM chain to 0."""
    if t_star <= 0:
        return x01.clone()
    total = int(scheduler.config.num_train_timesteps)
    if t_star > total:
        raise ConfigError(
            f"avatar: t_star={t_star} exceeds the model's {total} diffusion steps",
            f"use t_star <= {total}",
        )
    size = x01.shape[-1]
    model_size = unet.config.sample_size
    model_size = model_size[-1] if isinstance(model_size, (tuple, list)) else model_size
    x = x01.float()
    if model_size and model_size != size:
        x = F.interpolate(x, size=(model_size, model_size), mode="bilinear", align_corners=False)
    x = x * 2 - 1
    noise = torch.randn(x.shape, generator=gen, device=gen.device, dtype=x.dtype).to(x.device)
    start = torch.full((x.shape[0],), t_star - 1, dtype=torch.long, device=x.device)
    xt = scheduler.add_noise(x, noise, start)
    scheduler.set_timesteps(timesteps=reverse_timesteps(t_star, reverse_steps))
    for t in scheduler.timesteps:
        eps = unet(xt, t.to(x.device)).sample
        xt = scheduler.step(eps, t, xt, generator=gen).prev_sample
    out = (xt.clamp(-1, 1) + 1) / 2
    if model_size and model_size != size:
        out = F.interpolate(out, size=(size, size), mode="bilinear", align_corners=False)
        out = out.clamp(0, 1)
    return out


class Avatar(Countermeasure["Avatar.Params"]):
    """AVATAR (Dolatabadi et al. 2024): DDPM purification, forward to t*, reverse chain back (DiffPure)."""

    stage: ClassVar[Stage] = "data"
    version: ClassVar[str] = "2"  # 2: the DDPM trains on clean data, never on the poisoned set
    # CPU scale: a small score model trained for a few hundred steps, fewer reverse steps.
    # Paper: the official CIFAR-10 score model (ScoreSDE) was trained on the clean CIFAR-10
    # training set; a run builds only declared plugins, so the clean source is named.
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {
            "reverse_steps": 1,
            "train_steps": 3,
            "train_batch_size": 16,
            "channels": (8, 16),
            "layers_per_block": 1,
            "attention_levels": (),
        },
        "quick": {
            "train_steps": 200,
            "train_batch_size": 64,
            "channels": (16, 32),
            "layers_per_block": 1,
            "attention_levels": (),
            "reverse_steps": 2,
            "batch_size": 500,
        },
        "paper": {"clean_source": "cifar10", "clean_split": "train"},
    }

    @dataclass(frozen=True)
    class Params:
        model_dir: str = ""
        # of the model's 1000 steps, the official CIFAR-10 setting; 0 leaves the images as they are
        t_star: int = bounded(100, ge=0, le=1000)
        # 0: every step from t* down (DDPM ancestral); n: n evenly spaced steps
        reverse_steps: int = bounded(0, ge=0)
        batch_size: int = bounded(256, ge=1)
        train_if_missing: bool = True
        # where the DDPM's clean training images come from when model_dir is empty
        clean_source: str = ""  # a dataset plugin; "": the training set's own dataset
        clean_split: Literal["test", "train"] = "test"
        # DDPM trained on those clean images when model_dir is empty (Ho et al. 2020, CIFAR-10)
        train_steps: int = bounded(800_000, ge=1)
        train_batch_size: int = bounded(128, ge=1)
        train_lr: float = bounded(2e-4, gt=0)
        warmup_steps: int = bounded(5000, ge=0)
        ema_decay: float = bounded(0.9999, ge=0, le=1)
        grad_clip: float = bounded(1.0, ge=0)
        dropout: float = bounded(0.1, ge=0, lt=1)
        channels: tuple[int, ...] = bounded((128, 256, 256, 256), ge=1)
        layers_per_block: int = bounded(2, ge=1)
        attention_levels: tuple[int, ...] = bounded(
            (1,), ge=0
        )  # which resolution levels carry self-attention
        checkpoint_every: int = bounded(2000, ge=1)

        def __post_init__(self) -> None:
            if self.t_star < 0:
                raise ValueError(f"t_star must be >= 0, got {self.t_star}")
            if self.batch_size < 1 or self.train_batch_size < 1 or self.train_steps < 1:
                raise ValueError("batch sizes and train_steps must be positive")
            if not self.channels or any(c < 1 for c in self.channels):
                raise ValueError("channels must be a non-empty list of positive widths")

    def __init__(self, params: Any = None, name: str | None = None) -> None:
        super().__init__(params, name)
        self.model_source: str = ""

    def requires(self) -> list[Requirement]:
        """The clean-data dataset, when named (the training set's own dataset is the run's)."""
        p = self.params
        if p.model_dir or not p.train_if_missing or p.t_star == 0 or not p.clean_source:
            return []
        return [Requirement("dataset", p.clean_source)]

    def clean_images(self, train: ImageSet, ctx: RunContext) -> ImageSet:
        """The clean images the DDPM trains on: `clean_split` of `clean_source` (or of train's dataset)."""
        p = self.params
        source = p.clean_source or train.name
        if not source:
            raise ConfigError(
                "avatar: the training set names no dataset to take clean images from",
                "set avatar.clean_source to a dataset name, or model_dir to a trained DDPM",
            )
        try:
            dataset = ctx.plugin("dataset", source)
        except PluginError as exc:
            if p.clean_source:
                raise
            # a run builds only declared plugins, and the training set's own dataset cannot be
            # declared before the run knows it: the profile must name it
            raise ConfigError(
                f"avatar: this run cannot hand it the clean '{source}' images its DDPM trains on ({exc.problem})",
                f"set avatar.clean_source = '{source}' in the profile (or --param avatar.clean_source={source}), or avatar.model_dir",
            ) from exc
        splits = dataset.load(ctx.data_root)
        clean: ImageSet = splits.test if p.clean_split == "test" else splits.train
        if clean.channels != train.channels:
            raise ConfigError(
                f"avatar: clean source '{source}' has {clean.channels} channels, the training set {train.channels}",
                "set avatar.clean_source to a dataset of the same kind of images",
            )
        return clean

    # -- the diffusion model --------------------------------------------------------------

    def build_unet(self, image_size: int, channels: int) -> Any:
        from diffusers import UNet2DModel

        p = self.params
        levels = len(p.channels)
        factor = 2 ** (levels - 1)
        sample_size = math.ceil(image_size / factor) * factor
        down = tuple(
            "AttnDownBlock2D" if i in p.attention_levels else "DownBlock2D" for i in range(levels)
        )
        up = tuple(
            "AttnUpBlock2D" if i in p.attention_levels else "UpBlock2D"
            for i in reversed(range(levels))
        )
        return UNet2DModel(
            sample_size=sample_size,
            in_channels=channels,
            out_channels=channels,
            block_out_channels=tuple(p.channels),
            down_block_types=down,
            up_block_types=up,
            layers_per_block=p.layers_per_block,
            dropout=p.dropout,
            attention_head_dim=None,
            norm_num_groups=math.gcd(32, *p.channels),
        )

    def trained_model(self, train: ImageSet, ctx: RunContext) -> Path:
        """Train (or resume, or reuse) a DDPM on the clean images `train`; returns its folder."""
        from diffusers import DDPMScheduler

        p = self.params
        keys = ("train_steps", "train_batch_size", "train_lr", "warmup_steps", "ema_decay", "grad_clip",
                "dropout", "channels", "layers_per_block", "attention_levels")  # fmt: skip
        recipe = {
            "what": "avatar-ddpm",
            "version": self.version,
            "data": train.fingerprint(),
            "seed": ctx.seed,
            "params": {k: as_dict(p)[k] for k in keys},
        }
        art = ctx.artifacts.get("avatar-ddpm", recipe)
        if art.done:
            return art.path
        device = resolve_device(ctx.device)
        unet = self.build_unet(train.image_size, train.channels).to(device)
        ema = self.build_unet(train.image_size, train.channels).to(device)
        ema.load_state_dict(unet.state_dict())
        ema.requires_grad_(False)
        scheduler: Any = DDPMScheduler(
            num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear"
        )
        opt = torch.optim.Adam(unet.parameters(), lr=p.train_lr)
        gen = torch.Generator(device=device).manual_seed(ctx.seed + 7919)
        ckpt = art.path / "checkpoints" / "state.pt"
        start = 0
        if ckpt.exists():
            state = torch.load(ckpt, map_location=device, weights_only=False)
            unet.load_state_dict(state["unet"])
            ema.load_state_dict(state["ema"])
            opt.load_state_dict(state["opt"])
            gen.set_state(state["gen"].cpu())
            start = int(state["step"])
        data = train.uint8().to(device)
        size = int(unet.config.sample_size)
        n = len(train)
        unet.train()
        loss = torch.zeros(())
        with ctx.progress.task(
            f"avatar: training DDPM on clean {train.name or 'images'}", total=p.train_steps
        ) as task:
            task.advance(start)
            for step in range(start, p.train_steps):
                idx = torch.randint(
                    0, n, (min(p.train_batch_size, n),), generator=gen, device=device
                )
                x0 = data[idx].float() / 127.5 - 1
                flip = torch.rand(x0.shape[0], generator=gen, device=device) < 0.5
                x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
                if size != x0.shape[-1]:
                    x0 = F.interpolate(x0, size=(size, size), mode="bilinear", align_corners=False)
                noise = torch.randn(x0.shape, generator=gen, device=device)
                t = torch.randint(
                    0,
                    scheduler.config.num_train_timesteps,
                    (x0.shape[0],),
                    generator=gen,
                    device=device,
                )
                loss = F.mse_loss(unet(scheduler.add_noise(x0, noise, t), t).sample, noise)
                for group in opt.param_groups:
                    group["lr"] = p.train_lr * min(1.0, (step + 1) / max(1, p.warmup_steps))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if p.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(unet.parameters(), p.grad_clip)
                opt.step()
                decay = min(p.ema_decay, (1 + step) / (10 + step))
                with torch.no_grad():
                    for e, w in zip(ema.parameters(), unet.parameters(), strict=True):
                        e.lerp_(w, 1 - decay)
                task.advance()
                if (step + 1) % 50 == 0:
                    task.update(loss=float(loss.detach()))
                if (
                    p.checkpoint_every
                    and (step + 1) % p.checkpoint_every == 0
                    and step + 1 < p.train_steps
                ):
                    from ueb.atomic import save_torch

                    snapshot = {"unet": unet.state_dict(), "ema": ema.state_dict(),
                                "opt": opt.state_dict(), "gen": gen.get_state(), "step": step + 1}  # fmt: skip
                    save_torch(snapshot, ckpt, what="an AVATAR checkpoint")
        ema.save_pretrained(art.path / "unet")
        scheduler.save_pretrained(art.path / "scheduler")
        shutil.rmtree(art.path / "checkpoints", ignore_errors=True)
        ctx.artifacts.finish(art, final_loss=float(loss.detach()), steps=p.train_steps)
        return art.path

    def model(self, train: ImageSet, ctx: RunContext) -> tuple[Any, Any]:
        p = self.params
        if p.model_dir:
            self.model_source = f"model_dir:{p.model_dir}"
            return load_ddpm(p.model_dir)
        if not p.train_if_missing:
            raise ConfigError(
                "avatar needs a diffusion model and model_dir is empty", _fix_model_dir_hint()
            )
        clean = self.clean_images(train, ctx)
        folder = self.trained_model(clean, ctx)
        key = json.loads((folder / "manifest.json").read_text())["key"]
        source = p.clean_source or train.name
        self.model_source = f"trained-on-clean:{source}/{p.clean_split}:{key}"
        return load_ddpm(folder)

    # -- the countermeasure ---------------------------------------------------------------

    def transform_train_set(self, train: ImageSet, ctx: RunContext) -> ImageSet:
        p = self.params
        if p.t_star == 0:
            self.model_source = "none (t_star=0)"
            return train.with_images(
                train.images.clone(), countermeasure=self.name, avatar_model=self.model_source
            )
        unet, scheduler = self.model(train, ctx)
        if int(unet.config.in_channels) != train.channels:
            raise ConfigError(
                f"avatar: the diffusion model takes {unet.config.in_channels} channels, the images have {train.channels}",
                "use a model trained on images with the same number of channels",
            )
        device = resolve_device(ctx.device)
        unet = unet.to(device).eval()
        gen = torch.Generator(device=device).manual_seed(ctx.seed + 104729)
        images = train.images
        out = torch.empty(images.shape, dtype=torch.uint8)
        with ctx.progress.task(f"avatar: purifying (t*={p.t_star})", total=len(train)) as task:
            for i in range(0, len(train), p.batch_size):
                x = images[i : i + p.batch_size].to(device)
                x01 = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
                # stored on the 8-bit grid, as the official sanitiser stores its output
                out[i : i + p.batch_size] = quantize(
                    purify(x01, unet, scheduler, p.t_star, p.reverse_steps, gen)
                ).cpu()
                task.advance(x.shape[0])
        return train.with_images(out, countermeasure=self.name, avatar_model=self.model_source)
