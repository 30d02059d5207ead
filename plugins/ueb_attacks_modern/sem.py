"""SEM: stable error-minimising noise (Liu, Xu, Chen, Sun, AAAI 2024, "Stable Unlearnable Example").

Follows liuyixin-louis/Stable-Unlearnable-Example (generate_stable_em.py,
attacks/stable_workers.py, scripts/cifar10/gen_sem.sh). The loop is REM's: at every surrogate
step the batch's defensive noise is recomputed from a random start, then the surrogate trains on
PGD adversarial examples of the augmented, noised batch. The key change from REM is inside the
defensive noise: PGD descends the loss at a *random* point of the rho_u ball around each of
`samples` crop/flip views (uniform noise, clipped to the image range), not at an adversarial
one, which the paper shows makes the noise both stabler and cheaper. After training, every
image's noise is regenerated with the final surrogate. Sources: docs/poisoners-modern.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from ueb_baselines import surrogate as S
from ueb_baselines.pgd import crop_flip, pgd_linf, project, uniform_start

from ueb.imageset import ImageSet
from ueb.interfaces import Budget, Poisoner, Requirement, RunContext
from ueb.params import bounded


class StableErrorMinimizing(Poisoner):
    """Stable error-minimising sample-wise noise, Linf 8/255, random-noise inner step of 4/255."""

    version = "1"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"surrogate": "fastnet", "train_steps": 2, "samples": 1, "steps": 1,
                  "atk_steps": 1, "batch_size": 40},
        "quick": {"surrogate": "fastnet", "train_steps": 50, "samples": 1, "steps": 3,
                  "step_size": 3.2 / 255, "atk_steps": 2, "atk_step_size": 2 / 255, "lr_decay_every": 20},
    }  # fmt: skip

    @dataclass(frozen=True)
    class Params:
        eps: float = bounded(8 / 255, gt=0, le=1)
        step_size: float = bounded(1.6 / 255, gt=0, le=1)
        steps: int = bounded(10, ge=1)
        samples: int = bounded(5, ge=1)  # crop/flip views in the expectation
        random_eps: float = bounded(4 / 255, ge=0, le=1)  # rho_u: the random inner noise
        atk_eps: float = bounded(4 / 255, ge=0, le=1)  # the surrogate's adversarial training
        atk_step_size: float = bounded(0.8 / 255, gt=0, le=1)
        atk_steps: int = bounded(10, ge=0)
        train_steps: int = bounded(5000, ge=1)
        batch_size: int = bounded(128, ge=1)
        lr: float = bounded(0.1, gt=0)
        lr_decay: float = bounded(0.1, gt=0, le=1)
        lr_decay_every: int = bounded(2000, ge=1)
        momentum: float = bounded(0.9, ge=0, lt=1)
        weight_decay: float = bounded(5e-4, ge=0)
        crop_padding: int = bounded(4, ge=0)
        surrogate: str = "resnet18"
        surrogate_width: int | None = bounded(None, ge=1)
        checkpoint_every: int = bounded(200, ge=1)

    def budget(self) -> Budget:
        return Budget("linf", self.params.eps)

    def requires(self) -> list[Requirement]:
        return [S.surrogate_requirement(self.params)]

    def poison(self, train: ImageSet, ctx: RunContext) -> torch.Tensor:
        rec = S.recipe(self, train, ctx)
        noise = S.cached_tensor(ctx, "sem-noise", rec, lambda ck: self._generate(train, ctx, ck))
        return (train.float01() + noise).clamp(0, 1)

    # ----------------------------------------------------------------------------- pieces

    def random_point(self, view: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The inner step of SEM: uniform noise in the rho_u ball, kept in the image range."""
        rho = self.params.random_eps
        return (view + uniform_start(view.shape, rho, gen, view.device)).clamp(0, 1)

    def _adversarial(
        self, model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, gen: torch.Generator
    ) -> torch.Tensor:
        """The surrogate's adversarial training: PGD ascending the loss in atk_eps, random start."""
        p = self.params
        if p.atk_steps == 0 or p.atk_eps == 0:
            return xb
        start = uniform_start(xb.shape, p.atk_eps, gen, xb.device)
        delta = pgd_linf(
            lambda z: F.cross_entropy(model(z), yb),
            xb,
            start,
            p.atk_eps,
            p.atk_step_size,
            p.atk_steps,
            descend=False,
        )
        return xb + delta

    def defensive_noise(
        self, model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, gen: torch.Generator
    ) -> torch.Tensor:
        """Defensive noise for one batch: descend E_T E_u[ loss(T(x + delta) + u) ]."""
        p = self.params
        delta = project(xb, uniform_start(xb.shape, p.eps, gen, xb.device), p.eps)
        for _ in range(p.steps):
            delta.requires_grad_(True)
            grad = torch.zeros_like(xb)
            for _ in range(p.samples):
                view = crop_flip((xb + delta).clamp(0, 1), gen, p.crop_padding)
                point = self.random_point(view.detach(), gen).requires_grad_(True)
                (g_point,) = torch.autograd.grad(F.cross_entropy(model(point), yb), [point])
                # d loss / d delta with the random noise held constant:
                (g,) = torch.autograd.grad((view * g_point).sum(), [delta])
                grad += g
            with torch.no_grad():
                delta = project(xb, delta - p.step_size * grad.sign(), p.eps)
        return delta.detach()

    # ----------------------------------------------------------------------------- search

    def _generate(self, train: ImageSet, ctx: RunContext, ckpt: Path) -> torch.Tensor:
        p = self.params
        dev = S.device_of(ctx)
        x = train.float01().to(dev)
        y = train.labels.to(dev)
        model = S.build_surrogate(ctx, p.surrogate, p.surrogate_width, train, ctx.seed)
        opt = S.sgd(model, p.lr, p.momentum, p.weight_decay)
        noise = torch.zeros_like(x)
        gen = S.generator(ctx.seed + 1, dev)
        stream_gen = torch.Generator().manual_seed(ctx.seed + 2)
        start = 0
        state = S.load_checkpoint(ckpt, dev)
        if state is not None:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            noise, start = state["noise"], state["step"]
            gen.set_state(state["gen"].cpu())
        stream = S.endless(len(train), p.batch_size, stream_gen, drop_last=True)
        for _ in range(start):  # one batch per step: replay the index stream up to the checkpoint
            next(stream)
        model.eval()
        with ctx.progress.task("SEM surrogate + noise", total=p.train_steps) as task:
            task.advance(start)
            for step in range(start, p.train_steps):
                for group in opt.param_groups:
                    group["lr"] = p.lr * p.lr_decay ** (step // p.lr_decay_every)
                idx = next(stream).to(dev)
                xb, yb = x[idx], y[idx]
                noise[idx] = _to_8bit(self.defensive_noise(model, xb, yb, gen))
                view = crop_flip((xb + noise[idx]).clamp(0, 1), gen, p.crop_padding)
                adv = self._adversarial(model, view, yb, gen)
                model.train()
                logits = model(adv)
                loss = F.cross_entropy(logits, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                model.eval()
                task.update(
                    loss=float(loss.detach()), acc=float((logits.argmax(1) == yb).float().mean())
                )
                task.advance()
                if (step + 1) % p.checkpoint_every == 0 and step + 1 < p.train_steps:
                    S.save_checkpoint(ckpt, {
                        "model": model.state_dict(), "opt": opt.state_dict(), "noise": noise,
                        "step": step + 1, "gen": gen.get_state(),
                    })  # fmt: skip
        with ctx.progress.task("SEM final noise", total=len(train)) as task:
            for idx in S.batches(len(train), p.batch_size, None, drop_last=False):
                idx = idx.to(dev)
                noise[idx] = _to_8bit(self.defensive_noise(model, x[idx], y[idx], gen))
                task.advance(len(idx))
        return noise


def _to_8bit(delta: torch.Tensor) -> torch.Tensor:
    """The official code stores the noise as int8 levels (round(delta * 255))."""
    return (delta * 255).round() / 255
