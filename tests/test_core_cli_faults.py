"""Bad input and faults at the command line: one line, a non-zero exit, no finished work lost."""

from __future__ import annotations

import errno
import os
import sqlite3
import time
from pathlib import Path

import pytest
from core_helpers import run_cli

PLUGIN = """
from dataclasses import dataclass
from ueb.hookspecs import hookimpl
from ueb.interfaces import Budget, Poisoner


class Ghostly(Poisoner):
    @dataclass(frozen=True)
    class Params:
        pass

    def budget(self):
        return Budget("linf", 8 / 255)

    def poison(self, train, ctx):
        raise ValueError("module:Ghost: [red]not markup[/red]")


@hookimpl
def register_poisoners(register):
    register("ghostly", Ghostly, summary="raises")
"""


def _env(tmp_path: Path) -> dict[str, str]:
    return {"UEB_CACHE": str(tmp_path / "cache")}


def test_a_param_typo_exits_2_in_seconds_with_nothing_computed(tmp_path):
    start = time.perf_counter()
    res = run_cli(
        "run",
        "-p",
        "deephiding",
        "-c",
        "vanilla",
        "--param",
        "jpeg10.qualty=5",
        "--run-dir",
        str(tmp_path / "r"),
        env=_env(tmp_path),
    )
    assert res.returncode == 2 and "quality" in res.stderr and res.stderr.strip().count("\n") == 0
    assert time.perf_counter() - start < 60
    assert not (tmp_path / "r").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    "args, words",
    [
        (["-p", "lsp", "--seed", "-1"], "seed -1"),
        (
            ["-p", "lsp", "--param", "lsp.norm=1e9"],
            "impossible",
        ),  # in range, impossible for the data
        (["-p", "lsp", "--param", "lsp.eps=1e9"], "outside its range (0, 1]"),
        (["--matrix", "benchmarks"], "is a folder"),
        (["-p", "lsp", "--metric", "best"], "unknown metric"),
        (["-p", "lsp", "--workers", "0"], "--workers is 0"),
        (["-p", "lsp", "--workers", "many"], "an integer or 'auto'"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, args, words):
    res = run_cli(
        "run", *args, "--profile", "smoke", "--run-dir", str(tmp_path / "r"), env=_env(tmp_path)
    )
    assert res.returncode == 2 and words in res.stderr and res.stderr.strip().count("\n") == 0, (
        res.stderr
    )
    assert not (tmp_path / "cache").exists()


def test_quiet_still_says_why_a_cell_failed_and_prints_error_text_literally(tmp_path):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "ghostly.py").write_text(PLUGIN)
    # --plugins-dir after the subcommand works too
    res = run_cli(
        "run",
        "-p",
        "ghostly",
        "--no-clean",
        "-c",
        "vanilla",
        "--profile",
        "smoke",
        "-q",
        "--plugins-dir",
        str(folder),
        "--run-dir",
        str(tmp_path / "r"),
        env=_env(tmp_path),
    )
    assert res.returncode == 1
    assert "module:Ghost: [red]not markup[/red]" in res.stderr
    assert "\U0001f47b" not in res.stderr + res.stdout


def test_a_second_run_into_a_busy_run_directory_is_told_and_exits(tmp_path):
    from ueb.locks import RunLock

    run_dir = tmp_path / "r"
    run_dir.mkdir()
    with RunLock(run_dir):
        res = run_cli(
            "run",
            "-p",
            "lsp",
            "-c",
            "vanilla",
            "--profile",
            "smoke",
            "--run-dir",
            str(run_dir),
            env=_env(tmp_path),
        )
    assert res.returncode == 2 and "in use by another ueb run" in res.stderr, res.stderr


def _finished_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    res = run_cli(
        "run",
        "-p",
        "ops",
        "-c",
        "vanilla",
        "--profile",
        "smoke",
        "-q",
        "--run-dir",
        str(run),
        env=_env(tmp_path),
    )
    assert res.returncode == 0, res.stderr
    return run


@pytest.mark.slow
def test_damaged_empty_and_read_only_stores(tmp_path):
    run = _finished_run(tmp_path)
    db = run / "results.sqlite"
    # a read-only copy of a finished run reports
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "results.sqlite").write_bytes(db.read_bytes())
    os.chmod(ro / "results.sqlite", 0o444)
    os.chmod(ro, 0o555)
    try:
        res = run_cli("report", str(ro), "-f", "markdown")
        assert res.returncode == 0 and "ops" in res.stdout, res.stderr
    finally:
        os.chmod(ro, 0o755)
    # half-truncated and corrupt files: one line, exit 2, for report and for run
    for damage in (
        lambda b: b[: len(b) // 2],
        lambda b: b[:100] + b"\x00garbage" * 200,
        lambda b: b"",
    ):
        bad = tmp_path / f"bad{len(list(tmp_path.glob('bad*')))}"
        bad.mkdir()
        (bad / "results.sqlite").write_bytes(damage(db.read_bytes()))
        commands = [["report", str(bad)]]
        if (bad / "results.sqlite").stat().st_size:  # `run` starts a 0-byte store afresh
            commands.append(
                ["run", "-p", "ops", "-c", "vanilla", "--profile", "smoke", "--run-dir", str(bad)]
            )
        for args in commands:
            res = run_cli(*args, env=_env(tmp_path))
            assert res.returncode == 2 and res.stderr.strip().count("\n") == 0, (args, res.stderr)
            assert "results" in res.stderr or "store" in res.stderr
            assert "Traceback" not in res.stderr
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT COUNT(*) FROM cells WHERE status='ok'").fetchone()[0] == 2


def test_full_disk_while_writing_tables_leaves_no_empty_tables(tmp_path, monkeypatch):
    import ueb.atomic
    from ueb.cli import _write_reports
    from ueb.errors import UebError
    from ueb.output import Output
    from ueb.store import CellRecord, Store

    store = Store(tmp_path)
    store.put(
        CellRecord(
            "a" * 16, 0, "d", "clean", "vanilla", "v", 0, status="ok", final_acc=80.0, peak_acc=81.0
        )
    )

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ueb.atomic, "_write_all", full)
    with pytest.raises(UebError, match="disk full") as err:
        _write_reports(store, tmp_path, "final", Output())
    assert "resume" in str(err.value)
    assert not list(tmp_path.glob("table*")) and not list(tmp_path.glob(".table*"))


def test_a_third_party_entry_point_named_like_a_built_in_keeps_both_records(monkeypatch):
    import importlib.metadata as md
    import sys
    import types

    module = types.ModuleType("thirdparty_baselines")
    exec(PLUGIN, module.__dict__)
    sys.modules["thirdparty_baselines"] = module

    class Dist:
        name = "my-dist"
        version = "0.1"

    fake = md.EntryPoint("baselines", "thirdparty_baselines", "ueb")
    fake = fake._for(Dist()) if hasattr(fake, "_for") else fake
    real = md.entry_points

    def entry_points(**kw):
        found = list(real(**kw))
        return [*found, fake] if kw.get("group") == "ueb" else found

    monkeypatch.setattr(md, "entry_points", entry_points)
    monkeypatch.setenv("UEB_PLUGINS", "ueb,my_dist")  # '_' and '-' are the same distribution
    from ueb.plugins import PluginHost
    from ueb.registry import Registry

    host = PluginHost()
    registry = Registry(host)
    records = {r.name: r for r in host.records.values()}
    assert records["ueb:baselines"].ok and records["my-dist:baselines"].ok
    assert registry.get("poisoner", "ghostly").distribution == "my-dist"
    assert registry.get("poisoner", "em").distribution == "ueb"


def test_ueb_plugins_naming_only_a_third_party_keeps_the_built_ins(monkeypatch):
    # Lenient mode (a user's shell): a warning, and the built-ins still load.
    res = run_cli(
        "list", "datasets", env={"UEB_PLUGINS": "not-installed-dist", "UEB_STRICT_PLUGINS": ""}
    )
    assert res.returncode == 0 and "fashion-mnist" in res.stdout
    assert "not-installed-dist" in res.stderr  # and says that name matched nothing


def test_strict_plugins_turns_an_unmatched_ueb_plugins_name_into_an_exit_2():
    res = run_cli(
        "list", "datasets", env={"UEB_PLUGINS": "not-installed-dist", "UEB_STRICT_PLUGINS": "1"}
    )
    assert res.returncode == 2
    assert "not-installed-dist" in res.stderr and "correct UEB_PLUGINS" in res.stderr


def test_show_selects_a_cell_by_its_coordinates(tmp_path):
    run = _finished_run(tmp_path)
    res = run_cli("show", "--run", str(run), "-p", "ops", "-c", "vanilla")
    assert res.returncode == 0 and "| ops | vanilla |" in res.stdout.splitlines()[1]
    assert len(res.stdout.splitlines()) < 15  # a summary first
    raw = run_cli("show", "--run", str(run), "-p", "ops", "-c", "vanilla", "--json")
    assert raw.returncode == 0 and '"poisoner": "ops"' in raw.stdout
    both = run_cli("show", "--run", str(run), "-c", "vanilla")
    assert both.returncode == 2 and "2 cells match" in both.stderr
    config = run_cli("show", "--run", str(run), "--config")
    assert config.returncode == 0 and '"specs"' in config.stdout


def test_show_finds_the_run_of_a_cell_id_printed_by_ueb_run(tmp_path):
    import shutil

    from ueb.store import Store

    run = _finished_run(tmp_path)
    (tmp_path / "runs").mkdir()
    shutil.copytree(run, tmp_path / "runs" / "mine")
    cell_id = next(r.cell_id for r in Store(tmp_path / "runs" / "mine").records())
    res = run_cli("show", cell_id[:10], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"cell {cell_id} in runs/mine"), res.stdout
