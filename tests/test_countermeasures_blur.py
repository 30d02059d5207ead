"""`gaussian-blur` blurs; the paper's `gaussian-filter` (sigma 0.1) leaves 8-bit images as they are."""

from __future__ import annotations

import torch

from ueb.registry import get_registry
from ueb.testing import check_countermeasure, make_imageset


def test_gaussian_blur_changes_images_and_the_papers_filter_does_not(run_context):
    train = make_imageset(per_class=4, num_classes=3, size=16)
    blurred = (
        get_registry()
        .create("countermeasure", "gaussian-blur")
        .transform_train_set(train, run_context)
    )
    paper = (
        get_registry()
        .create("countermeasure", "gaussian-filter")
        .transform_train_set(train, run_context)
    )
    assert torch.equal(paper.images, train.images)  # sigma 0.1: the identity on uint8
    changed = (blurred.images != train.images).float().mean()
    assert changed > 0.5

    # a low-pass filter: less energy in the pixel-to-pixel differences, same mean brightness
    def roughness(x):
        x = x.float()
        return float((x[..., 1:] - x[..., :-1]).abs().mean())

    assert roughness(blurred.images) < 0.8 * roughness(train.images)
    assert abs(float(blurred.images.float().mean() - train.images.float().mean())) < 1.0


def test_gaussian_blur_keeps_the_contract_and_stays_out_of_all():
    check_countermeasure(get_registry().get("countermeasure", "gaussian-blur").load_class())
    entry = get_registry().get("countermeasure", "gaussian-blur")
    assert entry.meta.get("hidden_from_all") and entry.load_class().Params().sigma == 0.8
