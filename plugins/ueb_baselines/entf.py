"""EntF: entangled features (Wen et al., ICLR 2023, "Is Adversarial Training Really a Silver
Bullet for Mitigating Data Poisoning?").

Following the authors' code (WenRuiUSTC/EntF: train_reference_model.py, get_centroid.py,
poison_generate.py, village/shop/forgemaster_{push,pull}.py, utils/options.py): adversarially
train a reference model (PGD, Linf `robust_eps` = 4/255, on random crops (pad 4) and flips of the
clean training set), take each class's centroid of its penultimate
features on the clean training set, then brew Linf noise with the same signed-gradient PGD as
TAP so that the features of every image are entangled with other classes:
  * push (default): maximise the MSE between an image's features and its own class centroid;
  * pull: minimise the MSE to the nearest centroid of another class.
Sources and settings: docs/poisoners-surrogate.md.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from ueb.imageset import ImageSet
from ueb.interfaces import Batch, Budget, Poisoner, Requirement, RunContext, StepContext
from ueb.nn import Classifier
from ueb.params import as_dict, bounded
from ueb.profile import TrainingConfig
from ueb.training import Trainer

from . import surrogate as S
from .pgd import brew, pgd_linf, translate_flip, uniform_start
from .tap import _probe, clean_config


class EntangledFeatures(Poisoner["EntangledFeatures.Params"]):
    """EntF-push / EntF-pull noise against an adversarially trained reference model, Linf 8/255."""

    version = "2"  # 2: reference model trained with crop (pad 4) + flip, as the official one
    # CPU scale: the same algorithm with a fastnet reference model and fewer steps; quick poisons
    # in about 71 s on 2 cores (the times and what they lower fastnet to: docs/poisoners.md).
    # Paper: the official reference model, robust_eps 4/255 (utils/options.py, README), trained
    # on crops (pad 4) and flips.
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {
            "surrogate": "fastnet",
            "reference_iterations": 20,
            "reference_batch_size": 32,
            "robust_steps": 2,
            "steps": 4,
            "tau": 0.5,
        },
        "quick": {
            "surrogate": "fastnet",
            "reference_iterations": 300,
            "robust_steps": 3,
            "steps": 10,
            "tau": 0.4,
        },
        "paper": {"robust_eps": 4 / 255, "reference_crop_padding": 4},
    }

    @dataclass(frozen=True)
    class Params:
        recipe: Literal["push", "pull"] = "push"
        eps: float = bounded(8 / 255, gt=0, le=1)
        steps: int = bounded(300, ge=1)
        tau: float = bounded(0.05, gt=0)  # step size = eps * tau
        restarts: int = bounded(1, ge=1)
        batch_size: int = bounded(512, ge=1)
        augment: bool = True
        shift: int = bounded(8, ge=0)
        robust_eps: float = bounded(4 / 255, ge=0, le=1)
        robust_step_size: float = bounded(2 / 255, gt=0, le=1)
        robust_steps: int = bounded(10, ge=0)
        surrogate: str = "resnet18"
        surrogate_width: int | None = bounded(None, ge=1)
        reference_iterations: int = bounded(39_100, ge=1)  # 100 epochs of CIFAR-10 at batch 128
        reference_batch_size: int = bounded(128, ge=1)
        reference_lr: float = bounded(0.1, gt=0)
        reference_crop_padding: int = bounded(
            4, ge=0
        )  # official: RandomCrop(32, padding=4) + flip; 0: flip only

    def budget(self) -> Budget:
        return Budget("linf", self.params.eps)

    def reference_config(self) -> TrainingConfig:
        """The reference model's training: SGD as clean_config, crop + flip, x0.1 at 75% and 90%."""
        p = self.params
        it = p.reference_iterations
        cfg = clean_config(
            it, p.reference_batch_size, p.reference_lr, crop_padding=p.reference_crop_padding
        )
        return replace(cfg, milestones=(max(1, int(it * 0.75)), max(1, int(it * 0.9))))

    def reference_model(self, train: ImageSet, ctx: RunContext) -> nn.Module:
        """The adversarially trained reference model, trained once per data and seed and cached."""
        p = self.params
        cfg = self.reference_config()
        model = S.build_surrogate(ctx, p.surrogate, p.surrogate_width, train, ctx.seed)
        rec = {
            "surrogate": p.surrogate,
            "width": p.surrogate_width,
            "training": as_dict(cfg),
            "robust": [p.robust_eps, p.robust_step_size, p.robust_steps],
            "data": train.fingerprint(),
            "seed": ctx.seed,
            "kind": "adversarial",
        }

        def fit(m: nn.Module, _ckpt: object) -> None:
            trainer = Trainer(cfg, device=S.device_of(ctx), seed=ctx.seed, progress=ctx.progress)
            hooks = _AdversarialTraining(p.robust_eps, p.robust_step_size, p.robust_steps)
            trainer.fit(
                m,
                train,
                _probe(train),
                hooks=cast(Any, hooks),  # the trainer calls only augment() and loss()
                description=f"robust reference {p.surrogate}",
            )

        model = S.cached_model(ctx, "robust-surrogate", rec, model, fit)
        return model.eval()

    @staticmethod
    @torch.no_grad()
    def centroids(
        model: Classifier, x: torch.Tensor, y: torch.Tensor, num_classes: int
    ) -> torch.Tensor:
        feats = torch.cat([model.features(x[i : i + 512]) for i in range(0, len(x), 512)])
        out = torch.zeros(num_classes, feats.shape[1], device=feats.device)
        out.index_add_(0, y, feats)
        counts = torch.bincount(y, minlength=num_classes).clamp(min=1).to(feats.dtype)
        return out / counts[:, None]

    def requires(self) -> list[Requirement]:
        return [S.surrogate_requirement(self.params)]

    def poison(self, train: ImageSet, ctx: RunContext) -> torch.Tensor:
        rec = S.recipe(self, train, ctx)
        noise = S.cached_tensor(ctx, "entf-noise", rec, lambda _ck: self._generate(train, ctx))
        return (train.float01() + noise).clamp(0, 1)

    def _generate(self, train: ImageSet, ctx: RunContext) -> torch.Tensor:
        p = self.params
        model = cast(Classifier, self.reference_model(train, ctx))
        for q in model.parameters():
            q.requires_grad_(False)
        dev = S.device_of(ctx)
        x = train.float01().to(dev)
        y = train.labels.to(dev)
        cents = self.centroids(model, x, y, train.num_classes)
        gen = S.generator(ctx.seed + 1, dev)

        def objective(z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            f = model.features(z)
            if p.recipe == "push":
                return -F.mse_loss(f, cents[y[idx]])
            with torch.no_grad():
                dist = ((f[:, None, :] - cents[None]) ** 2).mean(-1)
                dist[torch.arange(len(idx), device=dev), y[idx]] = float("inf")
                nearest = dist.argmin(1)
            return F.mse_loss(f, cents[nearest])

        augment = (lambda z: translate_flip(z, gen, p.shift)) if p.augment else None
        with ctx.progress.task(
            f"EntF-{p.recipe} poison", total=p.steps * max(1, p.restarts)
        ) as task:
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


class _AdversarialTraining:
    """Trainer hooks: train on PGD adversarial examples (random start, ascending the loss)."""

    def __init__(self, eps: float, step_size: float, steps: int) -> None:
        self.eps, self.step_size, self.steps = eps, step_size, steps

    def augment(self, batch: Batch, step: StepContext) -> Batch:
        return batch

    def loss(self, model: nn.Module, batch: Batch, step: StepContext) -> torch.Tensor:
        x, y = batch.x.detach(), batch.y
        start = uniform_start(x.shape, self.eps, step.generator, x.device)
        was = model.training
        model.eval()
        delta = pgd_linf(
            lambda z: F.cross_entropy(model(z), y),
            x,
            start,
            self.eps,
            self.step_size,
            self.steps,
            descend=False,
        )
        model.train(was)
        return F.cross_entropy(model(x + delta), y)
