"""UDP's bias-shifting noise test (Zhu, Yu and Gao, "Detection and Defense of Unlearnable
Examples", AAAI 2024, Algorithm 2; official code hala64/udp, `poison_detection.py`,
`--detection-method bias-0.5` / `bias+0.5`).

The suspect set is split at random into 4/5 training and 1/5 validation, as for the simple
networks. Every training image is shifted by the same constant bias-shifting noise
eps_b = -0.5 (or +0.5) in every pixel, without clipping, and a ResNet-18 is trained on the
shifted part with no augmentation; the set is called poisoned when the network's accuracy on
the *unshifted* validation part exceeds the detection bound B = 0.7. A network that learned
clean semantics on shifted images fails on unshifted ones, while an unlearnable shortcut
survives the shift, so only a poisoned set keeps a high validation accuracy.

Per-image scores (our addition, as for `simple-net`): the split is repeated as five folds and
every image is scored by the network that did not train on it, with the probability it gives
the image's label on the unshifted image. The verdict uses fold 0, the method's own split.
Settings per parameter and their sources: docs/detectors.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ueb.imageset import ImageSet
from ueb.interfaces import Detection, Detector, Requirement, RunContext
from ueb.params import bounded
from ueb_detectors.heldout import FitSettings, _fit, _logits, fold_indices
from ueb_detectors.udp import _check_size

VICTIM = "resnet18"  # the official detector network (`ResNet18()` in poison_detection.py)


@dataclass(frozen=True)
class ShiftedHeldOut:
    """Per-image unshifted held-out label probability; per fold, held-out accuracy on the
    unshifted images and on the same images shifted (how well the network fit the shift)."""

    label_prob: np.ndarray
    fold_accuracy: tuple[float, ...]
    fold_shifted_accuracy: tuple[float, ...]


def shifted_cross_fit(
    train: ImageSet,
    build: Callable[[], torch.nn.Module],
    settings: FitSettings,
    shift: float,
    folds: int,
    seed: int,
    device: str,
) -> ShiftedHeldOut:
    """One network per fold, trained on the other folds plus `shift`, read on the fold as is."""
    x = train.float01()
    y = train.labels
    parts = fold_indices(len(train), folds, seed)
    prob = np.full(len(train), np.nan, dtype=np.float64)
    plain: list[float] = []
    shifted: list[float] = []
    for k, held in enumerate(parts):
        fit_idx = np.setdiff1d(np.arange(len(train)), held, assume_unique=True)
        with torch.random.fork_rng(devices=[]):  # the caller's global generator stays as it was
            torch.manual_seed(seed * 1_000 + k)
            model = build().to(device)
        gen = torch.Generator().manual_seed(seed * 1_000 + k)
        _fit(model, x[fit_idx] + shift, y[fit_idx], settings, gen, device)
        labels = y[held]
        logits = _logits(model, x[held], device)
        prob[held] = F.softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1).double().numpy()
        plain.append(float((logits.argmax(1) == labels).double().mean()))
        on_shift = _logits(model, x[held] + shift, device)
        shifted.append(float((on_shift.argmax(1) == labels).double().mean()))
    return ShiftedHeldOut(prob, tuple(plain), tuple(shifted))


class BiasShiftDetector(Detector):
    """Algorithm 2: a shortcut survives a constant shift of the training images; semantics do not."""

    version: ClassVar[str] = "1"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"width": 16, "epochs": 16, "milestones": [12], "batch_size": 16, "folds": 2},
        "quick": {"width": 8, "epochs": 16, "milestones": [12], "folds": 2},
    }

    @dataclass(frozen=True)
    class Params:
        shift: float = bounded(-0.5, ge=-1, le=1)  # eps_b in every pixel of [0, 1] images
        width: int = bounded(64, ge=1)  # ResNet-18's first-stage channels
        bound: float = bounded(0.7, ge=0, le=1)
        folds: int = bounded(5, ge=2)
        epochs: int = bounded(100, ge=1)
        milestones: tuple[int, ...] = bounded((75, 90), ge=1)
        gamma: float = bounded(0.1, gt=0, le=1)
        batch_size: int = bounded(128, ge=1)
        lr: float = bounded(0.01, gt=0)
        momentum: float = bounded(0.9, ge=0, lt=1)
        weight_decay: float = bounded(5e-4, ge=0)

    def requires(self) -> list[Requirement]:
        return [Requirement("victim", VICTIM, {"width": self.params.width})]

    def detect(self, train: ImageSet, ctx: RunContext) -> Detection:
        p = self.params
        _check_size(self.name, train, p.folds)
        victim = ctx.plugin("victim", VICTIM, {"width": p.width})

        def build() -> torch.nn.Module:
            return victim.build(train.num_classes, train.image_size, train.channels)

        settings = FitSettings(
            p.epochs, p.batch_size, p.lr, p.momentum, p.weight_decay, p.milestones, p.gamma,
            False,  # the official code turns augmentation off for the bias-shifting test
        )  # fmt: skip
        held = shifted_cross_fit(train, build, settings, p.shift, p.folds, ctx.seed, ctx.device)
        val = held.fold_accuracy[0]
        return Detection(
            scores=held.label_prob,
            set_score=val,
            threshold=p.bound,
            poisoned=bool(val > p.bound),
            extra={
                "val_accuracy": val,
                "fold_accuracy": list(held.fold_accuracy),
                "shifted_val_accuracy": held.fold_shifted_accuracy[0],
                "shift": p.shift,
                "width": p.width,
            },
        )


__all__ = ["BiasShiftDetector", "ShiftedHeldOut", "shifted_cross_fit"]
