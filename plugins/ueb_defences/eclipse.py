"""ECLIPSE: purify the training set with a diffusion model trained on a sparse clean set.

Method: Wang et al., "ECLIPSE: Expunging Clean-label Indiscriminate Poisons via Sparse
Diffusion Purification" (ESORICS 2024, arXiv 2406.15093); official code CGCL-codes/ECLIPSE
(`purification.py`, `runners/improved_diffusion.py`, `train.py`, `configs/cifar10.yml`).

1. **Sparse set** (Sec. 3.5): the defender holds B clean images of the training distribution,
   B/N = 4% of the training set's size N on CIFAR-10 (the official checkpoint: 2,000 random
   CIFAR-10 test images). They are drawn here from `clean_split` of `clean_source` with the
   run's seed.
2. **Enlargement** (Eq. 3, Algorithm 1 lines 1-4): the sparse set is replicated M = 4 times and
   joined to itself, so the diffusion model sees more data of exactly the clean distribution.
3. **Denoiser**: a DDPM trained on the enlarged set for I = 250K iterations (official: the
   improved-diffusion U-Net, 128 channels, 3 residual blocks per level, attention at 16x16 and
   8x8, dropout 0.3, lr 1e-4, batch 128, EMA 0.9999). It is trained by AVATAR's DDPM trainer
   (`ueb_countermeasures_modern.avatar`), an artifact keyed by the sparse set, seed and
   settings. The official checkpoint (`checkpoint`, an improved-diffusion file, converted by
   `eclipse_checkpoint.py`) or a local diffusers DDPM folder (`model_dir`) replaces it.
4. **Diffuse and denoise** (Eq. 11-12, Algorithm 1 lines 11-23): every poisoned image x_p gets
   x_t* = sqrt(a(t*)) x_p + sqrt(1 - a(t*)) eps in one draw and the model's reverse chain runs
   back to 0 (AVATAR's `purify`). The official noise level is t* = 100 of a 4,000-step cosine
   schedule (a(t*) = 0.99751); on a model with another schedule, t* becomes the step of that
   model whose cumulative alpha is closest (12 of the 1,000-step linear DDPM schedule), since
   the forward draw depends on a(t*) alone. Outputs are stored on the 8-bit grid by
   truncation, as the official `ToPILImage` stores them.
5. **Corruption compensation** (Eq. 13): each purified image becomes G(x) + n with probability
   p = 0.4 (G: grayscale) and x + n otherwise, n ~ N(0, 0.05^2), clipped to [0, 1]. The official
   `train.py` draws it afresh every time an image is loaded (`RandomGrayscale(p=0.4)`, then
   `add_random_gaussian_noise(std=0.05)`, then `ToPILImage`, which truncates to 8 bits), after
   the random crop and flip; `compensation="every-step"` does that in the trainer's `augment`
   hook, after the trainer's crop and flip. `compensation="once"` draws it once per image, the
   reading of Algorithm 1 line 24.

Stage: protocol, since it changes the data and the training step together; the purified set
is an artifact (`eclipse-purified`) shared by every victim trained on that poison and seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ueb.errors import ConfigError, PluginError
from ueb.imageset import ImageSet
from ueb.interfaces import (
    Batch,
    Countermeasure,
    Fitter,
    Requirement,
    RunContext,
    Stage,
    StepContext,
    ThreatModel,
    TrainResult,
)
from ueb.params import as_dict, bounded
from ueb.training import resolve_device

from .dvae import truncate_to_8bit

# PIL's "L" conversion, which torchvision's RandomGrayscale uses on PIL images: ITU-R 601-2
# luma in 16-bit fixed point, rounded (L = (19595 R + 38470 G + 7471 B + 2^15) >> 16)
_LUMA = (19595, 38470, 7471)
DDPM_KEYS = ("train_steps", "train_batch_size", "train_lr", "ema_decay", "dropout", "channels",
             "layers_per_block", "attention_levels", "checkpoint_every")  # fmt: skip


def alpha_bar(schedule: str, steps: int) -> torch.Tensor:
    """Cumulative alphas of improved-diffusion's named schedules (float64, index t-1 for step t).

    cosine: Nichol and Dhariwal 2021, Eq. 17 (offset 0.008, betas capped at 0.999); linear: Ho
    et al. 2020's 1e-4..0.02, scaled by 1000 / steps as improved-diffusion scales it.
    """
    if schedule == "cosine":

        def f(t: float) -> float:
            return math.cos((t / steps + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor(
            [min(1 - f(i + 1) / f(i), 0.999) for i in range(steps)], dtype=torch.float64
        )
    else:
        scale = 1000 / steps
        betas = torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def matching_step(model_alpha_bar: torch.Tensor, target: float) -> int:
    """The step t >= 1 of a model's schedule whose cumulative alpha is closest to `target`."""
    gap = (model_alpha_bar.double() - target).abs()
    return int(torch.argmin(gap)) + 1


def grayscale_like_pil(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) images in [0, 1] on the 8-bit grid -> their PIL "L" grey, in 3 channels."""
    v = x.mul(255).round_().to(torch.int64)
    grey = (_LUMA[0] * v[:, 0] + _LUMA[1] * v[:, 1] + _LUMA[2] * v[:, 2] + 32768) >> 16
    return (grey.to(x.dtype) / 255).unsqueeze(1).expand_as(x)


def compensate(x: torch.Tensor, p: float, std: float, gen: torch.Generator) -> torch.Tensor:
    """Eq. 13 as the official transform applies it: grey with probability p, then Gaussian noise
    of `std`, clipped to [0, 1] and truncated to the 8-bit grid."""
    if x.shape[1] == 3 and p > 0:
        pick = torch.rand(x.shape[0], generator=gen, device=gen.device).to(x.device) < p
        x = torch.where(pick[:, None, None, None], grayscale_like_pil(x), x)
    noise = torch.randn(x.shape, generator=gen, device=gen.device, dtype=x.dtype).to(x.device)
    return (x + std * noise).clamp_(0, 1).mul_(255).floor_().div_(255)


def _folder_identity(folder: str) -> dict[str, Any]:
    root = Path(folder).expanduser()
    files = sorted(f for f in root.rglob("*") if f.is_file())
    return {
        "path": folder,
        "files": [[f.relative_to(root).as_posix(), f.stat().st_size, int(f.stat().st_mtime)]
                  for f in files],
    }  # fmt: skip


class Eclipse(Countermeasure):
    """ECLIPSE (Wang et al., ESORICS 2024): sparse-data diffusion purification, then grayscale + noise compensation."""

    stage: ClassVar[Stage] = "protocol"
    threat: ClassVar[ThreatModel] = ThreatModel(clean_data=True)
    version: ClassVar[str] = "1"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"train_steps": 3, "train_batch_size": 16, "channels": [8, 16],
                  "layers_per_block": 1, "attention_levels": [], "reverse_steps": 2},
        "quick": {"train_steps": 300, "train_batch_size": 64, "channels": [16, 32],
                  "layers_per_block": 1, "attention_levels": [], "batch_size": 500},
    }  # fmt: skip

    @dataclass(frozen=True)
    class Params:
        checkpoint: str = ""  # the official improved-diffusion file (ema_0.9999_250000.pt)
        model_dir: str = ""  # a local diffusers DDPM folder; both "": train one on the sparse set
        clean_source: str = ""  # a dataset plugin; "": the training set's own dataset
        clean_split: Literal["test", "train"] = "test"
        sparse_fraction: float = bounded(0.04, gt=0, le=1)  # B / N
        replications: int = bounded(4, ge=0)  # M
        # the purification noise: step t* of the reference schedule (official: 100 of 4000, cosine)
        t_star: int = bounded(100, ge=0)
        reference_steps: int = bounded(4000, ge=1)
        reference_schedule: Literal["cosine", "linear"] = "cosine"
        reverse_steps: int = bounded(0, ge=0)  # 0: every step from t* down; n: n of them
        batch_size: int = bounded(256, ge=1)  # purification batch
        # the DDPM trained on the enlarged sparse set when model_dir is empty
        train_steps: int = bounded(250_000, ge=1)
        train_batch_size: int = bounded(128, ge=1)
        train_lr: float = bounded(1e-4, gt=0)
        ema_decay: float = bounded(0.9999, ge=0, le=1)
        dropout: float = bounded(0.3, ge=0, lt=1)
        channels: tuple[int, ...] = bounded((128, 256, 256, 256), ge=1)
        layers_per_block: int = bounded(3, ge=1)
        attention_levels: tuple[int, ...] = bounded((1, 2), ge=0)
        checkpoint_every: int = bounded(2000, ge=1)
        # lightweight corruption compensation (Eq. 13)
        grayscale_p: float = bounded(0.4, ge=0, le=1)
        noise_std: float = bounded(0.05, ge=0)
        compensation: Literal["every-step", "once"] = "every-step"

        def __post_init__(self) -> None:
            if self.t_star > self.reference_steps:
                raise ValueError(
                    f"t_star={self.t_star} exceeds reference_steps={self.reference_steps}"
                )
            if not self.channels:
                raise ValueError("channels must be a non-empty list of positive widths")

    def __init__(self, params: Any = None, name: str | None = None) -> None:
        super().__init__(params, name)
        self.model_source = ""
        self.model_step = 0
        self.sparse_images = 0

    def cost(self) -> float:
        return 3.0

    def preflight(self) -> None:
        p = self.params
        if p.checkpoint and p.model_dir:
            raise ConfigError(
                f"{self.name}: both checkpoint and model_dir are set",
                "set one of them: checkpoint for the official .pt file, model_dir for a diffusers folder",
            )
        if p.checkpoint and not Path(p.checkpoint).expanduser().is_file():
            raise ConfigError(
                f"{self.name}: checkpoint '{p.checkpoint}' is not a file",
                "set checkpoint to ECLIPSE's official ema_0.9999_250000.pt (from the authors' README), or to '' to train a DDPM on the sparse clean set",
            )
        path = p.model_dir
        if path and not Path(path).expanduser().is_dir():
            raise ConfigError(
                f"{self.name}: model_dir '{path}' is not a folder",
                "set model_dir to a local diffusers DDPM folder (unet/ and scheduler/), or to '' to train one on the sparse clean set",
            )

    def input_identity(self) -> dict[str, Any]:
        p = self.params
        if p.checkpoint:
            stat = Path(p.checkpoint).expanduser().stat()
            return {"checkpoint": [p.checkpoint, stat.st_size, int(stat.st_mtime)]}
        return {"model_dir": _folder_identity(p.model_dir)} if p.model_dir else {}

    def requires(self) -> list[Requirement]:
        p = self.params
        if p.checkpoint or p.model_dir or p.t_star == 0 or not p.clean_source:
            return []
        return [Requirement("dataset", p.clean_source)]

    # -- the sparse clean set -------------------------------------------------------------

    def sparse_set(self, train: ImageSet, ctx: RunContext) -> ImageSet:
        """B = sparse_fraction * N clean images drawn with the run's seed, then enlarged."""
        p = self.params
        source = p.clean_source or train.name
        if not source:
            raise ConfigError(
                f"{self.name}: the training set names no dataset to draw the sparse clean set from",
                f"set {self.name}.clean_source to a dataset name, or model_dir to a trained DDPM",
            )
        try:
            dataset = ctx.plugin("dataset", source)
        except PluginError as exc:
            raise ConfigError(
                f"{self.name}: this run cannot hand it the clean '{source}' images ({exc.problem})",
                f"set {self.name}.clean_source to a dataset of the run, or model_dir to a trained DDPM",
            ) from exc
        splits = dataset.load(ctx.data_root)
        clean: ImageSet = splits.test if p.clean_split == "test" else splits.train
        if clean.channels != train.channels:  # another size is resized by the purification
            raise ConfigError(
                f"{self.name}: clean source '{source}' has {clean.channels} channels, the training set {train.channels}",
                f"set {self.name}.clean_source to a dataset of the same kind of images",
            )
        size = max(1, round(p.sparse_fraction * len(train)))
        if size > len(clean):
            raise ConfigError(
                f"{self.name}: a sparse set of {size} images needs more than the {len(clean)} of '{source}' {p.clean_split}",
                f"lower {self.name}.sparse_fraction, or set clean_split / clean_source to a larger set",
            )
        gen = torch.Generator().manual_seed(ctx.seed + 30_011)
        sparse = clean.subset(torch.randperm(len(clean), generator=gen)[:size])
        self.sparse_images = size
        copies = sparse.uint8().repeat(p.replications + 1, 1, 1, 1)
        return ImageSet(
            copies, sparse.labels.repeat(p.replications + 1), sparse.classes, name=source
        )

    # -- the diffusion model --------------------------------------------------------------

    def model(self, train: ImageSet, ctx: RunContext) -> tuple[Any, Any]:
        from ueb_countermeasures_modern.avatar import Avatar, load_ddpm

        p = self.params
        if p.checkpoint:
            from .eclipse_checkpoint import OFFICIAL_IMAGE_SIZE, load_official

            self.model_source = f"checkpoint:{p.checkpoint}"
            return load_official(
                p.checkpoint,
                image_size=OFFICIAL_IMAGE_SIZE,
                in_channels=train.channels,
                channels=tuple(p.channels),
                layers_per_block=p.layers_per_block,
                attention_levels=tuple(p.attention_levels),
                steps=p.reference_steps,
                schedule=p.reference_schedule,
            )
        if p.model_dir:
            self.model_source = f"model_dir:{p.model_dir}"
            return load_ddpm(p.model_dir)
        trainer = Avatar(
            Avatar.Params(
                train_steps=p.train_steps,
                train_batch_size=p.train_batch_size,
                train_lr=p.train_lr,
                warmup_steps=0,  # improved-diffusion trains at a constant rate
                ema_decay=p.ema_decay,
                grad_clip=0.0,  # improved-diffusion clips no gradient
                dropout=p.dropout,
                channels=tuple(p.channels),
                layers_per_block=p.layers_per_block,
                attention_levels=tuple(p.attention_levels),
                checkpoint_every=p.checkpoint_every,
            ),
            name=self.name,
        )
        folder = trainer.trained_model(self.sparse_set(train, ctx), ctx)
        self.model_source = f"trained-on-sparse:{folder.name}"
        return load_ddpm(folder)

    def forward_step(self, scheduler: Any) -> int:
        """t* on the model's own schedule: its step with the reference's cumulative alpha."""
        p = self.params
        target = float(alpha_bar(p.reference_schedule, p.reference_steps)[p.t_star - 1])
        return matching_step(scheduler.alphas_cumprod, target)

    # -- purification ---------------------------------------------------------------------

    def purified(self, train: ImageSet, ctx: RunContext) -> ImageSet:
        """The training set after diffuse-and-denoise, as uint8 (an artifact per poison and seed)."""
        from ueb_countermeasures_modern.avatar import purify

        from ueb.atomic import save_torch

        p = self.params
        if p.t_star == 0:
            self.model_source = "none (t_star=0)"
            return train.with_images(train.uint8().clone(), eclipse_model=self.model_source)
        unet, scheduler = self.model(train, ctx)
        if int(unet.config.in_channels) != train.channels:
            raise ConfigError(
                f"{self.name}: the diffusion model takes {unet.config.in_channels} channels, the images have {train.channels}",
                "use a model trained on images with the same number of channels",
            )
        self.model_step = self.forward_step(scheduler)
        keys = ("t_star", "reference_steps", "reference_schedule", "reverse_steps")
        recipe = {
            "what": "eclipse-purified",
            "version": self.version,
            "data": train.fingerprint(),
            "seed": ctx.seed,
            "model": self.model_source,
            "model_files": self.input_identity(),
            "params": {k: as_dict(p)[k] for k in keys},
        }
        art = ctx.artifacts.get("eclipse-purified", recipe)
        file = art.path / "images.pt"
        if art.done:
            images = torch.load(file, weights_only=True)
            return train.with_images(images, eclipse_model=self.model_source)
        device = resolve_device(ctx.device)
        unet = unet.to(device).eval()
        gen = torch.Generator(device=device).manual_seed(ctx.seed + 104_651)
        out = torch.empty(train.images.shape, dtype=torch.uint8)
        step = self.model_step
        with ctx.progress.task(f"{self.name}: purifying (t*={step})", total=len(train)) as task:
            for i in range(0, len(train), p.batch_size):
                x01 = train.float01()[i : i + p.batch_size].to(device)
                x = purify(x01, unet, scheduler, step, p.reverse_steps, gen)
                out[i : i + p.batch_size] = truncate_to_8bit(x).cpu()
                task.advance(x01.shape[0])
        save_torch(out, file, what="an ECLIPSE purified set")
        ctx.artifacts.finish(art, images=len(out), model_step=step)
        return train.with_images(out, eclipse_model=self.model_source)

    # -- training -------------------------------------------------------------------------

    def augment(self, batch: Batch, step: StepContext) -> Batch:
        p = self.params
        if p.compensation != "every-step":
            return batch
        return replace(batch, x=compensate(batch.x, p.grayscale_p, p.noise_std, step.generator))

    def fit(
        self, model: nn.Module, train: ImageSet, test: ImageSet, trainer: Fitter, ctx: RunContext
    ) -> TrainResult:
        p = self.params
        purified = self.purified(train, ctx)
        if p.compensation == "once":
            gen = torch.Generator().manual_seed(ctx.seed + 52_361)
            once = compensate(purified.float01(), p.grayscale_p, p.noise_std, gen)
            purified = purified.with_images(once.mul(255).round_().to(torch.uint8))
        result = trainer.fit(
            model, purified, test, hooks=self, description=f"{self.name}: training"
        )
        result.extra.update(
            {
                "eclipse_model": self.model_source,
                "eclipse_model_step": self.model_step,
                "eclipse_sparse_images": self.sparse_images,
                "eclipse_changed_pixels": float((purified.uint8() != train.uint8()).float().mean()),
            }
        )
        return result
