"""D-VAE: purify the training set with rate-constrained VAEs trained on it, in two stages.

Method: Yu et al., "Purify Unlearnable Examples via Rate-Constrained Variational
Autoencoders" (ICML 2024); official code yuyi-sd/D-VAE (`main_vae_disentangle.py`,
`configs/cifar10/resnet18DVAE.yaml`, `configs/models/resnet.py: ResNetDVAE`, the defence
commands of `some_scripts.sh`). The network (`dvae_net.py`) reconstructs an image through a
Gaussian latent whose KL term (the rate) is held near a target, and learns a class-conditioned
residual, the part of the image the rate-limited reconstruction leaves out (the poison).
Each stage trains a fresh D-VAE on the current training set for 60 epochs (Adam 0.005, cosine
to 0, gradient norm clipped at 5, batch 128, no augmentation) with the loss

    MSE(rec, x) + MSE(clip(rec + p), x) + 0.01 * max(KL, target) [+ max(MSE(p, 0), 0.002)]

where the last term joins after epoch 10 of 60. Stage 1 (KL target 1.0) replaces every image
by clip(x - p); stage 2 trains a new D-VAE (KL target 3.0, `--kd 3.0`) on those and replaces
every image by the reconstruction of clip(x1 - p). Outputs are stored on the 8-bit grid by
truncation, as the official code stores them. The victim then trains on the result.

Each trained network is an artifact keyed by its training data, the seed and the settings, and
resumes from its last epoch. Official checkpoints (`model_s0.pth`, `model_s1.pth`, saved as
`{"model_state_dict": ...}`) load from local files named by `checkpoint_stage1` /
`checkpoint_stage2` instead of training. The official script also loads a classifier trained on
the poisoned set, used only to log accuracies; no loss depends on it, so it is not built here.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from ueb_countermeasures_modern._rng import global_rng_from

from ueb.errors import ConfigError
from ueb.imageset import ImageSet
from ueb.interfaces import Countermeasure, RunContext, Stage, ThreatModel
from ueb.params import as_dict, bounded
from ueb.training import resolve_device

from .dvae_net import DVAE, kl_divergence

TRAINING_KEYS = ("width", "latent_dim", "epochs", "batch_size", "lr", "weight_decay",
                 "grad_clip", "kld_weight", "perturbation_floor", "perturbation_start")  # fmt: skip


def _file_identity(path: str) -> dict[str, Any]:
    stat = Path(path).expanduser().stat()
    return {"path": path, "bytes": stat.st_size, "mtime": int(stat.st_mtime)}


def truncate_to_8bit(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats to uint8 by truncation (the official `astype(np.uint8)` of 255 x)."""
    return (x.clamp(0, 1) * 255).floor().to(torch.uint8)


class DVae(Countermeasure):
    """D-VAE (Yu et al., ICML 2024): two-stage purification by rate-constrained VAEs trained on the poisoned set."""

    stage: ClassVar[Stage] = "data"
    threat: ClassVar[ThreatModel] = ThreatModel()
    version: ClassVar[str] = "1"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"width": 8, "latent_dim": 16, "epochs": 1, "batch_size": 32},
        "quick": {"width": 16, "latent_dim": 64, "epochs": 2},
    }

    @dataclass(frozen=True)
    class Params:
        checkpoint_stage1: str = ""  # an official model_s0.pth; "": train it
        checkpoint_stage2: str = ""  # an official model_s1.pth; "": train it
        width: int = bounded(64, ge=2)  # ResNet-18's base width
        latent_dim: int = bounded(256, ge=1)
        epochs: int = bounded(60, ge=1)
        batch_size: int = bounded(128, ge=2)
        lr: float = bounded(0.005, gt=0)
        weight_decay: float = bounded(0.0, ge=0)
        grad_clip: float = bounded(5.0, ge=0)
        kld_target_stage1: float = bounded(1.0, ge=0)
        kld_target_stage2: float = bounded(3.0, ge=0)
        kld_weight: float = bounded(0.01, ge=0)
        perturbation_floor: float = bounded(0.002, ge=0)
        # the perturbation-size term joins at this fraction of the epochs (official: epoch 11 of 60)
        perturbation_start: float = bounded(11 / 60, ge=0, le=1)

    def preflight(self) -> None:
        for name in ("checkpoint_stage1", "checkpoint_stage2"):
            path = getattr(self.params, name)
            if path and not Path(path).expanduser().is_file():
                raise ConfigError(
                    f"{self.name}: {name} '{path}' is not a file",
                    f"set {name} to an official D-VAE checkpoint (model_s*.pth), or to '' to train one",
                )

    def input_identity(self) -> dict[str, Any]:
        p = self.params
        return {n: _file_identity(v) for n in ("checkpoint_stage1", "checkpoint_stage2")
                if (v := getattr(p, n))}  # fmt: skip

    # -- networks -------------------------------------------------------------------------

    def build(self, data: ImageSet, seed: int) -> DVAE:
        p = self.params
        with global_rng_from(torch.Generator().manual_seed(seed)):
            return DVAE(data.num_classes, data.image_size, data.channels, p.width, p.latent_dim)

    def load_checkpoint(self, net: DVAE, path: str) -> DVAE:
        state = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
        state = state.get("model_state_dict", state) if isinstance(state, dict) else state
        state = {k.removeprefix("module."): v for k, v in state.items()}
        mine = net.state_dict()
        missing = [k for k in mine if k not in state]
        wrong = [k for k in mine if k in state and state[k].shape != mine[k].shape]
        if missing or wrong:
            raise ConfigError(
                f"{self.name}: checkpoint '{path}' does not fit this D-VAE "
                f"({len(missing)} tensors missing, {len(wrong)} of another shape, e.g. {(missing + wrong)[0]})",
                "use an official model_s*.pth for images of this size and class count, with width 64 and latent_dim 256",
            )
        net.load_state_dict({k: state[k] for k in mine})
        return net

    def vae_loss(self, net: DVAE, x: torch.Tensor, y: torch.Tensor, epoch: int, stage: int,
             gen: torch.Generator) -> torch.Tensor:  # fmt: skip
        """The official VAE_Trainer.train_batch objective for one batch."""
        p = self.params
        rec, mu, log_var, pert = net(x, y, gen)
        target = p.kld_target_stage1 if stage == 1 else p.kld_target_stage2
        kld = kl_divergence(mu, log_var)
        total = F.mse_loss(rec, x) + F.mse_loss((rec + pert).clamp(0, 1), x)
        total = total + p.kld_weight * torch.clamp(kld, min=target)
        if epoch >= round(p.perturbation_start * p.epochs):
            total = total + torch.clamp(pert.pow(2).mean(), min=p.perturbation_floor)
        return total

    def train_network(self, data: ImageSet, stage: int, ctx: RunContext, folder: Path) -> DVAE:
        """Train a fresh D-VAE on `data`, resuming from `folder/checkpoints` if there is one."""
        from ueb.atomic import save_torch

        p = self.params
        device = resolve_device(ctx.device)
        net = self.build(data, ctx.seed + 17 * stage).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=p.epochs, eta_min=0.0)
        gen = torch.Generator().manual_seed(ctx.seed + 7907 * stage)
        dev_gen = torch.Generator(device=device).manual_seed(ctx.seed + 7919 * stage)
        ckpt = folder / "checkpoints" / "state.pt"
        start = 0
        if ckpt.exists():
            state = torch.load(ckpt, map_location=device, weights_only=False)
            net.load_state_dict(state["net"])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            gen.set_state(state["gen"])
            dev_gen.set_state(state["dev_gen"].cpu())
            start = int(state["epoch"])
        images, labels = data.float01().to(device), data.labels.to(device)
        n = len(data)
        bs = min(p.batch_size, n)
        net.train()
        with ctx.progress.task(
            f"{self.name}: training the stage-{stage} D-VAE", total=p.epochs
        ) as task:
            task.advance(start)
            for epoch in range(start, p.epochs):
                perm = torch.randperm(n, generator=gen).to(device)
                for i in range(0, n - bs + 1, bs):  # shuffled, last partial batch dropped
                    idx = perm[i : i + bs]
                    loss = self.vae_loss(net, images[idx], labels[idx], epoch, stage, dev_gen)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if p.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(net.parameters(), p.grad_clip)
                    opt.step()
                sched.step()
                task.advance()
                task.update(loss=float(loss.detach()))
                if epoch + 1 < p.epochs:
                    save_torch({"net": net.state_dict(), "opt": opt.state_dict(),
                                "sched": sched.state_dict(), "gen": gen.get_state(),
                                "dev_gen": dev_gen.get_state(), "epoch": epoch + 1},
                               ckpt, what="a D-VAE checkpoint")  # fmt: skip
        return net

    def network(self, data: ImageSet, stage: int, ctx: RunContext) -> tuple[DVAE, str]:
        """The stage's trained D-VAE (from its checkpoint file, or trained as an artifact) and its source."""
        from ueb.atomic import save_torch

        p = self.params
        path = p.checkpoint_stage1 if stage == 1 else p.checkpoint_stage2
        if path:
            return self.load_checkpoint(self.build(data, ctx.seed), path), f"checkpoint:{path}"
        keys = (*TRAINING_KEYS, "kld_target_stage1" if stage == 1 else "kld_target_stage2")
        recipe = {"what": "dvae", "version": self.version, "stage": stage, "seed": ctx.seed,
                  "data": data.fingerprint(), "params": {k: as_dict(p)[k] for k in keys}}  # fmt: skip
        with ctx.artifacts.get("dvae", recipe) as art:
            if not art.done:
                net = self.train_network(data, stage, ctx, art.path)
                save_torch({"model_state_dict": net.state_dict()}, art.path / "model_s.pt",
                           what="a trained D-VAE")  # fmt: skip
                shutil.rmtree(art.path / "checkpoints", ignore_errors=True)
                ctx.artifacts.finish(art, stage=stage, images=len(data))
            net = self.build(data, ctx.seed)
            state = torch.load(art.path / "model_s.pt", map_location="cpu", weights_only=True)
            net.load_state_dict(state["model_state_dict"])
            return net, f"trained:{art.key}"

    # -- purification ---------------------------------------------------------------------

    @torch.no_grad()
    def purify(self, net: DVAE, data: ImageSet, stage: int, ctx: RunContext) -> torch.Tensor:
        """Stage 1: clip(x - p). Stage 2: the reconstruction of clip(x - p). uint8, truncated."""
        device = resolve_device(ctx.device)
        net = net.to(device).eval()
        gen = torch.Generator(device=device).manual_seed(ctx.seed + 104729 * stage)
        x_all = data.float01()
        out = torch.empty(x_all.shape, dtype=torch.uint8)
        step = self.params.batch_size
        for i in range(0, len(data), step):
            x = x_all[i : i + step].to(device)
            y = data.labels[i : i + step].to(device)
            _, _, _, pert = net(x, y, gen)
            cleaned = (x - pert).clamp(0, 1)
            if stage == 2:
                cleaned, _, _, _ = net(cleaned, y, gen)
            out[i : i + step] = truncate_to_8bit(cleaned).cpu()
        return out

    def transform_train_set(self, train: ImageSet, ctx: RunContext) -> ImageSet:
        current = train
        sources = []
        for stage in (1, 2):
            net, source = self.network(current, stage, ctx)
            sources.append(source)
            current = dataclasses.replace(current, images=self.purify(net, current, stage, ctx))
        return train.with_images(current.images, countermeasure=self.name, dvae_models=sources)
