"""Image Shortcut Squeezing: the three compressions, their sweep parameters, the test-set switch."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from ueb.errors import ConfigError
from ueb.imageset import ImageSet
from ueb.registry import get_registry


def create(name: str, **params):
    return get_registry().create("countermeasure", name, params)


def data(n=6, seed=0) -> ImageSet:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=gen, dtype=torch.uint8)
    return ImageSet(x, torch.arange(n) % 2, ("a", "b"))


def hwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def test_iss_grayscale_is_torchvision_grayscale3(run_context):
    from PIL import Image

    train = data()
    out = create("iss-grayscale").transform_train_set(train, run_context).images
    # torchvision's Grayscale(3) on a PIL image is convert("L") replicated to RGB
    ref = np.stack(
        [np.asarray(Image.fromarray(i).convert("L").convert("RGB")) for i in hwc(train.images)]
    )
    got = hwc(out).astype(int)
    assert (got[..., 0] == got[..., 1]).all() and (got[..., 1] == got[..., 2]).all()
    assert np.array_equal(got, ref)


@pytest.mark.parametrize("quality", [2, 10, 30])
def test_iss_jpeg_is_pil_jpeg_at_the_swept_quality(run_context, quality):
    from PIL import Image

    train = data(4)
    out = hwc(create("iss-jpeg", quality=quality).transform_train_set(train, run_context).images)
    for img, got in zip(hwc(train.images), out, strict=True):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=quality)  # the official code's call
        buf.seek(0)
        assert np.array_equal(got, np.asarray(Image.open(buf)))


def test_iss_jpeg_sweep_orders_by_distortion(run_context):
    train = data(8)
    err = []
    for q in (2, 10, 50):
        out = create("iss-jpeg", quality=q).transform_train_set(train, run_context).images
        err.append(float((out.float() - train.images.float()).abs().mean()))
    assert err[0] > err[1] > err[2] > 0


@pytest.mark.parametrize(
    "bits,levels", [(1, [0, 128]), (2, [0, 64, 128, 192]), (3, list(range(0, 256, 32)))]
)
def test_iss_bdr_is_posterize_at_the_swept_depth(run_context, bits, levels):
    from PIL import Image, ImageOps

    train = data(20)
    out = create("iss-bdr", bits=bits).transform_train_set(train, run_context).images
    assert sorted(out.unique().tolist()) == levels
    # torchvision's RandomPosterize(bits, p=1) on PIL images calls ImageOps.posterize
    ref = np.stack(
        [np.asarray(ImageOps.posterize(Image.fromarray(i), bits)) for i in hwc(train.images)]
    )
    assert np.array_equal(hwc(out), ref)


def test_test_set_stays_clean_unless_test_too(run_context):
    test = data(4, seed=1)
    for name in ("iss-grayscale", "iss-jpeg", "iss-bdr"):
        assert create(name).transform_test_set(test, run_context) is test
        both = create(name, test_too=True)
        squeezed = both.transform_test_set(test, run_context).images
        assert torch.equal(squeezed, both.transform_train_set(test, run_context).images)
        assert not torch.equal(squeezed, test.images)


def test_iss_matches_the_table_i_operations(run_context):
    train = data(6)
    pairs = [("iss-grayscale", "grayscale", {}), ("iss-jpeg", "jpeg10", {}), ("iss-bdr", "bdr", {})]
    for iss, table_i, kw in pairs:
        a = create(iss, **kw).transform_train_set(train, run_context).images
        b = create(table_i).transform_train_set(train, run_context).images
        assert torch.equal(a, b), iss


def test_bad_sweep_values_fail_with_one_line():
    with pytest.raises(ConfigError, match="quality"):
        create("iss-jpeg", quality=0)
    with pytest.raises(ConfigError, match="bits"):
        create("iss-bdr", bits=9)
