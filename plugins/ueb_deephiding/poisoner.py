"""Deep Hiding (Meng et al. 2024, "Semantic Deep Hiding for Robust Unlearnable Examples").

An invertible hiding network (HiNet, Jing et al. 2021) hides a semantic image in every
training image; the container is the unlearnable example (Sec. III-B). Class-wise DH(C)
hides one image per class, sample-wise DH(S) one of the class's group per sample
(Sec. IV-A2). Containers are clipped to Linf 8/255 around the clean image, or left as they
are under the soft restriction (Sec. IV-H). The hider is trained once per (dataset, hidden
images, settings) and cached as an artifact; so is the LFC feature extractor.
docs/deephiding.md lists every setting and where it comes from.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from ueb.errors import ConfigError
from ueb.imageset import ImageSet
from ueb.interfaces import Budget, Poisoner, Requirement, RunContext
from ueb.params import as_dict, bounded

HIDER_FORMAT = "3"  # bump when the hider training changes its numbers
OFFLINE_CAVEAT = "semantic images from the offline approximation bank, not SIG's diffusion backend"
HIDDEN_CAVEATS = {
    "next-class": "hidden images are clean next-class training images (appendix Table D), not SIG's semantic images",
    "natural": "hidden images are natural images of another dataset (appendix Table D), not SIG's semantic images",
}
CURVE_POINTS = 50  # points of each loss curve kept in report() (history.json holds every step)


@dataclass(frozen=True)
class DeepHidingParams:
    mode: Literal["class", "sample"] = "class"
    hidden: Literal["sig", "next-class", "natural"] = "sig"
    per_class: int = bounded(100, ge=1)  # semantic images per class (paper Sec. IV-A2)
    # semantic-image generation (hidden="sig"); docs/sig.md. The folders are local, nothing
    # is downloaded; the diffusion settings apply to sig_backend="diffusers" only.
    sig_backend: Literal["offline", "diffusers"] = "offline"
    sig_sd_dir: str = ""  # Stable Diffusion 1.x, diffusers layout
    sig_controlnet_dir: str = ""  # canny ControlNet
    sig_text_encoder_dir: str = ""  # CLIP text model for TPC; "" = the offline MiniLM encoder
    sig_prompts: str = ""  # caption corpus; "" = the built-in one
    sig_steps: int = bounded(20, ge=1)
    sig_guidance_scale: float = bounded(7.5, ge=0)
    sig_conditioning_scale: float = bounded(1.0, ge=0)
    sig_gen_size: int = bounded(512, ge=8)
    sig_batch_size: int = bounded(8, ge=1)
    natural_dataset: str = "cifar100"
    restriction: Literal["strict", "soft"] = "strict"
    eps: float = bounded(8 / 255, gt=0, lt=1)
    # hider architecture (HiNet)
    blocks: int = bounded(16, ge=1)
    growth: int = bounded(32, ge=1)
    dense_layers: int = bounded(5, ge=2)
    clamp: float = bounded(2.0, gt=0)
    init_scale: float = bounded(0.01, ge=0)
    # hider training (paper Sec. IV-A2); `iterations` counts hider steps, not victim steps
    iterations: int = bounded(5000, ge=1)
    batch_size: int = bounded(24, ge=1)
    lr: float = bounded(10**-4.5, gt=0)
    beta1: float = bounded(0.5, ge=0, lt=1)
    beta2: float = bounded(0.999, ge=0, lt=1)
    adam_eps: float = bounded(1e-6, gt=0)
    w_freq: float = bounded(1.0, ge=0)
    w_reveal: float = bounded(1.0, ge=0)
    w_conc: float = bounded(1e-4, ge=0)
    checkpoint_every: int = bounded(100, ge=1)
    explode_factor: float = bounded(100.0, gt=1)
    rollback_lr_factor: float = bounded(0.5, gt=0, le=1)
    max_rollbacks: int = bounded(8, ge=0)
    # None: the run seed drives every random choice (hider, extractor, bank, reveal noise);
    # a number overrides it, e.g. to reproduce one poison under several run seeds
    hider_seed: int | None = bounded(None, ge=0)
    # LFC feature extractor; its training length is its own, not the victim's
    extractor_weights: str = ""
    extractor_width: int = bounded(64, ge=1)
    extractor_iterations: int = bounded(40_000, ge=1)
    # generation
    gen_batch_size: int = bounded(256, ge=1)
    reveal_check: int = bounded(64, ge=0)  # images whose hidden image is revealed for report()


class DeepHiding(Poisoner[DeepHidingParams]):
    """DH(C) / DH(S): HiNet-style invertible hiding of semantic images (paper Sec. III-B)."""

    version: ClassVar[str] = "3"
    Params = DeepHidingParams
    # CPU scale. Smoke: a two-block hider trained long enough (80 steps at the paper's batch
    # of 24, lr 3e-3) that its perturbation carries the hidden image, so DH(S) is sample-wise
    # in substance and LFC is in balance (docs/deephiding.md, "LFC balance"). Quick: the paper's
    # algorithm and losses, a 2-block hider trained for 600 steps (paper: 16 blocks, 5,000
    # steps; docs/deephiding.md); lr 1e-3 because 10^-4.5 barely moves in 600 steps, and the
    # rollback guard handles HiNet's occasional blow-ups. Paper: the semantic images come from
    # SIG's diffusion backend, the paper's generator (Sec. III-B3: Stable Diffusion + canny
    # ControlNet); nothing is downloaded, so sig_sd_dir and sig_controlnet_dir name local
    # folders, or sig_backend=offline picks the offline approximation (docs/sig.md).
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {
            "hidden": "next-class",
            "blocks": 2,
            "growth": 16,
            "iterations": 80,
            "batch_size": 24,
            "lr": 3e-3,
            "per_class": 3,
            "extractor_width": 4,
            "extractor_iterations": 3,
            "checkpoint_every": 40,
            "reveal_check": 8,
        },
        "quick": {
            "blocks": 2,
            "growth": 16,
            "iterations": 600,
            "lr": 1e-3,
            "per_class": 10,
            "extractor_width": 8,
            "extractor_iterations": 100,
            "checkpoint_every": 100,
        },
        "paper": {"sig_backend": "diffusers"},
    }

    def __init__(self, params: Any = None, name: str | None = None) -> None:
        super().__init__(params, name)
        self._report: dict[str, Any] = {}

    # -- interface ---------------------------------------------------------------------------

    def budget(self) -> Budget:
        if self.params.restriction == "soft":
            return Budget("unbounded")
        return Budget("linf", self.params.eps)

    @property
    def sample_wise(self) -> bool:
        return self.params.mode == "sample"

    def report(self) -> dict[str, Any]:
        return dict(self._report)

    def requires(self) -> list[Requirement]:
        """The LFC extractor's ResNet-18 and, for natural hidden images, their dataset."""
        p = self.params
        needs = []
        if p.w_conc != 0:
            needs.append(Requirement("victim", "resnet18", {"width": p.extractor_width}))
        if p.hidden == "natural":
            needs.append(Requirement("dataset", p.natural_dataset))
        return needs

    def preflight(self) -> None:
        """The SIG bank's local inputs (weight folders, corpus) and the LFC extractor's weights
        exist and look complete."""
        if self.params.hidden == "sig":
            from ueb_deephiding.hidden import SigSettings

            settings = SigSettings.from_params(self.params, self.name)
            settings.check_diffusion_folders()
            settings.check()
        if self.params.w_conc != 0 and self.params.extractor_weights:
            path = Path(self.params.extractor_weights).expanduser()
            if not path.is_file():
                raise ConfigError(
                    f"LFC extractor weights {path} do not exist (deephiding.extractor_weights)",
                    "pass a local state-dict file or leave 'extractor_weights' empty to train one",
                )

    def input_identity(self) -> dict[str, Any]:
        """Sizes and dates of the local files this run reads (weights replaced in place under the
        same path give new keys; the SIG bank itself also hashes their contents)."""
        p = self.params
        paths = {"extractor_weights": p.extractor_weights if p.w_conc != 0 else ""}
        if p.hidden == "sig":
            paths["sig_prompts"] = p.sig_prompts
            if p.sig_backend == "diffusers":
                paths.update(
                    sig_sd_dir=p.sig_sd_dir,
                    sig_controlnet_dir=p.sig_controlnet_dir,
                    sig_text_encoder_dir=p.sig_text_encoder_dir,
                )
        return {
            key: _stat_identity(Path(value).expanduser()) for key, value in paths.items() if value
        }

    def seed(self, ctx: RunContext) -> int:
        """The seed of every random choice in this poison: the run's, unless `hider_seed` is set."""
        return int(ctx.seed if self.params.hider_seed is None else self.params.hider_seed)

    def poison(self, train: ImageSet, ctx: RunContext) -> torch.Tensor:
        from ueb.imageset import quantize
        from ueb.training import resolve_device
        from ueb_deephiding.metrics import psnr, variance_shares

        device = resolve_device(ctx.device)
        net, groups, facts = self.prepare(train, ctx)
        hidden_idx = self.hidden_index(train, groups.per_class)
        out = self.generate(net, train, groups.images, hidden_idx, device, ctx)
        clean = train.float01()
        stored = quantize(out)
        q = stored.float().div(255)
        self._report = {
            **facts,
            "mode": self.params.mode,
            "restriction": self.params.restriction,
            "seed": self.seed(ctx),
            "poison_sha256": hashlib.sha256(stored.numpy().tobytes()).hexdigest(),
            "psnr_vs_clean_db": psnr(q, clean),
            "perturbation_variance_shares": variance_shares(q, clean, train.labels, hidden_idx),
            **self.reveal_check(net, train, groups.images, hidden_idx, q, device, self.seed(ctx)),
        }
        caveat = self.caveat(groups.facts)
        if caveat:
            self._report["caveat"] = caveat
        return out

    def caveat(self, hidden_facts: dict[str, Any]) -> str:
        """What separates these hidden images from the paper's (empty when nothing does)."""
        if self.params.hidden != "sig":
            return HIDDEN_CAVEATS[self.params.hidden]
        return "" if hidden_facts.get("backend") == "diffusers" else OFFLINE_CAVEAT

    # -- pieces ------------------------------------------------------------------------------

    def hider_config(self, seed: int):
        from ueb_deephiding.losses import LossWeights
        from ueb_deephiding.training import HiderConfig

        p = self.params
        return HiderConfig(
            blocks=p.blocks, growth=p.growth, dense_layers=p.dense_layers, clamp=p.clamp, init_scale=p.init_scale,
            iterations=p.iterations, batch_size=p.batch_size, lr=p.lr, beta1=p.beta1, beta2=p.beta2, adam_eps=p.adam_eps,
            weights=LossWeights(p.w_freq, p.w_reveal, p.w_conc, p.eps),
            checkpoint_every=p.checkpoint_every, explode_factor=p.explode_factor,
            rollback_lr_factor=p.rollback_lr_factor, max_rollbacks=p.max_rollbacks, seed=seed,
        )  # fmt: skip

    def extractor_recipe(self, seed: int) -> dict[str, Any]:
        """What determines G: its weights file, or how it is trained (never the victim's protocol)."""
        from ueb_deephiding.extractor import FEATURES, extractor_training

        p = self.params
        if p.w_conc == 0:
            return {"used": False}
        if p.extractor_weights:
            path = Path(p.extractor_weights).expanduser()
            if not path.is_file():
                raise ConfigError(
                    f"LFC extractor weights {path} do not exist",
                    "pass a local state-dict file or leave 'extractor_weights' empty",
                )
            return {
                "source": "file",
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16],
                "width": p.extractor_width,
                "features": FEATURES,
            }
        return {
            "source": "trained",
            "width": p.extractor_width,
            "extractor_iterations": p.extractor_iterations,
            "seed": seed,
            "training": as_dict(extractor_training(p.extractor_iterations)),
            "features": FEATURES,
        }

    def prepare(self, train: ImageSet, ctx: RunContext):
        """The trained hider (from the cache or trained now), the hidden groups, and facts."""
        from ueb.training import resolve_device
        from ueb_deephiding.extractor import load_extractor
        from ueb_deephiding.hidden import SigSettings, load_groups
        from ueb_deephiding.training import load_hider, train_hider

        p = self.params
        seed = self.seed(ctx)
        device = resolve_device(ctx.device)
        groups = load_groups(
            ctx,
            train,
            p.hidden,
            p.per_class,
            sig_settings=SigSettings.from_params(p, self.name, seed),
            dataset=p.natural_dataset,
            seed=seed,
        )
        cfg = self.hider_config(seed)
        ext = self.extractor_recipe(seed)
        recipe = {
            "what": "deephiding-hider",
            "format": HIDER_FORMAT,
            "dataset": train.fingerprint(),
            "hidden": {"source": groups.source, "hash": groups.content_hash},
            "config": as_dict(cfg),  # holds the seed
            "extractor": ext,
        }
        art = ctx.artifacts.get("deephiding-hider", recipe)
        extractor_info: dict[str, Any] = dict(ext)
        if art.done and (art.path / "hider.pt").exists():
            net = load_hider(art.path / "hider.pt", device)
            manifest = art.manifest()
            summary = manifest.get("summary", {})
            extractor_info = manifest.get("extractor_info", extractor_info)
        else:
            features = None
            if ext.get("used", True):
                features, extractor_info = load_extractor(
                    ctx,
                    train,
                    p.extractor_width,
                    p.extractor_weights,
                    p.extractor_iterations,
                    seed,
                    p.eps,
                )
            net, summary = train_hider(
                train,
                groups,
                cfg,
                art.path,
                features=features,
                device=device,
                progress=ctx.progress,
                log=ctx.log,
            )
            ctx.artifacts.finish(art, summary=summary, extractor_info=extractor_info)
        facts = {
            "hidden_source": groups.source,
            "hidden_hash": groups.content_hash,
            "hidden_facts": groups.facts,
            "hider_artifact": art.key,
            "hider_content_hash": art.content_hash,
            "hider_path": str(art.path),
            "hider_seed": seed,
            "hider_iterations": summary.get("iterations"),
            "hider_rollbacks": summary.get("rollbacks"),
            "hider_final_losses": summary.get("final_losses"),
            "hider_loss_balance": summary.get("loss_balance"),
            "hider_loss_curve": summary.get("loss_curve"),
            "extractor": extractor_info,
        }
        return net, groups, facts

    def hidden_index(self, train: ImageSet, per_class: int) -> torch.Tensor:
        """Which member of its class's group each image hides: 0 (DH(C)) or rank mod M (DH(S))."""
        idx = torch.zeros(len(train), dtype=torch.long)
        if self.params.mode == "sample":
            for c in range(train.num_classes):
                members = torch.nonzero(train.labels == c).flatten()
                idx[members] = torch.arange(len(members)) % per_class
        return idx

    @torch.no_grad()
    def generate(
        self,
        net,
        train: ImageSet,
        hidden: torch.Tensor,
        hidden_idx: torch.Tensor,
        device,
        ctx: RunContext,
    ) -> torch.Tensor:
        p = self.params
        images = train.uint8()
        out = torch.empty(images.shape, dtype=torch.float32)
        bs = p.gen_batch_size
        with ctx.progress.task(f"{self.name}: hiding", total=len(train)) as bar:
            for i in range(0, len(train), bs):
                x_c = images[i : i + bs].to(device).float().div_(255)
                x_h = (
                    hidden[train.labels[i : i + bs], hidden_idx[i : i + bs]]
                    .to(device)
                    .float()
                    .div_(255)
                )
                container = net.hide(x_c, x_h)[0]
                if p.restriction == "strict":
                    container = x_c + (container - x_c).clamp(-p.eps, p.eps)
                out[i : i + bs] = container.clamp(0, 1).cpu()
                bar.advance(len(x_c))
        return out

    @torch.no_grad()
    def reveal_check(
        self, net, train, hidden, hidden_idx, poisoned, device, seed: int
    ) -> dict[str, Any]:
        """PSNR of the hidden image revealed from the first few unlearnable examples (the latent
        r is drawn on the CPU from the poison's seed, so the number repeats on any device)."""
        from ueb_deephiding.metrics import psnr

        n = min(self.params.reveal_check, len(train))
        if n == 0:
            return {}
        sel = torch.linspace(0, len(train) - 1, n).long()
        target = hidden[train.labels[sel], hidden_idx[sel]].float().div(255)
        x = poisoned[sel]
        shape = (len(x), 4 * x.shape[1], x.shape[2] // 2, x.shape[3] // 2)
        r = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        _, revealed = net.reveal(x.to(device), r.to(device))
        val = psnr(revealed.clamp(0, 1).cpu(), target)
        return {"reveal_psnr_db": val if math.isfinite(val) else None}


def _stat_identity(path: Path) -> list[list[Any]]:
    """[relative name, size, mtime in ns] of a file or of every file under a folder."""
    if path.is_file():
        st = path.stat()
        return [[path.name, st.st_size, st.st_mtime_ns]]
    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else []
    return [[f.relative_to(path).as_posix(), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
