"""ECLIPSE (plugins/ueb_defences/eclipse.py): sparse-set DDPM purification + compensation."""

from __future__ import annotations

import dataclasses
import json
import math
import types

import numpy as np
import pytest
import torch

from ueb.errors import ConfigError
from ueb.imageset import ImageSet
from ueb.interfaces import Batch, Splits, StepContext
from ueb.registry import get_registry
from ueb.testing import check_countermeasure, make_imageset, make_run_context, tiny_training
from ueb.training import Trainer


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def eclipse(params: dict | None = None, scale: str = "smoke"):
    cls = get_registry().get("countermeasure", "eclipse").load_class()
    return get_registry().create(
        "countermeasure", "eclipse", {**cls.presets[scale], **(params or {})}
    )


def tiny_unet_folder(tmp_path, size: int = 16, channels: int = 3):
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1, norm_num_groups=8,
    )  # fmt: skip
    folder = tmp_path / "ddpm"
    unet.save_pretrained(folder / "unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder / "scheduler")
    return folder


# --------------------------------------------------------------------------- declarations


def test_registered_as_a_hidden_clean_data_purification_protocol():
    entry = get_registry().get("countermeasure", "eclipse")
    cls = entry.load_class()
    assert cls.stage == entry.meta["stage"] == "protocol"
    assert entry.meta["family"] == "purification" and entry.meta["hidden_from_all"]
    assert cls.threat.tags() == ["clean data"] and cls.version == "1"
    assert set(cls.presets) >= {"smoke", "quick"}
    p = cls.Params()  # the paper's settings (Sec. 4.1, README, configs/cifar10.yml)
    assert (p.t_star, p.reference_steps, p.reference_schedule) == (100, 4000, "cosine")
    assert (p.sparse_fraction, p.replications, p.train_steps) == (0.04, 4, 250_000)
    assert (p.grayscale_p, p.noise_std) == (0.4, 0.05)


@pytest.mark.parametrize(
    "bad",
    [{"sparse_fraction": 0}, {"grayscale_p": 1.5}, {"noise_std": -0.1}, {"replications": -1},
     {"t_star": 4001}, {"dropout": 1.0}],
)  # fmt: skip
def test_out_of_range_parameters_are_rejected(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        get_registry().create("countermeasure", "eclipse", bad)


def test_preflight_names_a_missing_model_dir(tmp_path):
    cm = eclipse({"model_dir": str(tmp_path / "nowhere")})
    with pytest.raises(ConfigError, match="model_dir") as err:
        cm.preflight()
    assert "\n" not in str(err.value)
    eclipse({"model_dir": str(tiny_unet_folder(tmp_path))}).preflight()


def test_conformance_with_a_local_model(tmp_path):
    cls = get_registry().get("countermeasure", "eclipse").load_class()
    folder = tiny_unet_folder(tmp_path, size=8)
    params = {**cls.presets["smoke"], "model_dir": str(folder)}
    result = check_countermeasure(cls, params=params, workdir=tmp_path / "kit")
    assert result.extra["eclipse_model"].startswith("model_dir:")
    assert result.extra["eclipse_model_step"] == 12  # t*=100 of cosine-4000 on a linear-1000 model
    assert result.extra["eclipse_changed_pixels"] > 0.5


# --------------------------------------------------------------------------- noise level


def test_reference_schedule_and_its_step_on_another_model():
    from diffusers import DDPMScheduler
    from ueb_defences.eclipse import alpha_bar, matching_step

    cosine = alpha_bar("cosine", 4000)
    diffusers_cosine = DDPMScheduler(num_train_timesteps=4000, beta_schedule="squaredcos_cap_v2")
    assert torch.allclose(cosine.float(), diffusers_cosine.alphas_cumprod, atol=1e-6)
    assert cosine[99] == pytest.approx(0.99751, abs=1e-5)
    linear = alpha_bar("linear", 1000)
    assert torch.allclose(linear.float(), DDPMScheduler(num_train_timesteps=1000).alphas_cumprod)
    assert matching_step(linear, float(cosine[99])) == 12
    # on the reference schedule itself the step is t* again, for every t*
    assert all(matching_step(cosine, float(cosine[t - 1])) == t for t in (1, 100, 777, 4000))


# --------------------------------------------------------------------------- compensation


def test_grayscale_is_pil_luma():
    from PIL import Image
    from ueb_defences.eclipse import grayscale_like_pil

    rgb = torch.randint(0, 256, (4, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    ours = grayscale_like_pil(rgb.float() / 255)
    for i in range(4):
        pil = Image.fromarray(rgb[i].permute(1, 2, 0).numpy().astype(np.uint8)).convert("L")
        expected = torch.from_numpy(np.array(pil)).float() / 255
        for c in range(3):
            assert torch.equal(ours[i, c], expected)


def test_compensation_draws_grey_with_p_and_noise_of_sigma():
    from ueb_defences.eclipse import compensate

    gen = torch.Generator().manual_seed(0)
    x = torch.randint(64, 192, (4000, 3, 8, 8), generator=gen).float() / 255  # away from 0 and 1
    out = compensate(x, 0.4, 0.05, gen)
    assert torch.equal(out, out.mul(255).round().div(255)) and 0 <= out.min() <= out.max() <= 1
    # grey images: equal channels up to the (independent) noise, so their channel spread is small
    spread = (out - out.mean(1, keepdim=True)).flatten(1).std(1)
    grey = spread < 0.06
    assert abs(float(grey.float().mean()) - 0.4) < 0.03
    # noise of sigma 0.05 on the colour images (truncation shifts the mean by half a level)
    diff = (out[~grey] - x[~grey]).flatten()
    assert float(diff.std()) == pytest.approx(0.05, abs=0.002)
    assert float(diff.mean()) == pytest.approx(-0.5 / 255, abs=0.001)
    # p = 0 and sigma = 0 leave images on the 8-bit grid unchanged
    assert torch.equal(compensate(x, 0.0, 0.0, gen), x)


def test_augment_follows_the_compensation_mode():
    data = make_imageset(per_class=4, num_classes=2, size=8)
    batch = Batch(data.float01().clone(), data.labels.clone())
    step = StepContext(0, 10, torch.Generator().manual_seed(1), torch.nn.Identity())
    changed = eclipse().augment(batch, step)
    assert not torch.equal(changed.x, batch.x) and torch.equal(changed.y, batch.y)
    assert eclipse({"compensation": "once"}).augment(batch, step) is batch


# --------------------------------------------------------------------------- purification


class FlatImageDenoiser(torch.nn.Module):
    """The ideal noise predictor for a clean distribution of flat (one colour per channel)
    images: x0 is the spatial mean of x_t / sqrt(a), so eps = (x_t - mean) / sqrt(1 - a)."""

    def __init__(self, scheduler, size: int) -> None:
        super().__init__()
        self.config = types.SimpleNamespace(sample_size=size, in_channels=3)
        self.alphas = scheduler.alphas_cumprod

    def forward(self, x, t):
        a = self.alphas[int(t)]
        return types.SimpleNamespace(sample=(x - x.mean((2, 3), keepdim=True)) / (1 - a).sqrt())


def planted_poison(n: int = 12, size: int = 16):
    gen = torch.Generator().manual_seed(3)
    colours = torch.rand(n, 3, 1, 1, generator=gen) * 0.6 + 0.2
    clean = colours.expand(n, 3, size, size).contiguous()
    checker = (torch.arange(size)[:, None] + torch.arange(size)[None, :]) % 2 * 2 - 1
    poisoned = (clean + 8 / 255 * checker).clamp(0, 1)
    labels = torch.arange(n) % 2
    return (ImageSet(clean.mul(255).round().to(torch.uint8), labels, ("a", "b")),
            ImageSet(poisoned.mul(255).round().to(torch.uint8), labels, ("a", "b")))  # fmt: skip


def test_purification_moves_a_planted_poison_towards_the_clean_images(tmp_path, monkeypatch):
    from diffusers import DDPMScheduler

    clean, poisoned = planted_poison()
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    cm = eclipse({"reverse_steps": 0})
    monkeypatch.setattr(
        type(cm), "model", lambda self, train, ctx: (FlatImageDenoiser(scheduler, 16), scheduler)
    )
    ctx = make_run_context(tmp_path, seed=0)
    out = cm.purified(poisoned, ctx)
    assert cm.model_step == 12 and out.images.dtype == torch.uint8
    dist = lambda a, b: float((a.float01() - b.float01()).pow(2).mean().sqrt())  # noqa: E731
    assert not torch.equal(out.images, poisoned.images)
    assert dist(out, clean) < 0.5 * dist(poisoned, clean)
    # the purified set is an artifact: a second purification reads it back, same bytes
    again = eclipse({"reverse_steps": 0})
    monkeypatch.setattr(type(again), "model", type(cm).model)
    assert torch.equal(again.purified(poisoned, ctx).images, out.images)
    assert len(list((ctx.artifacts.root / "eclipse-purified").glob("*/images.pt"))) == 1


class CapturingTrainer:
    """Records what `fit` hands the trainer: the set the victim trains on and the hooks."""

    def fit(self, model, train, test, hooks=None, description=""):
        from ueb.interfaces import TrainResult

        self.train, self.hooks = train, hooks
        return TrainResult(50.0, 50.0, 1, 1, 0.1)


@pytest.mark.parametrize("mode", ["every-step", "once"])
def test_the_victim_trains_on_the_purified_set_with_the_compensation(tmp_path, monkeypatch, mode):
    from diffusers import DDPMScheduler

    clean, poisoned = planted_poison()
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    cm = eclipse({"reverse_steps": 0, "compensation": mode})
    monkeypatch.setattr(
        type(cm), "model", lambda self, train, ctx: (FlatImageDenoiser(scheduler, 16), scheduler)
    )
    ctx = make_run_context(tmp_path, seed=0)
    trainer = CapturingTrainer()
    result = cm.fit(torch.nn.Identity(), poisoned, clean, trainer, ctx)
    purified = cm.purified(poisoned, ctx)
    assert trainer.hooks is cm and result.extra["eclipse_model_step"] == 12
    assert trainer.train.images.dtype == torch.uint8
    if mode == "every-step":  # purified images as they are; the hook adds grey + noise per step
        assert torch.equal(trainer.train.images, purified.images)
    else:  # grey + noise drawn once per image, and the hook then leaves batches alone
        diff = trainer.train.float01() - purified.float01()
        assert 0.03 < float(diff.std()) < 0.07 and not torch.equal(
            trainer.train.images, purified.images
        )


class SyntheticDataset:
    def load(self, root):
        return Splits(make_imageset(per_class=10, num_classes=4, size=8, seed=0),
                      make_imageset(per_class=10, num_classes=4, size=8, seed=5))  # fmt: skip


def synthetic_context(tmp_path, seed: int):
    ctx = make_run_context(tmp_path, seed=seed)

    def provide(kind, name, params=None):
        assert (kind, name) == ("dataset", "synthetic")
        return SyntheticDataset()

    return dataclasses.replace(ctx, provider=provide)


def test_sparse_set_is_a_seeded_fraction_of_clean_images_replicated(tmp_path):
    train = make_imageset(per_class=25, num_classes=4, size=8, seed=9)  # N = 100
    train.name = "synthetic"
    cm = eclipse({"sparse_fraction": 0.04, "replications": 4})
    enlarged = cm.sparse_set(train, synthetic_context(tmp_path, 0))
    assert cm.sparse_images == 4 and len(enlarged) == 20  # B = 4% of N, (M + 1) copies
    assert all(torch.equal(enlarged.images[i], enlarged.images[i % 4]) for i in range(20))
    pool = SyntheticDataset().load(None).test.images
    assert all(any(torch.equal(img, c) for c in pool) for img in enlarged.images[:4])
    other = cm.sparse_set(train, synthetic_context(tmp_path, 1))
    assert not torch.equal(other.images, enlarged.images)
    with pytest.raises(ConfigError, match="sparse_fraction"):
        eclipse({"sparse_fraction": 1.0}).sparse_set(
            make_imageset(per_class=50, num_classes=4, size=8), synthetic_context(tmp_path, 0)
        )  # 200 images wanted of a pool of 40


def test_trains_its_ddpm_on_the_sparse_set_and_reuses_it(tmp_path):
    train = make_imageset(per_class=25, num_classes=4, size=8, seed=9)
    train.name = "synthetic"
    ctx = synthetic_context(tmp_path, 0)
    cm = eclipse()
    test = make_imageset(per_class=2, num_classes=4, size=8, seed=4)
    trainer = Trainer(tiny_training(), "cpu", 0)
    result = cm.fit(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 4)), train,
                    test, trainer, ctx)  # fmt: skip
    assert result.extra["eclipse_model"].startswith("trained-on-sparse:")
    (folder,) = [f for f in (ctx.artifacts.root / "avatar-ddpm").iterdir() if f.is_dir()]
    recipe = json.loads((folder / "manifest.json").read_text())["recipe"]
    assert recipe["data"] == eclipse().sparse_set(train, ctx).fingerprint()
    assert recipe["params"]["train_lr"] == 1e-4 and recipe["params"]["warmup_steps"] == 0
    again = eclipse()
    again.purified(train, ctx)
    assert again.model_source == cm.model_source
    assert len([f for f in (ctx.artifacts.root / "avatar-ddpm").iterdir() if f.is_dir()]) == 1


def test_smoke_run_through_the_cli(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from ueb.cli import app

    monkeypatch.setenv("UEB_CACHE", str(tmp_path / "cache"))
    run = str(tmp_path / "run")
    args = ["run", "-p", "random-noise", "-c", "eclipse", "--no-clean", "--profile", "smoke"]
    res = CliRunner().invoke(app, [*args, "--run-dir", run, "--workers", "1"])
    assert res.exit_code == 0, res.output
    shown = CliRunner().invoke(
        app, ["show", "--run", run, "-p", "random-noise", "-c", "eclipse", "--json"]
    )
    record = json.loads(shown.stdout[shown.stdout.index("{") :])
    extra = record["extra"]
    assert record["status"] == "ok" and record["iterations"] == 12
    assert extra["eclipse_model_step"] == 12 and extra["eclipse_sparse_images"] == 8  # 4% of 200
    assert extra["eclipse_changed_pixels"] > 0.5
    assert extra["eclipse_model"].startswith("trained-on-sparse:")
    assert math.isfinite(record["final_acc"])


# --------------------------------------------------------------------------- official checkpoint

SMALL = {"channels": (32, 64, 64, 64), "layers_per_block": 3, "attention_levels": (1, 2)}


def official_state(unet) -> dict[str, torch.Tensor]:
    """A diffusers U-Net's weights under improved-diffusion's names (the inverse renaming)."""
    from ueb_defences.eclipse_checkpoint import _RES, HEADS, official_layout

    sd = unet.state_dict()
    out = {}
    for src, dst, kind in official_layout(SMALL["channels"], 3, SMALL["attention_levels"]):
        if kind == "res":
            for a, b in _RES:
                for part in ("weight", "bias"):
                    if f"{dst}.{b}.{part}" in sd:
                        out[f"{src}.{a}.{part}"] = sd[f"{dst}.{b}.{part}"]
        elif kind == "attn":
            for part in ("weight", "bias"):
                out[f"{src}.norm.{part}"] = sd[f"{dst}.group_norm.{part}"]
                q, k, v = (sd[f"{dst}.to_{n}.{part}"] for n in "qkv")
                heads = [t.reshape(HEADS, -1, *t.shape[1:]) for t in (q, k, v)]
                fused = torch.stack(heads, 1).reshape(3 * q.shape[0], *q.shape[1:])
                out[f"{src}.qkv.{part}"] = fused.unsqueeze(-1) if part == "weight" else fused
            out[f"{src}.proj_out.weight"] = sd[f"{dst}.to_out.0.weight"].unsqueeze(-1)
            out[f"{src}.proj_out.bias"] = sd[f"{dst}.to_out.0.bias"]
        else:
            for part in ("weight", "bias"):
                out[f"{src}.{part}"] = sd[f"{dst}.{part}"]
    return out


@pytest.fixture(scope="module")
def small_official(tmp_path_factory):
    from ueb_defences.eclipse_checkpoint import build_unet

    torch.manual_seed(0)
    unet = build_unet(32, 3, SMALL["channels"], 3, SMALL["attention_levels"], 0.0).eval()
    with torch.no_grad():
        for w in unet.parameters():
            w.normal_(0, 0.05)  # the zero-initialised output layers too
    file = tmp_path_factory.mktemp("official") / "ema_0.9999_250000.pt"
    state = official_state(unet)
    torch.save(state, file)
    return unet, state, file


def test_official_layout_is_improved_diffusions(small_official):
    import hashlib

    _, state, _ = small_official
    text = "\n".join(f"{k} {tuple(v.shape)}" for k, v in sorted(state.items()))
    # names and shapes of improved-diffusion's UNetModel(model_channels=32, num_res_blocks=3,
    # attention_resolutions=(2, 4), channel_mult=(1, 2, 2, 2), num_heads=4, learn_sigma)
    assert len(state) == 446
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == "8056b009e98a495a"


def test_official_checkpoint_loads_with_rescaled_timesteps(small_official):
    from ueb_defences.eclipse_checkpoint import load_official

    unet, _, file = small_official
    loaded, scheduler = load_official(str(file), image_size=32, in_channels=3, steps=4000,
                                      schedule="cosine", **SMALL)  # fmt: skip
    assert scheduler.config.variance_type == "learned_range" and scheduler.config.clip_sample
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([99, 99])
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(x, t).sample, unet(x, t.float() / 4).sample, atol=1e-6)


def test_official_checkpoint_errors_are_one_line(small_official, tmp_path):
    from ueb_defences.eclipse_checkpoint import load_official

    _, state, _ = small_official
    kw = {"image_size": 32, "in_channels": 3, "steps": 4000, "schedule": "cosine", **SMALL}
    broken = dict(state)
    del broken["middle_block.1.qkv.weight"]
    torch.save(broken, tmp_path / "missing.pt")
    with pytest.raises(ConfigError, match="middle_block.1.qkv.weight") as err:
        load_official(str(tmp_path / "missing.pt"), **kw)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="is .*the network's"):
        load_official(str(small_official[2]), **{**kw, "channels": (64, 128, 128, 128)})
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read"):
        load_official(str(tmp_path / "junk.pt"), **kw)
    with pytest.raises(ConfigError, match="checkpoint"):
        eclipse({"checkpoint": str(tmp_path / "nowhere.pt")}).preflight()
    with pytest.raises(ConfigError, match="both"):
        eclipse({"checkpoint": str(small_official[2]), "model_dir": str(tmp_path)}).preflight()


def test_purifies_with_the_official_checkpoint_at_its_own_t_star(small_official, tmp_path):
    _, _, file = small_official
    cm = eclipse({"checkpoint": str(file), "reverse_steps": 2, **SMALL})
    cm.preflight()
    data = make_imageset(per_class=2, num_classes=2, size=16)
    out = cm.purified(data, make_run_context(tmp_path, seed=0))
    assert cm.model_step == 100 and cm.model_source.startswith("checkpoint:")
    assert out.images.shape == data.images.shape and not torch.equal(out.images, data.images)
