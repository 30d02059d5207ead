"""A cell that raises inside a worker, under the process pool and under Ray: it is recorded as
failed with its message, the other cells finish, the command exits non-zero and the report
marks the failed cells (`err`) while keeping the others' numbers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from core_helpers import FIXTURES, run_cli

from ueb.store import Store

pytestmark = pytest.mark.slow

EXPLODES = '''
from ueb.hookspecs import hookimpl
from ueb.interfaces import Countermeasure


class Explodes(Countermeasure):
    """Raises when its cell reaches it, in whichever process runs the cell."""

    stage = "data"
    version = "1"

    def transform_train_set(self, train, ctx):
        raise RuntimeError("countermeasure exploded on purpose")


@hookimpl
def register_countermeasures(register):
    register("explodes", Explodes, summary="test: raises", stage="data")
'''

EXECUTORS = {"pool": ["--workers", "2"], "ray": ["--executor", "ray", "--workers", "2"]}


@pytest.mark.parametrize("executor", sorted(EXECUTORS))
def test_a_failing_cell_is_recorded_the_others_finish_and_the_report_marks_it(executor, tmp_path):
    if executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            pytest.skip("import ray failed: Ray is an optional extra (pip install 'ueb[ray]')")
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    shutil.copy(FIXTURES / "minimal_plugins.py", plugins)
    (plugins / "explodes.py").write_text(EXPLODES)
    run_dir = tmp_path / "run"
    res = run_cli(
        "--plugins-dir", str(plugins), "run", "-p", "random-noise", "-c", "identity,explodes",
        "-v", "tiny", "--profile", "smoke", "--run-dir", str(run_dir), *EXECUTORS[executor],
        env={"UEB_CACHE": str(tmp_path / "cache")}, timeout=600,
    )  # fmt: skip
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    assert "countermeasure exploded on purpose" in res.stderr
    assert "2 failed" in " ".join(res.stdout.split())

    records = {(r.poisoner, r.countermeasure): r for r in Store(run_dir).records()}
    assert sorted(records) == [
        ("clean", "explodes"), ("clean", "identity"),
        ("random-noise", "explodes"), ("random-noise", "identity"),
    ]  # fmt: skip
    for poisoner in ("clean", "random-noise"):
        failed, ok = records[poisoner, "explodes"], records[poisoner, "identity"]
        assert failed.status == "error" and failed.final_acc is None
        assert "RuntimeError: countermeasure exploded on purpose" in (failed.error or "")
        assert ok.status == "ok" and ok.final_acc is not None and ok.error is None

    table = json.loads((run_dir / "table.json").read_text())
    by_row = {row["poisoner"]: row["cells"] for row in table["rows"]}
    assert sorted(by_row) == ["clean", "random-noise"]
    for poisoner, cells in by_row.items():
        assert cells["explodes"]["failed"] and cells["explodes"]["mean"] is None
        assert cells["explodes"]["errors"] == 1
        assert not cells["identity"]["failed"]
        assert cells["identity"]["mean"] == records[poisoner, "identity"].final_acc
    lines = _table_lines(run_dir / "table.md")
    assert len(lines) == 2 and all(line["explodes"] == "err" for line in lines)
    assert all(line["identity"] not in ("err", "-", "") for line in lines)


def _table_lines(path: Path) -> list[dict[str, str]]:
    """The markdown table's body rows as {column: text}."""
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in path.read_text().splitlines()
        if line.startswith("|")
    ]
    header, body = rows[0], rows[2:]  # rows[1] is the |---| line
    return [dict(zip(header, r, strict=True)) for r in body]
