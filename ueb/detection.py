"""The detection table: how well each detector finds a run's poisons.

For every dataset, poisoner (the clean reference excepted), poison fraction and seed of a
Plan, the poisoned training set is rebuilt as the cells train on it: the worker's poison (from
the poison cache the matrix filled, computed if absent) mixed with the clean images as
`--poison-fraction` mixes them (`ueb.worker.mix_poison`). Every selected detector then runs on
that set and, once per (dataset, seed), on the clean set. Two numbers per row:

  * AUROC: the detector's per-image scores against the poisoned mask. It is undefined when the
    set is fully poisoned (no clean image to rank against); such a row reports instead the
    set-level verdict accuracy over the clean set and the poisoned set, and says so
    (`auroc_kind = "set-verdict"`).
  * detection accuracy: the set-level verdict accuracy over the same two sets (the clean set
    should be called clean, the poisoned or partly poisoned set poisoned): 0, 0.5 or 1 per seed.

Both are pooled over seeds as mean and 95% t-interval (scipy.stats.t, n - 1 degrees of
freedom; no interval for one seed), with n shown. Output: a terminal table, and
`detection.md`, `detection.csv` and `detection.json` in the run directory (the HTML report
reads the JSON).
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ueb.errors import UebError
from ueb.plan import Plan, Spec
from ueb.plan_specs import SpecResolver
from ueb.policy import one_line, recoverable
from ueb.registry import Registry

JSON_NAME = "detection.json"
# The poison fraction seeds its subset as ueb.worker.mix_poison does (offset 10_007 + seed).
MIX_SEED_OFFSET = 10_007


# --------------------------------------------------------------------------- plan


def resolve_detectors(plan: Plan, registry: Registry, patterns: Sequence[str]) -> tuple[Spec, ...]:
    """The selected detectors as specs, typed and range-checked like every other plugin
    (registered defaults < the plugin's scale preset < the profile's [plugins.NAME]), with
    their requirements resolved and `preflight` run: before any work."""
    names = registry.select("detector", patterns)
    builder = SpecResolver(registry, plan.profile, plan.config.params)
    return tuple(builder.spec("detector", name) for name in names)


# --------------------------------------------------------------------------- metrics


def poisoned_mask(n: int, fraction: float, seed: int) -> np.ndarray:
    """Which of `n` images `mix_poison(clean, poisoned, fraction, seed)` takes from the poison."""
    import torch

    mask = np.zeros(n, dtype=bool)
    if fraction >= 1.0:
        mask[:] = True
        return mask
    gen = torch.Generator().manual_seed(MIX_SEED_OFFSET + seed)
    mask[torch.randperm(n, generator=gen)[: round(fraction * n)].numpy()] = True
    return mask


def auroc(scores: np.ndarray, mask: np.ndarray) -> float | None:
    """Area under the ROC curve of `scores` for the positives in `mask` (ties count half);
    None when either class is empty."""
    from scipy.stats import rankdata

    positives = int(mask.sum())
    negatives = len(mask) - positives
    if positives == 0 or negatives == 0:
        return None
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[mask].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def chance_tolerance(positives: int, negatives: int, z: float = 3.0) -> float:
    """`z` standard deviations of the AUROC of scores that ignore the mask (Mann-Whitney:
    sqrt((n1 + n0 + 1) / (12 n1 n0))): how far from 0.5 chance alone goes."""
    return z * math.sqrt((positives + negatives + 1) / (12 * positives * negatives))


@dataclass(frozen=True)
class Interval:
    """Mean over seeds with the half-width of its 95% t-interval (None for one value)."""

    mean: float | None
    half: float | None
    n: int

    @staticmethod
    def of(values: Iterable[float | None]) -> Interval:
        from scipy.stats import t

        got = [float(v) for v in values if v is not None]
        if not got:
            return Interval(None, None, 0)
        mean = float(np.mean(got))
        if len(got) < 2:
            return Interval(mean, None, len(got))
        sd = float(np.std(got, ddof=1))
        return Interval(
            mean, float(t.ppf(0.975, len(got) - 1) * sd / math.sqrt(len(got))), len(got)
        )

    def text(self) -> str:
        if self.mean is None:
            return "-"
        spread = f" ± {self.half:.2f}" if self.half is not None else ""
        return f"{self.mean:.2f}{spread} (n={self.n})"


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class DetectionRow:
    """One detector on one poisoned set (one seed)."""

    dataset: str
    poisoner: str
    fraction: float
    seed: int
    detector: str
    images: int
    poisoned_images: int
    auroc: float | None
    auroc_kind: str  # "per-image" or "set-verdict"
    accuracy: float | None
    set_score: float | None
    threshold: float | None
    verdict: bool | None
    clean_verdict: bool | None
    seconds: float
    error: str | None = None


@dataclass(frozen=True)
class SummaryRow:
    """Seeds of one (dataset, poisoner, fraction, detector) pooled."""

    dataset: str
    poisoner: str
    fraction: float
    detector: str
    auroc: Interval
    auroc_kind: str
    accuracy: Interval
    failed: int


def summarise(rows: Sequence[DetectionRow]) -> list[SummaryRow]:
    groups: dict[tuple[str, str, float, str], list[DetectionRow]] = {}
    for r in rows:
        groups.setdefault((r.dataset, r.poisoner, r.fraction, r.detector), []).append(r)
    out = []
    for (dataset, poisoner, fraction, detector), members in groups.items():
        ok = [r for r in members if r.error is None]
        kinds = {r.auroc_kind for r in ok} or {"per-image"}
        out.append(
            SummaryRow(
                dataset,
                poisoner,
                fraction,
                detector,
                Interval.of(r.auroc for r in ok),
                "/".join(sorted(kinds)),
                Interval.of(r.accuracy for r in ok),
                len(members) - len(ok),
            )
        )
    return out


# --------------------------------------------------------------------------- computing


class DetectionRunner:
    """Builds each poisoned set once and runs every detector on it (and on the clean set)."""

    def __init__(
        self,
        plan: Plan,
        registry: Registry,
        detectors: Sequence[Spec],
        run_dir: Path,
        log: Callable[[str], None] = print,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        from ueb.runner import cache_root_of
        from ueb.training import resolve_device
        from ueb.worker import CellWorker, Job

        self.plan = plan
        self.detectors = list(detectors)
        self.log = log
        self.warn = warn or log
        device = str(resolve_device(plan.config.device))
        job = Job(plan, str(run_dir), str(cache_root_of(plan)), device)
        self.worker = CellWorker(job, registry, log=log, warn=self.warn)
        self._clean: dict[tuple[str, int, str], Any] = {}

    def rows(self) -> list[DetectionRow]:
        out: list[DetectionRow] = []
        for dataset in self.plan.datasets:
            for poisoner in self.plan.poisoners:
                if poisoner == self.plan.reference:
                    continue
                for seed in self.plan.seeds:
                    for fraction in self.plan.fractions:
                        out.extend(self._set_rows(dataset, poisoner, seed, fraction))
        return out

    def _set_rows(
        self, dataset: str, poisoner: str, seed: int, fraction: float
    ) -> list[DetectionRow]:
        from ueb.worker import mix_poison

        try:
            clean = self.worker.dataset(dataset).train
            poisoned = self.worker.poisoned(dataset, poisoner, seed).images
        except Exception as exc:
            if not recoverable(exc):
                raise
            message = f"the poison could not be built: {one_line(exc)}"
            self.warn(f"detection: {dataset} / {poisoner} / seed {seed}: {message}")
            return [
                self._failed(dataset, poisoner, fraction, seed, d.name, message)
                for d in self.detectors
            ]
        mixed = mix_poison(clean, poisoned, fraction, seed)
        mask = poisoned_mask(len(clean), fraction, seed)
        rows = []
        for spec in self.detectors:
            start = time.perf_counter()
            try:
                found = self._detect(spec, mixed, dataset, seed)
                on_clean = self._clean_detection(spec, clean, dataset, seed)
            except Exception as exc:
                if not recoverable(exc):
                    raise
                self.warn(
                    f"detector {spec.name} failed on {dataset} / {poisoner} / seed {seed}: {one_line(exc)}"
                )
                rows.append(
                    self._failed(dataset, poisoner, fraction, seed, spec.name, one_line(exc))
                )
                continue
            accuracy = (float(found.poisoned) + float(not on_clean.poisoned)) / 2
            per_image = auroc(np.asarray(found.scores), mask)
            rows.append(
                DetectionRow(
                    dataset=dataset,
                    poisoner=poisoner,
                    fraction=fraction,
                    seed=seed,
                    detector=spec.name,
                    images=len(mask),
                    poisoned_images=int(mask.sum()),
                    auroc=per_image if per_image is not None else accuracy,
                    auroc_kind="per-image" if per_image is not None else "set-verdict",
                    accuracy=accuracy,
                    set_score=float(found.set_score),
                    threshold=float(found.threshold),
                    verdict=bool(found.poisoned),
                    clean_verdict=bool(on_clean.poisoned),
                    seconds=time.perf_counter() - start,
                )
            )
            self.log(
                f"detection | {dataset} | {poisoner} | {spec.name} | seed {seed}"
                f"{'' if fraction >= 1 else f' | {fraction:.0%}'}: AUROC {rows[-1].auroc:.3f}  "
                f"verdict {'poisoned' if found.poisoned else 'unpoisoned'} (clean set: "
                f"{'poisoned' if on_clean.poisoned else 'unpoisoned'})"
            )
        return rows

    def _detect(self, spec: Spec, data: Any, dataset: str, seed: int) -> Any:
        from ueb.interfaces import Detection
        from ueb.worker import seed_everything

        detector = self.worker.create(spec)
        ctx = self.worker.context(seed, spec, dataset)
        seed_everything(seed)
        found = detector.detect(data, ctx)
        if not isinstance(found, Detection) or np.asarray(found.scores).shape != (len(data),):
            raise UebError(
                f"detector '{spec.name}' returned no Detection with one score per image",
                "check the plugin with ueb.testing_detectors.check_detector",
            )
        return found

    def _clean_detection(self, spec: Spec, clean: Any, dataset: str, seed: int) -> Any:
        key = (dataset, seed, spec.name)
        if key not in self._clean:
            self._clean[key] = self._detect(spec, clean, dataset, seed)
        return self._clean[key]

    @staticmethod
    def _failed(
        dataset: str, poisoner: str, fraction: float, seed: int, detector: str, error: str
    ) -> DetectionRow:
        return DetectionRow(
            dataset, poisoner, fraction, seed, detector, 0, 0, None, "per-image", None, None,
            None, None, None, 0.0, error,
        )  # fmt: skip


# --------------------------------------------------------------------------- rendering

NOTES = (
    "AUROC: per-image scores against the poisoned mask; for a fully poisoned set (AUROC "
    "undefined) the set-level verdict accuracy over the clean and the poisoned set, marked *",
    "accuracy: set-level verdicts right over the clean set and this set (0, 0.5 or 1 per seed)",
    "mean ± half-width of the 95% t-interval over seeds (scipy.stats.t), n = seeds",
)


def _cells(s: SummaryRow) -> list[str]:
    mark = "*" if "set-verdict" in s.auroc_kind else ""
    failed = f" ({s.failed} failed)" if s.failed else ""
    return [
        s.dataset,
        s.poisoner,
        f"{s.fraction:.0%}",
        s.detector,
        s.auroc.text() + mark,
        s.accuracy.text() + failed,
    ]


HEADER = ["dataset", "poisoner", "fraction", "detector", "AUROC", "accuracy"]


def to_markdown(summary: Sequence[SummaryRow]) -> str:
    lines = [
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join("---" if i < 4 else "---:" for i in range(len(HEADER))) + "|",
    ]
    lines += ["| " + " | ".join(_cells(s)) + " |" for s in summary]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in NOTES) + "\n"


def to_csv(summary: Sequence[SummaryRow]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        ["dataset", "poisoner", "fraction", "detector", "auroc_mean", "auroc_ci95", "auroc_n",
         "auroc_kind", "accuracy_mean", "accuracy_ci95", "accuracy_n", "failed"]
    )  # fmt: skip
    for s in summary:
        w.writerow(
            [s.dataset, s.poisoner, s.fraction, s.detector, s.auroc.mean, s.auroc.half, s.auroc.n,
             s.auroc_kind, s.accuracy.mean, s.accuracy.half, s.accuracy.n, s.failed]
        )  # fmt: skip
    return buf.getvalue()


def to_json(
    summary: Sequence[SummaryRow], rows: Sequence[DetectionRow], detectors: Sequence[Spec]
) -> str:
    return json.dumps(
        {
            "summary": [asdict(s) for s in summary],
            "rows": [asdict(r) for r in rows],
            "detectors": {d.name: d.describe() for d in detectors},
            "notes": list(NOTES),
        },
        indent=2,
        allow_nan=False,
    )


def to_rich(summary: Sequence[SummaryRow]) -> Any:
    from rich.table import Table

    table = Table(title="Detection (AUROC, accuracy)", caption="\n".join(NOTES))
    for i, h in enumerate(HEADER):
        table.add_column(h, justify="right" if i >= 4 else "left", no_wrap=i < 4)
    for s in summary:
        table.add_row(*_cells(s))
    return table


def run_detection(
    plan: Plan,
    registry: Registry,
    detectors: Sequence[Spec],
    run_dir: Path,
    out: Any,
    quiet: bool = False,
) -> list[SummaryRow]:
    """Compute the table, write detection.md/.csv/.json into `run_dir`, print it on `out`
    (a ueb.output.Output). Nothing happens without detectors."""
    from ueb.atomic import write_text

    if not detectors:
        return []
    runner = DetectionRunner(
        plan,
        registry,
        detectors,
        run_dir,
        log=out.log if not quiet else (lambda _m: None),
        warn=out.warn,
    )
    rows = runner.rows()
    summary = summarise(rows)
    texts = {
        "detection.md": to_markdown(summary),
        "detection.csv": to_csv(summary),
        JSON_NAME: to_json(summary, rows, detectors),
    }
    for name, text in texts.items():
        write_text(Path(run_dir) / name, text, what="the detection table")
    out.table(to_rich(summary), plain=texts["detection.md"])
    return summary


def load_summary(run_dir: Path) -> dict[str, Any] | None:
    """A run's detection.json, or None when the run computed no detection table."""
    path = Path(run_dir) / JSON_NAME
    if not path.exists():
        return None
    return json.loads(path.read_text())


__all__ = [
    "DetectionRow",
    "DetectionRunner",
    "Interval",
    "SummaryRow",
    "auroc",
    "chance_tolerance",
    "load_summary",
    "poisoned_mask",
    "resolve_detectors",
    "run_detection",
    "summarise",
]
