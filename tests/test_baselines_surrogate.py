"""Surrogate-based baselines (EM, EM class-wise, REM, TAP, EntF) at tiny scale.

A tiny conv net stands in for the surrogate (the algorithms are the same at every scale); it is
registered as victim "tiny" in a private registry so the global one stays untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ueb.artifacts import ArtifactStore
from ueb.errors import ConfigError
from ueb.interfaces import RunContext, Victim
from ueb.nn import Classifier
from ueb.profile import load_profile
from ueb.progress import silent
from ueb.registry import Entry, Registry, get_registry, registry_provider
from ueb.testing import make_imageset


class TinyNet(Victim):
    @dataclass(frozen=True)
    class Params:
        width: int = 8

    def build(self, num_classes: int, image_size: int, in_channels: int = 3) -> nn.Module:
        w = self.params.width
        body = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        return Classifier(body, 2 * w, num_classes)


@pytest.fixture(scope="module")
def registry() -> Registry:
    reg = Registry()
    reg.entries["victim"]["tiny"] = Entry(
        "victim", "tiny", TinyNet, "test surrogate", "tests", "tests"
    )
    return reg


def make_ctx(registry: Registry, root, seed: int = 0) -> RunContext:
    return RunContext(
        seed=seed,
        device="cpu",
        training=load_profile("smoke").training,
        artifacts=ArtifactStore(root),
        progress=silent(),
        provider=registry_provider(registry),
    )


@pytest.fixture
def ctx(registry, tmp_path) -> RunContext:
    return make_ctx(registry, tmp_path / "art")


@pytest.fixture(scope="module")
def data():
    return make_imageset(per_class=6, num_classes=4, size=16)


TINY = {
    "em": {"surrogate": "tiny", "max_rounds": 3, "steps": 4, "batch_size": 16, "train_steps": 2},
    "em-class": {
        "surrogate": "tiny",
        "max_rounds": 3,
        "batch_size": 16,
        "train_steps": 2,
        "class_subset": 0.5,
    },
    "rem": {
        "surrogate": "tiny",
        "train_steps": 2,
        "batch_size": 24,
        "samples": 2,
        "steps": 2,
        "atk_steps": 1,
    },
    "tap": {
        "surrogate": "tiny",
        "steps": 4,
        "restarts": 2,
        "clean_iterations": 30,
        "clean_batch_size": 16,
        "tau": 0.5,
    },
    "entf": {
        "surrogate": "tiny",
        "steps": 4,
        "reference_iterations": 10,
        "reference_batch_size": 16,
        "robust_steps": 2,
        "tau": 0.5,
    },
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_budget_range_and_declarations(name, registry, ctx, data):
    poisoner = registry.create("poisoner", name, TINY[name])
    out = poisoner.poison(data, ctx)
    assert out.shape == data.images.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    budget = poisoner.budget()
    assert budget.norm == "linf" and budget.eps == pytest.approx(8 / 255)
    delta = out - data.float01()
    assert float(delta.abs().max()) <= budget.eps + 1e-6
    assert float(delta.abs().max()) > 2 / 255  # the noise is not empty
    assert poisoner.sample_wise == (name != "em-class")


@pytest.mark.parametrize("name", ["em", "em-class", "rem", "tap"])
def test_deterministic_under_a_seed(name, registry, tmp_path, data):
    a = registry.create("poisoner", name, TINY[name]).poison(
        data, make_ctx(registry, tmp_path / "a")
    )
    b = registry.create("poisoner", name, TINY[name]).poison(
        data, make_ctx(registry, tmp_path / "b")
    )
    c = registry.create("poisoner", name, TINY[name]).poison(
        data, make_ctx(registry, tmp_path / "c", seed=1)
    )
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_cached_noise_is_reused(registry, ctx, data):
    first = registry.create("poisoner", "em", TINY["em"]).poison(data, ctx)
    assert list(ctx.artifacts.root.glob("em-noise/*/manifest.json"))
    again = registry.create("poisoner", "em", TINY["em"]).poison(data, ctx)
    assert torch.equal(first, again)


def test_em_samplewise_noise_differs_within_a_class(registry, ctx, data):
    delta = registry.create("poisoner", "em", TINY["em"]).poison(data, ctx) - data.float01()
    for c in range(data.num_classes):
        members = delta[data.labels == c]
        assert float((members[1:] - members[:1]).abs().amax(dim=(1, 2, 3)).min()) > 1 / 255


def test_em_noise_update_is_indexed_by_sample(registry, ctx, data):
    """Shuffling the images shuffles their noise the same way: noise follows the image, not the label."""
    em = registry.create("poisoner", "em", {**TINY["em"], "batch_size": 64})
    from ueb_baselines import surrogate as S

    model = S.build_surrogate(ctx, "tiny", None, data, 0).eval()
    x, y = data.float01(), data.labels
    noise = torch.zeros_like(x)
    em._update_samplewise(model, x, y, noise)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(3))
    shuffled = torch.zeros_like(x)
    em._update_samplewise(model, x[perm], y[perm], shuffled)
    same = (shuffled - noise[perm]).abs() < 1e-6
    assert float(same.float().mean()) > 0.99
    # ... and a label-indexed noise would be constant within a class, which this is not
    assert float((noise[y == 0][1:] - noise[y == 0][:1]).abs().max()) > 1 / 255


def test_em_classwise_noise_is_constant_within_a_class(registry, ctx, data):
    delta = (
        registry.create("poisoner", "em-class", TINY["em-class"]).poison(data, ctx) - data.float01()
    )
    x = data.float01()
    for c in range(data.num_classes):
        idx = data.labels == c
        members, images = delta[idx], x[idx]
        # away from the [0, 1] clipping, every image of the class carries the same noise
        inside = (
            ((images[:1] + members[:1]) > 0)
            & ((images[:1] + members[:1]) < 1)
            & (images > 0.05)
            & (images < 0.95)
        )
        assert torch.allclose(members[inside], members[:1].expand_as(members)[inside], atol=1e-6)
    assert not torch.allclose(delta[data.labels == 0][0], delta[data.labels == 1][0])


def _train_loss(images: torch.Tensor, labels: torch.Tensor, steps: int = 25) -> float:
    torch.manual_seed(7)
    model = TinyNet().build(4, 16)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(steps):
        loss = F.cross_entropy(model(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(F.cross_entropy(model.eval()(images), labels))


def random_sign_noise(x: torch.Tensor, eps: float) -> torch.Tensor:
    """+-eps on every value (the largest random Linf perturbation), seeded, clipped to [0, 1]."""
    gen = torch.Generator().manual_seed(123)
    return (x + eps * (torch.randint(0, 2, x.shape, generator=gen).float() * 2 - 1)).clamp(0, 1)


def test_em_noise_makes_training_easier(registry, ctx, data):
    params = {
        **TINY["em"],
        "max_rounds": 5,
        "steps": 8,
        "train_steps": 3,
        "batch_size": 24,
        "stop_error": 0.0,
    }
    poisoned = registry.create("poisoner", "em", params).poison(data, ctx)
    assert _train_loss(poisoned, data.labels) < 0.8 * _train_loss(data.float01(), data.labels)


def test_tap_moves_surrogate_predictions_to_the_targets(registry, ctx, data):
    params = {**TINY["tap"], "steps": 10, "tau": 0.2, "augment": False}
    tap = registry.create("poisoner", "tap", params)
    poisoned = tap.poison(data, ctx)
    model = tap.clean_surrogate(data, ctx)
    target = tap.target_of(data.labels, data.num_classes)
    assert torch.equal(target, (data.labels + 1) % 4)
    with torch.no_grad():
        clean_logits, poison_logits = model(data.float01()), model(poisoned)
    before = (clean_logits.argmax(1) == target).float().mean()
    after = (poison_logits.argmax(1) == target).float().mean()
    assert float(after) > float(before)
    assert float(F.cross_entropy(poison_logits, target)) < float(
        F.cross_entropy(clean_logits, target)
    )


def test_tap_apbench_preset_is_untargeted(registry, ctx, data):
    tap = registry.create(
        "poisoner", "tap", {**TINY["tap"], "preset": "apbench", "steps": 10, "tau": 0.2}
    )
    poisoned = tap.poison(data, ctx)
    model = tap.clean_surrogate(data, ctx)
    with torch.no_grad():
        clean_loss = F.cross_entropy(model(data.float01()), data.labels)
        poison_loss = F.cross_entropy(model(poisoned), data.labels)
        noise_loss = F.cross_entropy(model(random_sign_noise(data.float01(), 8 / 255)), data.labels)
    # an attack, not any perturbation of the budget: well above random noise at full Linf size
    assert float(poison_loss - clean_loss) > 5 * float(noise_loss - clean_loss)


def test_rem_differs_from_em(registry, ctx, data):
    em = registry.create("poisoner", "em", TINY["em"]).poison(data, ctx)
    rem = registry.create("poisoner", "rem", TINY["rem"]).poison(data, ctx)
    delta = rem - data.float01()
    assert float(delta.abs().max()) <= 8 / 255 + 1e-6
    assert float((rem - em).abs().mean()) > 1 / 255
    # the official noise is stored on the 8-bit grid
    assert torch.allclose(delta * 255, (delta * 255).round(), atol=1e-3)


def test_entf_push_moves_features_away_from_own_centroid(registry, ctx, data):
    entf = registry.create("poisoner", "entf", {**TINY["entf"], "steps": 8, "tau": 0.3})
    poisoned = entf.poison(data, ctx)
    model = entf.reference_model(data, ctx)
    x, y = data.float01(), data.labels
    cents = entf.centroids(model, x, y, data.num_classes)
    with torch.no_grad():
        before = F.mse_loss(model.features(x), cents[y])
        after = F.mse_loss(model.features(poisoned), cents[y])
        noise = F.mse_loss(model.features(random_sign_noise(x, 8 / 255)), cents[y])
    # pushed away from its own centroid much further than random noise of the budget moves it
    assert float(after - before) > 5 * float(noise - before)


def test_unknown_surrogate_is_one_clear_error_before_any_work(registry, ctx, data):
    from ueb.config import RunConfig
    from ueb.plan import resolve

    config = RunConfig(
        poisoners=("em",),
        countermeasures=("vanilla",),
        profile="smoke",
        params={"em": {"surrogate": "no-such-net"}},
    )
    with pytest.raises(ConfigError, match="poisoner 'em' requires unknown victim 'no-such-net'"):
        resolve(config, get_registry())
    with pytest.raises(ConfigError, match="unknown victim 'no-such-net'"):
        registry.create("poisoner", "em", {"surrogate": "no-such-net"}).poison(data, ctx)


def test_bad_parameters_are_rejected(registry):
    with pytest.raises(ConfigError):
        registry.create("poisoner", "em", {"class_subset": 0})
    with pytest.raises(ConfigError):
        registry.create("poisoner", "em", {"mode": "pixel"})
