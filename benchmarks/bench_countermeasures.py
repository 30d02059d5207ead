"""Data-stage countermeasures over a CIFAR-sized training set: 50,000 images of 32x32.

Targets: JPEG over the whole set in about 2 s (a thread pool around libjpeg-turbo), against
PIL's per-image loop (what the reference code runs); filters, bit-depth reduction and
grayscale vectorised in torch, at most ~1 s each. Run:
    pytest benchmarks/bench_countermeasures.py --benchmark-enable
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ueb_countermeasures import ops

N = 50_000


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Natural-looking content: upsampled 8x8 colour fields plus fine noise (not pure noise,
    which is JPEG's worst case)."""
    gen = torch.Generator().manual_seed(0)
    coarse = torch.rand(N, 3, 8, 8, generator=gen)
    x = F.interpolate(coarse, size=32, mode="bilinear", align_corners=False)
    x = x + torch.randn(x.shape, generator=gen) * 0.03
    return x.clamp(0, 1).mul(255).round().to(torch.uint8)


def _record(benchmark, n: int) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        benchmark.extra_info["images_per_s"] = n / stats.stats.mean
        benchmark.extra_info["seconds_per_50k"] = stats.stats.mean * 50_000 / n


@pytest.mark.parametrize("encoder", ["opencv", "simplejpeg"])
@pytest.mark.parametrize("quality", [10, 50])
def test_jpeg_whole_set_pooled(benchmark, images, encoder, quality):
    out = benchmark.pedantic(
        ops.jpeg, args=(images, quality, "420", encoder), rounds=3, iterations=1
    )
    assert out.shape == images.shape and out.dtype == torch.uint8
    _record(benchmark, N)


def test_jpeg_pil_per_image_reference(benchmark, images):
    """PIL save/open per image, one core, on a 5,000-image slice (seconds_per_50k scales it)."""
    from PIL import Image

    part = images[:5000].permute(0, 2, 3, 1).contiguous().numpy()

    def run():
        out = np.empty_like(part)
        for i, img in enumerate(part):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, "JPEG", quality=10)
            buf.seek(0)
            out[i] = np.asarray(Image.open(buf))
        return out

    benchmark.pedantic(run, rounds=1, iterations=1)
    _record(benchmark, len(part))


@pytest.mark.parametrize(
    "name,fn",
    [
        ("bdr-2bit", lambda x: ops.bit_depth_reduction(x, 2)),
        ("grayscale", ops.grayscale),
        ("mean-filter-3", lambda x: ops.mean_filter(x, 3)),
        ("median-filter-3", lambda x: ops.median_filter(x, 3)),
        ("gaussian-filter-3", lambda x: ops.gaussian_filter(x, 3, 0.1)),
        ("gaussian-noise", lambda x: ops.gaussian_noise(x, 0.1, torch.Generator().manual_seed(0))),
    ],
)
@pytest.mark.parametrize("threads", [1, 0], ids=["1-thread", "all-threads"])
def test_vectorised_whole_set(benchmark, images, name, fn, threads):
    """On an oversubscribed machine one thread beats torch's default (spinning OpenMP workers)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        out = benchmark.pedantic(fn, args=(images,), rounds=3, iterations=1)
    finally:
        torch.set_num_threads(before)
    assert out.shape == images.shape
    _record(benchmark, N)
