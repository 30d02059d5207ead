"""The modern countermeasures of Table II: UEraser, Orthogonal Projection, AVATAR, SimCLR."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from ueb.errors import ConfigError
from ueb.imageset import ImageSet
from ueb.interfaces import Batch, StepContext, TrainResult
from ueb.plan_specs import SpecResolver
from ueb.profile import TrainingConfig, load_profile
from ueb.registry import get_registry
from ueb.testing import check_countermeasure, make_imageset
from ueb.training import Trainer

NAMES = ("ueraser", "orthogonal-projection", "avatar", "simclr")

TINY_TRAINING = TrainingConfig(
    iterations=4,
    batch_size=16,
    milestones=(3,),
    eval_every=0,
    eval_batch_size=64,
    precision="fp32",
    channels_last=False,
)


def tiny_victim(data: ImageSet):
    victim = get_registry().create("victim", "fastnet", {"stem_width": 8, "widths": [16]})
    return victim.build(data.num_classes, data.image_size, data.channels)


def run_fit(cm, run_context, per_class: int = 8, size: int = 16) -> tuple[TrainResult, ImageSet]:
    train = make_imageset(per_class=per_class, num_classes=4, size=size, seed=0)
    test = make_imageset(per_class=4, num_classes=4, size=size, seed=1)
    train_t = cm.transform_train_set(train, run_context)
    test_t = cm.transform_test_set(test, run_context)
    torch.manual_seed(0)
    model = tiny_victim(train)
    trainer = Trainer(TINY_TRAINING, "cpu", seed=0)
    result = cm.fit(model, train_t, test_t, trainer, run_context)
    assert isinstance(result, TrainResult)
    assert 0.0 <= result.final_acc <= 100.0 and math.isfinite(result.final_acc)
    assert result.iterations > 0
    return result, train_t


# --------------------------------------------------------------------------- registration


def test_registered_with_stages():
    reg = get_registry()
    stages = {name: reg.get("countermeasure", name).meta.get("stage") for name in NAMES}
    assert stages == {
        "ueraser": "protocol",
        "orthogonal-projection": "protocol",
        "avatar": "data",
        "simclr": "protocol",
    }
    for name in NAMES:
        cls = reg.get("countermeasure", name).load_class()
        assert cls.stage == stages[name]
    chosen = reg.select("countermeasure", ["all"])
    assert set(NAMES) <= set(chosen)
    assert "ueraser-lite" not in chosen and "ueraser-max" not in chosen
    assert reg.create("countermeasure", "ueraser-max").params.level == "max"
    assert reg.create("countermeasure", "ueraser-lite").params.level == "lite"


def test_bad_parameters_are_config_errors():
    reg = get_registry()
    with pytest.raises(ConfigError):
        reg.create("countermeasure", "ueraser", {"level": "extreme"})
    with pytest.raises(ConfigError):
        reg.create("countermeasure", "ueraser", {"adversarial_fraction": 1.5})
    with pytest.raises(ConfigError):
        reg.create("countermeasure", "simclr", {"temperature": 0})


# --------------------------------------------------------------------------- UEraser


def _step(gen_seed: int, step: int = 0, total: int = 10) -> StepContext:
    return StepContext(step, total, torch.Generator().manual_seed(gen_seed), model=None)  # type: ignore[arg-type]


def test_ueraser_copies_differ_and_repeat_from_the_generator():
    cm = get_registry().create(
        "countermeasure", "ueraser", {"plasma_p": 1.0, "channel_shuffle_p": 0.0}
    )
    x = make_imageset(per_class=2, num_classes=4, size=16).float01()
    copies = cm.augmented_copies(x, 3, torch.Generator().manual_seed(5)).view(3, *x.shape)
    assert copies.shape == (3, *x.shape) and copies.min() >= 0 and copies.max() <= 1
    for i in range(3):
        assert not torch.allclose(copies[i], x, atol=1e-3)  # plasma brightness always on
        for j in range(i + 1, 3):
            assert (copies[i] - copies[j]).abs().amax(
                dim=(1, 2, 3)
            ).min() > 1e-3  # every image differs
    again = cm.augmented_copies(x, 3, torch.Generator().manual_seed(5)).view(3, *x.shape)
    assert torch.equal(copies, again)


def test_ueraser_loss_is_the_max_over_copies():
    cm = get_registry().create("countermeasure", "ueraser", {"repeats": 4})
    data = make_imageset(per_class=2, num_classes=4, size=16)
    x, y = data.float01(), data.labels
    torch.manual_seed(0)
    model = tiny_victim(data).eval()
    loss = cm.loss(model, Batch(x, y), _step(11))
    copies = cm.augmented_copies(x, 4, _step(11).generator)
    with torch.no_grad():
        per = F.cross_entropy(model(copies), y.repeat(4), reduction="none").view(4, -1)
    assert torch.allclose(loss, per.max(0).values.mean(), atol=1e-5)
    assert loss > per.mean() + 1e-4  # the max is really taken, not the mean


def test_ueraser_schedule_per_level():
    reg = get_registry()
    std = reg.create("countermeasure", "ueraser")
    assert [std.repeats_at(s, 100) for s in (0, 24, 25, 99)] == [5, 5, 1, 1]
    assert {
        reg.create("countermeasure", "ueraser-lite").repeats_at(s, 100) for s in range(100)
    } == {1}
    assert {reg.create("countermeasure", "ueraser-max").repeats_at(s, 100) for s in range(100)} == {
        5
    }


def test_ueraser_fit(run_context):
    cm = get_registry().create(
        "countermeasure", "ueraser", {"repeats": 2, "adversarial_fraction": 0.5}
    )
    run_fit(cm, run_context)


# --------------------------------------------------------------------------- Orthogonal Projection


def classwise_poisoned(
    n_per_class: int = 300, classes: int = 4, size: int = 8
) -> tuple[ImageSet, torch.Tensor]:
    """Random images whose labels only a class-wise constant perturbation predicts."""
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    base = torch.rand(len(labels), 3, size, size, generator=g) * 0.6 + 0.2
    delta = (torch.rand(classes, 3, size, size, generator=g) * 2 - 1) * 16 / 255
    return ImageSet(base + delta[labels], labels, tuple("abcd")[:classes]), delta


def _class_mean_spread(x: torch.Tensor, y: torch.Tensor) -> float:
    means = torch.stack([x[y == c].double().mean(0) for c in range(int(y.max()) + 1)])
    return float((means - means.mean(0)).flatten(1).norm(dim=1).max())


def test_orthogonal_projection_is_orthogonal_and_removes_a_classwise_perturbation(run_context):
    poisoned, _ = classwise_poisoned()
    cm = get_registry().create("countermeasure", "orthogonal-projection", {"batch_size": 64})
    out = cm.project(poisoned, run_context)
    assert out.images.shape == poisoned.images.shape and out.images.dtype == torch.float32
    assert cm.linear_train_acc > 90  # the linear model found the shortcut
    flat = out.images.flatten(1).double()
    assert (flat @ cm.weights.double().t()).abs().max() < 1e-5
    # the class-wise signal is (mostly) gone: class means move together
    before = _class_mean_spread(poisoned.images, poisoned.labels)
    after = _class_mean_spread(out.images, poisoned.labels)
    assert after < before / 3


def test_project_out_removes_the_span_exactly():
    from ueb_countermeasures_modern.orthogonal import orthonormal_basis, project_out

    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 50, generator=g)
    x = torch.randn(20, 50, generator=g)
    coef = torch.randn(20, 3, generator=g)
    basis = orthonormal_basis(w)
    assert torch.allclose(basis.t() @ basis, torch.eye(3, dtype=basis.dtype), atol=1e-10)
    # adding any combination of the weight vectors changes nothing after projection
    assert torch.allclose(project_out(x + coef @ w, basis), project_out(x, basis), atol=1e-4)
    assert torch.allclose(project_out(w, basis), torch.zeros_like(w), atol=1e-5)


def test_orthogonal_projection_test_set(run_context):
    reg = get_registry()
    train, test = (
        make_imageset(per_class=8, num_classes=4, size=8),
        make_imageset(per_class=2, num_classes=4, size=8, seed=3),
    )
    cm = reg.create("countermeasure", "orthogonal-projection")
    assert cm.transform_train_set(train, run_context) is train  # the projection runs in fit
    cm.project(train, run_context)
    assert cm.transform_test_set(test, run_context) is test
    cm = reg.create("countermeasure", "orthogonal-projection", {"project_test": True})
    assert cm.transform_test_set(test, run_context) is test  # no span to project off yet
    cm.project(train, run_context)
    projected = cm.transform_test_set(test, run_context)
    assert (projected.images.flatten(1).double() @ cm.weights.double().t()).abs().max() < 1e-5


def test_orthogonal_projection_fit(run_context):
    cm = get_registry().create("countermeasure", "orthogonal-projection", {"epochs": 2})
    run_fit(cm, run_context)


# --------------------------------------------------------------------------- training recipes

CIFAR10_TRAIN = 50_000  # 390 iterations per epoch at batch 128 (the last partial batch dropped)


def _resolved(scale: str, name: str):
    """The plugin as a run at `scale` builds it (presets under the profile's tables)."""
    return SpecResolver(get_registry(), load_profile(scale)).unbound("countermeasure", name)


@pytest.mark.parametrize(
    "name", ["ueraser", "ueraser-lite", "ueraser-max", "orthogonal-projection"]
)
def test_only_the_paper_scale_selects_the_official_recipe(name):
    assert get_registry().create("countermeasure", name).params.recipe == "shared"
    recipes = {scale: _resolved(scale, name).params.recipe for scale in ("smoke", "quick", "paper")}
    assert recipes == {"smoke": "shared", "quick": "shared", "paper": "official"}


def _record_learning_rates(monkeypatch) -> list[float]:
    """The learning rate of every optimiser step taken from now on."""
    rates: list[float] = []
    real_step = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    return rates


def _same_training(old: TrainResult, new: TrainResult, m_old, m_new) -> None:
    assert new.final_acc == old.final_acc and new.peak_acc == old.peak_acc
    assert new.iterations == old.iterations and new.history == old.history
    assert new.extra["protocol"] == old.extra["protocol"]
    s_old, s_new = m_old.state_dict(), m_new.state_dict()
    assert s_old.keys() == s_new.keys()
    assert all(torch.equal(s_old[k], s_new[k]) for k in s_old)


def _tiny_sets() -> tuple[ImageSet, ImageSet]:
    return (
        make_imageset(per_class=8, num_classes=4, size=16, seed=0),
        make_imageset(per_class=4, num_classes=4, size=16, seed=1),
    )


EVALUATED = dataclasses.replace(TINY_TRAINING, eval_every=2)


def test_ueraser_official_recipe_is_lsp_cifar_train():
    paper = _resolved("paper", "ueraser")
    assert (paper.params.epochs, paper.params.repeats) == (200, 5)
    run = load_profile("paper").training
    cfg = paper.official_training(run, CIFAR10_TRAIN)
    assert cfg.iterations == 200 * 390
    assert (cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay) == (128, 0.01, 0.9, 5e-4)
    assert (cfg.schedule, cfg.milestones, cfg.gamma) == ("step", (100 * 390, 150 * 390), 0.1)
    assert (cfg.nesterov, cfg.grad_clip, cfg.crop_padding, cfg.flip) == (False, 0.0, 4, True)
    assert (cfg.eval_every, cfg.precision) == (run.eval_every, run.precision)  # the run's
    # K copies while epoch < 50 of 200
    assert paper.repeats_at(50 * 390 - 1, cfg.iterations) == 5
    assert paper.repeats_at(50 * 390, cfg.iterations) == 1
    # another set size, an odd number of epochs: lr/10 from epoch ceil(E/2), lr/100 from ceil(3E/4)
    five = get_registry().create("countermeasure", "ueraser", {"recipe": "official", "epochs": 5})
    cfg = five.official_training(run, 73_257)  # 572 iterations per epoch
    assert cfg.iterations == 5 * 572 and cfg.milestones == (3 * 572, 4 * 572)


def test_ueraser_official_fit_runs_its_own_schedule(run_context, monkeypatch):
    cm = get_registry().create(
        "countermeasure", "ueraser", {"recipe": "official", "epochs": 8, "repeats": 2}
    )
    copies: list[int] = []
    max_loss = cm.max_loss

    def counted(model, batch, k, gen):
        copies.append(k)
        return max_loss(model, batch, k, gen)

    monkeypatch.setattr(cm, "max_loss", counted)
    rates = _record_learning_rates(monkeypatch)
    result, _ = run_fit(cm, run_context)  # 32 images: one batch (capped at 32) per epoch
    assert result.iterations == 8
    assert copies == [2, 2, 1, 1, 1, 1, 1, 1]  # the first 25% of the epochs
    assert rates == pytest.approx([0.01] * 4 + [0.001] * 2 + [0.0001] * 2)
    assert {k: result.extra[k] for k in ("recipe", "recipe_epochs", "recipe_steps_per_epoch")} == {
        "recipe": "official",
        "recipe_epochs": 8,
        "recipe_steps_per_epoch": 1,
    }
    protocol = result.extra["protocol"]
    assert (protocol["iterations"], protocol["lr"], protocol["milestones"]) == (8, 0.01, [4, 6])


def test_ueraser_shared_recipe_trains_as_the_shared_protocol_did(run_context):
    """The default fit of a train-stage countermeasure was trainer.fit(hooks=self)."""
    cm = get_registry().create(
        "countermeasure", "ueraser", {"repeats": 2, "adversarial_fraction": 0.5}
    )
    train, test = _tiny_sets()
    torch.manual_seed(0)
    m_old = tiny_victim(train)
    old = Trainer(EVALUATED, "cpu", seed=0).fit(m_old, train, test, hooks=cm)
    torch.manual_seed(0)
    m_new = tiny_victim(train)
    new = cm.fit(m_new, train, test, Trainer(EVALUATED, "cpu", seed=0), run_context)
    _same_training(old, new, m_old, m_new)
    assert new.extra["recipe"] == "shared" and new.iterations == EVALUATED.iterations


def test_orthogonal_projection_official_recipe_is_step_2():
    paper = _resolved("paper", "orthogonal-projection")
    assert (paper.params.victim_epochs, paper.params.epochs) == (50, 20)
    cfg = paper.official_training(load_profile("paper").training, CIFAR10_TRAIN)
    assert cfg.iterations == 50 * 390
    assert (cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay) == (128, 0.1, 0.9, 1e-4)
    assert (cfg.schedule, cfg.milestones, cfg.gamma) == ("step", (25 * 390, 37 * 390), 0.1)
    assert (cfg.nesterov, cfg.grad_clip) == (False, 0.0)
    # crop and flip come after the rotation, affine and jitter: in the step, not the trainer
    assert (cfg.crop_padding, cfg.flip) == (0, False)
    from ueb_countermeasures_modern import orthogonal as op

    assert (op.ROTATION_DEGREES, op.SHEAR_DEGREES, op.SCALE_RANGE) == (10.0, 10.0, (0.8, 1.2))
    assert (op.JITTER, op.CROP_PADDING, op.CUTMIX_PROB) == (0.2, 4, 0.5)


def test_step_2_warps_and_jitter_follow_torchvision():
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode
    from ueb_countermeasures_modern import orthogonal as op

    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 1.4 - 0.2
    nearest = InterpolationMode.NEAREST
    angles = torch.tensor([-10.0, -3.5, 0.0, 2.2, 7.7, 9.9], dtype=torch.float64)
    rotated = op.warp(x, op.rotation_matrices(angles))
    for i, a in enumerate(angles.tolist()):
        assert torch.equal(rotated[i], TF.rotate(x[i], a, interpolation=nearest))
    shear = torch.tensor([-10.0, -4.0, 0.0, 3.0, 6.0, 9.9], dtype=torch.float64)
    # no sample falls exactly between two pixels (scale 0.9 at 16 px would: both roundings are
    # nearest there, and the two implementations may pick different ones)
    scale = torch.tensor([0.8, 0.93, 1.0, 1.07, 1.13, 1.19], dtype=torch.float64)
    warped = op.warp(x, op.shear_scale_matrices(shear, scale))
    for i in range(6):
        want = TF.affine(x[i], angle=0.0, translate=[0, 0], scale=float(scale[i]),
                         shear=[float(shear[i]), 0.0], interpolation=nearest)  # fmt: skip
        assert torch.equal(warped[i], want)
    factors = torch.tensor([0.8, 0.9, 1.0, 1.1, 1.2, 0.85], dtype=torch.float64)
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
    for k, adjust in enumerate(ops):
        want = torch.stack([adjust(x[i], float(factors[i])) for i in range(6)])
        assert torch.allclose(op.adjust(x, k, factors), want, atol=1e-6)


def test_step_2_augmentation_clamps_changes_and_repeats():
    from ueb_countermeasures_modern.orthogonal import OfficialStep

    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.3
    y = torch.arange(8)
    hooks = OfficialStep()
    out = hooks.augment(Batch(x, y), _step(3))
    again = hooks.augment(Batch(x, y), _step(3))
    assert torch.equal(out.x, again.x) and torch.equal(out.lam, again.lam)
    assert out.x.shape == x.shape and out.x.min() >= 0 and out.x.max() <= 1  # the jitter clamps
    assert (out.x - x.clamp(0, 1)).abs().amax(dim=(1, 2, 3)).min() > 1e-3  # every image moved
    assert not torch.equal(hooks.augment(Batch(x, y), _step(4)).x, out.x)


def test_step_2_cutmix_is_one_box_for_half_the_batches():
    from ueb_countermeasures_modern.orthogonal import cutmix_batch

    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 12, 12, generator=g)
    y = torch.arange(6)  # labels name the images, so y2 is the permutation
    mixed, areas = 0, []
    for _ in range(400):
        out = cutmix_batch(Batch(x, y), 0.5, g)
        assert out.lam is not None and out.y2 is not None
        assert torch.equal(out.x, torch.where(out.x == x, x, x[out.y2]))  # pixels from the partner
        box = (out.x != x).any(dim=1)  # (B, H, W) pixels taken from the partner
        moved = out.y2 != y
        if bool(box.any()):
            mixed += 1
            region = box[moved].any(dim=0)
            rows, cols = region.any(1).nonzero().flatten(), region.any(0).nonzero().flatten()
            rect = torch.zeros_like(region)
            rect[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
            assert torch.equal(region, rect)  # one rectangle, the same for the whole batch
            assert torch.equal(box[moved], region.expand_as(box[moved]))
            assert torch.allclose(out.lam, 1 - rect.float().mean().expand(6))
            areas.append(float(rect.float().mean()))
        else:
            assert bool((out.lam == 1).all()) or not bool(moved.any())
    assert 0.4 < mixed / 400 < 0.6
    assert max(areas) > 0.6 and min(areas) < 0.1  # lam ~ U(0, 1): large boxes and small ones


def test_orthogonal_projection_official_fit_runs_step_2(run_context, monkeypatch):
    from ueb_countermeasures_modern import orthogonal

    cm = get_registry().create(
        "countermeasure",
        "orthogonal-projection",
        {"epochs": 2, "recipe": "official", "victim_epochs": 4},
    )
    augmented: list[int] = []
    strong = orthogonal.strong_augment

    def counted(x, gen):
        augmented.append(x.shape[0])
        return strong(x, gen)

    mixes: list[float] = []
    cutmix = orthogonal.cutmix_batch

    def mixed(batch, prob, gen):
        mixes.append(prob)
        return cutmix(batch, prob, gen)

    monkeypatch.setattr(orthogonal, "strong_augment", counted)
    monkeypatch.setattr(orthogonal, "cutmix_batch", mixed)
    rates = _record_learning_rates(monkeypatch)
    result, _ = run_fit(cm, run_context)
    assert result.iterations == 4 and augmented == [32] * 4 and mixes == [0.5] * 4
    assert (
        len(rates) == 2 + 4
    )  # the linear model's two steps (one batch per epoch), then the victim's
    assert rates[2:] == pytest.approx([0.1, 0.1, 0.01, 0.001])  # x0.1 at int(2.0), int(3.0)
    protocol = result.extra["protocol"]
    assert (protocol["weight_decay"], protocol["crop_padding"], protocol["flip"]) == (
        1e-4,
        0,
        False,
    )
    assert result.extra["recipe"] == "official" and result.extra["recipe_epochs"] == 4
    assert result.extra["linear_train_acc"] == cm.linear_train_acc


def test_orthogonal_projection_shared_recipe_trains_as_the_data_stage_did(run_context):
    """Before, the projection was a data stage and the victim trained on its output under the
    shared protocol with plain hooks."""
    from ueb_countermeasures_modern.orthogonal import (
        fit_linear_weights,
        orthonormal_basis,
        project_out,
    )

    train, test = _tiny_sets()
    x = train.float01().flatten(1)
    w = fit_linear_weights(x, train.labels, 4, 2, 1024, 0.1, torch.Generator().manual_seed(0))
    projected = train.with_images(project_out(x, orthonormal_basis(w)).view(train.images.shape))
    torch.manual_seed(0)
    m_old = tiny_victim(train)
    old = Trainer(EVALUATED, "cpu", seed=0).fit(m_old, projected, test)
    cm = get_registry().create("countermeasure", "orthogonal-projection", {"epochs": 2})
    torch.manual_seed(0)
    m_new = tiny_victim(train)
    new = cm.fit(m_new, train, test, Trainer(EVALUATED, "cpu", seed=0), run_context)
    _same_training(old, new, m_old, m_new)
    assert new.extra["recipe"] == "shared"


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("ueraser", {"recipe": "official", "epochs": 2, "repeats": 2}),
        ("orthogonal-projection", {"recipe": "official", "epochs": 2, "victim_epochs": 2}),
    ],
)
def test_official_recipes_pass_the_conformance_kit(name, params, tmp_path):
    check_countermeasure(get_registry().create("countermeasure", name, params), workdir=tmp_path)


# --------------------------------------------------------------------------- AVATAR


def tiny_unet_folder(tmp_path, size: int = 16, channels: int = 3, scheduler: bool = True):
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1, norm_num_groups=8,
    )  # fmt: skip
    folder = tmp_path / "ddpm"
    unet.save_pretrained(folder / "unet")
    if scheduler:
        DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder / "scheduler")
    return folder


def test_avatar_with_a_local_model(tmp_path, run_context):
    folder = tiny_unet_folder(tmp_path)
    data = make_imageset(per_class=2, num_classes=4, size=16)
    cm = get_registry().create(
        "countermeasure", "avatar", {"model_dir": str(folder), "t_star": 20, "reverse_steps": 3}
    )
    out = cm.transform_train_set(data, run_context)
    assert out.images.shape == data.images.shape and out.images.dtype == torch.uint8
    assert not torch.equal(out.images, data.images)
    assert out.meta["avatar_model"].startswith("model_dir:")
    # the same seed purifies the same way
    again = get_registry().create(
        "countermeasure", "avatar", {"model_dir": str(folder), "t_star": 20, "reverse_steps": 3}
    )
    assert torch.equal(again.transform_train_set(data, run_context).images, out.images)


def test_avatar_purify_range_and_t_zero(tmp_path):
    from ueb_countermeasures_modern.avatar import load_ddpm, purify, reverse_timesteps

    unet, scheduler = load_ddpm(tiny_unet_folder(tmp_path, size=16))
    x = torch.rand(3, 3, 8, 8)  # smaller than the model: resized to 16 and back
    gen = torch.Generator().manual_seed(0)
    y = purify(x, unet, scheduler, 10, 3, gen)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert torch.equal(purify(x, unet, scheduler, 0, 0, gen), x)
    assert reverse_timesteps(5, 0) == [4, 3, 2, 1, 0]
    assert reverse_timesteps(100, 4) == [99, 66, 33, 0]


def test_avatar_t_star_zero_returns_the_input(run_context):
    data = make_imageset(per_class=2, num_classes=4, size=8)
    cm = get_registry().create("countermeasure", "avatar", {"t_star": 0, "train_if_missing": False})
    assert torch.equal(cm.transform_train_set(data, run_context).images, data.images)


def test_avatar_model_errors(tmp_path, run_context):
    reg = get_registry()
    data = make_imageset(per_class=2, num_classes=4, size=16)
    missing = reg.create("countermeasure", "avatar", {"model_dir": str(tmp_path / "nowhere")})
    with pytest.raises(ConfigError, match="model_dir"):
        missing.transform_train_set(data, run_context)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text(
        json.dumps({"_class_name": "UNet2DModel", "block_out_channels": "x"})
    )
    broken = reg.create("countermeasure", "avatar", {"model_dir": str(tmp_path / "broken")})
    with pytest.raises(ConfigError, match="model_dir"):
        broken.transform_train_set(data, run_context)
    offline = reg.create("countermeasure", "avatar", {"train_if_missing": False})
    with pytest.raises(ConfigError, match="model_dir"):
        offline.transform_train_set(data, run_context)
    grey = reg.create(
        "countermeasure", "avatar", {"model_dir": str(tiny_unet_folder(tmp_path, channels=1))}
    )
    with pytest.raises(ConfigError, match="channels"):
        grey.transform_train_set(data, run_context)


class _SyntheticDataset:
    """Stands in for the registered dataset the synthetic training set comes from."""

    def load(self, root):
        from ueb.interfaces import Splits

        return Splits(
            make_imageset(per_class=8, num_classes=4, size=16, seed=0),
            make_imageset(per_class=4, num_classes=4, size=16, seed=5),
        )


def _with_synthetic_dataset(run_context):
    def provide(kind, name, params=None):
        assert (kind, name) == ("dataset", "synthetic"), (kind, name)
        return _SyntheticDataset()

    return dataclasses.replace(run_context, provider=provide)


def test_avatar_trains_its_own_ddpm_then_reuses_it(run_context):
    params = {
        "t_star": 10, "reverse_steps": 2, "train_steps": 3, "train_batch_size": 8, "channels": [8, 16],
        "layers_per_block": 1, "attention_levels": [], "warmup_steps": 1,
    }  # fmt: skip
    run_context = _with_synthetic_dataset(run_context)
    cm = get_registry().create("countermeasure", "avatar", params)
    result, purified = run_fit(cm, run_context)
    assert purified.meta["avatar_model"].startswith("trained-on-clean:")
    folders = [f for f in (run_context.artifacts.root / "avatar-ddpm").iterdir() if f.is_dir()]
    assert len(folders) == 1 and (folders[0] / "manifest.json").exists()
    assert (folders[0] / "unet" / "config.json").exists() and not (
        folders[0] / "checkpoints"
    ).exists()
    again = get_registry().create("countermeasure", "avatar", params)
    again.transform_train_set(
        make_imageset(per_class=8, num_classes=4, size=16, seed=0), run_context
    )
    assert again.model_source == cm.model_source


class _Killed(Exception):
    pass


class _KillingProgress:
    """A progress display that records advances and raises after `kill_after` steps (a kill)."""

    def __init__(self, kill_after: int | None = None) -> None:
        self.kill_after = kill_after
        self.advances: list[float] = []

    @contextlib.contextmanager
    def task(self, description, total=None):
        outer = self

        class _Task:
            def advance(self, n=1):
                outer.advances.append(n)
                if outer.kill_after is not None and sum(outer.advances) >= outer.kill_after:
                    raise _Killed()

            def update(self, **fields):
                pass

        yield _Task()


def test_avatar_resumes_from_a_checkpoint(run_context):
    params = {
        "t_star": 5, "reverse_steps": 1, "train_steps": 4, "train_batch_size": 4, "channels": [8, 16],
        "layers_per_block": 1, "attention_levels": [], "checkpoint_every": 2,
    }  # fmt: skip
    data = make_imageset(per_class=2, num_classes=4, size=8)
    run_context = _with_synthetic_dataset(run_context)
    cm = get_registry().create("countermeasure", "avatar", params)
    killed = dataclasses.replace(run_context, progress=_KillingProgress(kill_after=3))
    with pytest.raises(_Killed):
        cm.trained_model(data, killed)  # dies at step 3, after the checkpoint of step 2
    folder = next(f for f in (run_context.artifacts.root / "avatar-ddpm").iterdir() if f.is_dir())
    assert (folder / "checkpoints" / "state.pt").exists() and not (
        folder / "manifest.json"
    ).exists()
    resumed = _KillingProgress()
    assert cm.trained_model(data, dataclasses.replace(run_context, progress=resumed)) == folder
    assert resumed.advances[0] == 2 and sum(resumed.advances) == 4  # skipped 2 steps, trained 2
    assert (folder / "manifest.json").exists() and not (folder / "checkpoints").exists()


# --------------------------------------------------------------------------- SimCLR


def test_nt_xent_prefers_matching_pairs():
    from ueb_countermeasures_modern.simclr import nt_xent

    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 32, generator=g)
    matched = nt_xent(z, z + 0.01 * torch.randn(16, 32, generator=g), 0.5)
    shuffled = nt_xent(z, torch.randn(16, 32, generator=g), 0.5)
    assert matched < shuffled
    assert abs(float(shuffled) - math.log(31)) < 1.0  # random pairs: about log(2B - 1)


def test_simclr_pretraining_loss_decreases(run_context):
    data = make_imageset(per_class=8, num_classes=4, size=16)
    cm = get_registry().create(
        "countermeasure",
        "simclr",
        {"pretrain_steps": 30, "batch_size": 32, "lr": 0.1, "crop_scale": [0.5, 1.0]},
    )
    torch.manual_seed(0)
    model = tiny_victim(data)
    losses = cm.pretrain(model, data, Trainer(TINY_TRAINING, "cpu", seed=0), run_context)
    assert len(losses) == 30 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1


def test_simclr_fit(run_context):
    cm = get_registry().create(
        "countermeasure",
        "simclr",
        {"pretrain_steps": 3, "batch_size": 16, "linear_steps": 5, "linear_batch_size": 16},
    )
    result, _ = run_fit(cm, run_context)
    assert result.extra["pretrain_steps"] == 3 and result.extra["linear_steps"] == 5
    assert result.iterations == 8
    # the probe alone changes the head; the backbone is trainable again afterwards
    cm2 = get_registry().create(
        "countermeasure",
        "simclr",
        {"pretrain_steps": 2, "batch_size": 16, "linear_steps": 2, "probe_augment": False},
    )
    run_fit(cm2, run_context)
