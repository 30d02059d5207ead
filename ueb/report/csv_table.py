"""The CSV format: long, one line per row and column."""

from __future__ import annotations

import csv
import io

from ueb.report.model import SUMMARIES, ReportTable, title

CSV_FIELDS = (
    "dataset", "victim", "poisoner", "variant", "column", "summary", "mean", "std", "n", "ci95",
    "latched", "probed", "near_clean", "errors", "incomplete",
)  # fmt: skip


def to_csv(table: ReportTable) -> str:
    """Long format, one line per (row, column), Mean and Max as columns with `summary` = 1:
    `pd.read_csv(f).pivot(index=["dataset", "victim", "poisoner"], columns="column", values="mean")`
    gives the Table I layout back. `std` is the sample std (n-1) over seeds, `ci95` the half-width
    of the 95% t-interval, `latched`/`probed` the shortcut-probe counts (empty when not probed)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)

    def num(x: float | None) -> str:
        return "" if x is None else f"{x:.6g}"

    for r in table.rows:
        for c in table.value_columns:
            v = r.value(c)
            w.writerow(
                [r.dataset, r.victim, title(r), r.variant, c, int(c in SUMMARIES), num(v.mean), num(v.std if v.n > 1 else None), v.n,
                 num(v.ci95), v.latched if v.probed else "", v.probed or "", int(v.near_clean), v.errors, int(v.incomplete)]
            )  # fmt: skip
    return buf.getvalue()
