"""Poisoners since 2023 (ueb_attacks_modern): CUDA, SEM, AUE, AAP, GUE.

Every registered name passes the conformance kit at smoke scale in tests/test_conformance.py;
here: the variants that walk does not reach, and each method's defining property on small
data with fixed tiny models.
"""

from __future__ import annotations

import dataclasses
import typing

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ueb_attacks_modern.aap import AugmentedAdversarialPoisoning
from ueb_attacks_modern.aue import AugmentedUnlearnable
from ueb_attacks_modern.certification import (
    binomial_cdf,
    certified_index,
    certify,
    smoothed_accuracies,
)
from ueb_attacks_modern.contrastive_augment import ContrastiveAugment
from ueb_attacks_modern.cuda import ConvolutionBasedUnlearnable, draw_filters
from ueb_attacks_modern.gue import GameTheoreticUnlearnable, leader_loss
from ueb_attacks_modern.pue import ProvablyUnlearnable, WeightNoise
from ueb_attacks_modern.schedule import cosine_factor
from ueb_attacks_modern.sem import StableErrorMinimizing
from ueb_attacks_modern.unet import PerturbationUNet

from ueb.errors import ConfigError
from ueb.imageset import ImageSet
from ueb.params import bounds_of, parse_params
from ueb.registry import get_registry
from ueb.testing import check_poisoner, make_imageset, make_run_context, tiny_classifier

NAMES = ["cuda", "sem", "aue", "aap", "aap-untargeted", "gue", "pue"]
FAMILIES = {"error-minimising", "error-maximising", "surrogate-free", "generative", "contrastive"}


def build(cls, **values):
    return cls(parse_params(cls.Params, values, where=cls.__name__))


@pytest.fixture(scope="module")
def small():
    """16x16 data and a tiny classifier trained on it for a few steps (input-sensitive, fixed)."""
    data = make_imageset(per_class=4, num_classes=4, size=16)
    x, y = data.float01(), data.labels
    torch.manual_seed(0)
    model = tiny_classifier(4)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval().requires_grad_(False)
    return x, y, model


# --------------------------------------------------------------------------- registration


@pytest.mark.parametrize("name", NAMES)
def test_registered_with_a_family_and_every_number_bounded(name):
    entry = get_registry().get("poisoner", name)
    assert entry.meta.get("family") in FAMILIES
    assert entry.distribution == "ueb"
    params = entry.load_class().Params
    hints = typing.get_type_hints(params)
    for f in dataclasses.fields(params):
        numeric = {int, float} & set(typing.get_args(hints[f.name]) or (hints[f.name],))
        if numeric and hints[f.name] is not bool:
            assert bounds_of(f) is not None, f"{name}.{f.name} has no declared range"


@pytest.mark.parametrize(
    ("cls", "values"),
    [
        (ConvolutionBasedUnlearnable, {"kernel_size": 4}),
        (ConvolutionBasedUnlearnable, {"blur_parameter": 0}),
        (StableErrorMinimizing, {"random_eps": -1 / 255}),
        (AugmentedUnlearnable, {"strength": 1.5}),
        (AugmentedAdversarialPoisoning, {"ref_warmup": 50, "ref_epochs": 40}),
        (GameTheoreticUnlearnable, {"batch_size": 1}),
        (ProvablyUnlearnable, {"cert_q": 1.0}),
        (ProvablyUnlearnable, {"cert_etas": [0.5, 0.0]}),
    ],
)
def test_out_of_range_settings_are_rejected_before_any_work(cls, values):
    with pytest.raises(ConfigError):
        parse_params(cls.Params, values, where=cls.__name__)


# --------------------------------------------------------------------------- CUDA


def test_cuda_filters_are_the_official_draw():
    f = draw_filters(10, 3, 3, 0.3, 1.0, independent_channels=False, seed=0)
    rng = np.random.RandomState(0)  # the official code's generator and order, class 0
    first = rng.uniform(low=0, high=0.3, size=(3, 1, 3, 3))
    first[0, 0, rng.randint(3), rng.randint(3)] = 1.0
    assert torch.allclose(f[0, 0], torch.from_numpy(first[0]).float())
    for k in range(10):
        assert torch.equal(f[k, 0], f[k, 1]) and torch.equal(f[k, 0], f[k, 2])
        assert int((f[k, 0] == 1.0).sum()) == 1  # one centre entry, the rest in [0, 0.3)
        rest = f[k, 0][f[k, 0] != 1.0]
        assert float(rest.min()) >= 0 and float(rest.max()) < 0.3
    independent = draw_filters(4, 3, 5, 0.3, 1.0, independent_channels=True, seed=0)
    assert not torch.equal(independent[0, 0], independent[0, 1])
    assert all(int((independent[k, c] == 1.0).sum()) == 1 for k in range(4) for c in range(3))


def test_cuda_convolves_each_class_with_one_filter(tmp_path):
    base = make_imageset(per_class=2, num_classes=2, seed=3)
    x = base.float01().clone()
    x[1] = x[0] * 0.5  # same content, class 0, half the brightness
    x[2] = x[0]  # same content, class 1
    images = ImageSet((x * 255).round().to(torch.uint8), base.labels, base.classes, "t")
    images = images.with_images(x)
    poisoner = build(ConvolutionBasedUnlearnable)
    out = poisoner.poison(images, make_run_context(tmp_path))
    assert out.dtype == torch.uint8
    # convolution is linear and the result is divided by its maximum: scale drops out
    assert int((out[0].int() - out[1].int()).abs().max()) <= 1
    assert int((out[0].int() - out[2].int()).abs().max()) > 8  # class 1 has another filter
    assert out.flatten(1).amax(1).tolist() == [255] * len(out)  # every image peaks at white


def test_cuda_seed_is_the_key_and_variants_conform(tmp_path):
    data = make_imageset(per_class=5, num_classes=4)
    a = build(ConvolutionBasedUnlearnable).poison(data, make_run_context(tmp_path, seed=0))
    b = build(ConvolutionBasedUnlearnable).poison(data, make_run_context(tmp_path, seed=1))
    assert not torch.equal(a, b)
    grey = check_poisoner(
        ConvolutionBasedUnlearnable, params={"grayscale": True, "channel_filters": "independent"}
    )
    assert torch.equal(grey.images[:, 0], grey.images[:, 1]) and torch.equal(
        grey.images[:, 0], grey.images[:, 2]
    )
    assert build(ConvolutionBasedUnlearnable).budget().norm == "unbounded"


# --------------------------------------------------------------------------- SEM


def test_sem_inner_point_is_random_noise_in_the_rho_ball():
    sem = build(StableErrorMinimizing)
    view = torch.full((4, 3, 8, 8), 0.5)
    gen = torch.Generator().manual_seed(0)
    a, b = sem.random_point(view, gen), sem.random_point(view, gen)
    assert float((a - view).abs().max()) <= 4 / 255 + 1e-7
    assert float((a - view).abs().max()) > 3 / 255  # it fills the ball, not a tiny jitter
    assert not torch.equal(a, b)  # fresh noise per draw, not an adversarial optimum
    edge = sem.random_point(torch.ones(2, 3, 8, 8), gen)
    assert float(edge.max()) <= 1.0


def test_sem_defensive_noise_lowers_the_loss_it_is_stable_against(small):
    x, y, model = small
    sem = build(StableErrorMinimizing, samples=2)
    delta = sem.defensive_noise(model, x, y, torch.Generator().manual_seed(0))
    assert float(delta.abs().max()) <= 8 / 255 + 1e-7
    assert float((x + delta).min()) >= 0 and float((x + delta).max()) <= 1
    with torch.no_grad():
        assert F.cross_entropy(model(x + delta), y) < F.cross_entropy(model(x), y) - 0.05


# --------------------------------------------------------------------------- AUE / AAP


def test_contrastive_views_are_seeded_differentiable_and_leave_the_global_rng_alone():
    aug = ContrastiveAugment(0.6, 16)
    x = torch.rand(6, 3, 16, 16, requires_grad=True)
    before = torch.random.get_rng_state()
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    c = aug(x, torch.Generator().manual_seed(2))
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(a, b) and not torch.equal(a, c)
    (grad,) = torch.autograd.grad(a.sum(), [x])
    assert float(grad.abs().sum()) > 0
    grey = aug(torch.rand(2, 1, 16, 16), torch.Generator().manual_seed(0))
    assert grey.shape == (2, 1, 16, 16)


def test_cosine_schedule_matches_the_official_factor():
    assert cosine_factor(0, 60, 1e-5) == 1.0
    assert cosine_factor(30, 60, 0.0) == pytest.approx(0.5)
    assert cosine_factor(60, 60, 1e-5) == pytest.approx(1e-5)
    assert [cosine_factor(e, 40, 0.0, warmup=10) for e in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert cosine_factor(10, 40, 0.0, warmup=10) == 1.0


def test_aue_noise_minimises_the_loss_on_augmented_views(small):
    x, y, model = small
    aue = build(AugmentedUnlearnable)
    aug = ContrastiveAugment(0.6, 16)
    noise = torch.zeros_like(x)
    aue.error_minimising(
        model, x, y, noise, torch.arange(len(x)), aug, torch.Generator().manual_seed(0)
    )
    assert float(noise.abs().max()) <= 8 / 255 + 1e-7
    with torch.no_grad():
        views = torch.Generator().manual_seed(5)
        poisoned = F.cross_entropy(model(aug(x + noise, views)), y)
        views = torch.Generator().manual_seed(5)
        clean = F.cross_entropy(model(aug(x, views)), y)
    assert poisoned < clean - 0.05


def test_aue_class_wise_variant_conforms():
    data = make_imageset(per_class=5, num_classes=4, size=16)
    params = {**AugmentedUnlearnable.presets["smoke"], "mode": "class"}
    poison = check_poisoner(AugmentedUnlearnable, params=params, data=data)
    assert poison.images.dtype == torch.uint8


@pytest.mark.parametrize("targeted", [True, False])
def test_aap_moves_the_reference_towards_the_target_or_away_from_the_label(targeted, small):
    x, y, model = small
    aap = build(AugmentedAdversarialPoisoning, perturb_iters=10, targeted=targeted)
    goal = (y + 1) % 4 if targeted else y
    views = aap.views("augmented", 0.4, 16)
    delta = aap.attack(model, x, goal, views, torch.Generator().manual_seed(0))
    assert float(delta.abs().max()) <= 8 / 255 + 1e-7
    with torch.no_grad():
        after, before = F.cross_entropy(model(x + delta), goal), F.cross_entropy(model(x), goal)
    assert (after < before - 0.05) if targeted else (after > before + 0.05)


def test_aap_rejects_a_shift_that_maps_classes_onto_themselves(tmp_path):
    aap = build(AugmentedAdversarialPoisoning, label_shift=4)
    with pytest.raises(ConfigError, match="label_shift"):
        aap.poison(make_imageset(per_class=2, num_classes=4), make_run_context(tmp_path))


# --------------------------------------------------------------------------- GUE


def test_gue_leader_loss_is_the_worst_wrong_class_cross_entropy():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    y = torch.tensor([0, 2])
    logp = logits.log_softmax(1)
    expected = (-logp[0, 2] + -logp[1, 0]) / 2  # the least likely wrong class of each row
    assert float(leader_loss(logits, y)) == pytest.approx(float(expected))


@pytest.mark.parametrize("size", [16, 28, 30])
def test_gue_generator_keeps_the_shape_within_the_unit_ball(size):
    torch.manual_seed(0)
    gen = PerturbationUNet(3, width=4)
    with torch.no_grad():
        out = gen(torch.rand(2, 3, size, size))
    assert out.shape == (2, 3, size, size)
    assert float(out.abs().max()) < 1


def test_gue_bome_step_moves_both_players_with_a_nonnegative_multiplier():
    data = make_imageset(per_class=3, num_classes=4, size=16)
    x, y = data.float01(), data.labels
    torch.manual_seed(0)
    cls, gen = tiny_classifier(4), PerturbationUNet(3, width=4)
    gue = build(GameTheoreticUnlearnable, inner_steps=2)
    before_cls = [p.detach().clone() for p in cls.parameters()]
    before_gen = [p.detach().clone() for p in gen.parameters()]
    stats = gue._bome_step(
        gen,
        cls,
        torch.optim.SGD(gen.parameters(), lr=0.1),
        torch.optim.SGD(cls.parameters(), lr=0.01),
        x,
        y,
    )
    assert stats["lambda"] >= 0
    assert any(not torch.equal(a, b) for a, b in zip(before_cls, cls.parameters(), strict=True))
    moved_gen = any(
        not torch.equal(a, b) for a, b in zip(before_gen, gen.parameters(), strict=True)
    )
    assert moved_gen == (stats["lambda"] > 0)


# --------------------------------------------------------------------------- PUE


def test_binomial_cdf_is_exact():
    assert binomial_cdf(0, 3, 0.5) == pytest.approx(1 / 8)
    assert binomial_cdf(1, 3, 0.5) == pytest.approx(4 / 8)
    assert binomial_cdf(3, 3, 0.5) == 1.0 and binomial_cdf(-1, 3, 0.5) == 0.0
    assert binomial_cdf(899, 1000, 0.9) == pytest.approx(0.4734, abs=5e-4)  # symmetric-ish centre


def test_certificate_follows_the_official_rule():
    # q_upper = Phi(Phi^-1(0.9) + eta / sigma); the bound is the smallest k with BinomCDF(k-1) > 0.99
    k = certified_index(1000, 0.9, 0.001, 0.25, 0.99)
    assert k is not None and 920 <= k <= 925  # 900 + 2.33 * sqrt(90) draws, give or take the step
    assert certified_index(20, 0.9, 0.001, 0.25, 0.99) is None  # 20 draws cannot reach 99%
    assert certified_index(1000, 0.9, 2.0, 0.25, 0.99) is None  # q_upper ~ 1: abstain
    scores = [float(v) for v in range(1000)]
    bounds = certify(scores, 0.9, (0.001, 0.05, 0.1, 2.0), 0.25, 0.99)
    assert bounds["0.001"] == float(k)
    assert bounds["0.001"] <= bounds["0.05"] <= bounds["0.1"] and bounds["2"] is None


def test_weight_noise_levels_and_restoration():
    pue = build(ProvablyUnlearnable)
    assert pue.levels == pytest.approx(
        [0.0, 0.05, 0.1, 0.15, 0.2, 0.25]
    )  # int(0.25 / 0.05) + 1 levels
    torch.manual_seed(0)
    model = tiny_classifier(4)
    before = [p.detach().clone() for p in model.parameters()]
    gen = torch.Generator().manual_seed(0)
    with WeightNoise(model, 0.25, gen):
        moved = [p.detach().clone() for p in model.parameters()]
    assert any(not torch.allclose(a, b) for a, b in zip(before, moved, strict=True))
    assert all(
        torch.allclose(a, b, atol=1e-6) for a, b in zip(before, model.parameters(), strict=True)
    )
    restored = [p.detach().clone() for p in model.parameters()]
    scores = smoothed_accuracies(model, lambda m: float(m.head.weight.sum()), 0.1, 5, gen)
    assert len(scores) == 5 and len(set(scores)) == 5
    assert all(torch.equal(a, b) for a, b in zip(restored, model.parameters(), strict=True))


def test_pue_reports_its_certificate_and_is_class_wise(tmp_path):
    data = make_imageset(per_class=5, num_classes=4, size=16)
    pue = build(ProvablyUnlearnable, **ProvablyUnlearnable.presets["smoke"])
    out = pue.poison(data, make_run_context(tmp_path, owner=pue))
    facts = pue.report()
    assert set(facts["certified_learnability"]) == {f"{e:g}" for e in pue.params.cert_etas}
    cert = facts["certification"]
    assert cert["draws"] == 50 and cert["q"] == 0.9 and cert["sigma"] == 0.25
    assert facts["certified_learnability"]["0.001"] is not None  # 50 draws certify small eta
    assert 0 <= facts["certified_learnability"]["0.001"] <= 100
    d = out - data.float01()
    assert float(d.abs().max()) <= 8 / 255 + 1e-6
    again = build(ProvablyUnlearnable, **ProvablyUnlearnable.presets["smoke"])
    again.poison(data, make_run_context(tmp_path, owner=again))
    assert again.report() == facts  # the certificate comes back with the cached poison


def test_pue_robust_steps_train_and_perturb_through_weight_noise(small):
    x, y, model = small
    pue = build(ProvablyUnlearnable, robust_noise=0.1, weight_draws=2, perturb_draws=2)
    assert len(pue.levels) == 3
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y)
    delta = pue.noise_update(model, x, y, torch.zeros_like(x), robust=True, gen=gen)
    assert float(delta.abs().max()) <= 8 / 255 + 1e-7
    with torch.no_grad():
        assert F.cross_entropy(model((x + delta).clamp(0, 1)), y) < clean  # 3 signed steps downhill
    torch.manual_seed(1)
    net = tiny_classifier(4)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before = [p.detach().clone() for p in net.parameters()]
    pue.robust_step(net, opt, x, y, gen)
    after = list(net.parameters())
    assert all(bool(torch.isfinite(p).all()) for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
