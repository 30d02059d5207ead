"""A cell's record and its stored form: which fields are JSON, which must read back as
numbers, their SQLite column types, and strict JSON for the stored values.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, dataclass, field
from typing import Any


@dataclass
class CellRecord:
    cell_id: str
    ordinal: int
    dataset: str
    poisoner: str
    countermeasure: str
    victim: str
    seed: int
    poison_fraction: float = 1.0
    poison_seed: int | None = None  # the seed that made the poison (None: records before it)
    profile: str = ""
    poisoner_version: str = ""
    countermeasure_version: str = ""
    victim_version: str = ""
    poisoner_params: dict[str, Any] = field(default_factory=dict)
    countermeasure_params: dict[str, Any] = field(default_factory=dict)
    victim_params: dict[str, Any] = field(default_factory=dict)
    params_hash: str = ""
    config_digest: str = ""  # everything that determines the cell except the seed
    git: str = ""
    torch: str = ""
    device: str = ""
    status: str = "pending"  # ok | error
    final_acc: float | None = None
    peak_acc: float | None = None
    peak_step: int | None = None
    clean_final_acc: float | None = None
    clean_peak_acc: float | None = None
    iterations: int | None = None
    poison_seconds: float | None = None
    train_seconds: float | None = None
    poison_facts: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    probe: dict[str, Any] = field(default_factory=dict)  # shortcut probe of a class-wise poison
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    finished: str = ""


_JSON_FIELDS = {
    "poisoner_params",
    "countermeasure_params",
    "victim_params",
    "poison_facts",
    "history",
    "probe",
    "extra",
}


# Values read back are checked: an edited or foreign value is one line, never a traceback.
_NUMERIC_FIELDS = {
    "ordinal",
    "seed",
    "poison_seed",
    "poison_fraction",
    "final_acc",
    "peak_acc",
    "peak_step",
    "iterations",
    "poison_seconds",
    "train_seconds",
    "clean_final_acc",
    "clean_peak_acc",
}


def _column_type(name: str) -> str:
    if name in _JSON_FIELDS:
        return "TEXT"
    if name in ("ordinal", "seed", "poison_seed", "peak_step", "iterations"):
        return "INTEGER"
    if name.endswith(("_acc", "_seconds", "_fraction")):
        return "REAL"
    return "TEXT"


def _finite(value: Any) -> Any:
    """NaN and +-inf become None, at any depth: SQLite's JSON functions reject them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _dumps(value: Any) -> str:
    """Strict JSON, so that `json_extract` works on every stored record."""
    return json.dumps(_finite(value), default=str, allow_nan=False)


def _default(f: Any) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default
