"""SimCLR: learn features without labels from the poisoned set, then fit a linear probe.

Method: Chen et al. 2020, "A simple framework for contrastive learning of visual
representations" (ICML 2020). Unlearnable-example papers use it as a countermeasure: the
perturbations are tied to labels, which contrastive pre-training never sees. Settings:

* pre-training of the victim's backbone (`model.features`) plus a projection head (2-layer
  MLP, feature_dim -> feature_dim -> 128) with the NT-Xent loss at temperature 0.5 (the
  SimCLR paper's CIFAR-10 value), two views per image from random resized crop (scale
  0.08..1), horizontal flip, colour jitter of strength 0.5 (brightness, contrast, saturation
  0.4, hue 0.1, p 0.8) and grayscale (p 0.2), all batched on the device with kornia;
  1000 epochs at batch 512, SGD with momentum 0.9, learning rate 0.5, weight decay 1e-4,
  cosine schedule (the usual CIFAR SimCLR recipe of the unlearnable-example papers);
* linear probe: the victim's own head (`model.head`) trained with labels on frozen features
  of the (poisoned) training set for 100 epochs (SGD, momentum 0.9, learning rate 0.1,
  cosine, batch 512, crop+flip as in supervised training), then evaluated on the clean test
  set with the trainer's `evaluate`.

Both phases take `*_epochs` or, when set, an exact number of `*_steps`, for smaller profiles.
`probe_augment=false` fits the probe on features computed once without augmentation (much
cheaper on a CPU).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from ueb.errors import ConfigError
from ueb.imageset import ImageSet
from ueb.interfaces import Countermeasure, Fitter, RunContext, Stage, TrainResult
from ueb.nn import Classifier
from ueb.params import bounded
from ueb.training import random_crop_flip

from ._rng import global_rng_from


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent: each view must pick its partner among the other 2B - 1 views of the batch."""
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(sim, target)


class ProjectionHead(nn.Module):
    def __init__(self, feature_dim: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(feature_dim, feature_dim),
            nn.ReLU(inplace=True),
            nn.Linear(feature_dim, out_dim),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


def _steps(epochs: int, steps: int, n: int, batch: int) -> int:
    return steps if steps > 0 else epochs * max(1, n // batch)


class SimCLR(Countermeasure["SimCLR.Params"]):
    """SimCLR (Chen et al. 2020) pre-training on the poisoned set, then a linear probe on its labels."""

    stage: ClassVar[Stage] = "protocol"
    version: ClassVar[str] = "1"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {
            "pretrain_steps": 3,
            "batch_size": 32,
            "linear_steps": 5,
            "linear_batch_size": 32,
            "probe_augment": False,
        },
        "quick": {
            "pretrain_steps": 100,
            "batch_size": 256,
            "linear_steps": 200,
            "probe_augment": False,
        },
    }

    @dataclass(frozen=True)
    class Params:
        pretrain_epochs: int = bounded(1000, ge=0)
        pretrain_steps: int = bounded(0, ge=0)  # > 0: exactly this many steps instead of epochs
        batch_size: int = bounded(512, ge=2)
        lr: float = bounded(0.5, gt=0)
        momentum: float = bounded(0.9, ge=0, lt=1)
        weight_decay: float = bounded(1e-4, ge=0)
        temperature: float = bounded(0.5, gt=0)
        projection_dim: int = bounded(128, ge=1)
        crop_scale: tuple[float, float] = bounded((0.08, 1.0), gt=0, le=1)
        jitter_strength: float = bounded(0.5, ge=0)
        jitter_p: float = bounded(0.8, ge=0, le=1)
        grayscale_p: float = bounded(0.2, ge=0, le=1)
        linear_epochs: int = bounded(100, ge=0)
        linear_steps: int = bounded(0, ge=0)
        linear_batch_size: int = bounded(512, ge=1)
        linear_lr: float = bounded(0.1, gt=0)
        probe_augment: bool = True

        def __post_init__(self) -> None:
            if self.temperature <= 0:
                raise ValueError(f"temperature must be positive, got {self.temperature}")
            if self.batch_size < 2 or self.linear_batch_size < 1:
                raise ValueError("batch_size must be at least 2 (contrastive pairs need negatives)")

    def __init__(self, params: Any = None, name: str | None = None) -> None:
        super().__init__(params, name)
        self._views: nn.Module | None = None

    # -- augmentation ---------------------------------------------------------------------

    def view_policy(self, size: int) -> nn.Module:
        if self._views is None:
            import kornia.augmentation as K

            p = self.params
            s = p.jitter_strength
            self._views = K.AugmentationSequential(
                K.RandomResizedCrop((size, size), scale=p.crop_scale),
                K.RandomHorizontalFlip(),
                K.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, p=p.jitter_p),
                K.RandomGrayscale(p=p.grayscale_p),
            )
        return self._views

    def views(self, x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Two independent SimCLR views of a [0, 1] batch (grey images pass through as RGB and back)."""
        grey = x.shape[1] == 1
        xin = x.expand(-1, 3, -1, -1) if grey else x
        policy = self.view_policy(x.shape[-1])
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False), global_rng_from(gen):
            v1, v2 = policy(xin.float()), policy(xin.float())
        if grey:
            v1, v2 = v1.mean(1, keepdim=True), v2.mean(1, keepdim=True)
        return v1.clamp_(0, 1), v2.clamp_(0, 1)

    # -- phase 1: contrastive pre-training ------------------------------------------------

    def pretrain(
        self, model: Classifier, train: ImageSet, trainer: Fitter, ctx: RunContext
    ) -> list[float]:
        """Train `model.features` with a projection head on `train` without labels; returns the losses."""
        p = self.params
        if not hasattr(model, "features") or not hasattr(model, "feature_dim"):
            raise ConfigError(
                f"simclr needs a ueb.nn.Classifier victim (features, feature_dim, head); got {type(model).__name__}",
                "build the victim with ueb.nn.Classifier",
            )
        device = trainer.device
        model.to(device).train()
        head = ProjectionHead(model.feature_dim, p.projection_dim).to(device)
        backbone = [q for n, q in model.named_parameters() if not n.startswith("head.")]
        params = backbone + list(head.parameters())
        opt = torch.optim.SGD(params, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)
        n = len(train)
        bs = min(p.batch_size, n)
        total = _steps(p.pretrain_epochs, p.pretrain_steps, n, bs)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total))
        images = train.images.to(device)
        cpu_gen = torch.Generator().manual_seed(ctx.seed + 31)
        dev_gen = torch.Generator(device=device).manual_seed(ctx.seed + 37)
        stream = _batches(n, bs, cpu_gen)
        losses: list[float] = []
        with ctx.progress.task("simclr: contrastive pre-training", total=total) as task:
            for step in range(total):
                idx = next(stream).to(device)
                x = _float01(images[idx])
                v1, v2 = self.views(x, dev_gen)
                with trainer.autocast():
                    z = head(model.features(torch.cat([v1, v2])))
                loss = nt_xent(z[: len(idx)], z[len(idx) :], p.temperature)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
                task.advance()
                if (step + 1) % 20 == 0:
                    task.update(loss=losses[-1])
        return losses

    # -- phase 2: linear probe ------------------------------------------------------------

    def linear_probe(
        self, model: Classifier, train: ImageSet, trainer: Fitter, ctx: RunContext
    ) -> tuple[int, float]:
        """Fit `model.head` on frozen features with the training labels; returns (steps, train acc %)."""
        p = self.params
        device = trainer.device
        model.to(device).eval()
        for q in model.parameters():
            q.requires_grad_(False)
        head: nn.Linear = model.head
        head.reset_parameters()
        head.requires_grad_(True)
        opt = torch.optim.SGD(head.parameters(), lr=p.linear_lr, momentum=0.9, weight_decay=0.0)
        n = len(train)
        bs = min(p.linear_batch_size, n)
        total = _steps(p.linear_epochs, p.linear_steps, n, bs)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total))
        images = train.images.to(device)
        labels = train.labels.to(device)
        cpu_gen = torch.Generator().manual_seed(ctx.seed + 41)
        dev_gen = torch.Generator(device=device).manual_seed(ctx.seed + 43)
        feats: torch.Tensor | None = None
        if not p.probe_augment:
            feats = self._features(model, images, trainer)
        stream = _batches(n, bs, cpu_gen)
        with ctx.progress.task("simclr: linear probe", total=total) as task:
            for _ in range(total):
                idx = next(stream).to(device)
                if feats is not None:
                    h = feats[idx]
                else:
                    x = random_crop_flip(
                        _float01(images[idx]), trainer.cfg.crop_padding, trainer.cfg.flip, dev_gen
                    )
                    with torch.no_grad(), trainer.autocast():
                        h = model.features(x).float()
                loss = F.cross_entropy(head(h), labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                task.advance()
        with torch.no_grad():
            h = feats if feats is not None else self._features(model, images, trainer)
            acc = 100.0 * float((head(h).argmax(1) == labels).float().mean())
        for q in model.parameters():
            q.requires_grad_(True)
        return total, acc

    @torch.no_grad()
    def _features(self, model: Classifier, images: torch.Tensor, trainer: Fitter) -> torch.Tensor:
        out = []
        for i in range(0, len(images), trainer.cfg.eval_batch_size):
            with trainer.autocast():
                out.append(
                    model.features(_float01(images[i : i + trainer.cfg.eval_batch_size])).float()
                )
        return torch.cat(out)

    # -- the protocol ---------------------------------------------------------------------

    def fit(
        self, model: nn.Module, train: ImageSet, test: ImageSet, trainer: Fitter, ctx: RunContext
    ) -> TrainResult:
        start = time.perf_counter()
        # a ueb.nn.Classifier by contract; pretrain() says so in one line if it is not
        model = cast(Classifier, trainer.prepare_model(model))
        losses = self.pretrain(model, train, trainer, ctx)
        probe_steps, probe_acc = self.linear_probe(model, train, trainer, ctx)
        acc = trainer.evaluate(model, test)
        seconds = time.perf_counter() - start
        every = max(1, len(losses) // 20)
        history = [
            {"step": i + 1, "pretrain_loss": v}
            for i, v in enumerate(losses)
            if (i + 1) % every == 0
        ]
        history.append({"step": len(losses) + probe_steps, "acc": acc})
        return TrainResult(
            final_acc=acc,
            peak_acc=acc,
            peak_step=len(losses) + probe_steps,
            iterations=len(losses) + probe_steps,
            seconds=seconds,
            history=history,
            extra={
                "pretrain_steps": len(losses),
                "linear_steps": probe_steps,
                "pretrain_loss_first": losses[0] if losses else math.nan,
                "pretrain_loss_last": losses[-1] if losses else math.nan,
                "linear_train_acc": probe_acc,
            },
        )


def _batches(n: int, bs: int, gen: torch.Generator):
    """Endless index batches: a fresh permutation per epoch, last partial batch dropped."""
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - bs + 1, bs):
            yield perm[i : i + bs]


def _float01(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
