"""Per-unit costs of the modern countermeasures, for sizing the profiles.

* UEraser: the augmentation policy on one batch of 128 CIFAR-sized images (it runs K times per
  step in the adversarial phase);
* Orthogonal Projection: projecting 50,000 CIFAR-sized images off a 10-vector span (target:
  about a second; the linear fit is 20 epochs of a (3072 x 10) matmul on top);
* AVATAR: one reverse step of a small U-Net over 256 images (the purification costs
  images x reverse_steps of these).
Run: pytest benchmarks/bench_countermeasures_modern.py --benchmark-enable
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.rand(128, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_ueraser_policy_batch128(benchmark, batch):
    from ueb_countermeasures_modern.ueraser import UEraser

    cm = UEraser()
    gen = torch.Generator().manual_seed(0)
    out = benchmark(cm.augmented_copies, batch, 1, gen)
    assert out.shape == batch.shape


def test_orthogonal_projection_50k(benchmark):
    from ueb_countermeasures_modern.orthogonal import orthonormal_basis, project_out

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(50_000, 3 * 32 * 32, generator=gen)
    basis = orthonormal_basis(torch.randn(10, 3 * 32 * 32, generator=gen))
    out = benchmark(project_out, x, basis)
    assert out.shape == x.shape


def test_avatar_reverse_step_256(benchmark):
    from diffusers import DDPMScheduler, UNet2DModel
    from ueb_countermeasures_modern.avatar import purify

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=32, block_out_channels=(16, 32), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=16,
    ).eval()  # fmt: skip
    x = torch.rand(256, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out = benchmark(purify, x, unet, DDPMScheduler(), 100, 1, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
