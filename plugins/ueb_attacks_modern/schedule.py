"""The per-epoch cosine learning-rate factor of EhanW/AUE-AAP (utils.py, `cosine_annealing`)."""

from __future__ import annotations

import math


def cosine_factor(epoch: int, epochs: int, floor: float, warmup: int = 0) -> float:
    """lr multiplier in epoch `epoch` (0-based): linear warm-up, then cosine from 1 to `floor`."""
    if epoch < warmup:
        return (epoch + 1) / warmup
    span = max(1, epochs - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos((epoch - warmup) / span * math.pi))
