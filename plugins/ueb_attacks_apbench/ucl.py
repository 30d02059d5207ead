"""UCL: contrastive poisoning (He, Zha, Katabi, ICLR 2023, "Indiscriminate Poisoning Attacks on
Unsupervised Contrastive Learning"; code kaiwenzha/contrastive-poisoning), SimCLR variant.

The perturbation is a learnable tensor delta in [-1, 1] (scaled by eps), one per image (`ucl`,
CP-S) or one per class (`ucl-class`, CP-C). Every epoch alternates two phases on the perturbed
set: SimCLR training of an encoder (the surrogate's backbone plus a projection head) for a pass
over the data, then, with the encoder frozen in eval mode, a pass over the data in which each
batch's delta takes 5 signed steps *descending* the same contrastive loss, computed through
differentiable augmentations. Settings and sources: docs/poisoners-apbench.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from ueb_baselines import surrogate as S

from ueb.errors import ConfigError
from ueb.imageset import ImageSet
from ueb.interfaces import Budget, Poisoner, Requirement, RunContext
from ueb.params import bounded

from .contrastive import Encoder, SimCLRViews, set_requires_grad, simclr_loss


class ContrastivePoisoning(Poisoner):
    """Perturbations that minimise a SimCLR loss, sample-wise (`ucl`) or class-wise (`ucl-class`)."""

    version = "1"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"surrogate": "fastnet", "epochs": 1, "batch_size": 32, "pgd_steps": 1, "projection_dim": 32},
        "quick": {"surrogate": "fastnet", "epochs": 4, "batch_size": 256, "pgd_steps": 2},
    }  # fmt: skip

    @dataclass(frozen=True)
    class Params:
        mode: Literal["sample", "class"] = "sample"
        eps: float = bounded(8 / 255, gt=0, le=1)  # delta_weight
        step_size: float = bounded(0.1, gt=0, le=2)  # in units of eps (delta lives in [-1, 1])
        pgd_steps: int = bounded(5, ge=1)
        epochs: int = bounded(1000, ge=1)
        model_steps: int | None = bounded(None, ge=1)  # None: a pass over the data per epoch
        noise_steps: int | None = bounded(None, ge=1)  # None: a pass over the data per epoch
        batch_size: int = bounded(512, ge=2)
        lr: float = bounded(0.5, gt=0)
        momentum: float = bounded(0.9, ge=0, lt=1)
        weight_decay: float = bounded(1e-4, ge=0)
        temperature: float = bounded(0.5, gt=0)
        base_temperature: float = bounded(0.07, gt=0)
        projection_dim: int = bounded(128, ge=1)
        crop_scale: tuple[float, ...] = bounded((0.2, 1.0), gt=0, le=1)
        jitter: tuple[float, ...] = bounded((0.4, 0.4, 0.4, 0.1), ge=0)
        jitter_p: float = bounded(0.8, ge=0, le=1)
        grayscale_p: float = bounded(0.2, ge=0, le=1)
        surrogate: str = "resnet18"
        surrogate_width: int | None = bounded(None, ge=1)

        def __post_init__(self) -> None:
            if len(self.crop_scale) != 2 or self.crop_scale[0] > self.crop_scale[1]:
                raise ValueError("crop_scale must be (low, high) with low <= high")
            if len(self.jitter) != 4 or self.jitter[3] > 0.5:
                raise ValueError("jitter must be (brightness, contrast, saturation, hue <= 0.5)")

    def __init__(self, params: Any = None, name: str | None = None) -> None:
        super().__init__(params, name)
        self.facts: dict[str, object] = {}

    def budget(self) -> Budget:
        return Budget("linf", self.params.eps)

    @property
    def sample_wise(self) -> bool:
        return self.params.mode == "sample"

    def requires(self) -> list[Requirement]:
        return [S.surrogate_requirement(self.params)]

    def report(self) -> dict[str, object]:
        return dict(self.facts)

    def poison(self, train: ImageSet, ctx: RunContext) -> torch.Tensor:
        if len(train) < 2:
            raise ConfigError("contrastive poisoning needs at least two images", "use more data")
        rec = S.recipe(self, train, ctx)
        delta = S.cached_tensor(ctx, "ucl-delta", rec, lambda ck: self._generate(train, ctx, ck))
        per_image = delta if self.sample_wise else delta[train.labels]
        return perturb(train.float01(), per_image, self.params.eps)

    # ------------------------------------------------------------------------------ search

    def _generate(self, train: ImageSet, ctx: RunContext, ckpt: Path) -> torch.Tensor:
        p = self.params
        dev = S.device_of(ctx)
        x = train.float01().to(dev)
        y = train.labels.to(dev)
        n = len(x)
        bs = min(p.batch_size, n)
        classifier = S.build_surrogate(ctx, p.surrogate, p.surrogate_width, train, ctx.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed + 11)
            encoder = Encoder(classifier, p.projection_dim).to(dev)
        opt = torch.optim.SGD(encoder.trainable(), lr=p.lr, momentum=p.momentum,
                              weight_decay=p.weight_decay)  # fmt: skip
        views = SimCLRViews(x.shape[-1], tuple(p.crop_scale), tuple(p.jitter), p.jitter_p,
                            p.grayscale_p)  # type: ignore[arg-type]  # fmt: skip
        init_gen = torch.Generator().manual_seed(ctx.seed + 1)
        rows = n if self.sample_wise else train.num_classes
        delta = (torch.rand(rows, *x.shape[1:], generator=init_gen) * 2 - 1).to(dev)
        noise_gen = torch.Generator().manual_seed(ctx.seed + 3)
        aug_gen = torch.Generator(device=dev).manual_seed(ctx.seed + 4)
        stream = S.endless(n, bs, torch.Generator().manual_seed(ctx.seed + 2), drop_last=True)
        per_epoch = max(1, n // bs)
        model_steps = min(p.model_steps or per_epoch, per_epoch)
        noise_steps = min(p.noise_steps or per_epoch, per_epoch)
        start, consumed = 0, 0
        state = S.load_checkpoint(ckpt, dev)
        if state is not None:
            encoder.load_state_dict(state["encoder"])
            opt.load_state_dict(state["opt"])
            delta = state["delta"]
            noise_gen.set_state(state["noise_gen"])
            aug_gen.set_state(state["aug_gen"])
            start, consumed = state["epoch"], state["consumed"]
            for _ in range(consumed):  # the batch stream continues where it stopped
                next(stream)
        model_loss = noise_loss = math.nan
        with ctx.progress.task(f"UCL {p.mode}-wise contrastive poisoning", total=p.epochs) as task:
            task.advance(start)
            for epoch in range(start, p.epochs):
                encoder.train()
                set_requires_grad(encoder, True)
                losses = []
                self._set_lr(opt, epoch)
                for _ in range(model_steps):
                    idx = next(stream).to(dev)
                    consumed += 1
                    loss = self._loss(encoder, views, x[idx], delta[self._rows(y, idx)], aug_gen)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    losses.append(float(loss.detach()))
                model_loss = sum(losses) / len(losses)
                encoder.eval()
                set_requires_grad(encoder, False)
                noise_loss = self._update_delta(encoder, views, x, y, delta, noise_gen, aug_gen,
                                                noise_steps, bs)  # fmt: skip
                task.update(loss=model_loss, delta_loss=noise_loss)
                task.advance()
                S.save_checkpoint(
                    ckpt,
                    {"encoder": encoder.state_dict(), "opt": opt.state_dict(), "delta": delta,
                     "noise_gen": noise_gen.get_state(),
                     "aug_gen": aug_gen.get_state(), "epoch": epoch + 1, "consumed": consumed},
                )  # fmt: skip
        set_requires_grad(encoder, True)
        self.facts = {"epochs": p.epochs, "contrastive_loss_model": model_loss,
                      "contrastive_loss_delta": noise_loss}  # fmt: skip
        return delta

    def _rows(self, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return idx if self.sample_wise else y[idx]

    def _loss(
        self,
        encoder: Encoder,
        views: SimCLRViews,
        xb: torch.Tensor,
        db: torch.Tensor,
        gen: torch.Generator,
    ) -> torch.Tensor:
        """The SimCLR loss of a batch of images `xb` carrying their perturbations `db`."""
        p = self.params
        mixed = perturb(xb, db, p.eps)
        v1, v2 = views(mixed, gen), views(mixed, gen)
        z = encoder(torch.cat([v1, v2]))
        b = len(xb)
        return simclr_loss(z[:b], z[b:], p.temperature, p.temperature / p.base_temperature)

    def _update_delta(
        self,
        encoder: Encoder,
        views: SimCLRViews,
        x: torch.Tensor,
        y: torch.Tensor,
        delta: torch.Tensor,
        noise_gen: torch.Generator,
        aug_gen: torch.Generator,
        steps: int,
        bs: int,
    ) -> float:
        """One pass of `steps` batches, each with `pgd_steps` signed descent steps on delta."""
        p = self.params
        total, count = 0.0, 0
        for i, idx in enumerate(S.batches(len(x), bs, noise_gen, drop_last=True)):
            if i >= steps:
                break
            idx = idx.to(x.device)
            for _ in range(p.pgd_steps):
                if self.sample_wise:  # only this batch's rows receive a gradient
                    leaf = delta[idx].clone().requires_grad_(True)
                    db = leaf
                else:
                    leaf = delta.clone().requires_grad_(True)
                    db = leaf[y[idx]]
                loss = self._loss(encoder, views, x[idx], db, aug_gen)
                (grad,) = torch.autograd.grad(loss, [leaf])
                with torch.no_grad():
                    step = (leaf - p.step_size * grad.sign()).clamp_(-1, 1)
                    if self.sample_wise:
                        delta[idx] = step
                    else:  # classes absent from the batch have a zero gradient: unchanged
                        delta.copy_(step)
                total += float(loss.detach())
                count += 1
        return total / max(1, count)

    def _set_lr(self, opt: torch.optim.Optimizer, epoch: int) -> None:
        """The official per-epoch cosine down to lr * 1e-3 (its poisoning loop calls no warm-up:
        only its clean and retraining loops do)."""
        p = self.params
        eta_min = p.lr * 1e-3
        lr = eta_min + (p.lr - eta_min) * (1 + math.cos(math.pi * (epoch + 1) / p.epochs)) / 2
        for group in opt.param_groups:
            group["lr"] = lr


def perturb(x: torch.Tensor, delta: torch.Tensor, eps: float) -> torch.Tensor:
    """The official mixing: x + eps * clip(delta, -1, 1), clipped to [0, 1]."""
    return (x + eps * delta.clamp(-1, 1)).clamp(0, 1)
