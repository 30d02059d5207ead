"""Deep Hiding generation speed on CPU: images/s of hiding 32x32 images.

Targets: the paper-scale 16-block hider >= 100 images/s on a CPU; the quick-profile hider
(2 blocks, growth 16) much faster. Run: pytest benchmarks/bench_deephiding.py --benchmark-enable
"""

from __future__ import annotations

import pytest
import torch
from ueb_deephiding.inn import HidingNetwork

BATCH = 256


@pytest.mark.parametrize(
    ("label", "blocks", "growth"),
    [("paper-16-blocks", 16, 32), ("quick-2-blocks-g16", 2, 16)],
)
def test_generation_images_per_second(benchmark, label, blocks, growth):
    torch.manual_seed(0)
    net = HidingNetwork(blocks=blocks, in_channels=3, growth=growth).eval()
    with torch.no_grad():
        for p in net.parameters():  # a trained-like network: no all-zero convs
            p.add_(torch.randn_like(p) * 0.01)
    clean = torch.rand(BATCH, 3, 32, 32)
    hidden = torch.rand(BATCH, 3, 32, 32)

    def run():
        with torch.no_grad():
            return net.hide(clean, hidden)[0]

    out = benchmark(run)
    assert out.shape == clean.shape
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        benchmark.extra_info["images_per_s"] = BATCH / stats.stats.mean
