"""Where the hidden images come from: groups of K x M images, one group per class.

* "sig": the Semantic Images Generation bank (`ueb_sig.load_or_build_bank`, paper Sec. III-B3):
  M images per class sharing a global shape, differing in texture.
* "next-class": clean training images of the next class (class k hides images of class
  k+1 mod K), the paper's appendix Table D baseline.
* "natural": random natural images from another dataset (appendix Table D uses CIFAR-100),
  M disjoint random images per class.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ueb.errors import ConfigError
from ueb.imageset import ImageSet
from ueb.interfaces import RunContext


@dataclass
class HiddenGroups:
    images: torch.Tensor  # uint8 (K, M, C, S, S)
    source: str
    content_hash: str
    facts: dict[str, Any]

    @property
    def per_class(self) -> int:
        return int(self.images.shape[1])


def _hash(t: torch.Tensor) -> str:
    return hashlib.sha256(
        t.contiguous().numpy().tobytes() + str(tuple(t.shape)).encode()
    ).hexdigest()[:16]


def _fit(images: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """uint8 (..., C', S', S') -> uint8 (..., channels, size, size)."""
    lead = images.shape[:-3]
    x = images.reshape(-1, *images.shape[-3:]).float()
    if x.shape[1] != channels:
        if channels == 1:
            x = (x * torch.tensor([0.299, 0.587, 0.114])[: x.shape[1], None, None]).sum(
                1, keepdim=True
            )
        else:
            x = x.mean(1, keepdim=True).expand(-1, channels, -1, -1)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return x.round().clamp(0, 255).to(torch.uint8).reshape(*lead, channels, size, size)


def next_class(train: ImageSet, per_class: int) -> HiddenGroups:
    k = train.num_classes
    counts = [int((train.labels == c).sum()) for c in range(k)]
    m = min([per_class, *counts])
    if m < 1:
        raise ConfigError(
            "hidden='next-class' needs at least one training image per class",
            "use a dataset with every class present",
        )
    u8 = train.uint8()
    groups = []
    for c in range(k):
        idx = torch.nonzero(train.labels == (c + 1) % k).flatten()[:m]
        groups.append(u8[idx])
    images = torch.stack(groups)
    return HiddenGroups(images, "next-class", _hash(images), {"per_class": m})


def natural(
    ctx: RunContext, train: ImageSet, per_class: int, dataset: str, seed: int
) -> HiddenGroups:
    source = ctx.plugin("dataset", dataset).load(ctx.data_root).train
    k = train.num_classes
    need = k * per_class
    if len(source) < need:
        raise ConfigError(
            f"hidden='natural': dataset '{dataset}' has {len(source)} images, {need} needed",
            "lower 'per_class'",
        )
    perm = torch.randperm(len(source), generator=torch.Generator().manual_seed(seed))[:need]
    images = _fit(source.uint8()[perm], train.channels, train.image_size).reshape(
        k, per_class, train.channels, train.image_size, train.image_size
    )
    return HiddenGroups(
        images, f"natural:{dataset}", _hash(images), {"per_class": per_class, "dataset": dataset}
    )


DIFFUSION_WEIGHTS = (
    "Stable Diffusion 1.5 (stable-diffusion-v1-5/stable-diffusion-v1-5) and the canny ControlNet "
    "(lllyasviel/sd-controlnet-canny), each saved with diffusers' save_pretrained"
)


@dataclass(frozen=True)
class SigSettings:
    """The `sig_*` parameters of a Deep Hiding poisoner, as the SIG bank builder takes them.

    `where` is the poisoner's name, so errors name the setting to fix (`deephiding.sig_sd_dir`).
    The diffusion settings reach the bank only with `backend="diffusers"`; an empty
    `text_encoder_dir` means TPC embeds with the offline MiniLM encoder instead of CLIP.
    """

    where: str = "deephiding"
    backend: str = "offline"
    sd_dir: str = ""
    controlnet_dir: str = ""
    text_encoder_dir: str = ""
    prompts: str = ""
    steps: int = 20
    guidance_scale: float = 7.5
    conditioning_scale: float = 1.0
    gen_size: int = 512
    batch_size: int = 8
    seed: int = 0

    @classmethod
    def from_params(cls, params: Any, where: str, seed: int = 0) -> SigSettings:
        """`seed` is the poison's seed (the run seed unless `hider_seed` overrides it): it picks
        the bank's prompts' clustering and every sample the generator draws."""
        p = params
        return cls(
            where=where, backend=p.sig_backend, sd_dir=p.sig_sd_dir, controlnet_dir=p.sig_controlnet_dir,
            text_encoder_dir=p.sig_text_encoder_dir, prompts=p.sig_prompts, steps=p.sig_steps,
            guidance_scale=p.sig_guidance_scale, conditioning_scale=p.sig_conditioning_scale,
            gen_size=p.sig_gen_size, batch_size=p.sig_batch_size, seed=seed,
        )  # fmt: skip

    def names(self) -> Any:
        from ueb_sig.weights import Settings

        w = self.where
        return Settings(
            sd_model=f"{w}.sig_sd_dir",
            controlnet=f"{w}.sig_controlnet_dir",
            clip_model=f"{w}.sig_text_encoder_dir",
            prompts=f"{w}.sig_prompts",
        )

    def options(self) -> dict[str, Any]:
        """Keyword options for `ueb_sig.load_or_build_bank`."""
        opts: dict[str, Any] = {}
        if self.prompts:
            opts["prompts"] = self.prompts
        if self.text_encoder_dir:
            opts.update(encoder="clip", clip_model=self.text_encoder_dir)
        if self.backend == "diffusers":
            opts.update(
                sd_model=self.sd_dir or None, controlnet=self.controlnet_dir or None, steps=self.steps,
                guidance_scale=self.guidance_scale, conditioning_scale=self.conditioning_scale,
                gen_size=self.gen_size, batch_size=self.batch_size,
            )  # fmt: skip
        return opts

    def check_diffusion_folders(self) -> None:
        """The diffusion backend's two weight folders are set: one line naming every setting that
        is not, the weights to put there, and the offline alternative."""
        if self.backend != "diffusers":
            return
        unset = [
            f"{self.where}.{name}"
            for name, value in (
                ("sig_sd_dir", self.sd_dir),
                ("sig_controlnet_dir", self.controlnet_dir),
            )
            if not value
        ]
        if unset:
            raise ConfigError(
                f"{self.where}: SIG's diffusion backend (the paper's generator) needs local weights, "
                f"but {' and '.join(unset)} {'is' if len(unset) == 1 else 'are'} not set",
                f"set {' and '.join(unset)} to local folders holding {DIFFUSION_WEIGHTS} "
                f"(nothing is downloaded), or pass {self.where}.sig_backend=offline for the "
                "offline approximation",
            )

    def check(self) -> None:
        """Every local input of the bank (weight folders, corpus), before any work."""
        bank = _sig_bank_module()
        if self.backend not in bank.BACKENDS:
            raise ConfigError(
                f"{self.where}: unknown sig_backend '{self.backend}'",
                "use 'offline' or 'diffusers'",
            )
        bank.check_inputs(self.backend, self.names(), **self.options())


def _sig_bank_module() -> Any:
    try:
        import ueb_sig.bank as bank
    except ImportError as exc:
        raise ConfigError(
            "hidden='sig' needs the ueb_sig plugin, which cannot be imported",
            "install it or pass hidden=next-class",
        ) from exc
    if not hasattr(bank, "load_or_build_bank") or not hasattr(bank, "check_inputs"):
        raise ConfigError(
            "the installed ueb_sig has no load_or_build_bank()/check_inputs()",
            "update ueb_sig or pass hidden=next-class",
        )
    return bank


def sig(ctx: RunContext, train: ImageSet, per_class: int, settings: SigSettings) -> HiddenGroups:
    settings.check()
    bank = _sig_bank_module().load_or_build_bank(
        ctx, train.num_classes, per_class, train.image_size, backend=settings.backend, seed=settings.seed,
        settings=settings.names(), **settings.options(),
    )  # fmt: skip
    images = bank.images
    if images.dtype != torch.uint8 or images.ndim != 5 or images.shape[0] != train.num_classes:
        raise ConfigError(
            f"the SIG bank has shape {tuple(images.shape)} / {images.dtype}",
            "expected uint8 (K, M, 3, S, S)",
        )
    images = _fit(images.cpu(), train.channels, train.image_size)
    facts: dict[str, Any] = {
        "per_class": int(images.shape[1]),
        "backend": bank.backend,
        "encoder": bank.encoder,
        "generator": bank.recipe.get("generator"),
        "bank_artifact": None if bank.path is None else str(bank.path),
    }
    if "weights" in bank.recipe:
        facts["weights"] = bank.recipe["weights"]
    paths = _sig_bank_module().weight_paths(settings.backend, **settings.options())
    if paths:
        facts["weight_paths"] = paths
    return HiddenGroups(images, "sig", bank.content_hash, facts)


def load_groups(
    ctx: RunContext,
    train: ImageSet,
    kind: str,
    per_class: int,
    *,
    sig_settings: SigSettings | None = None,
    dataset: str = "cifar100",
    seed: int = 0,
) -> HiddenGroups:
    if per_class < 1:
        raise ConfigError(f"'per_class' must be positive, got {per_class}")
    if kind == "next-class":
        return next_class(train, per_class)
    if kind == "natural":
        return natural(ctx, train, per_class, dataset, seed)
    if kind == "sig":
        return sig(ctx, train, per_class, sig_settings or SigSettings(seed=seed))
    raise ConfigError(f"unknown hidden image source '{kind}'", "use sig, next-class or natural")
