"""Figures as PNG bytes, drawn with matplotlib's Agg canvas (no display, no pyplot state).

Each function takes arrays already computed (accuracies, images, features, maps) and returns
the PNG; `ueb.analysis.figures` decides what to draw from a run.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 110


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def _hwc(image: np.ndarray) -> np.ndarray:
    """(C, H, W) in [0, 1] -> what imshow wants: (H, W) for one channel, (H, W, 3) otherwise."""
    img = np.clip(image, 0.0, 1.0)
    return img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0))


def _show(ax: Any, image: np.ndarray) -> None:
    ax.imshow(
        _hwc(image),
        cmap="gray" if image.shape[0] == 1 else None,
        vmin=0.0,
        vmax=1.0,
        interpolation="nearest",
    )
    ax.set_xticks([])
    ax.set_yticks([])


def heatmap(
    values: np.ndarray,
    rows: Sequence[str],
    columns: Sequence[str],
    texts: Sequence[Sequence[str]],
    title: str,
) -> bytes:
    """The matrix as colours: rows = poisoners, columns = countermeasures, colour = accuracy (%).

    `values` is NaN where a cell has no number; `texts` is what each cell shows.
    """
    n_rows, n_cols = values.shape
    fig = Figure(figsize=(1.6 + 0.72 * n_cols, 1.2 + 0.42 * n_rows))
    ax = fig.add_subplot()
    masked = np.ma.masked_invalid(values)
    cmap = _cmap("viridis").with_extremes(bad="#dddddd")
    im = ax.imshow(masked, cmap=cmap, vmin=0.0, vmax=100.0, aspect="auto")
    ax.set_xticks(
        range(n_cols), labels=list(columns), rotation=45, ha="right", rotation_mode="anchor"
    )
    ax.set_yticks(range(n_rows), labels=list(rows))
    for i in range(n_rows):
        for j in range(n_cols):
            v = values[i, j]
            colour = "black" if (not math.isnan(v) and v > 60) or math.isnan(v) else "white"
            ax.text(j, i, texts[i][j], ha="center", va="center", fontsize=7, color=colour)
    ax.set_title(title, fontsize=10)
    bar = fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02)
    bar.set_label("test accuracy (%)")
    return _png(fig)


def seed_dots(
    series: Sequence[tuple[str, Sequence[Sequence[tuple[float, bool | None]]]]],
    columns: Sequence[str],
    title: str,
) -> bytes:
    """Every seed's accuracy as a dot: x = countermeasure, one colour per poisoner row, a short
    bar at each mean. Latched seeds (the shortcut probe fired) are drawn as downward triangles,
    so a bimodal cell (some seeds latched, some not) reads at a glance.

    `series`: (row label, per column the (value, latched) of each seed)."""
    n_cols, n_rows = len(columns), max(1, len(series))
    fig = Figure(figsize=(2.0 + 0.62 * n_cols, 4.2))
    ax = fig.add_subplot()
    colours = _cmap("tab10")
    width = 0.8 / n_rows
    any_latched = False
    for k, (label, per_column) in enumerate(series):
        colour = colours(k % 10)
        centre = -0.4 + width * (k + 0.5)
        for j, points in enumerate(per_column):
            if not points:
                continue
            x = j + centre
            values = [v for v, _ in points]
            for i, (v, latched) in enumerate(points):
                jitter = (i - (len(points) - 1) / 2) * width * 0.18
                if latched:
                    any_latched = True
                ax.plot(
                    x + jitter,
                    v,
                    marker="v" if latched else "o",
                    markersize=5,
                    color=colour,
                    markeredgecolor="black" if latched else colour,
                    linestyle="none",
                )
            ax.hlines(float(np.mean(values)), x - width * 0.4, x + width * 0.4, color=colour)
        ax.plot([], [], marker="o", color=colour, linestyle="none", label=label)
    if any_latched:
        ax.plot([], [], marker="v", color="white", markeredgecolor="black", linestyle="none",
                label="seed latched")  # fmt: skip
    ax.set_xticks(
        range(n_cols), labels=list(columns), rotation=45, ha="right", rotation_mode="anchor"
    )
    ax.set_xlim(-0.6, n_cols - 0.4)
    ax.set_ylim(0.0, 100.0)
    ax.set_ylabel("test accuracy (%), one dot per seed")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower left", ncol=min(4, n_rows + 1))
    return _png(fig)


def _cmap(name: str) -> Any:
    import matplotlib

    return matplotlib.colormaps[name].copy()


def amplified(perturbation: np.ndarray) -> np.ndarray:
    """|delta| scaled to [0, 1] per image (the paper's Fig. 5: 'absoluted and normalized')."""
    a = np.abs(perturbation)
    hi = a.reshape(a.shape[0], -1).max(axis=1).reshape(-1, *([1] * (a.ndim - 1)))
    return np.divide(a, hi, out=np.zeros_like(a), where=hi > 0)


def perturbation_grid(
    clean: np.ndarray, poisoned: np.ndarray, captions: Sequence[str], title: str
) -> bytes:
    """Three rows over k samples: clean images, unlearnable examples, amplified |perturbation|.

    `clean` and `poisoned` are (k, C, H, W) floats in [0, 1].
    """
    k = len(clean)
    amp = amplified(poisoned - clean)
    fig = Figure(figsize=(1.25 * k + 0.9, 4.1))
    axes = fig.subplots(3, k, squeeze=False)
    for j in range(k):
        for i, img in enumerate((clean[j], poisoned[j], amp[j])):
            _show(axes[i][j], img)
        axes[0][j].set_title(captions[j], fontsize=7)
    for i, name in enumerate(("clean image", "unlearnable", "|perturbation|\n(normalised)")):
        axes[i][0].set_ylabel(name, fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def tsne_pair(
    clean_xy: np.ndarray,
    pert_xy: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    title: str,
) -> bytes:
    """Two scatter plots (the paper's Fig. 4): features of clean images, features of perturbations."""
    fig = Figure(figsize=(10, 4.6))
    axes = fig.subplots(1, 2)
    cmap = _cmap("tab10" if len(classes) <= 10 else "tab20")
    for ax, xy, name in (
        (axes[0], clean_xy, "clean images"),
        (axes[1], pert_xy, "perturbations x_ue - x_c"),
    ):
        for c, cname in enumerate(classes):
            sel = labels == c
            if sel.any():
                ax.scatter(
                    xy[sel, 0],
                    xy[sel, 1],
                    s=9,
                    color=cmap(c % cmap.N),
                    label=cname,
                    alpha=0.85,
                    linewidths=0,
                )
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[1].legend(
        loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, markerscale=1.5, frameon=False
    )
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def gradcam_grid(
    clean: np.ndarray,
    poisoned: np.ndarray,
    maps: dict[str, np.ndarray],
    captions: Sequence[str],
    title: str,
) -> bytes:
    """Rows = samples; columns: clean image, unlearnable example, then one Grad-CAM overlay per model.

    `maps` holds, per countermeasure the victim was trained with, (k, H, W) maps in [0, 1]
    computed on the unlearnable examples.
    """
    k = len(clean)
    names = list(maps)
    n_cols = 2 + len(names)
    fig = Figure(figsize=(1.35 * n_cols + 0.8, 1.35 * k + 0.7))
    axes = fig.subplots(k, n_cols, squeeze=False)
    jet = _cmap("jet")
    for i in range(k):
        _show(axes[i][0], clean[i])
        _show(axes[i][1], poisoned[i])
        grey = _hwc(poisoned[i])
        base = np.repeat(grey[..., None], 3, axis=2) if grey.ndim == 2 else grey
        for j, name in enumerate(names):
            heat = jet(maps[name][i])[..., :3]
            ax = axes[i][2 + j]
            ax.imshow(np.clip(0.5 * base + 0.5 * heat, 0, 1), interpolation="bilinear")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i][0].set_ylabel(captions[i], fontsize=7)
    for j, name in enumerate(["clean image", "unlearnable", *(f"Grad-CAM\n{n}" for n in names)]):
        axes[0][j].set_title(name, fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _png(fig)
