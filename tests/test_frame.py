"""ueb.frame: a run's records as a typed data frame, and Table I as a groupby that gives the
numbers `ueb report --format json` gives for the same records."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from ueb import frame as F
from ueb.errors import ConfigError, UebError
from ueb.report import row_label
from ueb.stats import half_width, nested_components
from ueb.store import CellRecord, Store

COUNTERMEASURES = ("vanilla", "grayscale")


def cli(*args: str) -> str:
    from ueb.cli import app

    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout  # a warning (an incomplete run) goes to stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """runs/first: clean and lsp x vanilla, grayscale x seeds 0, 1 (smoke profile, computed);
    runs/second: the same matrix at seed 1 only, every cell reused from the first run."""
    root = tmp_path_factory.mktemp("frame")
    common = ["run", "-p", "lsp", "-c", ",".join(COUNTERMEASURES), "-v", "fastnet"]
    cli(*common, "--profile", "smoke", "-s", "0", "-s", "1", "--run-dir", str(root / "runs/first"))
    cli(*common, "--profile", "smoke", "-s", "1", "--run-dir", str(root / "runs/second"))
    return root


def report_json(run: Path | str, *extra: str) -> dict[str, Any]:
    return json.loads(cli("report", str(run), "--format", "json", *extra))


def none_if_nan(x: Any) -> Any:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA else x


def assert_same_numbers(table: pd.DataFrame, report: dict[str, Any]) -> int:
    """Every value of the report's rows equals table_one's (mean, std, n, ci95, errors,
    incomplete); returns how many values were compared."""
    compared = 0
    labels = {
        (d, v, row_label(str(p), float(f))): (d, v, p, f)
        for d, v, p, f in table.index.droplevel("countermeasure").unique()
    }
    for row in report["rows"]:
        key = labels[(row["dataset"], row["victim"], row["poisoner"])]
        values = {**row["cells"], "Mean": row["mean"], "Max": row["max"]}
        for column, value in values.items():
            if value["n"] == 0 and not value["errors"]:
                assert (*key, column) not in table.index or table.loc[(*key, column), "n"] == 0
                continue
            got = table.loc[(*key, column)]
            assert got["n"] == value["n"], (key, column)
            assert none_if_nan(got["mean"]) == pytest.approx(value["mean"], rel=1e-12)
            assert none_if_nan(got["std"]) == pytest.approx(value["std"], rel=1e-12)
            assert none_if_nan(got["ci95"]) == pytest.approx(value["ci95"], rel=1e-12)
            assert got["errors"] == value["errors"]
            assert bool(got["incomplete"]) == value["incomplete"]
            compared += 1
    return compared


# --------------------------------------------------------------------------- a real run


def test_load_gives_one_typed_row_per_cell_and_seed(runs):
    frame = F.load(runs / "runs/first")
    with Store.open_existing(runs / "runs/first") as store:
        records = {r.cell_id: r for r in store.records()}
        run_id = store.manifest()["run_id"]
    assert len(frame) == len(records) == 2 * len(COUNTERMEASURES) * 2
    assert not frame.duplicated(["poisoner", "countermeasure", "victim", "dataset", "seed"]).any()
    dtypes = {c: str(frame[c].dtype) for c in frame.columns}
    for column in ("poisoner", "countermeasure", "victim", "dataset", "status", "run"):
        assert dtypes[column] == "category", column
    for column in ("seed", "poison_seed", "peak_step", "iterations"):
        assert dtypes[column] == "Int64", column
    for column in ("final_acc", "peak_acc", "poison_fraction", "poison_seconds", "train_seconds"):
        assert dtypes[column] == "float64", column
    for column in ("cell_id", "threat", "caveat", "poison_key", "poison_sha256", "setting"):
        assert dtypes[column] == "string", column
    assert dtypes["latched"] == "boolean" and dtypes["finished"].startswith("datetime64")
    assert list(frame["poisoner"].cat.categories) == ["clean", "lsp"]
    assert list(frame["countermeasure"].cat.categories) == list(COUNTERMEASURES)
    assert set(frame["run"]) == {run_id}
    for row in frame.itertuples():
        record = records[row.cell_id]
        assert (row.poisoner, row.countermeasure, row.seed) == (
            record.poisoner,
            record.countermeasure,
            record.seed,
        )
        assert row.final_acc == record.final_acc and row.peak_acc == record.peak_acc
        assert row.threat == record.poison_facts["budget"]
        assert row.poison_key == record.poison_facts["key"]
        assert row.train_seconds == record.train_seconds
    assert set(frame.loc[frame.poisoner == "clean", "threat"]) == {"Linf 0/255"}
    assert frame.loc[frame.poisoner == "lsp", "threat"].str.startswith("L2 ").all()
    assert frame["setting"].nunique() == 2  # one per poisoner row
    assert (frame["status"] == "ok").all() and frame["error"].isna().all()


def test_table_one_gives_the_numbers_of_ueb_report(runs):
    table = F.table_one(F.load(runs / "runs/first"))
    assert list(table.index.names) == [*F.ROW_KEYS, "countermeasure"]
    assert len(table) == 2 * (len(COUNTERMEASURES) + 2)
    assert assert_same_numbers(table, report_json(runs / "runs/first")) == len(table)
    peak = F.table_one(F.load(runs / "runs/first"), metric="peak_acc")
    assert assert_same_numbers(peak, report_json(runs / "runs/first", "--metric", "peak")) == len(
        peak
    )
    wide = table["mean"].unstack("countermeasure")
    assert list(wide.columns) == [*COUNTERMEASURES, "Mean", "Max"]
    cells = wide[list(COUNTERMEASURES)]
    assert wide["Max"].ge(cells.max(axis=1) - 1e-9).all()  # a mean of per-seed maxima
    assert wide["Mean"].to_numpy() == pytest.approx(cells.mean(axis=1).to_numpy())
    assert (table.xs("Mean", level="countermeasure")["over"] == len(COUNTERMEASURES)).all()


def test_two_runs_concatenate_and_a_shared_cell_counts_once(runs):
    first, second = F.load(runs / "runs/first"), F.load(runs / "runs/second")
    both = F.load(runs / "runs/first", runs / "runs/second")
    assert len(both) == len(first) + len(second) == 12
    assert list(both["run"].cat.categories) == [first["run"].iloc[0], second["run"].iloc[0]]
    assert first["run"].iloc[0] != second["run"].iloc[0]
    assert both["run"].value_counts().to_dict() == {
        first["run"].iloc[0]: 8,
        second["run"].iloc[0]: 4,
    }
    assert set(second["cell_id"]) <= set(first["cell_id"])  # the second run reused them all
    again = both[both["run"] == second["run"].iloc[0]].reset_index(drop=True)
    assert again["final_acc"].tolist() == second["final_acc"].tolist()
    pd.testing.assert_frame_equal(F.table_one(both), F.table_one(first))


def test_runs_resolve_by_name_and_latest_as_ueb_report_does(runs, monkeypatch):
    monkeypatch.chdir(runs)
    latest = runs / "runs/second/results.sqlite"
    os.utime(latest, (latest.stat().st_atime, latest.stat().st_mtime + 60))
    by_name = F.load("first")
    assert by_name["cell_id"].tolist() == F.load(runs / "runs/first")["cell_id"].tolist()
    assert F.load()["run"].tolist() == F.load("second")["run"].tolist()
    with pytest.raises(UebError, match="no results"):
        F.load("nowhere")


def test_import_ueb_loads_neither_pandas_nor_torch():
    code = (
        "import sys, ueb\n"
        "assert 'pandas' not in sys.modules and 'torch' not in sys.modules, 'heavy import'\n"
        "import ueb.frame\n"
        "assert ueb.load is ueb.frame.load\n"
        "try:\n    ueb.nothing\nexcept AttributeError:\n    pass\n"
        "else:\n    raise SystemExit('no AttributeError')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# --------------------------------------------------------------------------- known records


def _store(root: Path, records: list[CellRecord], run_id: str) -> Path:
    store = Store(root)
    for i, r in enumerate(records):
        r.ordinal = i
        store.put(r)
    store.set_manifest(
        run_id=run_id,
        config={"poisoners": ["em"], "countermeasures": ["vanilla", "jpeg10"]},
    )
    store.close()
    return root


def _record(p: str, c: str, seed: int, acc: float | None, **kw: Any) -> CellRecord:
    status = "ok" if acc is not None else "error"
    defaults: dict[str, Any] = {
        "config_digest": f"{p}-{c}",
        "poisoner_version": "1",
        "poisoner_params": {"eps": 8} if p != "clean" else {},
    }
    defaults.update(kw)
    cid = f"{p}-{c}-{seed}-{defaults.get('poison_seed')}"
    if status == "error":
        defaults.update(poisoner_version="", poisoner_params={})  # as a failed cell records
    return CellRecord(
        cid, 0, "cifar10", p, c, "resnet18", seed, status=status, final_acc=acc, peak_acc=acc,
        error=None if acc is not None else "boom", **defaults,
    )  # fmt: skip


def test_a_failed_seed_is_counted_and_mean_max_use_the_complete_seeds(tmp_path):
    records = [
        _record("clean", "vanilla", 0, 90.0),
        _record("clean", "vanilla", 1, 92.0),
        _record("clean", "jpeg10", 0, 80.0),
        _record("clean", "jpeg10", 1, 83.0),
        _record("em", "vanilla", 0, 10.0),
        _record("em", "vanilla", 1, 14.0),
        _record("em", "vanilla", 2, 11.0),
        _record("em", "jpeg10", 0, 70.0),
        _record("em", "jpeg10", 1, 75.0),
        _record("em", "jpeg10", 2, None),
    ]
    run = _store(tmp_path / "run", records, "known")
    table = F.table_one(F.load(run))
    assert assert_same_numbers(table, report_json(run)) == len(table) == 8
    em = table.xs(("cifar10", "resnet18", "em", 1.0))
    assert em.loc["jpeg10", "errors"] == 1 and em.loc["jpeg10", "n"] == 2
    assert em.loc["vanilla", "mean"] == statistics.fmean([10.0, 14.0, 11.0])
    assert em.loc["vanilla", "ci95"] == half_width(statistics.stdev([10.0, 14.0, 11.0]), 3)
    # seed 2 lacks jpeg10: Mean and Max are over seeds 0 and 1, each over both columns
    assert em.loc["Mean", "n"] == 2 and em.loc["Mean", "mean"] == pytest.approx((40 + 44.5) / 2)
    assert em.loc["Max", "mean"] == pytest.approx(72.5) and not em.loc["Mean", "incomplete"]
    assert bool(em.loc["Mean", "summary"]) and not bool(em.loc["vanilla", "summary"])
    assert not em.loc["vanilla", "resolved"]  # half-width above 5 points


def test_the_nested_design_takes_the_poisons_as_units(tmp_path):
    values = {(0, 0): 10.0, (0, 1): 12.0, (1, 0): 20.0, (1, 1): 23.0, (2, 0): 15.0, (2, 1): 14.0}
    records = [
        _record("em", c, s, acc + (30 if c == "jpeg10" else 0), poison_seed=q)
        for (q, s), acc in values.items()
        for c in ("vanilla", "jpeg10")
    ]
    run = _store(tmp_path / "run", records, "nested")
    frame = F.load(run)
    assert frame["poison_seed"].tolist() == [q for q, _ in values for _ in range(2)]
    table = F.table_one(frame)
    assert assert_same_numbers(table, report_json(run)) == len(table) == 4
    vanilla = table.loc[("cifar10", "resnet18", "em", 1.0, "vanilla")]
    expected = nested_components([[10.0, 12.0], [20.0, 23.0], [15.0, 14.0]])
    assert expected is not None and vanilla["ci95"] == pytest.approx(expected.half_width)
    assert vanilla["ci95"] != pytest.approx(half_width(vanilla["std"], 6))


def test_records_of_two_configurations_are_never_pooled(tmp_path):
    a = _store(tmp_path / "a", [_record("em", "vanilla", s, 10.0 + s) for s in (0, 1)], "a")
    b = _store(
        tmp_path / "b",
        [_record("em", "vanilla", s, 50.0 + s, poisoner_params={"eps": 16}) for s in (2, 3)],
        "b",
    )
    both = F.load(a, b)
    assert both["setting"].nunique() == 2
    with pytest.raises(ConfigError, match="2 configurations"):
        F.table_one(both)
    split = F.table_one(both, by=[*F.ROW_KEYS, "setting"])
    assert sorted(split.xs("vanilla", level="countermeasure")["mean"]) == [10.5, 52.5]
    digest = F.load(
        a, _store(tmp_path / "c", [_record("em", "vanilla", 5, 1.0, config_digest="x")], "c")
    )
    with pytest.raises(ConfigError, match="config_digest"):
        F.table_one(digest)
    assert len(F.table_one(digest[digest.config_digest != "x"])) == 3


def test_table_one_refuses_what_it_cannot_aggregate(tmp_path):
    frame = F.load(_store(tmp_path / "run", [_record("em", "vanilla", 0, 1.0)], "one"))
    with pytest.raises(ConfigError, match="not a numeric column"):
        F.table_one(frame, metric="threat")
    with pytest.raises(ConfigError, match="no column 'status'"):
        F.table_one(frame.drop(columns="status"))
    one = F.table_one(frame)
    assert one["n"].tolist() == [1, 1, 1] and one["ci95"].isna().all() and one["std"].isna().all()


def test_load_reads_the_facts_a_researcher_filters_on(tmp_path):
    facts = {"budget": "Linf 8/255", "caveat": "not the paper's generator", "key": "k1"}
    records = [
        _record("em", "vanilla", 0, 10.0, poison_facts={**facts, "poison_sha256": "ab" * 32}),
        _record("em", "vanilla", 1, 12.0, probe={"latched": True}, poison_facts=facts),
        _record("em", "vanilla", 2, 11.0, probe={"latched": False}, poison_seed=7),
        _record("em", "jpeg10", 0, None),
    ]
    frame = F.load(_store(tmp_path / "run", records, "facts"))
    assert frame["latched"].tolist() == [pd.NA, True, False, pd.NA]
    assert frame["caveat"].tolist() == [facts["caveat"], facts["caveat"], pd.NA, pd.NA]
    assert frame["threat"].tolist() == ["Linf 8/255", "Linf 8/255", pd.NA, pd.NA]
    assert frame["poison_sha256"].tolist() == ["ab" * 32, pd.NA, pd.NA, pd.NA]
    assert frame["poison_seed"].tolist() == [pd.NA, pd.NA, 7, pd.NA]
    assert frame["status"].tolist() == ["ok", "ok", "ok", "error"]
    assert frame["error"].tolist() == [pd.NA, pd.NA, pd.NA, "boom"]
    assert math.isnan(frame["final_acc"].iloc[3]) and frame["run"].iloc[0] == "facts"
    assert frame["poisoner_params"].iloc[0] == {"eps": 8}


def test_the_notebook_example_of_the_docs_runs(runs, capsys):
    docs = (Path(__file__).parent.parent / "docs" / "analysis.md").read_text()
    section = docs.split("## In a notebook", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) == 6
    given = f'"{runs / "runs/first"}", "{runs / "runs/second"}"'
    code = code.replace('"runs/quick-XXXX", "runs/quick-YYYY"', given)
    assert given in code
    exec(compile(code, "docs/analysis.md", "exec"), {})
    printed = capsys.readouterr().out
    table = F.table_one(F.load(runs / "runs/first"))
    lsp_mean = table.loc[("fashion-mnist", "fastnet", "lsp", 1.0, "Mean"), "mean"]
    assert "| lsp " in printed and f"{lsp_mean:.2f}".rstrip("0").rstrip(".") in printed
