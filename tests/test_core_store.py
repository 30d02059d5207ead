"""The results store: schema versions, damaged and empty files, full disks, read-only copies."""

from __future__ import annotations

import shutil
import sqlite3
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from ueb import store as store_module
from ueb.errors import DiskFullError, UebError
from ueb.store import DB_NAME, SCHEMA_VERSION, CellRecord, Store

NEW_FIELDS = {"config_digest", "git", "torch", "device", "probe"}


def record(i: int, **changes: object) -> CellRecord:
    base = CellRecord(
        cell_id=f"cell{i:03d}",
        ordinal=i,
        dataset="synthetic",
        poisoner="deephiding",
        countermeasure="vanilla",
        victim="tiny",
        seed=i,
        status="ok",
        final_acc=10.0 + i,
        peak_acc=20.0 + i,
        poison_facts={"linf_max": 0.03},
        history=[{"step": 1.0, "acc": 10.0}],
    )
    for k, v in changes.items():
        setattr(base, k, v)
    return base


def finished_run(run_dir: Path, n: int = 3) -> Path:
    with Store(run_dir) as store:
        for i in range(n):
            store.put(record(i))
        store.set_manifest(run_id="r1")
    return run_dir


def write_old_store(run_dir: Path, user_version: int = 0) -> None:
    """A store as an older ueb wrote it: no config_digest/git/torch/device/probe columns."""
    run_dir.mkdir(parents=True, exist_ok=True)
    old = [f.name for f in fields(CellRecord) if f.name not in NEW_FIELDS]
    db = sqlite3.connect(run_dir / DB_NAME)
    db.execute(
        f"CREATE TABLE cells ({', '.join(n + (' PRIMARY KEY' if n == 'cell_id' else '') for n in old)})"
    )
    db.execute("CREATE TABLE manifest (key TEXT PRIMARY KEY, value TEXT)")
    db.execute(
        "INSERT INTO cells (cell_id, ordinal, dataset, poisoner, countermeasure, victim, seed, status, final_acc, history) "
        "VALUES ('old1', 0, 'synthetic', 'clean', 'vanilla', 'tiny', 0, 'ok', 55.5, '[]')"
    )
    db.execute(f"PRAGMA user_version = {user_version}")
    db.commit()
    db.close()


def test_new_fields_round_trip_probe_as_json(tmp_path):
    probe = {"target_rate": 0.97, "train_acc": 99.0, "latched": True, "threshold": 0.9, "pairs": 12}
    with Store(tmp_path) as store:
        store.put(
            record(0, config_digest="abc", git="1a2b3c", torch="2.4.0", device="cpu", probe=probe)
        )
    (got,) = Store.open_existing(tmp_path).records()
    assert (got.config_digest, got.git, got.torch, got.device, got.probe) == (
        "abc",
        "1a2b3c",
        "2.4.0",
        "cpu",
        probe,
    )
    db = sqlite3.connect(tmp_path / DB_NAME)
    assert db.execute("SELECT json_extract(probe, '$.latched') FROM cells").fetchone() == (1,)
    assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


@pytest.mark.parametrize("user_version", [0, 1])
def test_an_older_store_is_read_with_defaults_and_migrated_when_written(tmp_path, user_version):
    write_old_store(tmp_path, user_version)
    before = (tmp_path / DB_NAME).read_bytes()
    (old,) = Store.open_existing(tmp_path).records()
    assert (old.cell_id, old.final_acc, old.config_digest, old.probe) == ("old1", 55.5, "", {})
    assert (tmp_path / DB_NAME).read_bytes() == before  # reading changes nothing

    with Store(tmp_path) as store:  # resuming adds the columns
        store.put(record(1, config_digest="d1", probe={"pairs": 3}))
    db = sqlite3.connect(tmp_path / DB_NAME)
    assert {row[1] for row in db.execute("PRAGMA table_info(cells)")} >= NEW_FIELDS
    assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert [(r.cell_id, r.probe) for r in Store.open_existing(tmp_path).records()] == [
        ("old1", {}),
        ("cell001", {"pairs": 3}),
    ]


def test_a_store_of_a_newer_ueb_asks_for_an_upgrade(tmp_path):
    finished_run(tmp_path)
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    for opener in (Store.open_existing, Store):
        with pytest.raises(UebError, match="written by a newer ueb") as info:
            opener(tmp_path)
        assert "upgrade ueb" in info.value.line()


def _truncate_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", ["truncated", "junk"])
def test_a_damaged_store_is_one_line_for_readers_and_writers(tmp_path, damage):
    finished_run(tmp_path, n=300)  # enough pages for half a file to lose tables
    path = tmp_path / DB_NAME
    if damage == "truncated":
        _truncate_half(path)
    else:
        path.write_bytes(b"this is not sqlite" * 100)
    for opener in (Store.open_existing, Store):
        with pytest.raises(UebError) as info:
            opener(tmp_path).records()
        line = info.value.line()
        assert line.startswith(f"results store {path} is damaged: ")
        assert "move it away to start over" in line and "\n" not in line


def test_an_empty_file_is_not_a_store(tmp_path):
    (tmp_path / DB_NAME).write_bytes(b"")
    with pytest.raises(UebError, match=r"is empty \(0 bytes\), not a ueb results store"):
        Store.open_existing(tmp_path)


def test_a_missing_store_names_the_run_directory(tmp_path):
    with pytest.raises(UebError, match="no results in"):
        Store.open_existing(tmp_path)


def test_a_full_disk_while_writing_stops_with_disk_full_and_keeps_finished_cells(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(sys, "argv", ["ueb", "run", "--config", "m.toml"])
    store = Store(tmp_path)
    store.put(record(0))
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own SQLITE_FULL
    with pytest.raises(DiskFullError) as info:
        store.put(record(1, history=[{"step": float(i), "acc": 1.0} for i in range(5000)]))
    line = info.value.line()
    assert line.startswith(f"disk full while writing results to {tmp_path} (")
    assert "free on the disk holding it" in line and "`ueb run --config m.toml`" in line
    store.close()
    assert [r.cell_id for r in Store.open_existing(tmp_path).records()] == ["cell000"]


class _FullAtOpen(sqlite3.Connection):
    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:  # type: ignore[override]
        if "journal_mode=WAL" in sql.replace(" ", ""):
            raise sqlite3.OperationalError("database or disk is full")
        return super().execute(sql, *args)


def test_a_full_disk_when_opening_for_writing_is_disk_full(tmp_path, monkeypatch):
    real_connect = sqlite3.connect
    monkeypatch.setattr(
        store_module.sqlite3, "connect", lambda *a, **k: real_connect(*a, factory=_FullAtOpen, **k)
    )
    with pytest.raises(DiskFullError, match="disk full while writing results"):
        Store(tmp_path)


def test_read_only_open_never_writes(tmp_path):
    finished_run(tmp_path)
    before = (tmp_path / DB_NAME).read_bytes()
    reader = Store.open_existing(tmp_path)
    assert reader.conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    with pytest.raises(UebError, match="opened read-only"):
        reader.put(record(9))
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.conn.execute("DELETE FROM cells")
    reader.close()
    assert (tmp_path / DB_NAME).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [DB_NAME]


def test_a_finished_run_is_one_self_contained_file(tmp_path):
    finished_run(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [DB_NAME]
    db = sqlite3.connect(tmp_path / DB_NAME)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)


def test_report_reads_a_read_only_copy_of_a_finished_run(tmp_path, monkeypatch):
    copy = tmp_path / "copy"
    shutil.copytree(finished_run(tmp_path / "run"), copy)
    monkeypatch.setattr(store_module, "_writable", lambda path: False)  # tests may run as root
    store = Store.open_existing(copy)
    assert [r.cell_id for r in store.records()] == ["cell000", "cell001", "cell002"]
    assert store.manifest() == {"run_id": "r1"}
    store.close()
    assert sorted(p.name for p in copy.iterdir()) == [DB_NAME]


def test_a_read_only_copy_with_unmerged_changes_says_so(tmp_path, monkeypatch):
    writer = Store(tmp_path / "run")
    writer.put(record(0))
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "run", copy)  # copied mid-run: rows still in the WAL file
    writer.close()
    monkeypatch.setattr(store_module, "_writable", lambda path: False)
    with pytest.raises(UebError, match="changes not yet merged"):
        Store.open_existing(copy)


def test_a_reader_sees_a_running_run_and_does_not_block_it(tmp_path):
    writer = Store(tmp_path)
    writer.put(record(0))
    reader = Store.open_existing(tmp_path)
    assert [r.cell_id for r in reader.records()] == ["cell000"]
    writer.put(record(1))  # while the reader is open
    assert [r.cell_id for r in reader.records()] == ["cell000", "cell001"]
    writer.close()  # cannot leave WAL mode while read: still complete
    reader.close()
    assert [r.cell_id for r in Store.open_existing(tmp_path).records()] == ["cell000", "cell001"]


def test_a_store_locked_by_another_process_is_one_line(tmp_path):
    store = Store(tmp_path)
    store.conn.execute("PRAGMA busy_timeout = 100")
    blocker = sqlite3.connect(tmp_path / DB_NAME)
    blocker.execute("BEGIN EXCLUSIVE")
    with pytest.raises(UebError, match="is locked by another process") as info:
        store.put(record(5))
    assert "\n" not in info.value.line()
    blocker.rollback()
    store.put(record(5))


def test_a_run_directory_that_cannot_be_created_is_one_line(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(
        UebError, match=r"cannot create run directory .* \(choose another --run-dir\)"
    ):
        Store(tmp_path / "file" / "run")


def test_a_full_disk_when_creating_the_run_directory_is_disk_full(tmp_path, monkeypatch):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "mkdir", full)
    with pytest.raises(
        DiskFullError, match=f"disk full while writing results to {tmp_path / 'run'}"
    ):
        Store(tmp_path / "run")
