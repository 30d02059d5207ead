"""bias-shift: UDP's bias-shifting noise test keeps the detector contract, finds a strong
pixel-scale class-wise shortcut (set verdict and per-image AUROC) and calls a set with nothing
to learn clean."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ueb.detection import auroc, chance_tolerance
from ueb.errors import ConfigError
from ueb.imageset import ImageSet
from ueb.interfaces import Detection
from ueb.registry import get_registry
from ueb.testing import make_run_context
from ueb.testing_detectors import check_detector, make_patternless_set

NAME = "bias-shift"
# CPU scale: at 16x16 and a hundred images a 16-channel ResNet-18 keeps a pixel-scale shortcut
# through the shift only when it is strong (docs/detectors.md gives the measured numbers).
STRONG = 96 / 255
TEST_PARAMS = dict(get_registry().get("detector", NAME).load_class().presets["smoke"])


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def plant_pixel_shortcut(
    clean: ImageSet, eps: float, fraction: float, seed: int = 0
) -> tuple[ImageSet, np.ndarray]:
    """A +-eps random sign per pixel and channel, one pattern per class, on a seeded
    `fraction` of the images: the pixel-scale class-wise shortcut of the `cw-hf` control."""
    gen = torch.Generator().manual_seed(20_000 + seed)
    c, h, w = clean.images.shape[1:]
    patterns = torch.randint(0, 2, (clean.num_classes, c, h, w), generator=gen).float() * 2 - 1
    n = len(clean)
    chosen = torch.randperm(n, generator=gen)[: round(fraction * n)]
    mask = np.zeros(n, dtype=bool)
    mask[chosen.numpy()] = True
    x = clean.float01().clone()
    x[chosen] = (x[chosen] + eps * patterns[clean.labels[chosen]]).clamp(0, 1)
    return clean.with_images((x * 255).round().to(torch.uint8)), mask


def _detector(params: dict[str, Any] | None = None) -> Any:
    return get_registry().create("detector", NAME, {**TEST_PARAMS, **(params or {})})


def _detect(data: ImageSet, tmp_path: Path, seed: int = 0, **params: Any) -> Detection:
    detector = _detector(params)
    return detector.detect(data, make_run_context(tmp_path, seed=seed, owner=detector))


def test_bias_shift_keeps_the_contract(tmp_path):
    cls = get_registry().get("detector", NAME).load_class()
    clean = make_patternless_set()
    poisoned, _ = plant_pixel_shortcut(clean, STRONG, 1.0)
    found_clean, found = check_detector(
        cls, params=TEST_PARAMS, clean=clean, poisoned=poisoned, workdir=tmp_path
    )
    assert found.threshold == 0.7  # UDP's detection bound B
    assert found_clean.set_score < found.threshold < found.set_score
    # the network fits the shifted images: its accuracy on the shifted validation part is
    # at least the unshifted one it is judged by
    assert found.extra["shifted_val_accuracy"] >= found.extra["val_accuracy"]
    assert found.extra["shift"] == -0.5


def test_defaults_are_the_official_settings():
    p = get_registry().create("detector", NAME).params
    assert (p.shift, p.width, p.bound, p.folds) == (-0.5, 64, 0.7, 5)
    assert (p.epochs, p.milestones, p.gamma, p.batch_size) == (100, (75, 90), 0.1, 128)
    assert (p.lr, p.momentum, p.weight_decay) == (0.01, 0.9, 5e-4)
    assert get_registry().select("detector", ["all"]) == ["simple-net"]  # ResNet folds: opt-in


@pytest.mark.parametrize(("key", "value"), [("shift", 1.5), ("width", 0), ("folds", 1)])
def test_out_of_range_parameters_are_rejected(key, value):
    with pytest.raises(ConfigError, match=key):
        get_registry().create("detector", NAME, {key: value})


def test_bias_shift_ranks_poisoned_images_of_a_mixed_set_first(tmp_path):
    clean = make_patternless_set()
    mixed, mask = plant_pixel_shortcut(clean, STRONG, 0.5, seed=1)
    found = _detect(mixed, tmp_path)
    tolerance = chance_tolerance(int(mask.sum()), int((~mask).sum()))
    assert auroc(found.scores, mask) > 0.5 + tolerance


def test_only_the_training_part_is_shifted(tmp_path):
    """With eps_b = 0 the shifted and the unshifted validation images are the same images, so
    the two accuracies agree fold by fold; the verdict reads the unshifted ones."""
    data, _ = plant_pixel_shortcut(make_patternless_set(per_class=6), STRONG, 1.0)
    found = _detect(data, tmp_path, shift=0.0, width=4, epochs=1, milestones=[1])
    assert found.extra["shifted_val_accuracy"] == found.extra["val_accuracy"] == found.set_score
    assert found.extra["fold_accuracy"][0] == found.set_score
