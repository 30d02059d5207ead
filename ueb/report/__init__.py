"""Reports in the paper's Table I layout: a row per (dataset, victim, poisoner), a column per
countermeasure, then Mean and Max over the countermeasures; test accuracy in %.

Every cell carries its uncertainty, in every format:

- a cell is the mean ± the half-width of its 95% Student-t interval over its seeds, with the
  seed count (`94.31 ± 0.50 n=3`; one seed: `94.31 n=1`, no interval); `?` marks a cell whose
  half-width is above 5 points, which this budget does not resolve (ueb/stats.py). JSON and
  CSV give the mean, the sample std, `ci95`, n and every seed's value;
- Mean and Max are taken over the countermeasures within each seed, then summarised over the
  seeds the same way, so their spread is the seed-to-seed spread of the value shown. They use
  the countermeasures every such seed has; `*` marks a Mean/Max over fewer countermeasures than
  the table's columns (failed or missing cells);
- `≈` marks a poisoned row's value within noise of the clean row's: |Δ| inside the 95% Welch
  interval of the difference (ueb/stats.py; the same rule `ueb check` applies);
- `L k/m` (class-wise poisoners): the shortcut probe latched in k of the m probed seeds;
- `err=k`: k seeds of the cell failed; a cell that only failed shows `err`, one not run `-`.

Seeds are pooled only among records with equal `config_digest`. When one table position holds
records of several configurations, the row is split into `em ⟨cfg 1a2b3c⟩` rows and a note
says which recorded settings differ.

Formats: `to_markdown`, `to_latex`, `to_json` (mean/std/n/ci95/latched/probed per cell),
`to_csv` (long format: one line per row and column, for `pandas.read_csv(...).pivot(...)`), and
`to_rich(table, width)`, which picks a layout that fits the terminal without cutting a number:
Table I, then transposed (countermeasures as rows), then panels of column groups.

One module per job: `model` (Value, Row, ReportTable), `build` (records -> table),
`configurations` (one position, several configurations), one module per format (`markdown`,
`csv_table`, `latex`, `json_table`, `terminal`).
"""

from __future__ import annotations

from ueb.report.build import build_table, pivot_by_victim, row_label
from ueb.report.csv_table import CSV_FIELDS, to_csv
from ueb.report.json_table import to_json, value_json
from ueb.report.latex import to_latex
from ueb.report.markdown import to_markdown
from ueb.report.model import (
    CAVEAT,
    LATCH,
    NEAR,
    SUMMARIES,
    UNRESOLVED,
    Metric,
    ReportTable,
    Row,
    Value,
    summarise,
    title,
    within_noise,
)
from ueb.report.terminal import TITLE, to_rich

RENDERERS = {"markdown": to_markdown, "csv": to_csv, "latex": to_latex, "json": to_json}
EXTENSIONS = {"markdown": "md", "csv": "csv", "latex": "tex", "json": "json"}

__all__ = [
    "CAVEAT",
    "CSV_FIELDS",
    "EXTENSIONS",
    "LATCH",
    "NEAR",
    "RENDERERS",
    "SUMMARIES",
    "TITLE",
    "UNRESOLVED",
    "Metric",
    "ReportTable",
    "Row",
    "Value",
    "build_table",
    "pivot_by_victim",
    "row_label",
    "summarise",
    "title",
    "to_csv",
    "to_json",
    "to_latex",
    "to_markdown",
    "to_rich",
    "value_json",
    "within_noise",
]
