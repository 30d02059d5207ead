"""Deterministic use of libraries that draw from torch's global generator (kornia, diffusers).

kornia's augmentations sample their parameters from the global generator. To keep a run
repeatable from its own seed, every call runs inside a forked global state seeded from the
caller's generator: the global state outside is left untouched, and the same generator state
gives the same augmentation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def draw_seed(gen: torch.Generator) -> int:
    """A 62-bit seed drawn from `gen` (advances it)."""
    return int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device))


@contextmanager
def global_rng_from(gen: torch.Generator) -> Iterator[None]:
    """Run the body with torch's global RNG seeded from `gen`, restoring the outer state after."""
    seed = draw_seed(gen)
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
