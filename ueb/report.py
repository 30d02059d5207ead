"""Reports in the paper's Table I layout: a row per (dataset, victim, poisoner), a column per
countermeasure, then Mean and Max over the countermeasures; test accuracy in %.

With several seeds a cell shows mean ± std over seeds, and Mean/Max are computed per seed
and then averaged. Cells that failed show "err", cells not run yet "-"; a Mean or Max over an
incomplete row is marked with "*".
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ueb.store import CellRecord

Metric = Literal["final", "peak"]


@dataclass
class Value:
    mean: float | None
    std: float | None = None
    n: int = 0
    failed: bool = False
    incomplete: bool = False

    def text(self, digits: int = 2) -> str:
        if self.failed and self.mean is None:
            return "err"
        if self.mean is None:
            return "-"
        s = f"{self.mean:.{digits}f}"
        if self.n > 1 and self.std is not None:
            s += f" ± {self.std:.{digits}f}"
        return s + ("*" if self.incomplete else "")


@dataclass
class Row:
    dataset: str
    victim: str
    poisoner: str
    cells: dict[str, Value]
    mean: Value
    max: Value


@dataclass
class ReportTable:
    columns: list[str]
    rows: list[Row]
    metric: Metric
    notes: list[str] = field(default_factory=list)
    row_axis: str = "Victim"


def _order(names: Sequence[str], preferred: Sequence[str] | None) -> list[str]:
    seen = list(dict.fromkeys(names))
    if not preferred:
        return seen
    first = [n for n in dict.fromkeys(preferred) if n in seen]
    return first + [n for n in seen if n not in first]


def row_label(poisoner: str, fraction: float) -> str:
    """'em' for a fully poisoned set, 'em @20%' when only a fraction is poisoned."""
    return poisoner if fraction >= 1.0 else f"{poisoner} @{fraction * 100:g}%"


def _agg(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def build_table(records: Sequence[CellRecord], metric: Metric = "final", config: dict[str, Any] | None = None) -> ReportTable:
    config = config or {}
    key = "final_acc" if metric == "final" else "peak_acc"
    columns = _order([r.countermeasure for r in records], config.get("countermeasures"))
    datasets = _order([r.dataset for r in records], config.get("datasets"))
    victims = _order([r.victim for r in records], config.get("victims"))
    order = {p: i for i, p in enumerate(_order([r.poisoner for r in records], ["clean", *config.get("poisoners", [])]))}
    labelled = sorted({(r.poisoner, r.poison_fraction) for r in records}, key=lambda pf: (order[pf[0]], -pf[1]))
    poisoners = [row_label(p, f) for p, f in labelled]
    by_key: dict[tuple[str, str, str, str], list[CellRecord]] = {}
    for r in records:
        by_key.setdefault((r.dataset, r.victim, row_label(r.poisoner, r.poison_fraction), r.countermeasure), []).append(r)
    seeds = sorted({r.seed for r in records})
    rows = []
    for d in datasets:
        for v in victims:
            for p in poisoners:
                if not any((d, v, p, c) in by_key for c in columns):
                    continue
                cells = {}
                per_seed: dict[int, dict[str, float]] = {s: {} for s in seeds}
                for c in columns:
                    recs = by_key.get((d, v, p, c), [])
                    ok = [r for r in recs if r.status == "ok" and getattr(r, key) is not None]
                    for r in ok:
                        per_seed[r.seed][c] = float(getattr(r, key))
                    mean, std = _agg([float(getattr(r, key)) for r in ok])
                    cells[c] = Value(mean, std, len(ok), failed=any(r.status == "error" for r in recs))
                means, maxes, incomplete = [], [], False
                for s in seeds:
                    vals = per_seed[s]
                    if not vals:
                        continue
                    incomplete |= len(vals) < len(columns)
                    means.append(statistics.fmean(vals.values()))
                    maxes.append(max(vals.values()))
                m, ms = _agg(means)
                x, xs = _agg(maxes)
                rows.append(Row(d, v, p, cells, Value(m, ms, len(means), incomplete=incomplete), Value(x, xs, len(maxes), incomplete=incomplete)))
    notes = [f"test accuracy (%), {metric} epoch" + ("" if len(seeds) < 2 else f"; mean ± std over seeds {seeds}")]
    return ReportTable(columns, rows, metric, notes)


def _header(table: ReportTable) -> list[str]:
    return ["Dataset", table.row_axis, "Poisoner", *table.columns, "Mean", "Max"]


def pivot_by_victim(records: Sequence[CellRecord], countermeasure: str = "vanilla", metric: Metric = "final", config: dict[str, Any] | None = None) -> ReportTable:
    """The transfer layout of the paper's Tables III/E: one column per victim architecture."""
    from dataclasses import replace

    swapped = [replace(r, countermeasure=r.victim, victim=r.countermeasure) for r in records if r.countermeasure == countermeasure]
    cfg = dict(config or {})
    cfg["countermeasures"], cfg["victims"] = cfg.get("victims"), [countermeasure]
    table = build_table(swapped, metric, cfg)
    table.row_axis = "Countermeasure"
    return table


def _cells(row: Row, table: ReportTable) -> list[str]:
    return [row.dataset, row.victim, row.poisoner, *(row.cells[c].text() for c in table.columns), row.mean.text(), row.max.text()]


def to_markdown(table: ReportTable) -> str:
    head = _header(table)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < 3 else "---:" for i in range(len(head))) + "|"]
    lines += ["| " + " | ".join(_cells(r, table)) + " |" for r in table.rows]
    lines += ["", *(f"_{n}_" for n in table.notes)]
    return "\n".join(lines) + "\n"


def to_csv(table: ReportTable) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(_header(table))
    for r in table.rows:
        w.writerow(_cells(r, table))
    return buf.getvalue()


def _tex(s: str) -> str:
    return s.replace("\\", "\\textbackslash{}").replace("_", "\\_").replace("%", "\\%").replace("&", "\\&").replace("#", "\\#").replace("±", "$\\pm$")


def to_latex(table: ReportTable) -> str:
    head = _header(table)
    spec = "lll" + "r" * (len(head) - 3)
    lines = [
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        " & ".join(_tex(h) for h in head) + " \\\\",
        "\\midrule",
    ]
    lines += [" & ".join(_tex(c) for c in _cells(r, table)) + " \\\\" for r in table.rows]
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_json(table: ReportTable) -> str:
    def val(v: Value) -> dict[str, Any]:
        return {"mean": v.mean, "std": v.std, "n": v.n, "failed": v.failed, "incomplete": v.incomplete}

    return json.dumps(
        {
            "metric": table.metric,
            "columns": table.columns,
            "rows": [
                {
                    "dataset": r.dataset,
                    "victim": r.victim,
                    "poisoner": r.poisoner,
                    "cells": {c: val(r.cells[c]) for c in table.columns},
                    "mean": val(r.mean),
                    "max": val(r.max),
                }
                for r in table.rows
            ],
            "notes": table.notes,
        },
        indent=2,
    )


def to_rich(table: ReportTable) -> Any:
    from rich.table import Table

    t = Table(title="Test accuracy (%) of victims trained on protected data", caption="; ".join(table.notes))
    for i, h in enumerate(_header(table)):
        t.add_column(h, justify="left" if i < 3 else "right", style="bold" if h in ("Mean", "Max") else None)
    last = None
    for r in table.rows:
        if last is not None and r.dataset != last:
            t.add_section()
        last = r.dataset
        t.add_row(*_cells(r, table), style="dim" if r.poisoner == "clean" else None)
    return t


RENDERERS = {"markdown": to_markdown, "csv": to_csv, "latex": to_latex, "json": to_json}
EXTENSIONS = {"markdown": "md", "csv": "csv", "latex": "tex", "json": "json"}
