"""The JSON format: every value with its mean, std, n, ci95, markers and per-seed numbers."""

from __future__ import annotations

import json
from typing import Any

from ueb.report.model import ReportTable, Value


def value_json(v: Value) -> dict[str, Any]:
    return {
        "mean": v.mean,
        "std": v.std if v.n > 1 else None,
        "n": v.n,
        "ci95": v.ci95,
        "latched": v.latched if v.probed else None,
        "probed": v.probed,
        "near_clean": v.near_clean,
        "failed": v.failed,
        "errors": v.errors,
        "incomplete": v.incomplete,
        "config_digests": list(v.digests),
        "per_seed": [s._asdict() for s in v.per_seed],
        "nested": None
        if v.nested is None
        else {
            "poison_seeds": v.nested.poisons,
            "victim_seeds": v.nested.victims,
            "poison_variance": v.nested.poison_var,
            "victim_variance": v.nested.victim_var,
            "poison_sd": v.nested.poison_sd,
            "victim_sd": v.nested.victim_sd,
        },
    }


def to_json(table: ReportTable) -> str:
    return json.dumps(
        {
            "metric": table.metric,
            "spread": "std: sample standard deviation (n-1) over seeds; ci95: half-width of the 95% t-interval of the mean",
            "columns": table.columns,
            "seeds": table.seeds,
            "rows": [
                {
                    "dataset": r.dataset,
                    "victim": r.victim,
                    "poisoner": r.poisoner,
                    "plugin": r.name,
                    "variant": r.variant,
                    "cells": {c: value_json(r.cells[c]) for c in table.columns},
                    "mean": value_json(r.mean),
                    "max": value_json(r.max),
                    "summary_columns": list(r.summary_columns),
                    "caveats": list(r.caveats),
                }
                for r in table.rows
            ],
            "configurations": table.configs,
            "notes": table.notes,
            **({"detection": table.detection} if table.detection is not None else {}),
        },
        indent=2,
    )
