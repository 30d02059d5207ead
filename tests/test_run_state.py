"""Results carry their state: an unfinished run's report says what is missing or running, `-o`
always writes a file, and `ueb run` never adopts an SQLite file that is not a ueb store."""

from __future__ import annotations

import json
import sqlite3

import pytest
from core_helpers import FIXTURES, run_cli

from ueb.locks import RunLock
from ueb.store import DB_NAME

ARGS = ["--plugins-dir", str(FIXTURES), "run", "-p", "random-noise", "-c", "identity,invert"]
ARGS += ["-v", "tiny", "--profile", "smoke", "-q"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("state")
    res = run_cli(
        *ARGS, "--run-dir", str(root / "runs" / "one"), env={"UEB_CACHE": str(root / "cache")}
    )
    assert res.returncode == 0, res.stderr
    return root


def _report(run_dir, *extra, cwd=None):
    return run_cli("report", str(run_dir), "-f", "markdown", *extra, cwd=cwd)


def test_a_complete_run_has_no_state_line(finished):
    res = _report(finished / "runs" / "one")
    assert (
        res.returncode == 0
        and "incomplete run" not in res.stdout
        and "in progress" not in res.stdout
    )


def test_a_run_with_missing_cells_says_how_many_in_every_format(finished, tmp_path):
    import shutil

    run = tmp_path / "partial"
    shutil.copytree(finished / "runs" / "one", run)
    con = sqlite3.connect(run / DB_NAME)
    con.execute("DELETE FROM cells WHERE cell_id = (SELECT cell_id FROM cells LIMIT 1)")
    con.commit()
    con.close()
    for fmt in ("markdown", "csv", "latex", "json"):
        res = run_cli("report", str(run), "-f", fmt)
        assert res.returncode == 0, res.stderr
        where = res.stderr if fmt == "csv" else res.stdout + res.stderr  # CSV holds data only
        assert "incomplete run: 3 of 4 cells done, 1 missing" in where, (fmt, res.stdout)
    out = tmp_path / "report.html"
    res = run_cli("report", str(run), "-f", "html", "-o", str(out))
    assert res.returncode == 0 and "1 missing" in out.read_text()


def test_a_run_in_progress_is_marked_as_running(finished, tmp_path):
    import shutil

    run = tmp_path / "running"
    shutil.copytree(finished / "runs" / "one", run)
    con = sqlite3.connect(run / DB_NAME)
    planned = json.loads(
        con.execute("SELECT value FROM manifest WHERE key='planned_cells'").fetchone()[0]
    )
    con.execute(
        "UPDATE manifest SET value = ? WHERE key = 'planned_cells'",
        (json.dumps([*planned, "f" * 16]),),
    )
    con.commit()
    con.close()
    lock = RunLock(run)  # as a run writing into it holds
    try:
        res = _report(run)
    finally:
        lock.release()
    assert "run in progress: 4 of 5 cells done, 1 running or queued" in res.stdout, res.stdout


@pytest.mark.parametrize(
    "name, marker",
    [
        ("t.md", "| Dataset |"),
        ("t.csv", "dataset,"),
        ("t.tex", "\\begin{tabular}"),
        ("t.json", '"rows"'),
        ("t.txt", "| Dataset |"),
    ],
)
def test_out_always_writes_the_format_its_extension_names(finished, tmp_path, name, marker):
    target = tmp_path / name
    res = run_cli("report", str(finished / "runs" / "one"), "-o", str(target))
    assert res.returncode == 0, res.stderr
    assert target.exists() and marker in target.read_text()


def test_report_without_a_run_takes_the_latest_under_runs(finished):
    res = run_cli("report", "-f", "markdown", cwd=finished)
    assert res.returncode == 0 and "random-noise" in res.stdout, res.stderr


def test_a_foreign_sqlite_file_is_refused_and_left_untouched(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    con = sqlite3.connect(run / DB_NAME)
    con.execute("CREATE TABLE invoices (id INTEGER, total REAL)")
    con.execute("INSERT INTO invoices VALUES (1, 9.5)")
    con.commit()
    con.close()
    res = run_cli(*ARGS, "--run-dir", str(run), env={"UEB_CACHE": str(tmp_path / "cache")})
    assert res.returncode == 2
    assert "not a ueb results store (tables: invoices)" in res.stderr.strip().splitlines()[-1]
    con = sqlite3.connect(run / DB_NAME)
    assert [r[0] for r in con.execute("SELECT name FROM sqlite_master")] == ["invoices"]


def test_the_html_report_folds_its_configuration_and_scrolls_its_table_in_a_box(finished, tmp_path):
    out = tmp_path / "report.html"
    res = run_cli("report", str(finished / "runs" / "one"), "-o", str(out))
    assert res.returncode == 0, res.stderr
    page = out.read_text()
    assert '<div class="tablewrap"><table class="results">' in page
    assert "div.tablewrap { max-width: 100%; overflow-x: auto; }" in page
    assert "<details><summary>Configuration" in page and "&quot;specs&quot;" in page


def test_a_non_numeric_accuracy_in_a_store_is_one_line(finished, tmp_path):
    import shutil

    run = tmp_path / "edited"
    shutil.copytree(finished / "runs" / "one", run)
    con = sqlite3.connect(run / DB_NAME)
    con.execute(
        "UPDATE cells SET final_acc = 'ninety' WHERE cell_id = (SELECT cell_id FROM cells LIMIT 1)"
    )
    con.commit()
    con.close()
    for args in (("report", str(run), "-f", "markdown"), ("export", str(run))):
        res = run_cli(*args)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1, res.stderr
        assert "has a final_acc that is not a number ('ninety')" in lines[0]
