"""HYPO: hypocritical perturbations (Tao, Feng, Yi, Huang, Chen, NeurIPS 2021, "Better Safe
Than Sorry: Preventing Delusive Adversaries with Adversarial Training"; code
TLMichael/Hypocritical-Perturbation and APBench's HYPO).

A crafting model is first trained on the clean data; every training image then gets the
perturbation that *minimises* that model's cross-entropy on its true label: signed-gradient
descent from the clean image, 100 steps of eps/10, projected onto the Linf ball and [0, 1].
The perturbation mimics features the model already relies on, so a model trained on the
poison learns them instead of the real ones. Settings and sources: docs/poisoners-apbench.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from ueb_baselines import surrogate as S
from ueb_baselines.pgd import pgd_linf, translate_flip

from ueb.imageset import ImageSet
from ueb.interfaces import Budget, Poisoner, Requirement, RunContext
from ueb.params import bounded

from .clean_model import clean_surrogate, clean_training, epochs_to_iterations


class Hypocritical(Poisoner):
    """Error-minimising perturbations against a clean-trained crafting model, Linf 8/255."""

    version = "1"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # lr 0.1 collapses fastnet's crafting model to one class in a few dozen steps (its
        # eval-mode output is then flat, with a zero gradient for that class's images)
        "smoke": {"surrogate": "fastnet", "craft_epochs": 5, "craft_batch_size": 32,
                  "craft_lr": 0.02, "steps": 5, "step_size": 1 / 255},
        "quick": {"surrogate": "fastnet", "craft_epochs": 10, "craft_lr": 0.05, "steps": 10,
                  "step_size": 1 / 255},
    }  # fmt: skip

    @dataclass(frozen=True)
    class Params:
        eps: float = bounded(8 / 255, gt=0, le=1)
        step_size: float = bounded(0.8 / 255, gt=0, le=1)  # eps / 10
        steps: int = bounded(100, ge=1)
        batch_size: int = bounded(512, ge=1)
        augment: bool = False  # the official repository's poison_aug (APBench: off)
        shift: int = bounded(8, ge=0)  # its RandomTransform translation, with a flip
        surrogate: str = "resnet18"
        surrogate_width: int | None = bounded(None, ge=1)
        craft_epochs: int = bounded(10, ge=1)
        craft_batch_size: int = bounded(128, ge=1)
        craft_lr: float = bounded(0.1, gt=0)
        craft_momentum: float = bounded(0.9, ge=0, lt=1)
        craft_weight_decay: float = bounded(5e-4, ge=0)

    def __init__(self, params: Any = None, name: str | None = None) -> None:
        super().__init__(params, name)
        self.facts: dict[str, object] = {}

    def budget(self) -> Budget:
        return Budget("linf", self.params.eps)

    def requires(self) -> list[Requirement]:
        return [S.surrogate_requirement(self.params)]

    def report(self) -> dict[str, object]:
        return dict(self.facts)

    def poison(self, train: ImageSet, ctx: RunContext) -> torch.Tensor:
        rec = S.recipe(self, train, ctx)
        noise = S.cached_tensor(ctx, "hypo-noise", rec, lambda _ck: self._generate(train, ctx))
        return (train.float01() + noise).clamp(0, 1)

    def crafting_model(self, train: ImageSet, ctx: RunContext) -> torch.nn.Module:
        p = self.params
        iterations = epochs_to_iterations(p.craft_epochs, len(train), p.craft_batch_size)
        cfg = clean_training(iterations, p.craft_batch_size, p.craft_lr, p.craft_momentum,
                             p.craft_weight_decay)  # fmt: skip
        return clean_surrogate(ctx, train, p.surrogate, p.surrogate_width, cfg, "hypo-crafting")

    def _generate(self, train: ImageSet, ctx: RunContext) -> torch.Tensor:
        p = self.params
        model = self.crafting_model(train, ctx)
        for q in model.parameters():
            q.requires_grad_(False)
        dev = S.device_of(ctx)
        x = train.float01().to(dev)
        y = train.labels.to(dev)
        gen = S.generator(ctx.seed + 1, dev)
        noise = torch.zeros_like(x)
        with ctx.progress.task("HYPO perturbations", total=len(x)) as task:
            for idx in S.batches(len(x), p.batch_size, None, drop_last=False):
                idx = idx.to(dev)
                yb = y[idx]

                def objective(z: torch.Tensor, yb: torch.Tensor = yb) -> torch.Tensor:
                    z = translate_flip(z, gen, p.shift) if p.augment else z
                    return F.cross_entropy(model(z), yb)

                start = torch.zeros_like(x[idx])
                noise[idx] = pgd_linf(objective, x[idx], start, p.eps, p.step_size, p.steps,
                                      descend=True)  # fmt: skip
                task.advance(len(idx))
        with torch.no_grad():
            clean_err = S.error_rate(model, x, y, p.batch_size)
            poison_err = S.error_rate(model, (x + noise).clamp(0, 1), y, p.batch_size)
        for q in model.parameters():
            q.requires_grad_(True)
        self.facts = {"crafting_error_clean": clean_err, "crafting_error_poisoned": poison_err}
        return noise
