"""Held-out fitting: how well a model trained on part of a set predicts the rest.

UDP's simple-network detector (Zhu, Yu and Gao, AAAI 2024) splits the suspect set at random into
a training and a validation part, trains a simple model on the first and reads its accuracy on
the second: a set whose labels so simple a model predicts that well carries a shortcut. To score every image, not only the validation part, the split is repeated
as K folds (cross-fitting): each image is scored by the model that did not train on it, with
the probability that model gives the image's label. Fold 0 is the method's own split, so the
set-level number is exactly the method's validation accuracy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ueb.imageset import ImageSet
from ueb.training import random_crop_flip


@dataclass(frozen=True)
class FitSettings:
    """One model's training: SGD with momentum and weight decay, step decay at epoch milestones."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    milestones: tuple[int, ...]
    gamma: float
    augment: bool  # random crop (padding 4) and horizontal flip, as the official loader


@dataclass(frozen=True)
class HeldOut:
    """Per-image held-out label probability, and each fold's held-out accuracy."""

    label_prob: np.ndarray
    fold_accuracy: tuple[float, ...]
    folds: tuple[np.ndarray, ...]


def fold_indices(n: int, folds: int, seed: int) -> list[np.ndarray]:
    """A seeded random partition of range(n) into `folds` parts of near-equal size."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    return [np.sort(part) for part in np.array_split(perm, folds)]


def cross_fit(
    train: ImageSet,
    build: Callable[[], nn.Module],
    settings: FitSettings,
    folds: int,
    seed: int,
    device: str,
) -> HeldOut:
    """Train one model per fold on the other folds; score the fold with it.

    `build` is called under a seed derived from `seed` and the fold, so the run repeats.
    """
    x = train.float01()
    y = train.labels
    parts = fold_indices(len(train), folds, seed)
    prob = np.full(len(train), np.nan, dtype=np.float64)
    accuracy: list[float] = []
    for k, held in enumerate(parts):
        fit_idx = np.setdiff1d(np.arange(len(train)), held, assume_unique=True)
        with torch.random.fork_rng(devices=[]):  # the caller's global generator stays as it was
            torch.manual_seed(seed * 1_000 + k)
            model = build().to(device)
        gen = torch.Generator().manual_seed(seed * 1_000 + k)
        _fit(model, x[fit_idx], y[fit_idx], settings, gen, device)
        logits = _logits(model, x[held], device)
        labels = y[held]
        prob[held] = F.softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1).double().numpy()
        accuracy.append(float((logits.argmax(1) == labels).double().mean()))
    return HeldOut(prob, tuple(accuracy), tuple(parts))


def _fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    s: FitSettings,
    gen: torch.Generator,
    device: str,
) -> None:
    opt = torch.optim.SGD(
        model.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay
    )
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(s.milestones), gamma=s.gamma)
    model.train()
    n = len(x)
    for _epoch in range(s.epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, s.batch_size):
            idx = order[start : start + s.batch_size]
            xb = x[idx]
            if s.augment:
                xb = random_crop_flip(xb, 4, True, gen)
            xb = xb.to(device)
            loss = F.cross_entropy(model(xb), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, device: str, batch: int = 512) -> torch.Tensor:
    model.eval()
    out: Sequence[torch.Tensor] = [
        model(x[i : i + batch].to(device)).float().cpu() for i in range(0, len(x), batch)
    ]
    return torch.cat(list(out)) if out else torch.zeros(0)


class SimpleNet(nn.Module):
    """UDP's simple networks on flattened pixels: a linear map, or one hidden ReLU layer
    (the official two-layer network's hidden width equals its input size)."""

    def __init__(self, input_dim: int, num_classes: int, hidden: int | None) -> None:
        super().__init__()
        if hidden is None:
            self.net: nn.Module = nn.Linear(input_dim, num_classes)
        else:
            self.net = nn.Sequential(
                nn.Linear(input_dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.flatten(x, 1))
