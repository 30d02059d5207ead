"""The table model: a value over seeds with its markers, a row, the table, and their texts."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from ueb.stats import RESOLUTION_POINTS, NestedComponents, difference_half_width, half_width

Metric = Literal["final", "peak"]

NEAR = "≈"
LATCH = "L"
UNRESOLVED = "?"
CAVEAT = "†"
SUMMARIES = ("Mean", "Max")


# --------------------------------------------------------------------------- statistics


class SeedValue(NamedTuple):
    """One cell's number for one seed. In the nested design the victim seed recurs across
    poisons, so the poison seed names the unit; `latched` is None without a shortcut probe."""

    seed: int
    value: float
    latched: bool | None
    poison_seed: int | None = None


@dataclass
class Value:
    """One table value over seeds: mean, sample std (n-1), seed count, and its markers."""

    mean: float | None
    std: float | None = None
    n: int = 0
    failed: bool = False
    incomplete: bool = False
    errors: int = 0  # seeds that failed
    latched: int = 0  # seeds whose shortcut probe latched
    probed: int = 0  # seeds with a shortcut probe
    near_clean: bool = False  # within noise of the clean row (see NEAR)
    digests: tuple[str, ...] = ()
    # every seed's number, ordered by (victim seed, value, ...)
    per_seed: tuple[SeedValue, ...] = ()
    # The nested design (poison seeds x victim seeds): the variance components and the mean's
    # standard error from the poison means (ueb.stats.nested_components).
    nested: NestedComponents | None = None

    @property
    def ci95(self) -> float | None:
        """Half-width of the 95% t-interval of the mean (None below two seeds). In the nested
        design the poisons are the independent units: t(0.975, P-1) x the SE of the mean."""
        if self.mean is None:
            return None
        if self.nested is not None:
            return self.nested.half_width
        return half_width(self.std, self.n)

    @property
    def resolved(self) -> bool:
        """False when the 95% half-width is above RESOLUTION_POINTS (or unknown at n=1)."""
        hw = self.ci95
        return hw is not None and hw <= RESOLUTION_POINTS

    def main(self, digits: int = 2) -> str:
        """The number: `≈10.29 ± 0.74*`, `34.68 ± 8.02?`, `err` or `-`."""
        if self.mean is None:
            return "err" if self.failed else "-"
        s = f"{self.mean:.{digits}f}"
        hw = self.ci95
        if hw is not None:
            s += f" ± {hw:.{digits}f}"
            if hw > RESOLUTION_POINTS:
                s += UNRESOLVED
        return (NEAR if self.near_clean else "") + s + ("*" if self.incomplete else "")

    def detail(self) -> str:
        """Seed count and markers: `n=3 L2/3 err=1`; nested: `n=3x2 sd poison 4.1 victim 1.2`."""
        parts = [f"n={self.n}"] if self.mean is not None else []
        if self.nested is not None and self.mean is not None:
            c = self.nested
            parts = [
                f"n={c.poisons}x{c.victims} sd poison {c.poison_sd:.1f} victim {c.victim_sd:.1f}"
            ]
        if self.probed:
            parts.append(f"{LATCH}{self.latched}/{self.probed}")
        if self.errors and self.mean is not None:
            parts.append(f"err={self.errors}")
        return " ".join(parts)

    def text(self, digits: int = 2) -> str:
        return " ".join(p for p in (self.main(digits), self.detail()) if p)


def summarise(values: Sequence[float], **markers: Any) -> Value:
    if not values:
        return Value(None, **markers)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return Value(statistics.fmean(values), std, len(values), **markers)


def within_noise(a: Value, b: Value) -> bool:
    """|a - b| inside the 95% Welch interval of the difference (ueb.stats); False when either
    side has fewer than two seeds."""
    if a.mean is None or b.mean is None or a.std is None or b.std is None or min(a.n, b.n) < 2:
        return False
    hw = difference_half_width(a.std, a.n, b.std, b.n)
    return hw is not None and abs(a.mean - b.mean) <= hw + 1e-9


# --------------------------------------------------------------------------- the table


@dataclass
class Row:
    dataset: str
    victim: str
    poisoner: str  # the row's label: 'em', 'em @20%', 'em ⟨cfg 1a2b3c⟩'
    cells: dict[str, Value]
    mean: Value
    max: Value
    name: str = ""  # the poisoner plugin
    variant: str = ""  # configuration tag when one table position holds several configurations
    summary_columns: tuple[str, ...] = ()  # the columns Mean and Max are over
    victim_setting: str = field(default="", repr=False)  # the victim side's settings, for ≈
    # What a poisoner said about its poison that a reader must not miss (its `caveat` fact,
    # e.g. semantic images that did not come from the paper's generator); the label carries †.
    caveats: tuple[str, ...] = ()
    # Whether this is the reference (clean) row the others are read against (ueb.roles).
    reference: bool = False

    def value(self, column: str) -> Value:
        if column == "Mean":
            return self.mean
        if column == "Max":
            return self.max
        return self.cells[column]

    @property
    def is_clean(self) -> bool:
        return self.reference


def title(row: Row) -> str:
    """The row's label as printed: with † when its poisoner left a caveat (see the notes)."""
    return f"{row.poisoner} {CAVEAT}" if row.caveats else row.poisoner


@dataclass
class ReportTable:
    columns: list[str]
    rows: list[Row]
    metric: Metric
    notes: list[str] = field(default_factory=list)
    row_axis: str = "Victim"
    column_axis: str = "Countermeasure"
    seeds: list[int] = field(default_factory=list)
    configs: list[dict[str, Any]] = field(default_factory=list)  # split positions, for JSON
    # The run's detection table (ueb.detection's detection.json), for JSON; None: none computed.
    detection: dict[str, Any] | None = None

    @property
    def value_columns(self) -> list[str]:
        return [*self.columns, *SUMMARIES]


# --------------------------------------------------------------------------- a row as text (the text formats)


def _header(table: ReportTable) -> list[str]:
    return ["Dataset", table.row_axis, "Poisoner", *table.value_columns]


def _cells(row: Row, table: ReportTable) -> list[str]:
    return [
        row.dataset,
        row.victim,
        title(row),
        *(row.value(c).text() for c in table.value_columns),
    ]
