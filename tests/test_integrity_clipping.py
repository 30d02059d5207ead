"""The sample-wise integrity check looks past clipping: one pattern per class, clipped to [0, 1]
and to the budget, is class-wise however different the stored perturbations look."""

from __future__ import annotations

import pytest
import torch

from ueb.errors import IntegrityError
from ueb.imageset import ImageSet, quantize
from ueb.integrity import check_poison, check_sample_wise
from ueb.interfaces import Budget

EPS = 8 / 255
LINF = Budget("linf", EPS)


@pytest.fixture(scope="module")
def fashion() -> ImageSet:
    """20 images per class of the embedded Fashion-MNIST: black backgrounds, white garments."""
    from ueb.registry import get_registry

    train = get_registry().create("dataset", "fashion-mnist").load(None).train
    idx = torch.cat([torch.nonzero(train.labels == c).flatten()[:20] for c in range(10)])
    return train.subset(idx)


def _class_pattern(train: ImageSet, amplitude: float, seed: int = 0) -> torch.Tensor:
    """One uniform random pattern per class in [-amplitude, amplitude], per image by label."""
    gen = torch.Generator().manual_seed(seed)
    shape = (train.num_classes, *train.images.shape[1:])
    patterns = (torch.rand(shape, generator=gen) * 2 - 1) * amplitude
    return patterns[train.labels]


def _apply(train: ImageSet, delta: torch.Tensor, eps: float | None = EPS) -> torch.Tensor:
    x = train.float01()
    if eps is not None:
        delta = delta.clamp(-eps, eps)
    return quantize((x + delta).clamp(0, 1))


def test_a_class_pattern_that_differs_only_by_clipping_to_the_pixel_range_fails(fashion):
    poisoned = _apply(fashion, _class_pattern(fashion, EPS))
    delta = poisoned.to(torch.int16) - fashion.images.to(torch.int16)
    members = delta[fashion.labels == 0].flatten(1)
    # clipping really acts: the stored perturbations of one class are not one tensor
    assert not bool((members == members[0]).all())
    assert float((fashion.images == 0).float().mean()) > 0.3  # black background
    with pytest.raises(IntegrityError, match="one pattern wherever clipping") as info:
        check_sample_wise(fashion, poisoned, "poisoner 'fake'", LINF)
    assert "\n" not in info.value.line()
    with pytest.raises(IntegrityError, match="claims to be sample-wise"):
        check_poison(fashion, poisoned.float() / 255, LINF, True, "poisoner 'fake'")


def test_a_class_pattern_clipped_by_the_budget_fails(fashion):
    poisoned = _apply(fashion, _class_pattern(fashion, 3 * EPS))
    delta = poisoned.to(torch.int16) - fashion.images.to(torch.int16)
    assert int(delta.abs().max()) == 8 and float((delta.abs() == 8).float().mean()) > 0.4
    members = delta[fashion.labels == 0].flatten(1)
    assert not bool((members == members[0]).all())
    with pytest.raises(IntegrityError, match="class 0"):
        check_sample_wise(fashion, poisoned, "poisoner 'fake'", LINF)


def test_one_level_of_rounding_is_still_one_pattern(fashion):
    x = fashion.float01()
    pattern = _class_pattern(fashion, EPS)
    # a float pattern that sits half a level off the grid rounds differently image by image
    wobble = (torch.rand(x.shape, generator=torch.Generator().manual_seed(3)) - 0.5) / 255
    poisoned = quantize((x + pattern + wobble).clamp(0, 1))
    with pytest.raises(IntegrityError):
        check_sample_wise(fashion, poisoned, "poisoner 'fake'", LINF)


def test_real_sample_wise_noise_passes_even_when_it_all_sits_on_the_budget(fashion):
    gen = torch.Generator().manual_seed(1)
    uniform = (torch.rand(fashion.images.shape, generator=gen) * 2 - 1) * EPS
    check_sample_wise(fashion, _apply(fashion, uniform), "poisoner 'noise'", LINF)
    signs = torch.randint(0, 2, fashion.images.shape, generator=gen).float() * 2 - 1
    on_the_budget = _apply(fashion, signs * EPS)
    check_sample_wise(fashion, on_the_budget, "poisoner 'signs'", LINF)


def test_one_image_per_class_differing_is_enough(fashion):
    delta = _class_pattern(fashion, EPS)
    first = int(torch.nonzero(fashion.labels == 4).flatten()[0])
    delta[first] = -delta[first]  # one image of class 4 gets its own pattern
    poisoned = _apply(fashion, delta)
    with pytest.raises(IntegrityError, match="class 0"):  # the other classes are still class-wise
        check_sample_wise(fashion, poisoned, "poisoner 'fake'", LINF)
    only4 = fashion.subset(torch.nonzero(fashion.labels == 4).flatten())
    check_sample_wise(only4, poisoned[fashion.labels == 4], "poisoner 'fake'", LINF)
