"""The shortcut probe (ueb.probe): its pairs, its arithmetic on fixed models, and its verdict on
a victim trained on a learned class-wise shortcut versus one trained on clean data."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from ueb.imageset import ImageSet
from ueb.probe import _pairs, shortcut_probe
from ueb.testing import make_imageset


class _Constant(nn.Module):
    """Always predicts class `k`."""

    def __init__(self, k: int, num_classes: int) -> None:
        super().__init__()
        self.k, self.num_classes = k, num_classes
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(x), self.num_classes)
        out[:, self.k] = 1
        return out


class _ReadsPattern(nn.Module):
    """Predicts the class whose fixed pattern correlates best with the image's high-pass part:
    a victim that learned nothing but the shortcut."""

    def __init__(self, patterns: torch.Tensor) -> None:
        super().__init__()
        self.patterns = patterns

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.patterns.flatten(1).t()


def _poison_with(train: ImageSet, patterns: torch.Tensor) -> ImageSet:
    x = (train.float01() + patterns[train.labels]).clamp(0, 1)
    return train.with_images(x.mul(255).round().to(torch.uint8))


def test_pairs_target_another_class_and_take_the_perturbation_of_an_image_of_that_class():
    train = make_imageset(per_class=5, num_classes=4, seed=0)
    test = make_imageset(per_class=30, num_classes=4, seed=1)
    index, target, source = _pairs(train.labels, test.labels, 4, seed=3)
    assert torch.equal(index, torch.arange(len(test)))
    assert bool((target != test.labels).all())
    assert torch.equal(train.labels[source], target)
    # every other class is drawn, roughly uniformly (30 images x 3 targets per class)
    counts = torch.bincount(target, minlength=4)
    assert int(counts.min()) >= 20
    again = _pairs(train.labels, test.labels, 4, seed=3)
    assert all(torch.equal(a, b) for a, b in zip((index, target, source), again, strict=True))
    other = _pairs(train.labels, test.labels, 4, seed=4)
    assert not torch.equal(target, other[1])


def test_pairs_skip_classes_without_training_images():
    train = make_imageset(per_class=5, num_classes=4, seed=0)
    only_two = train.subset(torch.nonzero(train.labels < 2).flatten())
    test = make_imageset(per_class=4, num_classes=4, seed=1)
    index, target, source = _pairs(only_two.labels, test.labels, 4, seed=0)
    assert set(target.tolist()) <= {0, 1}
    # class-0 images can only target class 1 and vice versa; classes 2 and 3 target either
    assert bool((target[test.labels[index] == 0] == 1).all())
    assert len(index) == len(test)


def test_a_constant_victim_hits_only_the_pairs_aimed_at_its_class():
    train = make_imageset(per_class=6, num_classes=4, seed=0)
    test = make_imageset(per_class=50, num_classes=4, seed=1)
    model = _Constant(2, 4)
    model.train()
    out = shortcut_probe(model, train, train, test, device="cpu", seed=0)
    _, target, _ = _pairs(train.labels, test.labels, 4, seed=0)
    assert out["pairs"] == len(test)
    assert out["target_rate"] == pytest.approx(float((target == 2).float().mean()))
    assert out["train_acc"] == pytest.approx(25.0)
    assert out["latched"] is False and out["threshold"] == 0.5
    assert model.training, "the probe must leave the model in the mode it found it in"


def _pattern_reader_case():
    """Four classes with one ±0.2 pattern each, and a victim that reads only the pattern."""
    train = make_imageset(per_class=6, num_classes=4, seed=0)
    test = make_imageset(per_class=10, num_classes=4, seed=1)
    gen = torch.Generator().manual_seed(0)
    patterns = (torch.randint(0, 2, (4, 3, 32, 32), generator=gen).float() * 2 - 1) * 0.2
    # centre the images so that the readout sees the perturbation, not the brightness
    model = nn.Sequential(_Shift(-0.5), _ReadsPattern(patterns))
    return train, test, _poison_with(train, patterns), model


def test_a_victim_that_reads_only_the_pattern_latches_and_the_threshold_decides():
    train, test, poisoned, model = _pattern_reader_case()
    out = shortcut_probe(model, train, poisoned, test, device="cpu", seed=0, batch_size=7)
    assert out["target_rate"] > 0.9 and out["latched"] is True
    assert out["train_acc"] > 90
    strict = shortcut_probe(model, train, poisoned, test, device="cpu", seed=0, threshold=1.01)
    assert strict["latched"] is False and strict["target_rate"] == out["target_rate"]


def test_probe_inputs_go_through_the_test_transform_and_train_acc_uses_the_set_trained_on():
    """A data-stage countermeasure changes what the victim saw and sees: the probe's images take
    the test inputs' path, and training accuracy is taken on the set it really trained on."""
    train, test, poisoned, model = _pattern_reader_case()
    seen = []

    def flatten_every_pixel(images):  # a test transform that removes any perturbation
        seen.append(len(images))
        return images.with_images(torch.full_like(images.float01(), 0.5))

    out = shortcut_probe(
        model,
        train,
        poisoned,
        test,
        device="cpu",
        seed=0,
        trained_on=train,
        test_inputs=flatten_every_pixel,
    )
    assert seen == [len(test)]
    assert out["latched"] is False and out["target_rate"] < 0.5
    assert out["train_acc"] < 90  # the pattern reader on the clean images it "trained" on


class _Shift(nn.Module):
    def __init__(self, by: float) -> None:
        super().__init__()
        self.by = by

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.by


def test_mismatched_clean_and_poisoned_sets_are_refused():
    train = make_imageset(per_class=4, num_classes=2, seed=0)
    with pytest.raises(ValueError, match="same images"):
        shortcut_probe(_Constant(0, 2), train, train.subset([0, 1]), train, device="cpu", seed=0)


def _train(train: ImageSet, test: ImageSet, seed: int = 0) -> nn.Module:
    from ueb.profile import load_profile
    from ueb.registry import get_registry
    from ueb.training import Trainer

    cfg = dataclasses.replace(
        load_profile("smoke").training, iterations=60, milestones=(40,), eval_every=0
    )
    torch.manual_seed(seed)
    victim = get_registry().create("victim", "fastnet", {"stem_width": 8, "widths": (16, 32)})
    model = victim.build(train.num_classes, train.image_size, train.channels)
    Trainer(cfg, "cpu", seed).fit(model, train, test)
    return model


def test_probe_latches_on_a_learned_class_wise_shortcut_and_not_on_clean_training():
    from ueb_baselines.controls import ClassWiseSign

    train = make_imageset(per_class=32, num_classes=4, seed=0)
    test = make_imageset(per_class=16, num_classes=4, seed=1)
    control = ClassWiseSign(ClassWiseSign.Params(eps=0.3, block=8), "cw-lf-large")
    poisoned = _poison_with(train, control.patterns(4, 3, 32, 32, seed=0))

    shortcut = shortcut_probe(_train(poisoned, test), train, poisoned, test, device="cpu", seed=0)
    assert shortcut["latched"] is True and shortcut["target_rate"] >= 0.7
    assert shortcut["train_acc"] > 90

    clean = shortcut_probe(_train(train, test), train, poisoned, test, device="cpu", seed=0)
    assert clean["latched"] is False
    assert clean["target_rate"] <= 0.25  # chance is 1/4; a victim of the images is below it
