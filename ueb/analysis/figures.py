"""What to draw from a run: the matrix heatmaps, the paper's Fig. 5 image grids, Fig. 4 t-SNE and
Fig. 3 Grad-CAM. Each figure that lacks an input (no saved model, poison not in the cache,
dataset files gone) is skipped with a one-line note; the others are still drawn.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ueb.analysis.rundata import Missing, RunData
from ueb.store import CellRecord

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ueb.imageset import ImageSet

KINDS = ("heatmap", "seeds", "perturbations", "tsne", "gradcam")
TSNE_MAX_CLASSES = 10  # more colours than this are unreadable; the paper's Fig. 4 shows CIFAR-10


@dataclass
class FigureOut:
    kind: str
    name: str  # file stem
    title: str
    png: bytes
    group: str = ""  # dataset (or dataset / victim), for the HTML report's sections


@dataclass
class FigureSet:
    figures: list[FigureOut] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def of(self, kind: str) -> list[FigureOut]:
        return [f for f in self.figures if f.kind == kind]


def _slug(*parts: str) -> str:
    return "_".join(
        "".join(ch if ch.isalnum() or ch in "-." else "-" for ch in p) for p in parts if p
    )


def make_figures(
    run: RunData,
    kinds: Iterable[str] = KINDS,
    metric: str = "final",
    samples: int = 8,
    tsne_per_class: int = 50,
    device: str = "cpu",
    log: Callable[[str], None] = lambda _m: None,
) -> FigureSet:
    kinds = list(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        from ueb.errors import ConfigError

        raise ConfigError(f"unknown figure kind '{unknown[0]}'", f"use {', '.join(KINDS)}")
    out = FigureSet()
    if "heatmap" in kinds:
        out.figures += heatmaps(run, metric)
    if "seeds" in kinds:
        out.figures += seed_figures(run, metric)
    if not {"perturbations", "tsne", "gradcam"} & set(kinds):
        return out
    for dataset in run.ordered("dataset"):
        for poisoner in run.ordered("poisoner"):
            if poisoner == run.reference:
                continue
            rep = _representative(run, dataset, poisoner)
            if rep is None:
                out.notes.append(f"{dataset} / {poisoner}: no finished cell, no images drawn")
                continue
            try:
                clean, poisoned = run.poisoned_pair(rep)
            except Missing as exc:
                out.notes.append(f"{dataset} / {poisoner}: images skipped: {exc}")
                continue
            index = sample_indices(clean, samples)
            captions = [clean.classes[int(clean.labels[i])] for i in index]
            if "perturbations" in kinds:
                log(f"image grid: {dataset} / {poisoner}")
                out.figures.append(_perturbation_figure(clean, poisoned, index, captions, rep))
            for victim in run.ordered("victim"):
                cells = _model_cells(run, dataset, poisoner, victim, rep.seed)
                if not cells:
                    for kind, what in (("tsne", "t-SNE"), ("gradcam", "Grad-CAM")):
                        if kind in kinds:
                            out.notes.append(
                                f"{what} skipped for {dataset} / {poisoner} / {victim}: no saved model "
                                f"(run with --save-models baseline or all)"
                            )
                    continue
                if "tsne" in kinds:
                    log(f"t-SNE: {dataset} / {poisoner} / {victim}")
                    _try(
                        out,
                        f"t-SNE skipped for {dataset} / {poisoner} / {victim}",
                        _tsne_figure,
                        run,
                        clean,
                        poisoned,
                        cells[0],
                        tsne_per_class,
                        device,
                    )
                if "gradcam" in kinds:
                    log(f"Grad-CAM: {dataset} / {poisoner} / {victim}")
                    _try(
                        out,
                        f"Grad-CAM skipped for {dataset} / {poisoner} / {victim}",
                        _gradcam_figure,
                        run,
                        clean,
                        poisoned,
                        index,
                        captions,
                        cells,
                        device,
                    )
    return out


def _try(out: FigureSet, what: str, make: Callable[..., FigureOut], *args: Any) -> None:
    try:
        out.figures.append(make(*args))
    except Missing as exc:
        out.notes.append(f"{what}: {exc}")


# --------------------------------------------------------------------------- choosing cells


def _representative(run: RunData, dataset: str, poisoner: str) -> CellRecord | None:
    """A finished cell of (dataset, poisoner) whose poison key leads to the cache: lowest seed first."""
    cands = [
        r
        for r in run.ok()
        if r.dataset == dataset and r.poisoner == poisoner and r.poison_facts.get("key")
    ]
    return min(cands, key=lambda r: (r.seed, -r.poison_fraction, r.ordinal)) if cands else None


def _model_cells(
    run: RunData, dataset: str, poisoner: str, victim: str, seed: int
) -> list[CellRecord]:
    """Cells with a saved model trained on the fully poisoned set, vanilla first, in the run's order."""
    order = {c: i for i, c in enumerate(run.ordered("countermeasure"))}
    cells = [
        r
        for r in run.ok()
        if (r.dataset, r.poisoner, r.victim, r.seed) == (dataset, poisoner, victim, seed)
        and r.poison_fraction >= 1.0
        and run.has_model(r)
    ]
    return sorted(
        cells,
        key=lambda r: (r.countermeasure != run.baseline, order.get(r.countermeasure, 0)),
    )


def sample_indices(images: ImageSet, k: int) -> list[int]:
    """k fixed samples: the first image of each class in turn (then the second of each, ...)."""
    per_class: list[list[int]] = [[] for _ in range(images.num_classes)]
    for i, y in enumerate(images.labels.tolist()):
        per_class[y].append(i)
    out: list[int] = []
    depth = 0
    while len(out) < min(k, len(images)):
        added = False
        for members in per_class:
            if depth < len(members) and len(out) < k:
                out.append(members[depth])
                added = True
        if not added:
            break
        depth += 1
    return out


# --------------------------------------------------------------------------- figures


def _table_groups(run: RunData, metric: str) -> tuple[list[str], dict[tuple[str, str], list[Any]]]:
    """The run's table: its columns, and its rows per (dataset, victim)."""
    from ueb.report import build_table

    table = build_table(run.records, metric, run.config)  # type: ignore[arg-type]
    groups: dict[tuple[str, str], list[Any]] = {}
    for row in table.rows:
        groups.setdefault((row.dataset, row.victim), []).append(row)
    return list(table.columns), groups


def heatmaps(run: RunData, metric: str = "final") -> list[FigureOut]:
    import numpy as np

    from ueb.analysis import plots

    columns, groups = _table_groups(run, metric)
    figures = []
    for (dataset, victim), rows in groups.items():
        values = np.full((len(rows), len(columns)), np.nan)
        texts = []
        for i, row in enumerate(rows):
            line = []
            for j, c in enumerate(columns):
                v = row.cells[c]
                if v.mean is not None:
                    values[i, j] = v.mean
                    line.append(f"{v.mean:.1f}")
                else:
                    line.append("err" if v.failed else "-")
            texts.append(line)
        title = f"{dataset} / {victim}: test accuracy (%), {metric} epoch"
        png = plots.heatmap(values, [r.poisoner for r in rows], columns, texts, title)
        figures.append(FigureOut("heatmap", _slug("heatmap", dataset, victim), title, png, dataset))
    return figures


def seed_figures(run: RunData, metric: str = "final") -> list[FigureOut]:
    """Per dataset and victim, every seed's accuracy per cell (drawn when a row has two seeds
    or more: with one seed the heatmap says it all)."""
    from ueb.analysis import plots

    columns, groups = _table_groups(run, metric)
    figures = []
    for (dataset, victim), rows in groups.items():
        if not any(row.cells[c].n > 1 for row in rows for c in columns):
            continue
        series = [
            (
                row.poisoner,
                [[(s.value, s.latched) for s in row.cells[c].per_seed] for c in columns],
            )
            for row in rows
        ]
        title = f"{dataset} / {victim}: test accuracy (%) per seed, {metric} epoch"
        png = plots.seed_dots(series, columns, title)
        figures.append(FigureOut("seeds", _slug("seeds", dataset, victim), title, png, dataset))
    return figures


def _float(images: torch.Tensor) -> np.ndarray:
    return images.float().div(255.0).numpy()


def _perturbation_figure(
    clean: ImageSet,
    poisoned: torch.Tensor,
    index: Sequence[int],
    captions: Sequence[str],
    rep: CellRecord,
) -> FigureOut:
    from ueb.analysis import plots

    c = _float(clean.uint8()[list(index)])
    p = _float(poisoned[list(index)])
    linf = float(abs(p - c).max()) * 255 if len(c) else 0.0
    title = f"{rep.poisoner} on {rep.dataset} (seed {rep.seed}): clean / unlearnable / |perturbation|, max |delta| = {linf:.0f}/255"
    png = plots.perturbation_grid(c, p, captions, title)
    return FigureOut(
        "perturbations", _slug("perturbations", rep.dataset, rep.poisoner), title, png, rep.dataset
    )


def _features(model: Any, x: torch.Tensor, device: str, batch: int = 256) -> np.ndarray:
    import torch

    feats = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            feats.append(model.features(x[i : i + batch].to(device)).flatten(1).float().cpu())
    return torch.cat(feats).numpy()


def embed_tsne(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE (PCA to 50 dimensions first when wider, the usual practice)."""
    import numpy as np
    from sklearn.decomposition import PCA  # type: ignore[import-untyped]
    from sklearn.manifold import TSNE  # type: ignore[import-untyped]
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    x = features.astype(np.float64)
    if x.shape[1] > 50 and x.shape[0] > 50:
        x = PCA(n_components=50, random_state=seed).fit_transform(x)
    perplexity = max(2.0, min(30.0, (len(x) - 1) / 3.0))
    tsne = TSNE(
        n_components=2, perplexity=perplexity, init="pca", random_state=seed, learning_rate="auto"
    )
    # One OpenMP thread: Barnes-Hut's threads spin-wait, and on a loaded machine 200 points took
    # 90 s instead of 2 s; one thread also makes the layout reproducible.
    with threadpool_limits(limits=1, user_api="openmp"):
        return tsne.fit_transform(x)


def _tsne_figure(
    run: RunData,
    clean: ImageSet,
    poisoned: torch.Tensor,
    cell: CellRecord,
    per_class: int,
    device: str,
) -> FigureOut:
    import torch

    from ueb.analysis import plots

    classes = clean.classes[:TSNE_MAX_CLASSES]
    labels = clean.labels
    idx = torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in range(len(classes))])
    if len(idx) < 6:
        raise Missing(f"only {len(idx)} training images, too few for t-SNE")
    model = run.load_model(cell, clean, device)
    x_c = clean.uint8()[idx].float() / 255
    delta = poisoned[idx].float() / 255 - x_c
    # The classifier takes [0, 1] images and centres them itself; delta + 0.5 hands it the
    # perturbation alone, centred exactly as an image would be.
    f_clean = _features(model, x_c, device)
    f_pert = _features(model, (delta + 0.5).clamp(0, 1), device)
    y = labels[idx].numpy()
    title = (
        f"t-SNE of {cell.victim} features ({cell.dataset}, trained on {cell.poisoner} with {cell.countermeasure}, "
        f"seed {cell.seed}; {len(idx)} training images)"
    )
    png = plots.tsne_pair(
        embed_tsne(f_clean, cell.seed), embed_tsne(f_pert, cell.seed), y, classes, title
    )
    return FigureOut(
        "tsne", _slug("tsne", cell.dataset, cell.poisoner, cell.victim), title, png, cell.dataset
    )


def _gradcam_figure(
    run: RunData,
    clean: ImageSet,
    poisoned: torch.Tensor,
    index: Sequence[int],
    captions: Sequence[str],
    cells: list[CellRecord],
    device: str,
) -> FigureOut:
    from ueb.analysis import plots
    from ueb.analysis.gradcam import grad_cam, last_conv

    idx = list(index)
    ue = poisoned[idx].float() / 255
    targets = clean.labels[idx]
    maps = {}
    skipped = []
    for cell in cells:
        try:
            model = run.load_model(cell, clean, device)
        except Missing as exc:
            skipped.append(str(exc))
            continue
        if last_conv(model) is None:
            raise Missing(f"victim {cell.victim} has no conv layer in its backbone")
        maps[cell.countermeasure] = grad_cam(model, ue.to(device), targets).numpy()
    if not maps:
        raise Missing("; ".join(skipped) or "no model")
    first = cells[0]
    title = f"Grad-CAM of {first.victim} on {first.poisoner} unlearnable examples ({first.dataset}, seed {first.seed}, true class)"
    png = plots.gradcam_grid(_float(clean.uint8()[idx]), ue.numpy(), maps, captions, title)
    return FigureOut(
        "gradcam",
        _slug("gradcam", first.dataset, first.poisoner, first.victim),
        title,
        png,
        first.dataset,
    )
