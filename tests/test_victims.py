"""Victims: each builds a Classifier of the right shape and trains through the Trainer."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ueb.nn import Classifier
from ueb.profile import load_profile
from ueb.registry import get_registry
from ueb.training import Trainer

# Narrow settings keep each architecture to about a second on a 2-core CPU; the architecture
# (depth, blocks, stem) is the real one, only the channel counts shrink.
SMALL = {
    "fastnet": {"stem_width": 8, "widths": [16, 32]},
    "resnet18": {"width": 8},
    "resnet50": {"width": 4},
    "vgg19": {"width": 8},
    "densenet121": {"growth_rate": 4},
    "vit": {"depth": 2, "width": 32, "heads": 4, "mlp_dim": 64},
}
ALL = {"fastnet", "resnet18", "resnet50", "vgg19", "densenet121", "vit"}


def _smoke_trainer(**overrides) -> Trainer:
    cfg = dataclasses.replace(load_profile("smoke").training, **overrides)
    return Trainer(cfg, device="cpu", seed=0)


def test_victims_are_registered():
    names = get_registry().names("victim")
    assert set(names) >= ALL
    for name in ALL:
        cls = get_registry().get("victim", name).load_class()
        assert cls.version and cls.__doc__


@pytest.mark.parametrize("name", sorted(SMALL))
def test_victim_builds_and_trains(name, tiny_set):
    victim = get_registry().create("victim", name, SMALL[name])
    model = victim.build(tiny_set.num_classes, tiny_set.image_size, tiny_set.channels)
    assert isinstance(model, Classifier)
    x = tiny_set.float01()[:3]
    assert model(x).shape == (3, tiny_set.num_classes)
    assert model.features(x).shape == (3, model.feature_dim)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = _smoke_trainer(iterations=4, eval_every=2, batch_size=16)
    result = trainer.fit(model, tiny_set, tiny_set)
    assert result.iterations == 4
    assert [h["step"] for h in result.history] == [2, 4]
    # the numbers are the returned model's: final = its accuracy now, peak = the best evaluation
    assert result.final_acc == pytest.approx(trainer.evaluate(model, tiny_set))
    assert result.history[-1]["acc"] == result.final_acc
    assert result.peak_acc == max(h["acc"] for h in result.history)
    assert all(h["loss"] > 0 for h in result.history)
    changed = sum(
        not torch.equal(a, b.detach().cpu())
        for a, b in zip(before, model.parameters(), strict=True)
    )
    assert changed == len(before)


def test_fastnet_learns_tiny_set(tiny_set):
    victim = get_registry().create("victim", "fastnet", SMALL["fastnet"])
    model = victim.build(tiny_set.num_classes, tiny_set.image_size)
    trainer = _smoke_trainer(
        iterations=100, milestones=(75,), eval_every=100, batch_size=16, lr=0.05
    )
    result = trainer.fit(model, tiny_set, tiny_set)
    assert result.final_acc >= 75.0  # chance is 25%


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_stem_follows_input_size(name):
    victim = get_registry().create("victim", name, {"width": 4})
    cifar = victim.build(10, 32).backbone
    imagenet = victim.build(10, 224).backbone
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, torch.nn.Identity)
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.stride == (2, 2)
    assert isinstance(imagenet.maxpool, torch.nn.MaxPool2d)
    forced = (
        get_registry()
        .create("victim", name, {"width": 4, "stem": "imagenet"})
        .build(10, 32)
        .backbone
    )
    assert forced.conv1.kernel_size == (7, 7)


def test_resnet_width_scales_stages():
    reg = get_registry()
    r18 = reg.create("victim", "resnet18", {"width": 16}).build(10, 32)
    r50 = reg.create("victim", "resnet50", {"width": 16}).build(10, 32)
    assert r18.feature_dim == 8 * 16 and r50.feature_dim == 32 * 16
    assert r18.backbone.layer3[0].conv1.out_channels == 64
    # the paper's ResNet-18 (CIFAR stem, width 64) has 11,173,962 parameters at 10 classes
    full = reg.create("victim", "resnet18").build(10, 32)
    assert sum(p.numel() for p in full.parameters()) == 11_173_962


def test_bad_width_is_one_clear_error():
    from ueb.errors import ConfigError

    with pytest.raises(ConfigError, match="width"):
        get_registry().create("victim", "resnet18", {"width": 0}).build(10, 32)


def test_paper_sizes_at_cifar_scale():
    """Full-width victims match the CIFAR layouts the paper's code bases train (10 classes)."""
    reg = get_registry()

    def count(name: str, **params) -> int:
        model = reg.create("victim", name, params).build(10, 32)
        return sum(p.numel() for p in model.parameters())

    assert count("vgg19") == 20_040_522  # 16 conv-BN layers + linear(512, 10)
    # torchvision's stem keeps a BN+ReLU after the 3x3 conv: 128 parameters more than kuangliu's
    assert count("densenet121") == 6_956_298 + 128
    vit = reg.create("victim", "vit").build(10, 32).backbone
    assert vit.patch_size == 4 and vit.seq_length == 64 + 1 and len(vit.encoder.layers) == 6
    assert vit.hidden_dim == 512


def test_224_inputs_use_torchvision_layouts():
    reg = get_registry()
    dense = reg.create("victim", "densenet121", {"growth_rate": 4}).build(10, 224).backbone
    assert dense.features.conv0.kernel_size == (7, 7)
    assert isinstance(dense.features.pool0, torch.nn.MaxPool2d)
    assert reg.create("victim", "vit", SMALL["vit"]).build(10, 224).backbone.patch_size == 16
    vgg = reg.create("victim", "vgg19", {"width": 8}).build(10, 224)
    assert vgg.feature_dim == 4096
    assert vgg(torch.rand(1, 3, 224, 224)).shape == (1, 10)


def test_vit_rejects_a_patch_that_does_not_tile():
    from ueb.errors import ConfigError

    with pytest.raises(ConfigError, match="patch_size"):
        get_registry().create("victim", "vit", {**SMALL["vit"], "patch_size": 5}).build(10, 32)
