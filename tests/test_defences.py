"""Defences since 2023 (plugins/ueb_defences): COIN, RSK+FF, UDP's SDA+AN, early stopping."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ueb.errors import ConfigError
from ueb.imageset import ImageSet
from ueb.interfaces import Batch, StepContext
from ueb.profile import TrainingConfig
from ueb.registry import get_registry
from ueb.testing import check_countermeasure, make_imageset, make_run_context, tiny_classifier
from ueb.training import Trainer

NAMES = {"coin": "train", "rsk-ff": "train", "udp-sda": "protocol", "early-stopping": "protocol"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread, as a run's worker uses (tiny models only lose from more)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def step_context(seed: int = 0) -> StepContext:
    return StepContext(0, 10, torch.Generator().manual_seed(seed), torch.nn.Identity())


def batch_of(data: ImageSet) -> Batch:
    return Batch(data.float01().clone(), data.labels.clone())


# --------------------------------------------------------------------------- registration


def test_registered_with_stage_and_plain_threat_model():
    reg = get_registry()
    for name, stage in NAMES.items():
        entry = reg.get("countermeasure", name)
        cls = entry.load_class()
        assert entry.meta.get("stage") == stage == cls.stage
        assert cls.threat.tags() == []  # only the poisoned training set is used
        assert set(cls.presets) >= {"smoke", "quick"}


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("coin", {"alpha": -1}),
        ("rsk-ff", {"ff_percentage": 0}),
        ("udp-sda", {"eps": 2.0}),
        ("early-stopping", {"holdout_fraction": 1.0}),
    ],
)
def test_out_of_range_parameters_are_rejected(name, bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        get_registry().create("countermeasure", name, bad)


@pytest.mark.parametrize("name", sorted(NAMES))
def test_conformance_at_smoke_scale(name, tmp_path):
    cls = get_registry().get("countermeasure", name).load_class()
    result = check_countermeasure(cls, params=cls.presets["smoke"], workdir=tmp_path)
    assert result.iterations > 0


# --------------------------------------------------------------------------- COIN


def test_coin_displacement_matches_scipy_wrap_interpolation():
    from scipy.ndimage import map_coordinates
    from ueb_defences.coin import displace

    gen = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 9, 7, generator=gen)
    dy = (torch.rand(2, 9, 7, generator=gen) * 2 - 1) * 2.0
    dx = (torch.rand(2, 9, 7, generator=gen) * 2 - 1) * 2.0
    out = displace(x, dy, dx)
    yy, xx = np.meshgrid(np.arange(9), np.arange(7), indexing="ij")
    for b in range(2):
        for c in range(3):
            ref = map_coordinates(
                x[b, c].numpy(), [yy + dy[b].numpy(), xx + dx[b].numpy()], order=1, mode="wrap"
            )
            np.testing.assert_allclose(out[b, c].numpy(), np.clip(ref, 0, 1), atol=1e-5)


def test_coin_moves_pixels_within_alpha_and_keeps_labels():
    cm = get_registry().create("countermeasure", "coin")
    assert cm.params.alpha == 2.0
    data = make_imageset(per_class=4, num_classes=4, size=16)
    batch = batch_of(data)
    out = cm.augment(batch, step_context(0))
    assert torch.equal(out.y, data.labels) and out.y2 is None and out.lam is None
    assert out.x.shape == batch.x.shape and not torch.equal(out.x, batch.x)
    assert torch.equal(torch.round(out.x * 255), out.x * 255)  # truncated to 8 bits
    # a horizontal ramp of slope 1/255 per column: every interior value moves by < alpha levels
    ramp = torch.arange(16.0).div(255).expand(1, 3, 16, 16).clone() + 0.2
    moved = cm.augment(Batch(ramp, torch.zeros(1, dtype=torch.long)), step_context(1)).x
    interior = (moved - ramp)[..., 3:-3, 3:-3].abs() * 255
    assert float(interior.max()) <= 2.0 + 1.0  # alpha plus one level of truncation
    assert float(interior.max()) >= 1.0  # and the pixels did move
    # channels share one displacement field: a grey image stays grey
    assert torch.equal(moved[:, 0], moved[:, 1]) and torch.equal(moved[:, 1], moved[:, 2])


def test_coin_zero_alpha_is_identity_and_draws_come_from_the_step_generator():
    data = make_imageset(per_class=2, num_classes=4, size=16)
    still = get_registry().create("countermeasure", "coin", {"alpha": 0.0})
    assert torch.equal(still.augment(batch_of(data), step_context()).x, data.float01())
    cm = get_registry().create("countermeasure", "coin")
    a = cm.augment(batch_of(data), step_context(5)).x
    b = cm.augment(batch_of(data), step_context(5)).x
    c = cm.augment(batch_of(data), step_context(6)).x
    assert torch.equal(a, b) and not torch.equal(a, c)


# --------------------------------------------------------------------------- RSK + FF


def test_dct_matrix_is_orthonormal_and_low_pass_keeps_constants():
    from ueb_defences.rsk import dct_low_pass, dct_matrix

    d = dct_matrix(30)
    torch.testing.assert_close(d @ d.t(), torch.eye(30), atol=1e-5, rtol=0)
    flat = torch.full((1, 3, 30, 30), 0.4)
    torch.testing.assert_close(dct_low_pass(flat, 30), flat, atol=1e-5, rtol=0)


def test_rsk_ff_removes_a_planted_high_frequency_pattern():
    cm = get_registry().create("countermeasure", "rsk-ff")
    size = 32
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    smooth = (0.5 + 0.2 * torch.sin(2 * torch.pi * xx / size)).expand(1, 3, size, size)
    checker = ((-1.0) ** (yy + xx)).expand(1, 3, size, size) * (8 / 255)
    y = torch.zeros(1, dtype=torch.long)
    clean_out = cm.augment(Batch(smooth.clone(), y), step_context(2)).x
    poisoned_out = cm.augment(Batch((smooth + checker).clone(), y), step_context(2)).x
    planted = float((checker[..., 1:-1, 1:-1] ** 2).sum())
    left = float(((poisoned_out - clean_out)[..., 1:-1, 1:-1] ** 2).sum())
    assert left < 0.01 * planted  # < 1% of the pattern's energy survives
    assert float((clean_out[..., 1:-1, 1:-1] - smooth[..., 1:-1, 1:-1]).abs().mean()) < 0.05
    # the frame the valid 3x3 convolution leaves is zero; labels are untouched
    assert float(poisoned_out[..., 0, :].abs().max()) == 0.0


def test_rsk_kernels_follow_the_official_distribution():
    from ueb_defences.rsk import random_sharpen_kernels

    k = random_sharpen_kernels(20000, 2.5, 0.1, True, torch.Generator().manual_seed(0))
    centre = k[:, 1, 1]
    assert abs(float(centre.mean()) - 2.5) < 0.005 and abs(float(centre.std()) - 0.1) < 0.005
    neighbours = -torch.stack([k[:, 0, 1], k[:, 1, 0], k[:, 1, 2], k[:, 2, 1]], 1)
    residual = neighbours - ((centre - 1) / 4).unsqueeze(1)
    assert abs(float(residual.mean())) < 0.005 and abs(float(residual.std()) - 0.1) < 0.005
    assert float(k[:, 0, 0].abs().max()) == 0.0  # a cross: the corners stay zero
    fixed = random_sharpen_kernels(3, 2.5, 0.1, False, torch.Generator())
    torch.testing.assert_close(fixed.sum((1, 2)), torch.ones(3))


# --------------------------------------------------------------------------- UDP SDA + AN


def test_udp_pgd_stays_in_the_ball_and_raises_the_loss():
    from ueb_defences.udp import TwoLayerNet, pgd_linf

    torch.manual_seed(0)
    net = TwoLayerNet(3 * 8 * 8, 16, 4)
    x = torch.rand(8, 3, 8, 8)
    y = torch.arange(8) % 4
    adv = pgd_linf(net, x, y, 8 / 255, 10, 1 / 255)
    assert float((adv - x).abs().max()) <= 8 / 255 + 1e-6 and float(adv.min()) >= 0
    loss = torch.nn.functional.cross_entropy
    with torch.no_grad():
        assert float(loss(net(adv), y)) > float(loss(net(x), y))


def test_udp_noise_is_bounded_cached_and_keeps_labels(tmp_path, monkeypatch):
    cls = get_registry().get("countermeasure", "udp-sda").load_class()
    cm = get_registry().create("countermeasure", "udp-sda", cls.presets["smoke"])
    data = make_imageset(per_class=6, num_classes=4, size=8)
    ctx = make_run_context(tmp_path, seed=0)
    noisy = cm.noisy_set(data, ctx)
    diff = noisy.images.int() - data.images.int()
    assert noisy.images.dtype == torch.uint8 and torch.equal(noisy.labels, data.labels)
    assert int(diff.abs().max()) <= 8 and int(diff.abs().sum()) > 0
    monkeypatch.setattr(type(cm), "train_net", lambda *a: pytest.fail("the artifact was rebuilt"))
    again = type(cm)(cm.params, name=cm.name).noisy_set(data, ctx)
    assert torch.equal(again.images, noisy.images)
    other = type(cm)(cm.params, name=cm.name)
    monkeypatch.undo()
    assert not torch.equal(
        other.noisy_set(data, make_run_context(tmp_path, seed=1)).images, noisy.images
    )


def test_udp_stronger_augmentation_strength():
    data = make_imageset(per_class=2, num_classes=4, size=16)
    weak = get_registry().create("countermeasure", "udp-sda", {"strength": 0.0})
    assert torch.equal(weak.augment(batch_of(data), step_context()).x, data.float01())
    strong = get_registry().create("countermeasure", "udp-sda")
    a = strong.augment(batch_of(data), step_context(4))
    b = strong.augment(batch_of(data), step_context(4))
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, data.float01())
    assert a.x.shape == data.images.shape and float(a.x.min()) >= 0 and float(a.x.max()) <= 1
    assert torch.equal(a.y, data.labels)


# --------------------------------------------------------------------------- early stopping

ES_TRAINING = TrainingConfig(
    iterations=240, batch_size=16, lr=0.05, milestones=(), eval_every=0, eval_batch_size=256,
    precision="fp32", channels_last=False, crop_padding=0, flip=False,
)  # fmt: skip


def shortcut_poison(data: ImageSet) -> ImageSet:
    """A class-wise shortcut far easier than the images: class k brightens row band k."""
    x = data.float01().clone()
    for k in range(data.num_classes):
        x[data.labels == k, :, 4 * k : 4 * k + 4, :] = 1.0
    return data.with_images(x)


def fit_early_stopping(train: ImageSet, test: ImageSet, tmp_path, patience: int = 5):
    cm = get_registry().create("countermeasure", "early-stopping", {"patience": patience})
    torch.manual_seed(0)
    model = tiny_classifier(train.num_classes, train.channels)
    ctx = make_run_context(tmp_path, seed=0, training=ES_TRAINING)
    return cm.fit(model, train, test, Trainer(ES_TRAINING, "cpu", seed=0), ctx)


@pytest.fixture(scope="module")
def shortcut_runs(tmp_path_factory):
    """Early stopping on a shortcut poison, scored on a test set carrying the shortcut with its
    labels and with the same labels shuffled."""
    train = shortcut_poison(make_imageset(per_class=40, num_classes=4, size=16, seed=0))
    test = shortcut_poison(make_imageset(per_class=8, num_classes=4, size=16, seed=1))
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(9))
    shuffled = dataclasses.replace(test, labels=test.labels[order])
    root = tmp_path_factory.mktemp("early-stopping")
    return fit_early_stopping(train, test, root / "a"), fit_early_stopping(
        train, shuffled, root / "b"
    )


def test_early_stopping_stops_before_the_end_on_a_shortcut_poison(shortcut_runs):
    result, _ = shortcut_runs
    extra = result.extra
    assert extra["stopped_early"] and extra["stopped_at"] < ES_TRAINING.iterations
    assert extra["chosen_step"] <= extra["stopped_at"] == result.iterations
    checks = [h for h in result.history if "heldout_acc" in h]
    assert max(h["heldout_acc"] for h in checks) == 100.0  # the shortcut saturates the check
    # the patience rule: exactly `patience` checks after the chosen one, none of them better
    after = [h for h in checks if h["step"] > extra["chosen_step"]]
    assert len(after) == 5
    best = next(h for h in checks if h["step"] == extra["chosen_step"])["heldout_acc"]
    assert all(h["heldout_acc"] <= best for h in after)
    assert extra["heldout_images"] == 16 and extra["fit_images"] == 144
    assert result.final_acc == result.peak_acc == result.history[-1]["acc"]


def test_early_stopping_never_reads_test_labels(shortcut_runs):
    a, b = shortcut_runs
    assert a.extra["chosen_step"] == b.extra["chosen_step"]
    assert a.extra["stopped_at"] == b.extra["stopped_at"]
    assert a.history[:-1] == b.history[:-1]  # every held-out check identical
    assert a.final_acc > b.final_acc  # the test labels do change what is reported


def test_holdout_split_is_stratified_disjoint_and_seeded():
    from ueb_defences.holdout import holdout_split

    data = make_imageset(per_class=10, num_classes=4, size=8)
    fit, held = holdout_split(data, 0.2, seed=0)
    assert len(fit) + len(held) == len(data) and len(held) == 8
    assert torch.bincount(held.labels, minlength=4).tolist() == [2, 2, 2, 2]
    fps = {fit.subset([i]).fingerprint() for i in range(len(fit))}
    assert not fps & {held.subset([i]).fingerprint() for i in range(len(held))}
    _, other = holdout_split(data, 0.2, seed=1)
    assert not torch.equal(other.images, held.images)


def test_coin_wraps_edge_coordinates_as_scipy_does():
    from scipy.ndimage import map_coordinates
    from ueb_defences.coin import displace

    x = torch.arange(5.0).pow(2).add(1).div(30).view(1, 1, 1, 5)
    shifts = torch.tensor([0.0, -4.0, 8.0, -0.5, 4.5, -2.0, 3.0])
    for s in shifts.tolist():
        dx = torch.full((1, 1, 5), s)
        got = displace(x, torch.zeros(1, 1, 5), dx)[0, 0, 0]
        ref = map_coordinates(
            x[0, 0].numpy(), [np.zeros(5), np.arange(5) + s], order=1, mode="wrap"
        )
        np.testing.assert_allclose(got.numpy(), ref, atol=1e-6)
