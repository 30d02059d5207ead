"""A PNG contact sheet of a bank: one row per class (its canny map first), for inspection."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .bank import SemanticBank


def grid_array(
    bank: SemanticBank,
    classes: int = 10,
    per_class: int = 10,
    cell: int = 64,
    with_edges: bool = True,
    gap: int = 2,
) -> np.ndarray:
    """The grid as uint8 (H, W, 3)."""
    import cv2

    k = min(classes, bank.num_classes)
    m = min(per_class, bank.per_class)
    cols = m + (1 if with_edges and bank.edges is not None else 0)
    sheet = np.full((k * (cell + gap) + gap, cols * (cell + gap) + gap, 3), 255, dtype=np.uint8)
    for c in range(k):
        tiles = [bank.images[c, j].permute(1, 2, 0).numpy() for j in range(m)]
        if cols > m:
            e = bank.edges[c]  # type: ignore[index]
            tiles.insert(0, np.repeat(e[..., None], 3, axis=2))
        for j, tile in enumerate(tiles):
            interp = cv2.INTER_NEAREST if tile.shape[0] < cell else cv2.INTER_AREA
            t = cv2.resize(np.ascontiguousarray(tile), (cell, cell), interpolation=interp)
            y, x = gap + c * (cell + gap), gap + j * (cell + gap)
            sheet[y : y + cell, x : x + cell] = t
    return sheet


def write_grid(bank: SemanticBank, out: str | Path, **kw: int | bool) -> Path:
    from PIL import Image

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid_array(bank, **kw)).save(out)  # type: ignore[arg-type]
    return out
