"""AUE: augmented unlearnable examples (Wang, Zhu, Gao, NeurIPS 2024, "Efficient
Availability Attacks against Supervised and Contrastive Learning Simultaneously").

Error-minimising noise whose bi-level search runs through *contrastive-strength* augmentations,
so that the noise also survives the views a contrastive learner trains on. Follows EhanW/AUE-AAP
(aue.py, utils.py `Augment`, example.sh): every epoch the surrogate trains one pass on augmented
poisoned images, then one pass over the data updates each batch's noise by PGD descending the
surrogate's loss on freshly augmented views (eval mode, zero start then warm-started, clipped to
eps and to the image range). Sample-wise by default; `mode = "class"` is the official class-wise
variant (one noise per class, one PGD step per batch). Sources: docs/poisoners-modern.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn
from ueb_baselines import surrogate as S

from ueb.errors import ConfigError
from ueb.imageset import ImageSet
from ueb.interfaces import Budget, Poisoner, Requirement, RunContext
from ueb.params import bounded

from .contrastive_augment import ContrastiveAugment, _kornia
from .schedule import cosine_factor


class AugmentedUnlearnable(Poisoner):
    """AUE: error-minimising noise optimised through strength-s contrastive augmentations."""

    version = "1"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"surrogate": "fastnet", "epochs": 1, "batch_size": 20, "perturb_iters": 1},
        "quick": {"surrogate": "fastnet", "epochs": 3},
    }

    @dataclass(frozen=True)
    class Params:
        mode: Literal["sample", "class"] = "sample"
        eps: float = bounded(8 / 255, gt=0, le=1)
        step_size: float | None = bounded(None, gt=0, le=1)  # None: eps / 10, as the official code
        perturb_iters: int | None = bounded(None, ge=1)  # None: 5 sample-wise, 1 class-wise
        strength: float = bounded(0.6, ge=0, le=1)  # CIFAR-10 (example.sh); 1.0 for CIFAR-100
        epochs: int = bounded(60, ge=1)
        updates_per_epoch: int | None = bounded(None, ge=1)  # None: a full pass (391 on CIFAR-10)
        perturbs_per_epoch: int | None = bounded(None, ge=1)  # None: a full pass (391 on CIFAR-10)
        batch_size: int = bounded(128, ge=1)
        lr: float = bounded(0.1, gt=0)
        lr_floor: float = bounded(1e-6, ge=0)  # cosine to lr_floor (absolute) over the epochs
        momentum: float = bounded(0.9, ge=0, lt=1)
        weight_decay: float = bounded(1e-4, ge=0)
        surrogate: str = "resnet18"
        surrogate_width: int | None = bounded(None, ge=1)

    def __init__(self, params: Params | None = None, name: str | None = None) -> None:
        super().__init__(params, name)
        self.facts: dict[str, object] = {}

    @property
    def pgd_steps(self) -> int:
        p = self.params
        if p.perturb_iters is not None:
            return p.perturb_iters
        return 5 if p.mode == "sample" else 1

    @property
    def alpha(self) -> float:
        p = self.params
        return p.step_size if p.step_size is not None else p.eps / 10

    def budget(self) -> Budget:
        return Budget("linf", self.params.eps)

    @property
    def sample_wise(self) -> bool:
        return self.params.mode == "sample"

    def report(self) -> dict[str, object]:
        return dict(self.facts)

    def requires(self) -> list[Requirement]:
        return [S.surrogate_requirement(self.params)]

    def preflight(self) -> None:
        _kornia()

    def poison(self, train: ImageSet, ctx: RunContext) -> torch.Tensor:
        if train.num_classes < 2:
            raise ConfigError(
                "AUE needs at least two classes", "use a dataset with several classes"
            )
        rec = S.recipe(self, train, ctx)
        noise = S.cached_tensor(ctx, "aue-noise", rec, lambda ck: self._generate(train, ctx, ck))
        per_image = noise if self.sample_wise else noise[train.labels]
        return (train.float01() + per_image).clamp(0, 1)

    # ----------------------------------------------------------------------------- search

    def _generate(self, train: ImageSet, ctx: RunContext, ckpt: Path) -> torch.Tensor:
        p = self.params
        dev = S.device_of(ctx)
        x = train.float01().to(dev).float()
        y = train.labels.to(dev)
        model = S.build_surrogate(ctx, p.surrogate, p.surrogate_width, train, ctx.seed)
        opt = S.sgd(model, p.lr, p.momentum, p.weight_decay)
        aug = ContrastiveAugment(p.strength, train.image_size)
        aug_gen = S.generator(ctx.seed + 1, dev)
        order_gen = torch.Generator().manual_seed(ctx.seed + 2)
        shape = (len(train),) if self.sample_wise else (train.num_classes,)
        noise = torch.zeros(*shape, *x.shape[1:], device=dev)
        start = 0
        state = S.load_checkpoint(ckpt, dev)
        if state is not None:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            noise, start = state["noise"], state["epoch"]
            aug_gen.set_state(state["aug_gen"].cpu())
            order_gen.set_state(state["order_gen"])
        floor = p.lr_floor / p.lr
        with ctx.progress.task("AUE surrogate + noise", total=p.epochs) as task:
            task.advance(start)
            for epoch in range(start, p.epochs):
                for group in opt.param_groups:
                    group["lr"] = p.lr * cosine_factor(epoch, p.epochs, floor)
                loss = self._train_pass(model, opt, x, y, noise, aug, aug_gen, order_gen)
                self._perturb_pass(model, x, y, noise, aug, aug_gen, order_gen)
                task.update(loss=loss)
                task.advance()
                S.save_checkpoint(ckpt, {
                    "model": model.state_dict(), "opt": opt.state_dict(), "noise": noise,
                    "epoch": epoch + 1, "aug_gen": aug_gen.get_state(), "order_gen": order_gen.get_state(),
                })  # fmt: skip
        self.facts = {
            "epochs": p.epochs,
            "final_train_loss": round(loss, 6) if p.epochs > start else None,
        }
        return noise

    def _perturbed(
        self, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor, idx: torch.Tensor
    ) -> torch.Tensor:
        return x[idx] + (noise[idx] if self.sample_wise else noise[y[idx]])

    def _train_pass(
        self, model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
        noise: torch.Tensor, aug: ContrastiveAugment, aug_gen: torch.Generator, order_gen: torch.Generator,
    ) -> float:  # fmt: skip
        model.train()
        total, seen = 0.0, 0
        for i, idx in enumerate(
            S.batches(len(x), self.params.batch_size, order_gen, drop_last=False)
        ):
            if self.params.updates_per_epoch is not None and i >= self.params.updates_per_epoch:
                break
            idx = idx.to(x.device)
            loss = F.cross_entropy(model(aug(self._perturbed(x, y, noise, idx), aug_gen)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, seen = total + float(loss.detach()) * len(idx), seen + len(idx)
        return total / max(1, seen)

    def _perturb_pass(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor,
        aug: ContrastiveAugment, aug_gen: torch.Generator, order_gen: torch.Generator,
    ) -> None:  # fmt: skip
        model.eval()
        model.requires_grad_(False)
        try:
            for i, idx in enumerate(
                S.batches(len(x), self.params.batch_size, order_gen, drop_last=False)
            ):
                if (
                    self.params.perturbs_per_epoch is not None
                    and i >= self.params.perturbs_per_epoch
                ):
                    break
                idx = idx.to(x.device)
                self.error_minimising(model, x[idx], y[idx], noise, idx, aug, aug_gen)
        finally:
            model.requires_grad_(True)

    def error_minimising(
        self, model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, noise: torch.Tensor, idx: torch.Tensor,
        aug: ContrastiveAugment, aug_gen: torch.Generator,
    ) -> None:  # fmt: skip
        """PGD descending the loss on fresh views of the batch, written back into `noise`."""
        eps, alpha = self.params.eps, self.alpha
        delta = (noise[idx] if self.sample_wise else noise).clone()
        for _ in range(self.pgd_steps):
            delta.requires_grad_(True)
            inputs = xb + (delta if self.sample_wise else delta[yb])
            loss = F.cross_entropy(model(aug(inputs, aug_gen)), yb)
            (grad,) = torch.autograd.grad(loss, [delta])
            with torch.no_grad():
                delta = (delta - alpha * grad.sign()).clamp(-eps, eps)
                if self.sample_wise:
                    delta = (xb + delta).clamp(0, 1) - xb
        if self.sample_wise:
            noise[idx] = delta.detach()
        else:
            noise.copy_(delta.detach())
