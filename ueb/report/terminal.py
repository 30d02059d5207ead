"""The terminal table (rich), in the first layout that fits the width without cutting a
number: Table I, then transposed, then panels of column groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ueb.report.model import SUMMARIES, ReportTable, Value, title

# --------------------------------------------------------------------------- terminal

TITLE = "Test accuracy (%) of victims trained on protected data"


@dataclass
class _Grid:
    """A layout-neutral table: row labels (several label columns), data columns, cells."""

    label_heads: list[str]
    labels: list[list[str]]  # per row, one text per label column
    heads: list[str]  # data column headers (may hold newlines)
    values: list[list[Value]]  # per row, per data column
    dim_rows: set[int] = field(default_factory=set)
    dim_cols: set[int] = field(default_factory=set)
    bold_cols: set[int] = field(default_factory=set)
    bold_rows: set[int] = field(default_factory=set)
    sections: set[int] = field(default_factory=set)  # rows that start a new section


def _common(table: ReportTable) -> tuple[bool, bool, str]:
    """Whether dataset / victim vary between rows, and the title suffix naming them when not."""
    ds = {r.dataset for r in table.rows}
    vs = {r.victim for r in table.rows}
    fixed = [next(iter(ds))] if len(ds) == 1 else []
    fixed += [next(iter(vs))] if len(vs) == 1 else []
    return len(ds) > 1, len(vs) > 1, " / ".join(fixed)


def _table_one(table: ReportTable) -> _Grid:
    many_d, many_v, _ = _common(table)
    label_heads = [
        h for h, keep in (("Dataset", many_d), (table.row_axis, many_v), ("Poisoner", True)) if keep
    ]
    labels = [
        [x for x, keep in ((r.dataset, many_d), (r.victim, many_v), (title(r), True)) if keep]
        for r in table.rows
    ]
    cols = table.value_columns
    grid = _Grid(label_heads, labels, list(cols), [[r.value(c) for c in cols] for r in table.rows])
    grid.dim_rows = {i for i, r in enumerate(table.rows) if r.is_clean}
    grid.bold_cols = {i for i, c in enumerate(cols) if c in SUMMARIES}
    grid.sections = {
        i for i in range(1, len(table.rows)) if table.rows[i].dataset != table.rows[i - 1].dataset
    }
    return grid


def _transposed(table: ReportTable) -> _Grid:
    many_d, many_v, _ = _common(table)
    heads = [
        "\n".join(
            x for x, keep in ((r.dataset, many_d), (r.victim, many_v), (title(r), True)) if keep
        )
        for r in table.rows
    ]
    cols = table.value_columns
    grid = _Grid(
        [table.column_axis],
        [[c] for c in cols],
        heads,
        [[r.value(c) for r in table.rows] for c in cols],
    )
    grid.dim_cols = {j for j, r in enumerate(table.rows) if r.is_clean}
    grid.bold_rows = {i for i, c in enumerate(cols) if c in SUMMARIES}
    grid.sections = {len(table.columns)} if table.columns else set()
    return grid


def _rich_table(grid: _Grid, cols: Sequence[int], stacked: bool, title: str) -> Any:
    from rich.table import Table
    from rich.text import Text

    t = Table(title=title, title_justify="left")
    for h in grid.label_heads:
        t.add_column(Text(h), justify="left", overflow="fold")
    for j in cols:
        t.add_column(
            Text(grid.heads[j]),
            justify="right",
            overflow="fold",
            style="bold" if j in grid.bold_cols else None,
        )
    sep = "\n" if stacked else " "
    for i, (labels, values) in enumerate(zip(grid.labels, grid.values, strict=True)):
        if i in grid.sections:
            t.add_section()
        cells = [Text(x) for x in labels]
        for j in cols:
            v = values[j]
            cells.append(
                Text(
                    sep.join(p for p in (v.main(), v.detail()) if p),
                    style="dim" if j in grid.dim_cols else "",
                )
            )
        t.add_row(
            *cells, style="dim" if i in grid.dim_rows else ("bold" if i in grid.bold_rows else None)
        )
    return t


def _width(renderable: Any) -> int:
    from rich.console import Console
    from rich.measure import Measurement

    console = Console(width=100_000)
    return Measurement.get(console, console.options, renderable).maximum


def _panels(grid: _Grid, width: int, stacked: bool) -> list[list[int]]:
    """Data columns in groups that fit `width` next to the repeated row labels (greedy)."""
    groups: list[list[int]] = []
    current: list[int] = []
    for j in range(len(grid.heads)):
        trial = [*current, j]
        if current and _width(_rich_table(grid, trial, stacked, "")) > width:
            groups.append(current)
            trial = [j]
        current = trial
    if current:
        groups.append(current)
    return groups


def to_rich(table: ReportTable, width: int | None = None) -> Any:
    """The table for a terminal `width` columns wide (None: the Table I layout as is).

    Layouts, first that fits: Table I; Table I with the seed count under the number; transposed
    (countermeasures as rows); transposed and stacked; then panels of column groups (each
    repeating the row labels) of whichever orientation needs fewer. Columns fold rather than
    cut, so a number is never shortened to '…'."""
    from rich.console import Group
    from rich.text import Text

    _, _, fixed = _common(table)
    title = TITLE + (f": {fixed}" if fixed else "")
    notes = Text("\n".join(table.notes), style="italic")
    one, flipped = _table_one(table), _transposed(table)
    if width is None:
        return Group(_rich_table(one, range(len(one.heads)), False, title), notes)
    candidates = [
        (one, False, ""),
        (one, True, ""),
        (flipped, False, f" ({table.column_axis.lower()}s as rows)"),
        (flipped, True, f" ({table.column_axis.lower()}s as rows)"),
    ]
    for grid, stacked, how in candidates:
        t = _rich_table(grid, range(len(grid.heads)), stacked, title + how)
        if _width(t) <= width:
            return Group(t, notes)
    options = [(grid, how, _panels(grid, width, True)) for grid, _, how in candidates[1::2]]
    grid, how, groups = min(options, key=lambda o: len(o[2]))
    tables = [
        _rich_table(grid, cols, True, f"{title}{how}, part {k} of {len(groups)}")
        for k, cols in enumerate(groups, 1)
    ]
    return Group(*tables, notes)
