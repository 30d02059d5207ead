"""AAP: augmented adversarial poisoning (Wang, Zhu, Gao, NeurIPS 2024, "Efficient
Availability Attacks against Supervised and Contrastive Learning Simultaneously").

Error-maximising: a reference model is trained on the clean data with contrastive-strength
augmentations, then every image gets a targeted adversarial perturbation (towards class
(y + shift) mod K; `targeted = false` ascends the true label's loss instead), found by PGD
through freshly augmented views of the same strength. Follows EhanW/AUE-AAP (aap.py,
dataloaders.py `APDataLoaders`, utils.py `Augment`, example.sh). Sources:
docs/poisoners-modern.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn
from ueb_baselines import surrogate as S

from ueb.errors import ConfigError
from ueb.imageset import ImageSet
from ueb.interfaces import Budget, Poisoner, Requirement, RunContext
from ueb.params import bounded

from .contrastive_augment import ContrastiveAugment, _kornia, crop_flip_policy, seeded_from
from .schedule import cosine_factor


class AugmentedAdversarialPoisoning(Poisoner):
    """AAP: targeted adversarial poisons against an augmentation-trained reference model."""

    version = "1"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"surrogate": "fastnet", "ref_epochs": 1, "ref_warmup": 0, "batch_size": 20, "lr": 0.05,
                  "perturb_iters": 2},
        "quick": {"surrogate": "fastnet", "ref_epochs": 5, "ref_warmup": 1, "perturb_iters": 10},
    }  # fmt: skip

    @dataclass(frozen=True)
    class Params:
        eps: float = bounded(8 / 255, gt=0, le=1)
        perturb_iters: int = bounded(250, ge=1)
        step_scale: float = bounded(2.5, gt=0)  # step size = step_scale * eps / perturb_iters
        targeted: bool = True
        label_shift: int = bounded(1, ge=1)  # target class (y + label_shift) mod K
        ref_mode: Literal["augmented", "standard"] = "augmented"
        ref_strength: float = bounded(0.4, ge=0, le=1)  # CIFAR-10 (example.sh); 0.8 for CIFAR-100
        gen_mode: Literal["augmented", "standard"] = "augmented"
        gen_strength: float = bounded(0.4, ge=0, le=1)
        ref_epochs: int = bounded(40, ge=1)
        ref_warmup: int = bounded(10, ge=0)  # warm-up epochs of the cosine schedule
        batch_size: int = bounded(128, ge=1)
        lr: float = bounded(0.5, gt=0)
        lr_floor: float = bounded(1e-6, ge=0)
        momentum: float = bounded(0.9, ge=0, lt=1)
        weight_decay: float = bounded(1e-4, ge=0)
        surrogate: str = "resnet18"
        surrogate_width: int | None = bounded(None, ge=1)

        def __post_init__(self) -> None:
            if self.ref_warmup > self.ref_epochs:
                raise ValueError(
                    f"ref_warmup ({self.ref_warmup}) exceeds ref_epochs ({self.ref_epochs})"
                )

    def __init__(self, params: Params | None = None, name: str | None = None) -> None:
        super().__init__(params, name)
        self.facts: dict[str, object] = {}

    def budget(self) -> Budget:
        return Budget("linf", self.params.eps)

    def report(self) -> dict[str, object]:
        return dict(self.facts)

    def requires(self) -> list[Requirement]:
        return [S.surrogate_requirement(self.params)]

    def preflight(self) -> None:
        _kornia()

    def poison(self, train: ImageSet, ctx: RunContext) -> torch.Tensor:
        p = self.params
        if train.num_classes < 2:
            raise ConfigError(
                "AAP needs at least two classes", "use a dataset with several classes"
            )
        if p.targeted and p.label_shift % train.num_classes == 0:
            raise ConfigError(
                f"AAP's label_shift {p.label_shift} maps every class onto itself ({train.num_classes} classes)",
                "choose a label_shift that is not a multiple of the number of classes",
            )
        rec = S.recipe(self, train, ctx)
        noise = S.cached_tensor(ctx, "aap-noise", rec, lambda _ck: self._generate(train, ctx))
        return (train.float01() + noise).clamp(0, 1)

    # ----------------------------------------------------------------------------- pieces

    def views(self, mode: str, strength: float, size: int) -> Any:
        """The view policy of a phase: contrastive of `strength` (identity at 0), or crop+flip."""
        if mode == "standard":
            policy = crop_flip_policy(size)

            def standard(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
                with seeded_from(gen):
                    return policy(x)

            return standard
        if strength == 0:
            return lambda x, gen: x
        return ContrastiveAugment(strength, size)

    def _reference(self, train: ImageSet, ctx: RunContext) -> nn.Module:
        """The reference model, trained on clean augmented images (cached by recipe)."""
        p = self.params
        model = S.build_surrogate(ctx, p.surrogate, p.surrogate_width, train, ctx.seed)
        keys = ("ref_mode", "ref_strength", "ref_epochs", "ref_warmup", "batch_size", "lr", "lr_floor",
                "momentum", "weight_decay", "surrogate", "surrogate_width")  # fmt: skip
        rec = {
            "poisoner": "AAP-reference", "version": self.version, "data": train.fingerprint(),
            "seed": ctx.seed, "params": {k: getattr(p, k) for k in keys},
        }  # fmt: skip
        return S.cached_model(
            ctx, "aap-reference", rec, model, lambda m, _ck: self._train_reference(m, train, ctx)
        )

    def _train_reference(self, model: nn.Module, train: ImageSet, ctx: RunContext) -> None:
        p = self.params
        dev = S.device_of(ctx)
        x = train.float01().to(dev).float()
        y = train.labels.to(dev)
        views = self.views(p.ref_mode, p.ref_strength, train.image_size)
        aug_gen = S.generator(ctx.seed + 1, dev)
        order_gen = torch.Generator().manual_seed(ctx.seed + 2)
        opt = S.sgd(model, p.lr, p.momentum, p.weight_decay)
        floor = p.lr_floor / p.lr
        model.train()
        with ctx.progress.task("AAP reference model", total=p.ref_epochs) as task:
            for epoch in range(p.ref_epochs):
                for group in opt.param_groups:
                    group["lr"] = p.lr * cosine_factor(epoch, p.ref_epochs, floor, p.ref_warmup)
                for idx in S.batches(len(x), p.batch_size, order_gen, drop_last=False):
                    idx = idx.to(dev)
                    with torch.no_grad():
                        xb = views(x[idx], aug_gen)
                    loss = F.cross_entropy(model(xb), y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                task.update(loss=float(loss.detach()))
                task.advance()
        model.eval()

    def attack(
        self,
        model: nn.Module,
        xb: torch.Tensor,
        goal: torch.Tensor,
        views: Any,
        gen: torch.Generator,
    ) -> torch.Tensor:
        """PGD from zero through fresh views: towards `goal` (targeted) or away from it."""
        p = self.params
        alpha = p.step_scale * p.eps / p.perturb_iters
        sign = -1.0 if p.targeted else 1.0
        delta = torch.zeros_like(xb)
        for _ in range(p.perturb_iters):
            delta.requires_grad_(True)
            loss = F.cross_entropy(model(views(xb + delta, gen)), goal)
            (grad,) = torch.autograd.grad(loss, [delta])
            with torch.no_grad():
                delta = (delta + sign * alpha * grad.sign()).clamp(-p.eps, p.eps)
                delta = (xb + delta).clamp(0, 1) - xb
        return delta.detach()

    def _generate(self, train: ImageSet, ctx: RunContext) -> torch.Tensor:
        p = self.params
        dev = S.device_of(ctx)
        model = self._reference(train, ctx).to(dev).eval()
        model.requires_grad_(False)
        x = train.float01().to(dev).float()
        y = train.labels.to(dev)
        goal = (y + p.label_shift) % train.num_classes if p.targeted else y
        views = self.views(p.gen_mode, p.gen_strength, train.image_size)
        aug_gen = S.generator(ctx.seed + 3, dev)
        order_gen = torch.Generator().manual_seed(ctx.seed + 4)
        noise = torch.zeros_like(x)
        hits = 0
        with ctx.progress.task("AAP poisons", total=len(x)) as task:
            for idx in S.batches(len(x), p.batch_size, order_gen, drop_last=False):
                idx = idx.to(dev)
                xb, gb = x[idx], goal[idx]
                delta = self.attack(model, xb, gb, views, aug_gen)
                noise[idx] = delta
                with torch.no_grad():
                    pred = model((xb + delta).clamp(0, 1)).argmax(1)
                hits += int((pred == gb).sum()) if p.targeted else int((pred != gb).sum())
                task.advance(len(idx))
        self.facts = {"reference_success_rate": round(hits / max(1, len(x)), 4)}
        return noise
