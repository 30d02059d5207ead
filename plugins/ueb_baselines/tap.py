"""TAP: targeted adversarial poisoning (Fowl et al., NeurIPS 2021, "Adversarial Examples Make
Strong Poisons").

Following lhfowl/adversarial_poisons (anneal.py, village/options.py,
village/shop/forgemaster_{base,targeted}.py, village/materials/furnace.py): train a clean
surrogate, then perturb every training image by signed-gradient PGD towards class (y + 1) mod K,
with differentiable random translate/flip augmentation, 250 iterations over the whole set in
batches of 512, 8 restarts keeping the one with the lowest final target loss. The official step
size is eps * tau = 8/255 * 0.05 = 0.4/255. No downloaded weights: the clean surrogate is trained
here with ueb's Trainer and cached. Sources: docs/poisoners-surrogate.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ueb.imageset import ImageSet
from ueb.interfaces import Budget, Poisoner, Requirement, RunContext
from ueb.params import as_dict, bounded
from ueb.profile import TrainingConfig
from ueb.training import Trainer

from . import surrogate as S
from .pgd import brew, translate_flip


class TargetedAdversarialPoisoning(Poisoner["TargetedAdversarialPoisoning.Params"]):
    """Class-targeted adversarial examples of a clean surrogate as poisons, Linf 8/255."""

    version = "1"
    # CPU scale: the same algorithm with a fastnet surrogate and fewer steps; quick poisons in
    # about 48 s on 2 cores (the times and what they lower fastnet to: docs/poisoners.md).
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {
            "surrogate": "fastnet",
            "clean_iterations": 20,
            "clean_batch_size": 32,
            "steps": 4,
            "restarts": 1,
            "tau": 0.5,
        },
        "quick": {
            "surrogate": "fastnet",
            "clean_iterations": 400,
            "steps": 10,
            "restarts": 1,
            "tau": 0.4,
        },
    }

    @dataclass(frozen=True)
    class Params:
        preset: Literal["official", "apbench"] = "official"  # apbench: untargeted recipe
        eps: float = bounded(8 / 255, gt=0, le=1)
        steps: int = bounded(250, ge=1)
        tau: float = bounded(0.05, gt=0)  # step size = eps * tau
        restarts: int = bounded(8, ge=1)
        batch_size: int = bounded(512, ge=1)
        augment: bool = True
        shift: int = bounded(8, ge=0)
        surrogate: str = "resnet18"
        surrogate_width: int | None = bounded(None, ge=1)
        clean_iterations: int = bounded(40_000, ge=1)
        clean_batch_size: int = bounded(128, ge=1)
        clean_lr: float = bounded(0.1, gt=0)

    def budget(self) -> Budget:
        return Budget("linf", self.params.eps)

    @property
    def targeted(self) -> bool:
        return self.params.preset == "official"

    @staticmethod
    def target_of(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        """The official fixed permutation of the classes: y -> (y + 1) mod K."""
        return (labels + 1) % num_classes

    def clean_surrogate(self, train: ImageSet, ctx: RunContext) -> nn.Module:
        """The clean-trained surrogate (trained once per data, seed and schedule, then cached)."""
        p = self.params
        cfg = clean_config(p.clean_iterations, p.clean_batch_size, p.clean_lr)
        model = S.build_surrogate(ctx, p.surrogate, p.surrogate_width, train, ctx.seed)
        rec = {
            "surrogate": p.surrogate,
            "width": p.surrogate_width,
            "training": as_dict(cfg),
            "data": train.fingerprint(),
            "seed": ctx.seed,
            "kind": "clean",
        }

        def fit(m: nn.Module, _ckpt: object) -> None:
            trainer = Trainer(cfg, device=S.device_of(ctx), seed=ctx.seed, progress=ctx.progress)
            trainer.fit(m, train, _probe(train), description=f"clean surrogate {p.surrogate}")

        model = S.cached_model(ctx, "clean-surrogate", rec, model, fit)
        return model.eval()

    def requires(self) -> list[Requirement]:
        return [S.surrogate_requirement(self.params)]

    def poison(self, train: ImageSet, ctx: RunContext) -> torch.Tensor:
        rec = S.recipe(self, train, ctx)
        noise = S.cached_tensor(ctx, "tap-noise", rec, lambda _ck: self._generate(train, ctx))
        return (train.float01() + noise).clamp(0, 1)

    def _generate(self, train: ImageSet, ctx: RunContext) -> torch.Tensor:
        p = self.params
        model = self.clean_surrogate(train, ctx)
        for q in model.parameters():
            q.requires_grad_(False)
        dev = S.device_of(ctx)
        x = train.float01().to(dev)
        y = train.labels.to(dev)
        goal = self.target_of(y, train.num_classes) if self.targeted else y
        gen = S.generator(ctx.seed + 1, dev)
        sign = 1.0 if self.targeted else -1.0  # untargeted: ascend the true-label loss

        def objective(z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            return sign * F.cross_entropy(model(z), goal[idx])

        augment = (lambda z: translate_flip(z, gen, p.shift)) if p.augment else None
        with ctx.progress.task("TAP poison", total=p.steps * max(1, p.restarts)) as task:
            best = brew(
                objective,
                x,
                p.eps,
                p.eps * p.tau,
                p.steps,
                p.batch_size,
                p.restarts,
                gen,
                augment,
                on_step=task.advance,
            )
        for q in model.parameters():
            q.requires_grad_(True)
        return best


def clean_config(
    iterations: int, batch_size: int, lr: float, crop_padding: int = 4
) -> TrainingConfig:
    """Standard SGD training (momentum 0.9, wd 5e-4, crop+flip, x0.1 at 40% and 80%)."""
    return TrainingConfig(
        iterations=iterations,
        batch_size=batch_size,
        lr=lr,
        milestones=(max(1, int(iterations * 0.4)), max(1, int(iterations * 0.8))),
        crop_padding=crop_padding,
        eval_every=0,
        precision="auto",
        channels_last=True,
    )


def _probe(train: ImageSet) -> ImageSet:
    """A few training images to report the surrogate's fit on (no test set is needed here)."""
    return train.subset(torch.arange(min(len(train), 512)))
