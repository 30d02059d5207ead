"""A surrogate trained on the clean training set first, cached by everything that determines it.

HYPO crafts its perturbations against such a model; the training is ueb's own Trainer (SGD with
momentum, weight decay, crop and flip), run once per data, seed, schedule and victim.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from ueb_baselines import surrogate as S

from ueb.imageset import ImageSet
from ueb.interfaces import RunContext
from ueb.params import as_dict
from ueb.profile import TrainingConfig
from ueb.training import Trainer


def epochs_to_iterations(epochs: int, n: int, batch_size: int) -> int:
    """Optimiser steps in `epochs` passes over `n` images (the last partial batch dropped)."""
    return max(1, epochs * max(1, math.floor(n / min(batch_size, n))))


def clean_training(
    iterations: int, batch_size: int, lr: float, momentum: float, weight_decay: float
) -> TrainingConfig:
    """Plain supervised training without a learning-rate step (the crafting runs are short)."""
    return TrainingConfig(
        iterations=iterations,
        batch_size=batch_size,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        milestones=(),
        crop_padding=4,
        flip=True,
        eval_every=0,
        precision="fp32",
        channels_last=False,
    )


def clean_surrogate(
    ctx: RunContext,
    train: ImageSet,
    name: str,
    width: int | None,
    cfg: TrainingConfig,
    kind: str,
) -> nn.Module:
    """Victim `name` trained on the clean `train` with `cfg`, from `ctx.seed`; in eval mode."""
    model = S.build_surrogate(ctx, name, width, train, ctx.seed)
    recipe = {
        "surrogate": name,
        "width": width,
        "training": as_dict(cfg),
        "data": train.fingerprint(),
        "seed": ctx.seed,
        "kind": kind,
    }

    def fit(m: nn.Module, _checkpoints: object) -> None:
        trainer = Trainer(cfg, device=S.device_of(ctx), seed=ctx.seed, progress=ctx.progress)
        probe = train.subset(torch.arange(min(len(train), 512)))
        trainer.fit(m, train, probe, description=f"clean surrogate {name}")

    model = S.cached_model(ctx, kind, recipe, model, fit)
    return model.eval()
