"""The paper's Table I countermeasures: each checked on input whose right output is known."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from ueb.imageset import ImageSet
from ueb.interfaces import Batch, StepContext
from ueb.registry import get_registry

TABLE_I = [
    "vanilla", "cutout", "cutmix", "mixup", "mean-filter", "median-filter", "gaussian-filter",
    "bdr", "grayscale", "gaussian-noise", "jpeg10", "jpeg50", "at-linf", "at-l2",
]  # fmt: skip
ISS = ["iss-grayscale", "iss-jpeg", "iss-bdr"]


def create(name: str, **params):
    return get_registry().create("countermeasure", name, params)


def rand_images(n=6, c=3, size=32, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, size, size), generator=gen, dtype=torch.uint8)


def as_set(images: torch.Tensor) -> ImageSet:
    return ImageSet(images, torch.arange(len(images)) % 2, ("a", "b"))


def step_ctx(seed=0, model=None) -> StepContext:
    return StepContext(0, 10, torch.Generator().manual_seed(seed), model or nn.Identity())


def hwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).contiguous().numpy()


# --------------------------------------------------------------------------- registration


def test_all_table_i_and_iss_names_registered_with_stage():
    reg = get_registry()
    for name in TABLE_I + ISS:
        entry = reg.get("countermeasure", name)
        assert entry.meta["stage"] in ("data", "train"), name
        cm = entry.create()
        assert cm.name == name and type(cm).stage == entry.meta["stage"]
    assert reg.create("countermeasure", "jpeg50").params.quality == 50
    assert reg.create("countermeasure", "at-l2").params.eps == 1.0
    assert reg.create("countermeasure", "at-linf").params.eps == pytest.approx(8 / 255)


def test_vanilla_changes_nothing(run_context):
    cm = create("vanilla")
    data = as_set(rand_images())
    assert cm.transform_train_set(data, run_context) is data
    batch = Batch(torch.rand(4, 3, 8, 8), torch.arange(4))
    assert cm.augment(batch, step_ctx()) is batch


# --------------------------------------------------------------------------- data stage


def test_bdr_keeps_four_levels_per_channel(run_context):
    out = create("bdr").transform_train_set(as_set(rand_images(20)), run_context).images
    assert out.dtype == torch.uint8
    for ch in range(3):
        assert sorted(out[:, ch].unique().tolist()) == [0, 64, 128, 192]
    uniform = create("bdr", mode="uniform").transform_train_set(
        as_set(rand_images(20)), run_context
    )
    assert sorted(uniform.images.unique().tolist()) == [0, 85, 170, 255]


def test_grayscale_channels_equal_and_match_pil(run_context):
    from PIL import Image

    x = rand_images(8)
    out = create("grayscale").transform_train_set(as_set(x), run_context).images
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    ref = np.stack([np.asarray(Image.fromarray(i).convert("L")) for i in hwc(x)])
    assert np.array_equal(out[:, 0].numpy(), ref)  # PIL's fixed-point ITU-R 601 luma, bit for bit


@pytest.mark.parametrize("name,quality", [("jpeg10", 10), ("jpeg50", 50)])
def test_jpeg_equals_the_library_roundtrip_and_pil(run_context, name, quality):
    import cv2
    from PIL import Image

    x = rand_images(5)
    out = hwc(create(name).transform_train_set(as_set(x), run_context).images)
    for img, got in zip(hwc(x), out, strict=True):
        flags = [cv2.IMWRITE_JPEG_QUALITY, quality]
        _, data = cv2.imencode(".jpg", np.ascontiguousarray(img[:, :, ::-1]), flags)
        assert np.array_equal(got, cv2.imdecode(data, cv2.IMREAD_COLOR)[:, :, ::-1])
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=quality)  # what the reference code runs
        buf.seek(0)
        assert np.array_equal(got, np.asarray(Image.open(buf)))
    assert not np.array_equal(out, hwc(x))


def test_jpeg_simplejpeg_encoder_equals_its_own_roundtrip(run_context):
    import simplejpeg

    x = rand_images(4)
    cm = create("jpeg10", encoder="simplejpeg", workers=2)
    out = hwc(cm.transform_train_set(as_set(x), run_context).images)
    for img, got in zip(hwc(x), out, strict=True):
        data = simplejpeg.encode_jpeg(np.ascontiguousarray(img), quality=10, colorsubsampling="420")
        assert np.array_equal(got, simplejpeg.decode_jpeg(data))


def test_jpeg_lower_quality_loses_more():
    from ueb_countermeasures import ops

    x = rand_images(8)
    err = {q: (ops.jpeg(x, q).float() - x.float()).abs().mean() for q in (10, 50)}
    assert err[10] > err[50] > 0


def test_median_filter_removes_a_single_pixel_spike(run_context):
    import cv2

    x = torch.full((1, 3, 32, 32), 100, dtype=torch.uint8)
    x[0, :, 10, 20] = 255
    out = create("median-filter").transform_train_set(as_set(x), run_context).images
    assert (out == 100).all()
    y = rand_images(4)
    got = hwc(create("median-filter").transform_train_set(as_set(y), run_context).images)
    ref = np.stack([cv2.medianBlur(np.ascontiguousarray(i), 3) for i in hwc(y)])
    assert np.array_equal(got, ref)


def test_mean_filter_keeps_a_constant_image_and_matches_opencv(run_context):
    import cv2

    x = torch.full((2, 3, 32, 32), 77, dtype=torch.uint8)
    assert (create("mean-filter").transform_train_set(as_set(x), run_context).images == 77).all()
    y = rand_images(4)
    got = hwc(create("mean-filter").transform_train_set(as_set(y), run_context).images)
    ref = np.stack([cv2.blur(np.ascontiguousarray(i), (3, 3)) for i in hwc(y)])
    assert np.array_equal(got, ref)
    x[:, :, 5, 5] = 167  # one bright pixel spreads as 90/9 = 10 over its 3x3 neighbourhood
    out = create("mean-filter").transform_train_set(as_set(x), run_context).images
    assert (out[:, :, 4:7, 4:7] == 87).all() and (out[:, :, 8:, 8:] == 77).all()


def test_gaussian_filter_sigma_point_one_is_identity_on_8_bit(run_context):
    import torchvision.transforms as T
    from PIL import Image

    x = rand_images(4)
    assert torch.equal(
        create("gaussian-filter").transform_train_set(as_set(x), run_context).images, x
    )
    out = create("gaussian-filter", sigma=1.0).transform_train_set(as_set(x), run_context).images
    ref = np.stack([np.asarray(T.GaussianBlur(3, 1.0)(Image.fromarray(i))) for i in hwc(x)])
    assert np.abs(hwc(out).astype(int) - ref.astype(int)).max() <= 1


def test_gaussian_noise_has_std_point_one_and_is_seeded(run_context):
    x = torch.full((64, 3, 32, 32), 128, dtype=torch.uint8)
    cm = create("gaussian-noise")
    out = cm.transform_train_set(as_set(x), run_context).images
    assert out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 1
    noise = out - 128 / 255
    assert abs(float(noise.std()) - 0.1) < 0.003 and abs(float(noise.mean())) < 0.003
    assert torch.equal(out, cm.transform_train_set(as_set(x), run_context).images)
    per_step = create("gaussian-noise-every-step")
    assert type(per_step).stage == "train"  # it changes batches, so it says so
    assert per_step.transform_train_set(as_set(x), run_context).images is x
    batch = per_step.augment(Batch(torch.full((64, 3, 32, 32), 0.5), torch.zeros(64)), step_ctx())
    assert abs(float((batch.x - 0.5).std()) - 0.1) < 0.003


# --------------------------------------------------------------------------- train stage


def test_cutout_zeroes_one_16px_square_at_32_and_half_the_side_at_64():
    for size, side in ((32, 16), (64, 32)):
        batch = Batch(torch.ones(16, 3, size, size), torch.zeros(16, dtype=torch.long))
        out = create("cutout").augment(batch, step_ctx()).x
        for img in out:
            zero = img[0] == 0
            assert int(zero.sum()) == side * side
            rows, cols = zero.nonzero(as_tuple=True)
            assert (
                int(rows.max() - rows.min()) == side - 1
                and int(cols.max() - cols.min()) == side - 1
            )
            assert (img[:, zero] == 0).all() and (img[:, ~zero] == 1).all()
    assert create("cutout", size=112).side(224, 224) == 112


def _index_batch(n=16, size=32):
    """Image i is the constant (i + 1) / (n + 1); label i."""
    vals = (torch.arange(n).float() + 1) / (n + 1)
    return Batch(vals.view(-1, 1, 1, 1).expand(n, 3, size, size).clone(), torch.arange(n)), vals


def test_cutmix_pastes_another_images_box_and_mixes_labels_by_area():
    batch, vals = _index_batch()
    out = create("cutmix").augment(batch, step_ctx(3))
    assert torch.equal(out.y, batch.y) and out.y2 is not None and out.lam is not None
    assert (out.y2 != out.y).all()  # the content always comes from another image
    for i in range(len(vals)):
        own = out.x[i] == vals[i]
        other = out.x[i] == vals[out.y2[i]]
        assert (own | other).all()
        assert float(out.lam[i]) == pytest.approx(float(own[0].float().mean()))
        if other.any():  # the pasted part is one axis-aligned box
            rows, cols = other[0].nonzero(as_tuple=True)
            box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
            assert int(box) == int(other[0].sum())
    assert float(out.lam.min()) >= 0 and float(out.lam.max()) <= 1
    assert float(out.lam.std()) > 0.05  # box size varies


def test_mixup_keeps_the_current_label_and_blends_with_uniform_weight():
    batch, vals = _index_batch(64)
    out = create("mixup").augment(batch, step_ctx(5))
    assert torch.equal(out.y, batch.y) and out.y2 is None and out.lam is None
    mixed = create("mixup", label="mix").augment(batch, step_ctx(5))
    assert torch.equal(mixed.x, out.x)  # same draws
    w, other = mixed.lam, mixed.y2
    assert (other != batch.y).all()
    expect = w * vals + (1 - w) * vals[other]
    assert torch.allclose(out.x[:, 0, 0, 0], expect, atol=1e-6)
    assert float(w.min()) >= 0 and float(w.max()) <= 1 and abs(float(w.mean()) - 0.5) < 0.1


class _Tiny(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))

    def forward(self, x):
        return self.net(x)


def tiny_classifier(classes=4):
    from ueb.nn import Classifier

    torch.manual_seed(0)
    return Classifier(nn.Sequential(_Tiny(), nn.Flatten()), 32, classes)


@pytest.mark.parametrize("name,radius", [("at-linf", 8 / 255), ("at-l2", 1.0)])
def test_adversarial_training_stays_in_its_ball_and_raises_the_loss(name, radius):
    model = tiny_classifier()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 16, 16, generator=gen)
    batch = Batch(x, torch.arange(8) % 4)
    kw = {} if name == "at-linf" else {"step_size": 0.25}  # L2 ascent visible within 10 steps
    cm = create(name, **kw)
    model.train()
    x_adv = cm.adversarial(model, batch, torch.Generator().manual_seed(1))
    assert model.training  # mode restored
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if name == "at-linf" else delta.norm(dim=1)
    assert (size <= radius + 1e-5).all() and (size > 0.5 * radius).all()
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    model.eval()
    with torch.no_grad():
        assert batch.loss(model(x_adv)) > batch.loss(model(x)) + 1e-3
    no_start = create(name, random_start=False, **kw).adversarial(model, batch, gen)
    with torch.no_grad():
        assert batch.loss(model(no_start)) > batch.loss(model(x)) + 1e-3


def test_adversarial_loss_hook_trains_on_pgd_examples():
    model = tiny_classifier()
    batch = Batch(
        torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.arange(4)
    )
    seen: list[torch.Tensor] = []
    model.register_forward_hook(
        lambda module, inputs, output: seen.append(inputs[0].detach().clone())
    )
    cm = create("at-linf", steps=2)
    model.train()
    loss = cm.loss(model, batch, step_ctx(model=model))
    trained_on = seen[-1]  # the forward pass whose loss is returned
    gap = float((trained_on - batch.x).abs().amax())
    assert 1 / 255 < gap <= 8 / 255 + 1e-6  # perturbed, inside the ball
    assert float(trained_on.min()) >= 0 and float(trained_on.max()) <= 1
    with torch.no_grad():
        clean_loss = batch.loss(model(batch.x))
    assert (
        float(loss.detach()) > float(clean_loss) + 1e-3
    )  # the adversarial batch's loss, not the clean one
    loss.backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters())


# --------------------------------------------------------------------------- end to end


def _victim(num_classes: int, size: int):
    reg = get_registry()
    if "fastnet" in reg.names("victim"):  # narrow widths: seconds, not minutes, on a busy CPU
        small = {"stem_width": 8, "widths": (16, 32)}
        return reg.create("victim", "fastnet", small).build(num_classes, size)
    return tiny_classifier(num_classes)


@pytest.mark.parametrize("name", TABLE_I + ISS)
def test_each_countermeasure_trains_a_victim_through_the_trainer(run_context, name):
    from dataclasses import replace

    from ueb.testing import make_imageset
    from ueb.training import Trainer

    train = make_imageset(per_class=8, num_classes=4, seed=0)
    test = make_imageset(per_class=3, num_classes=4, seed=1)
    cm = create(name, **({"steps": 2} if name.startswith("at-") else {}))
    cfg = replace(run_context.training, iterations=4, batch_size=16, milestones=(3,), eval_every=0)
    trainer = Trainer(cfg, device=run_context.device, seed=0)
    train2 = cm.transform_train_set(train, run_context)
    test2 = cm.transform_test_set(test, run_context)
    assert train2.images.shape == train.images.shape and torch.equal(train2.labels, train.labels)
    # a data-stage countermeasure reaches the training images, the others leave them alone;
    # sigma 0.1 gives the neighbours a weight of e^-50: the Gaussian filter is the identity on 8 bits
    assert torch.equal(train2.images, train.images) == (
        cm.stage != "data" or name == "gaussian-filter"
    )
    model = _victim(train.num_classes, train.image_size)
    before = [p.detach().clone() for p in model.parameters()]
    result = cm.fit(model, train2, test2, trainer, run_context)
    assert result.iterations == cfg.iterations
    # the reported accuracy is the returned model's on the test set it was given
    assert result.final_acc == pytest.approx(trainer.evaluate(model, test2))
    assert result.history[-1]["acc"] == result.final_acc and result.peak_acc >= result.final_acc
    assert np.isfinite(result.history[-1]["loss"]) and result.history[-1]["loss"] > 0
    assert any(
        not torch.equal(a, b.detach().cpu())
        for a, b in zip(before, model.parameters(), strict=True)
    )
