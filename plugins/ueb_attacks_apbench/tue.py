"""TUE: transferable unlearnable examples (Ren, Xu, Wan, Ma, Sun, Tang, ICLR 2023; code
renjie3/TUE), SimCLR variant.

Noise per image, started uniform in the Linf ball, optimised by min-min alternation: a round
trains a SimCLR encoder (the surrogate's backbone plus a projection head) for `train_steps`
batches of the perturbed data, then every batch of the whole set takes `pgd_steps` signed
steps *descending* ssl_weight * SimCLR loss + csd_weight * CSD(noise, labels), where the
class-wise separability discriminant makes the noise of different classes linearly separable.
Rounds repeat until the training batches of the epoch run out. The official SimCLR setting has
ssl_weight 0: the noise then follows CSD alone and the encoder cannot change it, so its
training is skipped, and the poisoner declares itself class-wise (see `sample_wise`). Settings
and sources: docs/poisoners-apbench.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from ueb_baselines import surrogate as S

from ueb.errors import ConfigError
from ueb.imageset import ImageSet
from ueb.interfaces import Budget, Poisoner, Requirement, RunContext
from ueb.params import bounded

from .contrastive import Encoder, SimCLRViews, set_requires_grad, simclr_loss
from .csd import csd_loss


class TransferableUnlearnable(Poisoner):
    """Contrastive error-minimising noise with the CSD term, Linf 8/255; sample-wise only with
    the contrastive term (ssl_weight > 0)."""

    version = "2"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"surrogate": "fastnet", "epochs": 1, "batch_size": 32,
                  "train_steps": 2, "projection_dim": 32},
        "quick": {"surrogate": "fastnet", "epochs": 10, "batch_size": 256},
    }  # fmt: skip

    @dataclass(frozen=True)
    class Params:
        eps: float = bounded(8 / 255, gt=0, le=1)
        step_size: float = bounded(0.8 / 255, gt=0, le=1)
        pgd_steps: int = bounded(20, ge=1)
        epochs: int = bounded(40, ge=1)
        train_steps: int = bounded(20, ge=1)  # encoder batches per round
        batch_size: int = bounded(512, ge=2)
        random_start: bool = True
        ssl_weight: float = bounded(0.0, ge=0)
        csd_weight: float = bounded(0.1, ge=0)
        lr: float = bounded(1e-3, gt=0)  # Adam
        weight_decay: float = bounded(1e-6, ge=0)
        temperature: float = bounded(0.5, gt=0)
        projection_dim: int = bounded(128, ge=1)
        crop_scale: tuple[float, ...] = bounded((0.08, 1.0), gt=0, le=1)
        jitter: tuple[float, ...] = bounded((0.4, 0.4, 0.4, 0.1), ge=0)
        jitter_p: float = bounded(0.8, ge=0, le=1)
        grayscale_p: float = bounded(0.2, ge=0, le=1)
        surrogate: str = "resnet18"
        surrogate_width: int | None = bounded(None, ge=1)

        def __post_init__(self) -> None:
            if self.ssl_weight == 0 and self.csd_weight == 0:
                raise ValueError("ssl_weight and csd_weight are both 0: the noise has no objective")
            if len(self.crop_scale) != 2 or self.crop_scale[0] > self.crop_scale[1]:
                raise ValueError("crop_scale must be (low, high) with low <= high")
            if len(self.jitter) != 4 or self.jitter[3] > 0.5:
                raise ValueError("jitter must be (brightness, contrast, saturation, hue <= 0.5)")

    def __init__(self, params: Any = None, name: str | None = None) -> None:
        super().__init__(params, name)
        self.facts: dict[str, object] = {}

    def budget(self) -> Budget:
        return Budget("linf", self.params.eps)

    def requires(self) -> list[Requirement]:
        return [S.surrogate_requirement(self.params)]

    def report(self) -> dict[str, object]:
        return dict(self.facts)

    @property
    def trains_encoder(self) -> bool:
        return self.params.ssl_weight > 0

    @property
    def sample_wise(self) -> bool:
        """Only with the contrastive term. Under CSD alone (the official SimCLR setting) the
        objective depends on a batch's class centres only, so every image of a class in a batch
        takes the same signed step; the noise is stored per image but converges to one pattern
        per class wherever clipping does not act (measured at quick scale: docs)."""
        return self.trains_encoder

    def poison(self, train: ImageSet, ctx: RunContext) -> torch.Tensor:
        if train.num_classes < 2:
            raise ConfigError(
                "TUE needs at least two classes", "use a dataset with several classes"
            )
        rec = S.recipe(self, train, ctx)
        noise = S.cached_tensor(ctx, "tue-noise", rec, lambda ck: self._generate(train, ctx, ck))
        return (train.float01() + noise).clamp(0, 1)

    def _generate(self, train: ImageSet, ctx: RunContext, ckpt: Path) -> torch.Tensor:
        p = self.params
        dev = S.device_of(ctx)
        x = train.float01().to(dev)
        y = train.labels.to(dev)
        n = len(x)
        bs = min(p.batch_size, n)
        init_gen = torch.Generator().manual_seed(ctx.seed + 1)
        noise = torch.zeros_like(x, device="cpu")
        if p.random_start:
            noise = (torch.rand(x.shape, generator=init_gen) * 2 - 1) * p.eps
        noise = noise.to(dev)
        encoder, opt, views = None, None, None
        if self.trains_encoder:
            classifier = S.build_surrogate(ctx, p.surrogate, p.surrogate_width, train, ctx.seed)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(ctx.seed + 11)
                encoder = Encoder(classifier, p.projection_dim).to(dev)
            opt = torch.optim.Adam(encoder.trainable(), lr=p.lr, weight_decay=p.weight_decay)
            views = SimCLRViews(x.shape[-1], tuple(p.crop_scale), tuple(p.jitter), p.jitter_p,
                                p.grayscale_p)  # type: ignore[arg-type]  # fmt: skip
        train_gen = torch.Generator().manual_seed(ctx.seed + 2)
        noise_gen = torch.Generator().manual_seed(ctx.seed + 3)
        aug_gen = torch.Generator(device=dev).manual_seed(ctx.seed + 4)
        start = 0
        state = S.load_checkpoint(ckpt, dev)
        if state is not None:
            noise = state["noise"]
            train_gen.set_state(state["train_gen"])
            noise_gen.set_state(state["noise_gen"])
            aug_gen.set_state(state["aug_gen"])
            start = state["epoch"]
            if encoder is not None and opt is not None:
                encoder.load_state_dict(state["encoder"])
                opt.load_state_dict(state["opt"])
        batches_per_epoch = math.ceil(n / bs)  # the official loaders keep the last batch
        rounds = math.ceil(batches_per_epoch / p.train_steps)
        model_loss, noise_loss = math.nan, math.nan
        with ctx.progress.task("TUE noise", total=p.epochs) as task:
            task.advance(start)
            for epoch in range(start, p.epochs):
                stream = iter(S.batches(n, bs, train_gen, drop_last=False))
                for _ in range(rounds):
                    if encoder is not None and opt is not None and views is not None:
                        model_loss = self._train_encoder(
                            encoder, opt, views, x, noise, stream, aug_gen
                        )
                    noise_loss = self._update_noise(
                        encoder, views, x, y, noise, noise_gen, aug_gen, bs
                    )
                task.update(noise_loss=noise_loss)
                task.advance()
                S.save_checkpoint(
                    ckpt,
                    {"noise": noise, "train_gen": train_gen.get_state(),
                     "noise_gen": noise_gen.get_state(), "aug_gen": aug_gen.get_state(),
                     "epoch": epoch + 1,
                     "encoder": encoder.state_dict() if encoder is not None else None,
                     "opt": opt.state_dict() if opt is not None else None},
                )  # fmt: skip
        with torch.no_grad():
            final_csd = float(csd_loss(noise, y))
        self.facts = {"epochs": p.epochs, "noise_objective": noise_loss, "csd_whole_set": final_csd,
                      "encoder_trained": self.trains_encoder,
                      "contrastive_loss_model": None if math.isnan(model_loss) else model_loss}  # fmt: skip
        return noise

    def _contrastive(self, encoder: Encoder, views: SimCLRViews, xb: torch.Tensor,
                     gen: torch.Generator) -> torch.Tensor:  # fmt: skip
        v1, v2 = views(xb, gen), views(xb, gen)
        z = encoder(torch.cat([v1, v2]))
        b = len(xb)
        return simclr_loss(z[:b], z[b:], self.params.temperature, 1.0)

    def _train_encoder(
        self,
        encoder: Encoder,
        opt: torch.optim.Optimizer,
        views: SimCLRViews,
        x: torch.Tensor,
        noise: torch.Tensor,
        stream: Any,
        gen: torch.Generator,
    ) -> float:
        """Up to `train_steps` SimCLR batches of the perturbed data (fewer at the epoch's end)."""
        encoder.train()
        set_requires_grad(encoder, True)
        losses = []
        for _ in range(self.params.train_steps):
            idx = next(stream, None)
            if idx is None:
                break
            idx = idx.to(x.device)
            with torch.no_grad():
                xb = (x[idx] + noise[idx]).clamp(0, 1)
            loss = self._contrastive(encoder, views, xb, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        return sum(losses) / len(losses) if losses else math.nan

    def _update_noise(
        self,
        encoder: Encoder | None,
        views: SimCLRViews | None,
        x: torch.Tensor,
        y: torch.Tensor,
        noise: torch.Tensor,
        noise_gen: torch.Generator,
        aug_gen: torch.Generator,
        bs: int,
    ) -> float:
        """A shuffled pass over the set: each batch's noise takes `pgd_steps` signed descent steps."""
        p = self.params
        if encoder is not None:  # frozen, in eval mode, as in the official noise step
            encoder.eval()
            set_requires_grad(encoder, False)
        total, count = 0.0, 0
        for idx in S.batches(len(x), bs, noise_gen, drop_last=False):
            idx = idx.to(x.device)
            xb, yb, eta = x[idx], y[idx], noise[idx]
            for _ in range(p.pgd_steps):
                leaf = eta.clone().requires_grad_(True)
                loss = p.csd_weight * csd_loss(leaf, yb) if p.csd_weight > 0 else leaf.sum() * 0.0
                if encoder is not None and views is not None:
                    loss = loss + p.ssl_weight * self._contrastive(
                        encoder, views, (xb + leaf).clamp(0, 1), aug_gen
                    )
                (grad,) = torch.autograd.grad(loss, [leaf])
                with torch.no_grad():
                    moved = (xb + eta).clamp(0, 1) - p.step_size * grad.sign()
                    eta = (moved - xb).clamp(-p.eps, p.eps)
                total += float(loss.detach())
                count += 1
            noise[idx] = eta
        return total / max(1, count)
