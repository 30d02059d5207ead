"""REM: robust error-minimizing noise (Fu et al., ICLR 2022, "Robust Unlearnable Examples").

Min-min-max optimisation, following fshp971/robust-unlearnable-examples (generate_robust_em.py,
attacks/robust_workers.py, scripts/cifar10/gen_rem.sh; mirrored as
CausalLearning/robust-unlearnable-examples). At every surrogate step the batch's defensive noise
is recomputed from a random start: PGD descends the loss at the *adversarial* point of each of
`samples` random crop/flip views (the inner attack's perturbation held constant); the surrogate
then trains on adversarial examples of the augmented, noised batch. After training, the noise of
every image is regenerated with the final surrogate. Sources: docs/poisoners-surrogate.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ueb.imageset import ImageSet
from ueb.interfaces import Budget, Poisoner, Requirement, RunContext
from ueb.params import bounded

from . import surrogate as S
from .pgd import crop_flip, pgd_linf, project, uniform_start


class RobustErrorMinimizing(Poisoner["RobustErrorMinimizing.Params"]):
    """Robust error-minimizing sample-wise noise, Linf 8/255 against 4/255 adversarial training."""

    version = "1"
    # CPU scale: the same algorithm with a fastnet surrogate and fewer steps; quick poisons in
    # about 57 s on 2 cores (the times and what they lower fastnet to: docs/poisoners.md).
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {
            "surrogate": "fastnet",
            "train_steps": 4,
            "samples": 1,
            "steps": 2,
            "atk_steps": 1,
            "batch_size": 64,
        },
        "quick": {
            "surrogate": "fastnet",
            "train_steps": 100,
            "samples": 1,
            "steps": 3,
            "atk_steps": 2,
            "step_size": 4 / 255,
        },
    }

    @dataclass(frozen=True)
    class Params:
        eps: float = bounded(8 / 255, gt=0, le=1)
        step_size: float = bounded(1.6 / 255, gt=0, le=1)
        steps: int = bounded(10, ge=1)
        samples: int = bounded(5, ge=1)  # random crop/flip views in the expectation
        atk_eps: float = bounded(4 / 255, ge=0, le=1)
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
        noise = S.cached_tensor(ctx, "rem-noise", rec, lambda ck: self._generate(train, ctx, ck))
        return (train.float01() + noise).clamp(0, 1)

    # ----------------------------------------------------------------------------- pieces

    def _adversarial(
        self, model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, gen: torch.Generator
    ) -> torch.Tensor:
        """The inner attack: PGD ascending the loss in the atk_eps ball, random start."""
        p = self.params
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

    def _defensive(
        self, model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, gen: torch.Generator
    ) -> torch.Tensor:
        """Defensive noise for one batch: descend E_T[ max_adv loss(T(x + delta) + adv) ]."""
        p = self.params
        delta = project(xb, uniform_start(xb.shape, p.eps, gen, xb.device), p.eps)
        for _ in range(p.steps):
            delta.requires_grad_(True)
            grad = torch.zeros_like(xb)
            for _ in range(p.samples):
                view = crop_flip((xb + delta).clamp(0, 1), gen, p.crop_padding)
                adv = self._adversarial(model, view.detach(), yb, gen)
                adv.requires_grad_(True)
                (g_adv,) = torch.autograd.grad(F.cross_entropy(model(adv), yb), [adv])
                # d loss / d delta with the attack's perturbation held constant:
                (g,) = torch.autograd.grad((view * g_adv).sum(), [delta])
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
            model.eval()  # as the loop leaves it after every step (BatchNorm's mode matters)
        stream = S.endless(len(train), p.batch_size, stream_gen, drop_last=True)
        for _ in range(start):  # one batch per step: replay the index stream up to the checkpoint
            next(stream)
        with ctx.progress.task("REM surrogate + noise", total=p.train_steps) as task:
            task.advance(start)
            for step in range(start, p.train_steps):
                for group in opt.param_groups:
                    group["lr"] = p.lr * p.lr_decay ** (step // p.lr_decay_every)
                idx = next(stream).to(dev)
                xb, yb = x[idx], y[idx]
                delta = self._defensive(model, xb, yb, gen)
                noise[idx] = _to_8bit(delta)
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
                    S.save_checkpoint(
                        ckpt,
                        {
                            "model": model.state_dict(),
                            "opt": opt.state_dict(),
                            "noise": noise,
                            "step": step + 1,
                            "gen": gen.get_state(),
                        },
                    )
        model.eval()
        with ctx.progress.task("REM final noise", total=len(train)) as task:
            for idx in S.batches(len(train), p.batch_size, None, drop_last=False):
                idx = idx.to(dev)
                noise[idx] = _to_8bit(self._defensive(model, x[idx], y[idx], gen))
                task.advance(len(idx))
        return noise


def _to_8bit(delta: torch.Tensor) -> torch.Tensor:
    """The official code stores the noise as int8 levels (round(delta * 255))."""
    return (delta * 255).round() / 255
