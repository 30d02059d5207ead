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
from ueb.profile import TrainingConfig
from ueb.registry import get_registry
from ueb.testing import make_imageset
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
        "ueraser": "train",
        "orthogonal-projection": "data",
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
    out = cm.transform_train_set(poisoned, run_context)
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
    cm.transform_train_set(train, run_context)
    assert cm.transform_test_set(test, run_context) is test
    cm = reg.create("countermeasure", "orthogonal-projection", {"project_test": True})
    with pytest.raises(ConfigError):
        cm.transform_test_set(test, run_context)
    cm.transform_train_set(train, run_context)
    projected = cm.transform_test_set(test, run_context)
    assert (projected.images.flatten(1).double() @ cm.weights.double().t()).abs().max() < 1e-5


def test_orthogonal_projection_fit(run_context):
    cm = get_registry().create("countermeasure", "orthogonal-projection", {"epochs": 2})
    run_fit(cm, run_context)


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
