"""AR: autoregressive perturbations (Sandoval-Segura et al., NeurIPS 2022, "Autoregressive
Perturbations for Data Poisoning").

Follows psandovalsegura/autoregressive-poisoning (autoregressive.py, autoregressive_param_finder.py,
create_ar_poisons_3channel.py). Every class owns one AR process: per channel, 8 coefficients on
a 3 x 3 causal window (Gaussian draws normalised to sum 1, the centre fixed at 0). A perturbation
starts as Gaussian noise of (C, H + 4, W + 4); in raster order every value from row 2 and
column 2 on is replaced by the weighted sum of its 8 causal neighbours; the first 4 rows and
columns are cropped and the result scaled to L2 = 1. Each image draws a fresh start, so the
noise differs within a class while the class's process (a linear recurrence its own filter
annihilates) stays the same. No surrogate.

By default (`coefficients="published"`) a 10- or 100-class RGB set uses the coefficient set the
official repository published for that class count (`params-classes-10-mr-10.pt` for CIFAR-10,
SVHN and STL-10; `params-classes-100-mr-3.pt` for CIFAR-100), shipped in `ar_published.json`:
the processes of the official AR poisons, and so of the paper's AR rows (it re-implemented
every method from its public code, Sec. IV-A4). Any other class
or channel count, or `coefficients="searched"`, runs the official greedy search instead: sample
processes, drop those whose three trial signals are not finite or exceed an L2 norm of 50 before
scaling, and keep one only if every filter kept so far responds to its signal with at least
`required_nm_response` (sum of ReLU of the filter's convolution). The search is seeded from the
run's seed and cached as an artifact. Either way the coefficients and where they came from are
stored with the poison (`report()["ar_coefficients"]`, `"ar_coefficient_source"`). Sources,
settings and the guards against NaN/blank processes: docs/poisoners-surrogate-free.md.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from importlib import resources
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from ueb.errors import UebError
from ueb.imageset import ImageSet
from ueb.interfaces import Budget, Poisoner, RunContext
from ueb.params import bounded

PUBLISHED_FILE = "ar_published.json"  # the official repository's coefficient sets, as data
SEARCH_BATCH = 256  # candidate processes drawn at once; part of the search's definition
_CHUNK = 4096  # perturbations generated at once


# --------------------------------------------------------------------------- the AR process


def sample_coefficients(n: int, channels: int, gen: torch.Generator) -> torch.Tensor:
    """n random processes, (n, C, 3, 3): Gaussian, centre 0, each channel's 8 taps summing to 1."""
    b = torch.randn(n, channels, 3, 3, generator=gen)
    b[:, :, 2, 2] = 0
    return b / b.sum(dim=(2, 3), keepdim=True)


@functools.lru_cache(maxsize=16)
def _diagonals(
    size_h: int, size_w: int, crop: int
) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """Flat indices of the updated positions (row, col >= 2), grouped by row + col, each with
    a mask of the positions inside the crop (row, col >= crop).

    A value depends only on neighbours with a smaller row + col, so one anti-diagonal is
    computed at once: the same recursion as the official raster loop in H + W steps.
    """
    rows = torch.arange(2, size_h)
    groups = []
    for d in range(4, size_h + size_w - 1):
        r = rows[(d - rows >= 2) & (d - rows < size_w)]
        groups.append((r * size_w + (d - r), (r >= crop) & (d - r >= crop)))
    return tuple(groups)


def ar_start(n: int, channels: int, size_h: int, size_w: int, gen: torch.Generator) -> torch.Tensor:
    """Gaussian starts, (n, C, Hs, Ws). Only rows 0-1 and columns 0-1 are ever read (every
    other value is overwritten before use), so only those are drawn; the rest stay 0."""
    x = torch.zeros(n, channels, size_h, size_w)
    x[:, :, :2, :] = torch.randn(n, channels, 2, size_w, generator=gen)
    x[:, :, 2:, :2] = torch.randn(n, channels, size_h - 2, 2, generator=gen)
    return x


def ar_generate(coefs: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Run the AR recursion on Gaussian starts: coefs (M, C, 3, 3), start (M, C, Hs, Ws).

    Returns the (M, C, Hs, Ws) signal; rows and columns 0-1 keep the start values.
    """
    return _recursion(coefs, start)[0]


def ar_generate_bounded(
    coefs: torch.Tensor, start: torch.Tensor, crop: int, bound: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like `ar_generate`, but drops every signal whose crop is sure to exceed L2 `bound` (or to
    be NaN) as soon as the part computed so far does. Returns the survivors and their indices.

    The norm of a part never exceeds the norm of the whole, so no signal within the bound is
    dropped; the search spends most of its time on divergent processes, which this stops early.
    """
    return _recursion(coefs, start, crop, bound)


def _recursion(
    coefs: torch.Tensor,
    start: torch.Tensor,
    crop: int = 2,
    bound: float | None = None,
    check_every: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    m, c, hs, ws = start.shape
    # (positions, M, C): a diagonal's 8 taps are one row gather
    x = start.permute(2, 3, 0, 1).reshape(hs * ws, m, c).clone()
    taps = coefs.permute(2, 3, 0, 1).reshape(9, m, c)[:8].to(x)  # the centre tap (last) is 0
    offsets = torch.tensor(
        [(2 - a) * ws + (2 - b) for a in range(3) for b in range(3)][:8], device=x.device
    )
    ids = torch.arange(m, device=x.device)
    sumsq = torch.zeros(m, dtype=x.dtype, device=x.device)
    for step, (pos, inside) in enumerate(_diagonals(hs, ws, crop)):
        pos, inside = pos.to(x.device), inside.to(x.device)
        near = x.index_select(0, (pos[:, None] - offsets[None]).flatten()).view(
            len(pos), 8, len(ids), c
        )
        new = (near * taps[None]).sum(dim=1)
        x[pos] = new
        if bound is None:
            continue
        sumsq += new[inside].square().sum(dim=(0, 2))
        if step % check_every == check_every - 1:
            keep = sumsq <= bound * bound  # False for NaN as well
            if not bool(keep.all()):
                x, taps, ids, sumsq = x[:, keep], taps[:, keep], ids[keep], sumsq[keep]
    if bound is not None:
        keep = sumsq <= bound * bound
        x, ids = x[:, keep], ids[keep]
    return x.view(hs, ws, len(ids), c).permute(2, 3, 0, 1), ids


def matching_filters(coefs: torch.Tensor) -> torch.Tensor:
    """The filter each process annihilates: its coefficients with -1 at the centre, (n, C, 3, 3)."""
    f = coefs.clone()
    f[:, :, 2, 2] = -1
    return f


def responses(filters: torch.Tensor, signals: torch.Tensor) -> torch.Tensor:
    """Official response: sum of ReLU(conv(signal, filter)), (n_signals, n_filters)."""
    return F.relu(F.conv2d(signals, filters)).sum(dim=(2, 3))


def generate_noise(
    coefs: torch.Tensor,
    labels: torch.Tensor,
    shape: tuple[int, int, int],
    crop: int,
    eps: float,
    gen: torch.Generator,
    device: str | torch.device = "cpu",
    max_redraws: int = 10,
) -> torch.Tensor:
    """One fresh perturbation per label: (N, C, H, W), each of L2 norm `eps`.

    A start that yields a non-finite or all-zero signal is redrawn (at most `max_redraws`
    times); the official code would write NaN (a black image) instead.
    """
    c, h, w = shape
    out = torch.empty(len(labels), c, h, w)
    for i in range(0, len(labels), _CHUNK):
        lab = labels[i : i + _CHUNK]
        b = coefs[lab].to(device)
        start = ar_start(len(lab), c, h + crop, w + crop, gen)
        sig = ar_generate(b, start.to(device))[:, :, crop:, crop:].cpu()
        norms = sig.flatten(1).norm(dim=1)
        bad = ~torch.isfinite(sig).flatten(1).all(1) | ~(norms > 0) | ~torch.isfinite(norms)
        for _ in range(max_redraws):
            if not bool(bad.any()):
                break
            j = torch.nonzero(bad).flatten()
            start = ar_start(len(j), c, h + crop, w + crop, gen)
            sig[j] = ar_generate(b[j.to(b.device)], start.to(device))[:, :, crop:, crop:].cpu()
            norms[j] = sig[j].flatten(1).norm(dim=1)
            bad = ~torch.isfinite(sig).flatten(1).all(1) | ~(norms > 0) | ~torch.isfinite(norms)
        if bool(bad.any()):
            k = int(lab[torch.nonzero(bad).flatten()[0]])
            raise UebError(
                f"the AR process of class {k} keeps giving NaN or blank perturbations",
                "search the coefficients again (another seed) or lower gen_norm_upper_bound",
            )
        out[i : i + len(lab)] = sig / norms[:, None, None, None] * eps
    return out


# --------------------------------------------------------------------------- the search


@dataclass
class SearchResult:
    coefficients: torch.Tensor  # (K, C, 3, 3)
    lowest_responses: list[float]  # per process: min response of earlier filters (first: nan)
    candidates: int  # processes sampled


def search_coefficients(
    num_classes: int,
    channels: int,
    seed: int,
    required_nm_response: float,
    num_samples: int = 1_000_000,
    num_gen_trials: int = 3,
    gen_norm_upper_bound: float = 50.0,
    size: int = 36,
    crop: int = 4,
    on_batch=None,
) -> SearchResult:
    """The official greedy search for `num_classes` AR processes, seeded.

    Candidates are drawn SEARCH_BATCH at a time but judged one by one in draw order, exactly as
    the sequential search would judge them. A candidate is rejected if any of its trial signals
    is not finite, has norm 0, or exceeds `gen_norm_upper_bound` (the official code checks only
    the last trial for NaN); kept if every filter kept so far responds to its last trial signal
    (scaled to L2 = 1) with at least `required_nm_response`.
    """
    gen = torch.Generator().manual_seed(seed)
    kept: list[torch.Tensor] = []
    lowest: list[float] = []
    drawn = 0
    while len(kept) < num_classes and drawn < num_samples:
        n = min(SEARCH_BATCH, num_samples - drawn)
        coefs = sample_coefficients(n, channels, gen)
        alive = torch.arange(n)
        sig = torch.empty(0)
        for _ in range(num_gen_trials):
            if len(alive) == 0:
                break
            starts = ar_start(len(alive), channels, size, size, gen)
            with torch.no_grad():
                sig, ok = ar_generate_bounded(coefs[alive], starts, crop, gen_norm_upper_bound)
            alive, sig = alive[ok], sig[:, :, crop:, crop:]
        norms = sig.flatten(1).norm(dim=1)
        good = torch.isfinite(sig).flatten(1).all(1) & (norms > 0) & (norms <= gen_norm_upper_bound)
        alive, sig, norms = alive[good], sig[good], norms[good]
        last = sig / norms[:, None, None, None]  # the last trial, scaled to L2 = 1
        mins = torch.full((len(alive),), torch.inf)
        if kept and len(alive):
            mins = responses(matching_filters(torch.stack(kept)), last).min(dim=1).values
        for j, i in enumerate(alive.tolist()):  # in draw order
            if float(mins[j]) < required_nm_response:
                continue
            kept.append(coefs[i])
            lowest.append(float(mins[j]) if len(kept) > 1 else math.nan)
            if len(kept) == num_classes:
                break
            if j + 1 < len(alive):  # later candidates of this batch must also pass the new filter
                r = responses(matching_filters(coefs[i : i + 1]), last[j + 1 :])[:, 0]
                mins[j + 1 :] = torch.minimum(mins[j + 1 :], r)
        drawn += n
        if on_batch is not None:
            on_batch(len(kept), drawn)
    if len(kept) < num_classes:
        raise UebError(
            f"the AR search found {len(kept)} of {num_classes} processes in {drawn} candidates "
            f"(required_nm_response {required_nm_response:g})",
            "raise num_samples or lower required_nm_response",
        )
    return SearchResult(torch.stack(kept), lowest, drawn)


# --------------------------------------------------------------------------- published sets


@dataclass(frozen=True)
class PublishedSet:
    coefficients: torch.Tensor  # (K, 3, 3, 3)
    file: str  # the official file it was read from
    required_nm_response: float


@functools.cache
def _published_sets() -> dict[str, Any]:
    """The "sets" table of the shipped JSON: class count -> file, threshold, coefficients."""
    path = resources.files("ueb_baselines") / PUBLISHED_FILE
    sets: dict[str, Any] = json.loads(path.read_text())["sets"]
    return sets


def published_classes() -> tuple[int, ...]:
    """Class counts with a published coefficient set (10 and 100)."""
    return tuple(sorted(int(k) for k in _published_sets()))


def published_set(num_classes: int) -> PublishedSet | None:
    """The official coefficient set for `num_classes` RGB classes, or None if none was published."""
    entry = _published_sets().get(str(num_classes))
    if entry is None:
        return None
    coefs = torch.tensor(entry["coefficients"], dtype=torch.float32)
    return PublishedSet(coefs, str(entry["file"]), float(entry["required_nm_response"]))


# --------------------------------------------------------------------------- the poisoner


class AutoregressivePerturbations(Poisoner["AutoregressivePerturbations.Params"]):
    """One AR process per class (published set, else searched); a fresh start per image; L2 1.0."""

    version = "2"  # 2: the published coefficient sets by default for 10 and 100 classes
    # Smoke: a search (when one runs) accepts a filter response of 3, the official threshold for
    # 100 classes. Paper: Sec. IV-A4's L2 = 1, and the coefficient set
    # psandovalsegura/autoregressive-poisoning published for 10 / 100 classes, the one its
    # CIFAR-10 / CIFAR-100 poisons were made with.
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"required_nm_response": 3.0},
        "paper": {"eps": 1.0, "coefficients": "published"},
    }

    @dataclass(frozen=True)
    class Params:
        eps: float = bounded(
            1.0, gt=0
        )  # L2 norm of every perturbation (official --epsilon 1.0 --p_norm 2)
        crop: int = bounded(
            4, ge=0
        )  # generated at (H + crop, W + crop), first `crop` rows/columns dropped
        # published: the official set for 10 / 100 RGB classes (search for other counts)
        coefficients: Literal["published", "searched"] = "published"
        # None: 10 up to 10 classes, else 3 (the official coefficient sets)
        required_nm_response: float | None = bounded(None, ge=0)
        num_samples: int = bounded(1_000_000, ge=1)  # most candidate processes the search may draw
        num_gen_trials: int = bounded(3, ge=1)
        gen_norm_upper_bound: float = bounded(50.0, gt=0)
        search_size: int = bounded(
            36, ge=2
        )  # the search's trial signals: 36 x 36 cropped by 4, at any image size
        search_seed: int | None = bounded(
            None, ge=0
        )  # None: the run's seed; an int fixes the coefficients
        max_redraws: int = bounded(10, ge=1)  # per image, if a start gives a NaN/blank signal

        def __post_init__(self) -> None:
            if self.eps <= 0:
                raise ValueError("eps must be positive")
            if self.crop < 2:
                raise ValueError("crop must be at least 2 (rows/columns 0-1 are the raw start)")
            if self.search_size - self.crop < 3:
                raise ValueError("search_size must exceed crop by at least 3")

    def __init__(self, params: Params | None = None, name: str | None = None) -> None:
        super().__init__(params, name)
        self.facts: dict[str, object] = {}

    def budget(self) -> Budget:
        return Budget("l2", self.params.eps)

    def report(self) -> dict[str, object]:
        return dict(self.facts)

    def required_response(self, num_classes: int) -> float:
        if self.params.required_nm_response is not None:
            return self.params.required_nm_response
        # official coefficient sets: params-classes-10-mr-10 (CIFAR-10, SVHN, STL-10) and
        # params-classes-100-mr-3 (CIFAR-100)
        return 10.0 if num_classes <= 10 else 3.0

    def coefficients(
        self, num_classes: int, channels: int, ctx: RunContext
    ) -> tuple[torch.Tensor, dict[str, object]]:
        """The coefficients (K, C, 3, 3): the published set when there is one, else searched."""
        if self.params.coefficients == "published":
            published = published_set(num_classes) if channels == 3 else None
            if published is not None:
                return published.coefficients, {
                    "ar_coefficient_source": f"published: {published.file}",
                    "ar_required_nm_response": published.required_nm_response,
                }
            why = (
                f"searched: no published AR set for {num_classes} classes with {channels} "
                f"channels (published: {', '.join(map(str, published_classes()))} RGB classes)"
            )
            coefs, facts = self.searched_coefficients(num_classes, channels, ctx)
            return coefs, {"ar_coefficient_source": why, **facts}
        coefs, facts = self.searched_coefficients(num_classes, channels, ctx)
        return coefs, {"ar_coefficient_source": "searched", **facts}

    def searched_coefficients(
        self, num_classes: int, channels: int, ctx: RunContext
    ) -> tuple[torch.Tensor, dict[str, object]]:
        """The searched coefficients (K, C, 3, 3), from the artifact cache when present."""
        p = self.params
        seed = ctx.seed if p.search_seed is None else p.search_seed
        required = self.required_response(num_classes)
        recipe = {
            "method": "ar-search",
            "version": self.version,
            "classes": num_classes,
            "channels": channels,
            "seed": seed,
            "required_nm_response": required,
            "num_samples": p.num_samples,
            "num_gen_trials": p.num_gen_trials,
            "gen_norm_upper_bound": p.gen_norm_upper_bound,
            "size": p.search_size,
            "crop": p.crop,
            "batch": SEARCH_BATCH,
        }
        art = ctx.artifacts.get("ar-coefficients", recipe)
        path = art.path / "coefficients.json"
        if art.done and path.exists():
            stored = json.loads(path.read_text())
            return torch.tensor(stored["coefficients"], dtype=torch.float32), stored["facts"]
        with ctx.progress.task("AR coefficient search", total=num_classes) as task:

            def on_batch(found: int, drawn: int) -> None:
                task.update(found=found, candidates=drawn)

            result = search_coefficients(
                num_classes, channels, seed, required, p.num_samples, p.num_gen_trials,
                p.gen_norm_upper_bound, p.search_size, p.crop, on_batch,
            )  # fmt: skip
            task.advance(num_classes)
        facts: dict[str, object] = {
            "ar_search_seed": seed,
            "ar_required_nm_response": required,
            "ar_search_candidates": result.candidates,
            # the first process has no earlier filter to respond: None, not NaN, in the JSON
            "ar_lowest_responses": [None if math.isnan(r) else r for r in result.lowest_responses],
        }
        from ueb.atomic import write_text

        write_text(
            path,
            json.dumps({"coefficients": result.coefficients.tolist(), "facts": facts}),
            what="AR coefficients",
        )
        ctx.artifacts.finish(art, **facts)
        return result.coefficients, facts

    def poison(self, train: ImageSet, ctx: RunContext) -> torch.Tensor:
        p = self.params
        _, c, h, w = train.images.shape
        coefs, facts = self.coefficients(train.num_classes, c, ctx)
        # the starts: another stream than the search's
        gen = torch.Generator().manual_seed(ctx.seed + 1)
        labels = train.labels.cpu()
        out = train.uint8().cpu().float().div_(255.0)
        with ctx.progress.task("AR noise", total=len(train)) as task:
            for i in range(0, len(train), _CHUNK):
                lab = labels[i : i + _CHUNK]
                noise = generate_noise(
                    coefs, lab, (c, h, w), p.crop, p.eps, gen, ctx.device, p.max_redraws
                )
                out[i : i + len(lab)] = (out[i : i + len(lab)] + noise).clamp_(0, 1)
                task.advance(len(lab))
        self.facts = {**facts, "ar_coefficients": coefs.tolist()}
        return out
