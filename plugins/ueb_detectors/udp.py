"""UDP's simple-network detector (Zhu, Yu and Gao, "Detection and Defense of Unlearnable
Examples", AAAI 2024, Algorithm 1; official code hala64/udp, `poison_detection.py`).

The suspect set is split at random into 4/5 training and 1/5 validation (the official
40,000 / 10,000 split of CIFAR-10); a simple network on raw pixels, the official two-layer
network (one hidden ReLU layer as wide as the input) or a linear map, is trained on the first,
and the set is called poisoned when its accuracy on the second exceeds the detection bound
B = 0.7. Unlearnable perturbations are (nearly) linearly separable, so a simple network fits a
poisoned set's labels and generalises to its validation part far better than the same network
on clean images (about 40-55% on clean CIFAR-10).

Per-image scores (our addition, so that mixed sets get an AUROC): every image is scored by the
model that did not train on it, across the five folds, with the probability that model gives
its label (`heldout.py`). The verdict uses fold 0 alone, which is the method's own split.
Settings per parameter and their sources: docs/detectors.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from torch import nn

from ueb.errors import DataError
from ueb.imageset import ImageSet
from ueb.interfaces import Detection, Detector, RunContext
from ueb.params import bounded
from ueb_detectors.heldout import FitSettings, HeldOut, SimpleNet, cross_fit


def _check_size(name: str, train: ImageSet, folds: int) -> None:
    if len(train) < 2 * folds:
        raise DataError(
            f"detector '{name}' needs at least {2 * folds} images for {folds} folds, got {len(train)}",
            "use a larger training set or fewer folds",
        )


def _detection(held: HeldOut, bound: float, **facts: Any) -> Detection:
    val = held.fold_accuracy[0]
    return Detection(
        scores=held.label_prob,
        set_score=val,
        threshold=bound,
        poisoned=bool(val > bound),
        extra={"val_accuracy": val, "fold_accuracy": list(held.fold_accuracy), **facts},
    )


class SimpleNetDetector(Detector):
    """Algorithm 1: a simple network that generalises too well flags a shortcut."""

    version: ClassVar[str] = "1"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"epochs": 16, "milestones": [12], "hidden": 64, "batch_size": 16},
        "quick": {"epochs": 20, "milestones": [15, 18], "hidden": 512},
    }

    @dataclass(frozen=True)
    class Params:
        model: Literal["two-layer", "linear"] = "two-layer"
        hidden: int = bounded(0, ge=0)  # 0: as wide as the input (the official network)
        augment: bool = True  # crop + flip; the official code keeps it for the two-layer net only
        bound: float = bounded(0.7, ge=0, le=1)
        folds: int = bounded(5, ge=2)
        epochs: int = bounded(100, ge=1)
        milestones: tuple[int, ...] = bounded((75, 90), ge=1)
        gamma: float = bounded(0.1, gt=0, le=1)
        batch_size: int = bounded(128, ge=1)
        lr: float = bounded(0.01, gt=0)
        momentum: float = bounded(0.9, ge=0, lt=1)
        weight_decay: float = bounded(5e-4, ge=0)

    def detect(self, train: ImageSet, ctx: RunContext) -> Detection:
        p = self.params
        _check_size(self.name, train, p.folds)
        input_dim = train.channels * train.image_size * train.image_size
        hidden = None if p.model == "linear" else (p.hidden or input_dim)

        def build() -> nn.Module:
            return SimpleNet(input_dim, train.num_classes, hidden)

        settings = FitSettings(
            p.epochs, p.batch_size, p.lr, p.momentum, p.weight_decay, p.milestones, p.gamma,
            p.augment,
        )  # fmt: skip
        held = cross_fit(train, build, settings, p.folds, ctx.seed, ctx.device)
        return _detection(held, p.bound, model=p.model, hidden=hidden or 0)


__all__ = ["SimpleNetDetector"]
