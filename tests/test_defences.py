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

NAMES = {
    "coin": "train",
    "rsk-ff": "train",
    "udp-sda": "protocol",
    "early-stopping": "protocol",
    "d-vae": "data",
}


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
        ("d-vae", {"perturbation_start": 1.5}),
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


# --------------------------------------------------------------------------- D-VAE

# Tensor names of the official ResNetDVAE (stem_end_block=7, spatial class embedding) that the
# purifier uses; an official model_s*.pth must load into ours by these names.
OFFICIAL_DVAE_KEYS = {
    "conv1.weight": (64, 3, 3, 3),
    "bn1.running_mean": (64,),
    "layer1.1.conv2.weight": (64, 64, 3, 3),
    "layer2.0.shortcut.0.weight": (128, 64, 1, 1),
    "fc_mu.weight": (256, 128, 1, 1),
    "fc_var.bias": (256,),
    "post_conv.weight": (128, 256, 1, 1),
    "decoder1.0.weight": (128, 64, 4, 4),
    "decoder.2.0.weight": (32, 3, 3, 3),
    "emb_p.weight": (10, 128 * 16 * 16),
    "decoder_p3.0.weight": (32, 3, 3, 3),
}


def dvae(params=None):
    cls = get_registry().get("countermeasure", "d-vae").load_class()
    return get_registry().create(
        "countermeasure", "d-vae", {**cls.presets["smoke"], **(params or {})}
    )


def test_dvae_network_has_the_official_layout():
    from ueb_defences.dvae_net import DVAE

    net = DVAE(num_classes=10, image_size=32, channels=3, width=64, latent_dim=256)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert {k: shapes.get(k) for k in OFFICIAL_DVAE_KEYS} == OFFICIAL_DVAE_KEYS
    assert not any(k.startswith(("layer3", "layer4", "linear")) for k in shapes)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        rec, mu, _, pert = net.eval()(torch.rand(2, 3, 32, 32), torch.tensor([0, 9]), gen)
    assert rec.shape == pert.shape == (2, 3, 32, 32) and mu.shape == (2, 256, 16, 16)
    assert float(rec.min()) >= 0 and float(rec.max()) <= 1  # sigmoid output; pert is unbounded


def test_dvae_loss_holds_the_rate_at_its_target_and_adds_the_perturbation_term_late():
    cm = dvae({"epochs": 60, "kld_target_stage1": 1e6})
    data = make_imageset(per_class=2, num_classes=4, size=16)
    net = cm.build(data, seed=0).eval()
    x, y = data.float01(), data.labels

    def at(epoch: int) -> float:
        return float(cm.vae_loss(net, x, y, epoch, 1, torch.Generator().manual_seed(1)).detach())

    with torch.no_grad():
        rec, _, _, pert = net(x, y, torch.Generator().manual_seed(1))
    mse = torch.nn.functional.mse_loss
    plain = float(mse(rec, x) + mse((rec + pert).clamp(0, 1), x)) + 0.01 * 1e6
    assert at(10) == pytest.approx(plain, rel=1e-6)  # KL below target: the target counts
    extra = max(float(pert.pow(2).mean()), 0.002)
    assert at(11) == pytest.approx(plain + extra, rel=1e-6)  # from epoch 11 of 60


def test_dvae_purifies_in_two_stages_and_reuses_its_networks(tmp_path, monkeypatch):
    cm = dvae()
    data = make_imageset(per_class=4, num_classes=4, size=16)
    ctx = make_run_context(tmp_path, seed=0)
    out = cm.transform_train_set(data, ctx)
    assert out.images.dtype == torch.uint8 and torch.equal(out.labels, data.labels)
    assert [s.split(":")[0] for s in out.meta["dvae_models"]] == ["trained", "trained"]
    assert not torch.equal(out.images, data.images)
    monkeypatch.setattr(type(cm), "train_network", lambda *a: pytest.fail("retrained"))
    again = type(cm)(cm.params, name=cm.name).transform_train_set(data, ctx)
    assert torch.equal(again.images, out.images)
    # stage 1 keeps clip(x - p); stage 2 keeps the reconstruction of clip(x1 - p)
    from ueb_defences.dvae import truncate_to_8bit

    net1, _ = cm.network(data, 1, ctx)
    x1 = cm.purify(net1, data, 1, ctx)
    net2, _ = cm.network(dataclasses.replace(data, images=x1), 2, ctx)
    assert torch.equal(cm.purify(net2, dataclasses.replace(data, images=x1), 2, ctx), out.images)
    gen = torch.Generator().manual_seed(ctx.seed + 104729 * 2)
    x, y = x1.float() / 255, data.labels
    with torch.no_grad():
        pert = net2.eval()(x, y, gen)[3]
        rec = net2((x - pert).clamp(0, 1), y, gen)[0]
    assert torch.equal(truncate_to_8bit(rec), out.images)


def test_dvae_loads_official_checkpoints_and_rejects_bad_ones(tmp_path):
    from ueb_defences.dvae_net import DVAE

    data = make_imageset(per_class=4, num_classes=4, size=16)
    torch.manual_seed(3)
    official = DVAE(4, 16, 3, width=8, latent_dim=16)
    state = {f"module.{k}": v for k, v in official.state_dict().items()}
    state["module.linear.weight"] = torch.zeros(4, 64)  # classifier branch: ignored
    for stage in (0, 1):
        torch.save({"model_state_dict": state}, tmp_path / f"model_s{stage}.pth")
    paths = {"checkpoint_stage1": str(tmp_path / "model_s0.pth"),
             "checkpoint_stage2": str(tmp_path / "model_s1.pth")}  # fmt: skip
    cm = dvae(paths)
    cm.preflight()
    ctx = make_run_context(tmp_path / "run", seed=0)
    net, source = cm.network(data, 1, ctx)
    assert source.startswith("checkpoint:")
    for k, v in official.state_dict().items():
        assert torch.equal(net.state_dict()[k], v)
    out = cm.transform_train_set(data, ctx)
    assert out.meta["dvae_models"][1] == f"checkpoint:{paths['checkpoint_stage2']}"
    assert not (tmp_path / "run" / "artifacts" / "dvae").exists()  # nothing was trained
    with pytest.raises(ConfigError, match="does not fit"):
        dvae({**paths, "width": 16}).network(data, 1, ctx)
    with pytest.raises(ConfigError, match="checkpoint_stage1"):
        dvae({"checkpoint_stage1": str(tmp_path / "absent.pth")}).preflight()


def test_dvae_training_resumes_from_its_last_epoch(tmp_path, monkeypatch):
    import ueb.atomic

    cm = dvae({"epochs": 2})
    data = make_imageset(per_class=4, num_classes=4, size=16)
    ctx = make_run_context(tmp_path, seed=0)
    whole = cm.train_network(data, 1, ctx, tmp_path / "whole").state_dict()

    real_save = ueb.atomic.save_torch

    class Interrupted(Exception):
        pass

    def save_then_stop(*args, **kwargs):
        real_save(*args, **kwargs)
        raise Interrupted

    monkeypatch.setattr(ueb.atomic, "save_torch", save_then_stop)
    with pytest.raises(Interrupted):
        cm.train_network(data, 1, ctx, tmp_path / "resumed")
    monkeypatch.setattr(ueb.atomic, "save_torch", real_save)
    assert (tmp_path / "resumed" / "checkpoints" / "state.pt").exists()
    resumed = cm.train_network(data, 1, ctx, tmp_path / "resumed").state_dict()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_early_stopping_refuses_a_set_with_nothing_to_hold_out(tmp_path):
    single = make_imageset(per_class=1, num_classes=4, size=16)
    with pytest.raises(ConfigError, match="held out"):
        fit_early_stopping(single, single, tmp_path)
