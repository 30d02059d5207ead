"""Report goldens and the dataset loaders (embedded, CIFAR archive, ImageNet folders)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ueb.errors import DataError
from ueb.registry import get_registry
from ueb.report import build_table, to_csv, to_json, to_latex, to_markdown
from ueb.store import CellRecord, Store
from ueb.testing import write_cifar_archive

GOLDEN = Path(__file__).parent / "golden"


def fixed_records() -> list[CellRecord]:
    recs = []
    acc = {
        ("clean", "vanilla"): [94.59, 94.41],
        ("clean", "jpeg10"): [85.22, 85.0],
        ("deephiding", "vanilla"): [10.08, 10.5],
        ("deephiding", "jpeg10"): [84.98, 85.4],
        ("em", "vanilla"): [10.1, 10.3],
    }
    i = 0
    for (p, c), values in acc.items():
        for seed, a in enumerate(values):
            probe = (
                {
                    "target_rate": 0.9,
                    "train_acc": 99.0,
                    "latched": seed == 0,
                    "threshold": 0.5,
                    "pairs": 10,
                }
                if p == "em"
                else {}
            )
            recs.append(
                CellRecord(
                    f"id{i}",
                    i,
                    "cifar10",
                    p,
                    c,
                    "resnet18",
                    seed,
                    status="ok",
                    final_acc=a,
                    peak_acc=a + 1,
                    probe=probe,
                )
            )
            i += 1
    recs.append(
        CellRecord(
            f"id{i}", i, "cifar10", "em", "jpeg10", "resnet18", 0, status="error", error="boom"
        )
    )
    return recs


CONFIG = {"countermeasures": ["vanilla", "jpeg10"], "poisoners": ["clean", "deephiding", "em"]}


def test_markdown_report_matches_the_golden_file():
    text = to_markdown(build_table(fixed_records(), "final", CONFIG))
    golden = GOLDEN / "table.md"
    if os.environ.get("UEB_ACCEPT_GOLDEN"):
        # a person accepts a golden after reading its diff; CI only ever compares
        assert os.environ.get("CI", "").lower() not in ("1", "true", "yes"), (
            "UEB_ACCEPT_GOLDEN is set under CI"
        )
        golden.write_text(text)
        pytest.skip(
            f"accepted {golden.name}: read `git diff {golden}`, then run the test without UEB_ACCEPT_GOLDEN"
        )
    assert text == golden.read_text()


def test_mean_and_max_are_over_countermeasures_per_seed():
    table = build_table(fixed_records(), "final", CONFIG)
    dh = next(r for r in table.rows if r.poisoner == "deephiding")
    per_seed_means = [(10.08 + 84.98) / 2, (10.5 + 85.4) / 2]
    assert dh.mean.mean == pytest.approx(sum(per_seed_means) / 2)
    assert dh.max.mean == pytest.approx((84.98 + 85.4) / 2)
    em = next(r for r in table.rows if r.poisoner == "em")
    assert em.cells["jpeg10"].text() == "err" and em.mean.incomplete
    assert [r.poisoner for r in table.rows] == ["clean", "deephiding", "em"]


def test_pivot_by_victim_gives_one_column_per_architecture():
    from dataclasses import replace

    from ueb.report import pivot_by_victim

    recs = fixed_records() + [
        replace(r, cell_id=r.cell_id + "v", victim="vgg19", final_acc=(r.final_acc or 0) + 1)
        for r in fixed_records()
    ]
    table = pivot_by_victim(recs, "vanilla", "final", {"victims": ["resnet18", "vgg19"]})
    assert table.columns == ["resnet18", "vgg19"]
    dh = next(r for r in table.rows if r.poisoner == "deephiding")
    assert dh.cells["vgg19"].mean == pytest.approx(dh.cells["resnet18"].mean + 1)
    assert "Countermeasure" in to_markdown(table)


def test_other_formats_render_every_row():
    import csv
    import json

    table = build_table(fixed_records(), "peak", CONFIG)
    # The header, then one line per row and column (Mean and Max too).
    assert to_csv(table).count("\n") == 1 + 3 * 4
    assert "\\pm" in to_latex(table) and "\\bottomrule" in to_latex(table)
    assert '"poisoner": "deephiding"' in to_json(table)
    # The peak table holds the peak accuracies (final + 1 in these records), not the final ones.
    rows = {(r["poisoner"], r["column"]): r for r in csv.DictReader(io.StringIO(to_csv(table)))}
    assert float(rows["deephiding", "vanilla"]["mean"]) == pytest.approx((11.08 + 11.5) / 2)
    assert float(rows["clean", "Max"]["mean"]) == pytest.approx((95.59 + 95.41) / 2)
    dh = next(r for r in json.loads(to_json(table))["rows"] if r["poisoner"] == "deephiding")
    assert [s["value"] for s in dh["cells"]["jpeg10"]["per_seed"]] == pytest.approx([85.98, 86.4])
    assert "11.29" in to_latex(table) and "10.29" not in to_latex(table)


def test_store_round_trip_and_exports(tmp_path):
    store = Store(tmp_path)
    for r in fixed_records():
        store.put(r)
    store.set_manifest(config=CONFIG)
    again = Store.open_existing(tmp_path)
    assert [r.cell_id for r in again.records()] == [r.cell_id for r in fixed_records()]
    assert "deephiding" in again.export_csv() and '"manifest"' in again.export_json()


def test_store_writes_strict_json_that_sqlite_can_query(tmp_path):
    """A clean poison's PSNR is infinite; Python's json would write `Infinity`, which SQLite's
    json_extract rejects ("malformed JSON") for the whole query."""
    import math
    import sqlite3

    record = fixed_records()[0]
    record.poison_facts = {
        "psnr_db": math.inf,
        "scores": [1.0, math.nan],
        "nested": {"x": -math.inf},
    }
    store = Store(tmp_path)
    store.put(record)
    store.close()
    with sqlite3.connect(tmp_path / "results.sqlite") as db:
        row = db.execute(
            "SELECT json_extract(poison_facts, '$.psnr_db'), json_extract(poison_facts, '$.nested.x'), json_extract(poison_facts, '$.scores[0]') FROM cells"
        ).fetchone()
    assert row == (None, None, 1.0)
    assert Store.open_existing(tmp_path).records()[0].poison_facts["scores"] == [1.0, None]


# -- datasets -----------------------------------------------------------------------------------


def test_embedded_fashion_mnist_is_real_rgb_32():
    splits = get_registry().create("dataset", "fashion-mnist").load(None)
    assert splits.train.images.shape == (10_000, 3, 32, 32) and splits.test.images.shape == (
        2_000,
        3,
        32,
        32,
    )
    assert torch.equal(splits.train.labels.bincount(), torch.full((10,), 1000))
    x = splits.train.images
    # Grey replicated to three channels, a 2-px border.
    assert torch.equal(x[:, 0], x[:, 1]) and int(x[:, :, :2].max()) == 0
    assert float(x.float().std()) > 50  # real images, not a blank array


def test_cifar_loader_reads_the_official_archive_format(tmp_path):
    archive = write_cifar_archive(tmp_path, per_class=4, test_per_class=2)
    ds = get_registry().create("dataset", "cifar10")
    for root in (tmp_path, archive):
        s = ds.load(root)
        assert s.train.images.shape == (200, 3, 32, 32) and s.test.images.shape == (20, 3, 32, 32)
        assert s.train.classes[0] == "class0"
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    s2 = ds.load(tmp_path / "x" / "cifar-10-batches-py")
    assert torch.equal(s2.train.images, s.train.images)


def test_cifar_loader_errors_name_the_expected_layout(tmp_path):
    ds = get_registry().create("dataset", "cifar10")
    with pytest.raises(DataError, match="does not exist"):
        ds.load(tmp_path / "missing")
    with pytest.raises(DataError, match="cifar-10-python.tar.gz"):
        ds.load(tmp_path)
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(DataError, match="not a readable CIFAR archive"):
        ds.load(tmp_path)
    with pytest.raises(DataError, match="--data-root"):
        ds.load(None)


def test_imagenet_subset_folder_loader(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("val", 2)):
        for cls in ("n01", "n02", "n03"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(
                    d / f"{i:03d}.JPEG"
                )
    ds = get_registry().create("dataset", "imagenet-subset", {"num_classes": 2, "size": 32})
    s = ds.load(tmp_path)
    assert s.train.images.shape == (4, 3, 32, 32)  # 20% of 10 images, 2 classes
    assert s.test.images.shape == (4, 3, 32, 32) and s.train.classes == ("n01", "n02")
    (tmp_path / "train" / "n01" / "000.JPEG").write_bytes(b"corrupt")
    with pytest.raises(DataError, match="000.JPEG"):
        ds.load(tmp_path)
