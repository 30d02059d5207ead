"""Shortcut probe: did the victim learn a class-wise poison as a shortcut?

A low clean test accuracy says the poison worked, not why. The probe asks the trained victim
directly: take a clean test image of class y, add the perturbation that a training image of
another class k carried, and see whether the victim now says k. A victim that latched onto the
perturbation follows it against the image's content; one that learned the images ignores it
and keeps predicting y.

Threshold: with K classes a victim that ignores the perturbation says k on about
(100 - accuracy)% / (K - 1) of the pairs, below chance (1/K, 0.1 for K = 10); 0.5 means the
perturbation beats the image's own content in the majority of pairs, which only a learned
shortcut does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ueb.imageset import ImageSet

DEFAULT_THRESHOLD = 0.5


@torch.no_grad()
def shortcut_probe(
    model: nn.Module,
    clean_train: ImageSet,
    poisoned_train: ImageSet,
    test: ImageSet,
    *,
    device: str | torch.device,
    seed: int,
    threshold: float = DEFAULT_THRESHOLD,
    batch_size: int = 1000,
    trained_on: ImageSet | None = None,
    test_inputs: Callable[[ImageSet], ImageSet] | None = None,
) -> dict[str, Any]:
    """{"target_rate", "train_acc", "latched", "threshold", "pairs"} for a trained victim.

    `target_rate`: share of (test image of class y, perturbation of a class-k training image,
    k != y) pairs the victim predicts as k, the perturbed image clipped to [0, 1] and then
    passed through `test_inputs` (what every test input goes through on its way to this victim,
    e.g. a countermeasure's test-set transform; default: nothing). The target class and its
    training image are drawn per test image from a generator seeded by `seed`.
    `train_acc`: the victim's accuracy (%) on `trained_on`, the set it really trained on
    (default `poisoned_train`; a data-stage countermeasure's output where there is one).
    """
    if len(clean_train) != len(poisoned_train) or not torch.equal(
        clean_train.labels, poisoned_train.labels
    ):
        raise ValueError(
            "shortcut_probe: clean_train and poisoned_train must hold the same images in the same order"
        )
    device = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        train_acc = _accuracy(
            model, poisoned_train if trained_on is None else trained_on, device, batch_size
        )
        test_index, target, source = _pairs(
            clean_train.labels, test.labels, max(clean_train.num_classes, test.num_classes), seed
        )
        probes = _perturbed(test.subset(test_index), clean_train, poisoned_train, source)
        if test_inputs is not None:
            probes = test_inputs(probes)
        hits = 0
        for i in range(0, len(target), batch_size):
            x = probes.subset(torch.arange(i, min(i + batch_size, len(target)))).float01()
            pred = model(x.to(device)).argmax(1).cpu()
            hits += int((pred == target[i : i + batch_size]).sum())
        n = len(target)
        target_rate = hits / n if n else 0.0
    finally:
        model.train(was_training)
    return {
        "target_rate": target_rate,
        "train_acc": train_acc,
        "latched": n > 0 and target_rate >= threshold,
        "threshold": threshold,
        "pairs": n,
    }


def _perturbed(
    test: ImageSet, clean_train: ImageSet, poisoned_train: ImageSet, source: torch.Tensor
) -> ImageSet:
    """Test image i plus the perturbation training image source[i] carried, clipped to [0, 1].
    Both sets on the 8-bit grid give a result on it, kept as uint8 (exact, 4x smaller)."""
    exact = (
        test.images.dtype == poisoned_train.images.dtype == clean_train.images.dtype == torch.uint8
    )
    parts, chunk = [], 1000  # chunks: float copies of a whole large set add up
    for i in range(0, len(test), chunk):
        j = source[i : i + chunk]
        delta = poisoned_train.subset(j).float01() - clean_train.subset(j).float01()
        base = test.subset(torch.arange(i, min(i + chunk, len(test)))).float01()
        x = (base + delta).clamp(0, 1)
        parts.append(x.mul(255).round().to(torch.uint8) if exact else x)
    empty = test.images[:0] if exact else test.float01()[:0]
    return test.with_images(torch.cat(parts) if parts else empty, probe=True)


def _pairs(
    train_labels: torch.Tensor, test_labels: torch.Tensor, num_classes: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per test image: a target class other than its own, drawn uniformly among the classes with
    training images, and a uniformly drawn training image of that class. Test images with no
    such class are left out (only possible with fewer than two classes in training)."""
    train_labels, test_labels = train_labels.cpu(), test_labels.cpu()
    gen = torch.Generator().manual_seed(seed)
    counts = torch.bincount(train_labels, minlength=num_classes)
    # random scores, own and absent classes excluded: the argmax is a uniform draw of the rest
    scores = torch.rand(len(test_labels), len(counts), generator=gen)
    scores[:, counts == 0] = -1.0
    scores[torch.arange(len(test_labels)), test_labels] = -1.0
    best, target = scores.max(1)
    test_index = torch.nonzero(best >= 0).flatten()
    target = target[test_index]
    order = torch.argsort(train_labels, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    offset = (torch.rand(len(target), generator=gen) * counts[target]).long()
    offset = torch.minimum(offset, counts[target] - 1)
    return test_index, target, order[starts[target] + offset]


def _accuracy(model: nn.Module, data: ImageSet, device: torch.device, batch_size: int) -> float:
    correct = 0
    for i in range(0, len(data), batch_size):
        part = data.subset(torch.arange(i, min(i + batch_size, len(data))))
        pred = model(part.float01().to(device)).argmax(1).cpu()
        correct += int((pred == part.labels.cpu()).sum())
    return 100.0 * correct / max(1, len(data))
