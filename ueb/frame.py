"""Results as a pandas data frame: one row per cell and seed, and Table I as a groupby.

`load` reads one or several run directories into a frame whose columns have explicit dtypes
(see its docstring); `table_one` aggregates a frame the way `ueb report` builds the paper's
Table I (same means, same 95% t half-widths: both call ueb/stats.py), as a long frame that
`.unstack("countermeasure")` turns into the table's layout.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ueb.errors import ConfigError
from ueb.stats import RESOLUTION_POINTS, half_width, mean_std, nested_components
from ueb.store import DB_NAME, CellRecord, Store

RUNS = Path("runs")
SUMMARIES = ("Mean", "Max")
ROW_KEYS = ("dataset", "victim", "poisoner", "poison_fraction")

_CATEGORIES = ("run", "dataset", "poisoner", "countermeasure", "victim", "status", "profile")
_STRINGS = (
    "cell_id",
    "config_digest",
    "setting",
    "threat",
    "caveat",
    "poison_key",
    "poison_sha256",
    "poisoner_version",
    "countermeasure_version",
    "victim_version",
    "git",
    "torch",
    "device",
    "error",
)
_INTEGERS = ("seed", "poison_seed", "peak_step", "iterations")
_FLOATS = (
    "poison_fraction",
    "final_acc",
    "peak_acc",
    "clean_final_acc",
    "clean_peak_acc",
    "poison_seconds",
    "train_seconds",
)
_OBJECTS = ("poisoner_params", "countermeasure_params", "victim_params", "poison_facts")
COLUMNS = (
    "run",
    "cell_id",
    "dataset",
    "poisoner",
    "countermeasure",
    "victim",
    "seed",
    "poison_seed",
    "poison_fraction",
    "status",
    "final_acc",
    "peak_acc",
    "peak_step",
    "iterations",
    "clean_final_acc",
    "clean_peak_acc",
    "threat",
    "caveat",
    "latched",
    "poison_key",
    "poison_sha256",
    "poison_seconds",
    "train_seconds",
    "profile",
    "config_digest",
    "setting",
    "poisoner_version",
    "countermeasure_version",
    "victim_version",
    "git",
    "torch",
    "device",
    "finished",
    "error",
    *_OBJECTS,
)


# --------------------------------------------------------------------------- load


def run_path(run: str | Path | None) -> Path:
    """A run directory as `ueb report` takes it: a path, a name under runs/, or None for the
    latest run under runs/ (by the time its results were last written)."""
    if run is None:
        found = sorted(
            (p.stat().st_mtime, p.parent) for p in RUNS.glob(f"*/{DB_NAME}") if p.is_file()
        )
        if not found:
            raise ConfigError(
                "no run given and none under runs/", "pass a run directory printed by `ueb run`"
            )
        return found[-1][1]
    path = Path(run)
    if not path.exists() and (RUNS / path).exists():
        return RUNS / path
    return path


def _setting(r: CellRecord) -> str:
    """What a Table I row shares across its columns (profile, poisoner and victim versions and
    parameters), as a 6-character tag: the `⟨cfg …⟩` tag `ueb report` shows when one table
    position holds records of several such settings."""
    shared = {
        "profile": r.profile,
        "poisoner_version": r.poisoner_version,
        "poisoner_params": r.poisoner_params,
        "victim_version": r.victim_version,
        "victim_params": r.victim_params,
    }
    return hashlib.sha1(json.dumps(shared, sort_keys=True, default=str).encode()).hexdigest()[:6]


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _row(run: str, r: CellRecord) -> dict[str, Any]:
    facts = r.poison_facts if isinstance(r.poison_facts, Mapping) else {}
    probe = r.probe if isinstance(r.probe, Mapping) else {}
    return {
        "run": run,
        "cell_id": r.cell_id,
        "dataset": r.dataset,
        "poisoner": r.poisoner,
        "countermeasure": r.countermeasure,
        "victim": r.victim,
        "seed": r.seed,
        "poison_seed": r.poison_seed,
        "poison_fraction": r.poison_fraction,
        "status": r.status,
        "final_acc": r.final_acc,
        "peak_acc": r.peak_acc,
        "peak_step": r.peak_step,
        "iterations": r.iterations,
        "clean_final_acc": r.clean_final_acc,
        "clean_peak_acc": r.clean_peak_acc,
        "threat": _text(facts.get("budget")),
        "caveat": _text(facts.get("caveat")),
        "latched": bool(probe["latched"]) if "latched" in probe else None,
        "poison_key": _text(facts.get("key")),
        "poison_sha256": _text(facts.get("poison_sha256") or facts.get("sha256")),
        "poison_seconds": r.poison_seconds,
        "train_seconds": r.train_seconds,
        "profile": r.profile,
        "config_digest": _text(r.config_digest),
        "setting": _setting(r),
        "poisoner_version": _text(r.poisoner_version),
        "countermeasure_version": _text(r.countermeasure_version),
        "victim_version": _text(r.victim_version),
        "git": _text(r.git),
        "torch": _text(r.torch),
        "device": _text(r.device),
        "finished": _text(r.finished),
        "error": _text(r.error),
        "poisoner_params": r.poisoner_params,
        "countermeasure_params": r.countermeasure_params,
        "victim_params": r.victim_params,
        "poison_facts": dict(facts),
    }


def _order(values: Iterable[str], preferred: Sequence[str] = ()) -> list[str]:
    """Distinct values, those named in `preferred` first in its order, then as they come."""
    seen = list(dict.fromkeys(values))
    first = [v for v in dict.fromkeys(preferred) if v in seen]
    return first + [v for v in seen if v not in first]


def _typed(rows: list[dict[str, Any]], preferred: Mapping[str, list[str]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    for name in _CATEGORIES:
        values = [str(v) for v in frame[name]]
        frame[name] = pd.Categorical(
            values, categories=_order(values, preferred.get(name, ())), ordered=False
        )
    for name in _STRINGS:
        frame[name] = frame[name].astype("string")
    for name in _INTEGERS:
        frame[name] = frame[name].astype("Int64")
    for name in _FLOATS:
        frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
    frame["latched"] = frame["latched"].astype("boolean")
    frame["finished"] = pd.to_datetime(frame["finished"], format="ISO8601", errors="coerce")
    return frame


def load(*runs: str | Path) -> pd.DataFrame:
    """The records of one or several runs as a frame: one row per cell and seed.

    Each run is a run directory, or its name under runs/; none given: the latest run under
    runs/ (as `ueb report` resolves them). Rows follow the runs in the order given, each run's
    in its planned order; a cell computed once and reused by two runs appears in both.

    Columns and dtypes:

    - `run` (category): the run id from the run's manifest (its directory name for stores
      without one); it tells the runs of a concatenated frame apart;
    - `cell_id` (string): the cell's identity (a hash of its typed inputs, seed included);
    - `dataset`, `poisoner`, `countermeasure`, `victim` (category; categories in the order
      the runs' configurations list them, `clean` first);
    - `seed` (Int64): the victim's seed; `poison_seed` (Int64): the seed that made the poison
      (equal to `seed` except in the nested design; <NA> in records older than it);
    - `poison_fraction` (float64): the share of the training set that is poisoned;
    - `status` (category): `ok` or `error`; `error` (string): the failure's line;
    - `final_acc`, `peak_acc` (float64): test accuracy in %, NaN where the cell failed;
      `clean_final_acc`, `clean_peak_acc` (float64): the victim on the clean test set where
      the countermeasure changes it; `peak_step`, `iterations` (Int64);
    - `threat` (string): the poisoner's budget as recorded (`Linf 8/255`, `L2 0.5`, `L0 1 px`,
      `unbounded`); `caveat` (string): what the poisoner said a reader must not miss (the `†`
      of the tables), <NA> if nothing; `latched` (boolean): the shortcut probe latched, <NA>
      where the cell was not probed;
    - `poison_key` (string): the poison cache key; `poison_sha256` (string): the SHA-256 of
      the poison's bytes where the poisoner recorded it;
    - `poison_seconds`, `train_seconds` (float64): time spent making the poison and training;
    - `profile` (category); `config_digest` (string): everything that determines the cell
      except the seed; `setting` (string): what a Table I row shares across its columns,
      as the 6-character tag `ueb report` prints as `⟨cfg …⟩` when it splits a row;
    - `poisoner_version`, `countermeasure_version`, `victim_version`, `git`, `torch`,
      `device` (string); `finished` (datetime64): when the cell's record was written;
    - `poisoner_params`, `countermeasure_params`, `victim_params`, `poison_facts` (object):
      the recorded dicts, e.g. `frame[frame.poisoner_params.map(lambda p: p.get("eps")) > 0.03]`.
    """
    paths = [run_path(r) for r in runs] if runs else [run_path(None)]
    rows: list[dict[str, Any]] = []
    preferred: dict[str, list[str]] = {"poisoner": []}
    for path in paths:
        with Store.open_existing(path, readonly=True) as store:
            manifest = store.manifest()
            records = store.records()
        run = str(manifest.get("run_id") or path.name)
        config = manifest.get("config") or {}
        for axis, key in (
            ("poisoner", "poisoners"),
            ("countermeasure", "countermeasures"),
            ("victim", "victims"),
            ("dataset", "datasets"),
        ):
            named = config.get(key) if isinstance(config, Mapping) else None
            if isinstance(named, list):
                preferred.setdefault(axis, []).extend(str(n) for n in named)
        preferred.setdefault("run", []).append(run)
        rows.extend(_row(run, r) for r in records)
    return _typed(rows, preferred)


# --------------------------------------------------------------------------- Table I


def _check_columns(frame: pd.DataFrame, needed: Iterable[str]) -> None:
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ConfigError(
            f"the frame has no column {', '.join(map(repr, missing))}",
            "pass a frame from ueb.frame.load (filter its rows, keep its columns)",
        )


def _check_configurations(frame: pd.DataFrame, by: list[str]) -> None:
    """Seeds are pooled only within one configuration, as in `ueb report`: one `config_digest`
    per table cell, and one `setting` per table row among its finished cells (a failed
    cell's record holds no parameters, so its setting is not comparable)."""
    checks = [([*by, "countermeasure"], "config_digest", frame)]
    if "setting" not in by and "setting" in frame.columns:
        checks.append((by, "setting", frame[frame["status"] == "ok"]))
    for keys, column, rows in checks:
        if column not in rows.columns:
            continue
        for key, group in rows.groupby(keys, observed=True, sort=False, dropna=False):
            values = sorted(group[column].astype(str).unique())
            if len(values) > 1:
                shown = ", ".join(f"{k}={v}" for k, v in zip(keys, _as_tuple(key), strict=True))
                also = f" or pass by=[..., '{column}']" if column == "setting" else ""
                raise ConfigError(
                    f"{shown} holds records of {len(values)} configurations "
                    f"({column} {', '.join(values[:4])}), which are never pooled",
                    f"filter the frame first (frame[frame.{column} == '{values[0]}']){also}",
                )


def _as_tuple(key: Any) -> tuple[Any, ...]:
    return key if isinstance(key, tuple) else (key,)


def _stat(values: Sequence[float], poison_seeds: Sequence[int] | None) -> dict[str, Any]:
    """Mean, sample std, n and the 95% half-width of one table value (ueb/stats.py): over the
    seeds, or, in the nested design, with the poisons as the units of the interval."""
    if not values:
        return {"mean": None, "std": None, "n": 0, "ci95": None}
    mean, std = mean_std(values)
    ci95 = half_width(std, len(values))
    if poison_seeds is not None:
        groups: dict[int, list[float]] = {}
        for q, x in zip(poison_seeds, values, strict=True):
            groups.setdefault(q, []).append(x)
        nested = nested_components(list(groups.values()))
        ci95 = None if nested is None else nested.half_width
    return {"mean": mean, "std": std, "n": len(values), "ci95": ci95}


def _units(group: pd.DataFrame) -> pd.DataFrame:
    """One unit per (poison seed, victim seed): in the nested design a victim seed recurs."""
    poison = group["poison_seed"].fillna(group["seed"]).astype(int)
    return pd.DataFrame({"unit_poison": poison, "unit_seed": group["seed"].astype(int)})


def _cells(group: pd.DataFrame, metric: str) -> dict[str, Any]:
    ok = group[(group["status"] == "ok") & group[metric].notna()]
    units = list(_units(ok).itertuples(index=False, name=None))
    nested = any(q != s for q, s in units)
    ordered = sorted(zip(units, ok[metric].astype(float), strict=True))
    values = [x for _, x in ordered]
    poisons = [q for (q, _), _ in ordered] if nested else None
    return {
        **_stat(values, poisons),
        "errors": int((group["status"] == "error").sum()),
        "incomplete": False,
        "over": pd.NA,
    }


def _summaries(group: pd.DataFrame, metric: str, columns: list[str]) -> list[dict[str, Any]]:
    """Mean and Max over the countermeasures within each seed, then over the seeds (as in
    `ueb report`): over the row's columns for the seeds that have them all, else over the
    columns every seed has, else each seed's own columns (marked incomplete)."""
    ok = group[(group["status"] == "ok") & group[metric].notna()]
    if ok.empty:
        empty = {"mean": None, "std": None, "n": 0, "ci95": None, "errors": 0}
        return [{**empty, "incomplete": False, "over": 0} for _ in SUMMARIES]
    wide = (
        pd.concat([_units(ok), ok[[metric]]], axis=1)
        .assign(countermeasure=ok["countermeasure"].astype(str))
        .pivot(index=["unit_poison", "unit_seed"], columns="countermeasure", values=metric)
        .sort_index()
    )
    row_cols = [c for c in columns if c in wide.columns and wide[c].notna().any()]
    complete = wide[row_cols].notna().all(axis=1)
    used = row_cols
    if complete.any():
        wide = wide[complete]
    else:
        used = [c for c in row_cols if wide[c].notna().all()]
    numbers = [
        [float(x) for x in (row[used] if used else row.dropna())] for _, row in wide.iterrows()
    ]
    incomplete = len(used) < len(columns)
    # the poisons are the units of the interval in the nested design (not over a seed's own
    # columns: those values are not one quantity)
    nested = bool(used) and any(q != s for q, s in wide.index)
    poisons = [q for q, _ in wide.index] if nested else None
    means = [statistics.fmean(xs) for xs in numbers]
    maxes = [max(xs) for xs in numbers]
    return [
        {**_stat(values, poisons), "errors": 0, "incomplete": incomplete, "over": len(used)}
        for values in (means, maxes)
    ]


def table_one(
    frame: pd.DataFrame, metric: str = "final_acc", by: Sequence[str] = ROW_KEYS
) -> pd.DataFrame:
    """The paper's Table I aggregation of a frame from `load` (filtered as you like).

    One row per table row (`by`: dataset, victim, poisoner, poison fraction) and column (each
    countermeasure, then `Mean` and `Max` over the countermeasures), indexed by
    `[*by, "countermeasure"]`; `table_one(frame)["mean"].unstack("countermeasure")` is the table.
    Columns: `mean`, `std` (sample, n-1), `n` (seeds), `ci95` (the half-width of the 95%
    Student-t interval, NaN below two seeds; in the nested design t(0.975, P-1) x the standard
    error from the P poison means), `resolved` (ci95 at most 5 points), `errors` (failed
    seeds), `summary` (True for Mean and Max), `over` (the countermeasures Mean and Max are
    taken over) and `incomplete` (over fewer than the frame's countermeasures). The numbers
    are those of `ueb report` for the same records: ueb/stats.py's functions, the same pooling.

    `metric` is any numeric column (`final_acc`, `peak_acc`, `train_seconds`, ...). A cell
    computed once and loaded from several runs counts once (rows are unique by `cell_id`).
    Seeds are pooled only within one configuration: a table row or cell holding records of
    several (`setting`, `config_digest`) is an error; filter the frame, or add `setting` (or
    `profile`, ...) to `by`.
    """
    by = list(by)
    _check_columns(frame, [*by, metric, "countermeasure", "status", "seed", "poison_seed"])
    if not pd.api.types.is_numeric_dtype(frame[metric]) or pd.api.types.is_bool_dtype(
        frame[metric]
    ):
        raise ConfigError(
            f"metric '{metric}' is not a numeric column ({frame[metric].dtype})",
            "use final_acc, peak_acc or another float column",
        )
    rows = frame.drop_duplicates("cell_id") if "cell_id" in frame.columns else frame
    _check_configurations(rows, by)
    present = set(rows["countermeasure"].astype(str))
    order = (
        [str(c) for c in rows["countermeasure"].cat.categories]
        if isinstance(rows["countermeasure"].dtype, pd.CategoricalDtype)
        else sorted(present)
    )
    columns = [c for c in order if c in present]
    out: list[dict[str, Any]] = []
    for key, group in rows.groupby(by, observed=True, sort=True, dropna=False):
        head = dict(zip(by, _as_tuple(key), strict=True))
        by_column = dict(
            iter(group.groupby(group["countermeasure"].astype(str), sort=False, observed=True))
        )
        for c in columns:
            if c in by_column:
                out.append({**head, "countermeasure": c, **_cells(by_column[c], metric)})
        for name, value in zip(SUMMARIES, _summaries(group, metric, columns), strict=True):
            out.append({**head, "countermeasure": name, **value})
    return _table(out, rows, by, columns)


def _table(
    out: list[dict[str, Any]], rows: pd.DataFrame, by: list[str], columns: list[str]
) -> pd.DataFrame:
    fields = ["mean", "std", "n", "ci95", "errors", "over", "incomplete"]
    table = pd.DataFrame(out, columns=[*by, "countermeasure", *fields])
    for k in by:
        if isinstance(rows[k].dtype, pd.CategoricalDtype):
            table[k] = pd.Categorical(
                table[k], categories=rows[k].cat.remove_unused_categories().cat.categories
            )
    table["countermeasure"] = pd.Categorical(
        table["countermeasure"], categories=[*columns, *SUMMARIES]
    )
    for name in ("mean", "std", "ci95"):
        table[name] = pd.to_numeric(table[name]).astype("float64")
    table["std"] = table["std"].where(table["n"] > 1)
    table["n"] = table["n"].astype("int64")
    table["errors"] = table["errors"].astype("int64")
    table["over"] = table["over"].astype("Int64")
    table["incomplete"] = table["incomplete"].astype(bool)
    table["resolved"] = table["ci95"].le(RESOLUTION_POINTS)
    table["summary"] = table["countermeasure"].isin(SUMMARIES)
    return table.set_index([*by, "countermeasure"])
