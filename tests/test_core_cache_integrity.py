"""Cached poisons and artifacts are checked when read, and built once across processes."""

from __future__ import annotations

import gc
import hashlib
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ueb import artifacts as artifacts_module
from ueb.artifacts import ArtifactStore
from ueb.integrity import check_poison
from ueb.interfaces import Budget
from ueb.poison_cache import PoisonCache, images_sha256
from ueb.testing import make_imageset

EPS = 8 / 255
KEY = "0123abcd"

# -- poison cache ------------------------------------------------------------------------------


@pytest.fixture
def clean():
    return make_imageset(per_class=4, num_classes=3, size=8)


def make_poison(clean) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    noise = torch.randint(-8, 9, clean.uint8().shape, generator=gen)
    return (clean.uint8().to(torch.int16) + noise).clamp(0, 255).to(torch.uint8)


def verifier(clean):
    def verify(images: torch.Tensor) -> None:
        check_poison(clean, images, Budget("linf", EPS), True, "cached poison of 'noise'")

    return verify


@pytest.fixture
def cache(tmp_path, clean):
    lines: list[str] = []
    cache = PoisonCache(tmp_path / "poisons", log=lines.append)
    cache.save(KEY, make_poison(clean), {"linf_max": 8 / 255, "seconds": 1.5, "key": KEY})
    cache.lines = lines  # type: ignore[attr-defined]
    return cache


def test_a_saved_poison_loads_with_exactly_its_facts(cache, clean):
    images, facts = cache.load(KEY, verify=verifier(clean))
    assert torch.equal(images, make_poison(clean))
    assert facts == {"linf_max": 8 / 255, "seconds": 1.5, "key": KEY}
    stored = json.loads((cache.folder(KEY) / "facts.json").read_text())
    assert stored["sha256"] == hashlib.sha256(make_poison(clean).numpy().tobytes()).hexdigest()
    assert cache.lines == []
    assert sorted(p.name for p in cache.folder(KEY).iterdir()) == ["facts.json", "images.npy"]


def _rewrite(cache: PoisonCache, array: np.ndarray, restamp: bool) -> None:
    """Replace the stored images; `restamp` also fixes the checksum, as a careless edit might."""
    folder = cache.folder(KEY)
    np.save(folder / "images.npy", array, allow_pickle=False)
    if restamp:
        facts = json.loads((folder / "facts.json").read_text())
        facts["sha256"] = images_sha256(array)
        (folder / "facts.json").write_text(json.dumps(facts))


def _stored(cache: PoisonCache) -> np.ndarray:
    return np.load(cache.folder(KEY) / "images.npy")


def white(a):
    return np.full_like(a, 255)


def zeroed_patch(a):
    a = a.copy()
    a[:, :, 2:6, 2:6] = 0
    return a


def float_times_1000(a):
    return a.astype(np.float32) / 255 * 1000


def wrong_shape(a):
    return a[:, :, :4, :4].copy()


TAMPERING = {
    "all-white pixels": (white, False, "pixels changed since it was written"),
    "zeroed patch": (zeroed_patch, False, "pixels changed since it was written"),
    "float array * 1000": (float_times_1000, False, "not uint8"),
    "wrong shape": (wrong_shape, False, "shape (12, 3, 4, 4)"),
    "all-white pixels, checksum restamped": (white, True, "exceeds its Linf budget"),
    "zeroed patch, checksum restamped": (zeroed_patch, True, "exceeds its Linf budget"),
    "float array * 1000, checksum restamped": (float_times_1000, True, "not uint8"),
    "wrong shape, checksum restamped": (wrong_shape, True, "shape (12, 3, 4, 4)"),
}


def _assert_rejected_then_recomputed(cache: PoisonCache, clean, reason: str) -> None:
    folder = cache.folder(KEY)
    assert cache.load(KEY, verify=verifier(clean)) is None
    assert len(cache.lines) == 1
    line = cache.lines[0]
    assert line.startswith(
        f"warning: poison cache entry {folder} failed its check ("
    ) and line.endswith("; recomputing")
    assert reason in line
    assert not folder.exists()
    (aside,) = [p for p in folder.parent.iterdir() if p.name.startswith(f"{KEY}.damaged-")]
    assert (aside / "images.npy").exists()  # kept for a look, out of the way
    cache.save(KEY, make_poison(clean), {"seconds": 2.0})  # the caller recomputes
    images, facts = cache.load(KEY, verify=verifier(clean))
    assert torch.equal(images, make_poison(clean)) and facts == {"seconds": 2.0}
    assert len(cache.lines) == 1


@pytest.mark.parametrize("case", list(TAMPERING))
def test_a_tampered_poison_is_detected_moved_aside_and_recomputed(cache, clean, case):
    change, restamp, reason = TAMPERING[case]
    _rewrite(cache, change(_stored(cache)), restamp)
    _assert_rejected_then_recomputed(cache, clean, reason)


def test_a_truncated_npy_is_detected(cache, clean):
    path = cache.folder(KEY) / "images.npy"
    path.write_bytes(path.read_bytes()[:200])
    _assert_rejected_then_recomputed(cache, clean, "images.npy is unreadable")


def test_missing_facts_are_detected(cache, clean):
    (cache.folder(KEY) / "facts.json").unlink()
    _assert_rejected_then_recomputed(cache, clean, "facts.json is missing")


def test_an_entry_without_checksum_is_not_trusted(cache, clean):
    facts_path = cache.folder(KEY) / "facts.json"
    facts = json.loads(facts_path.read_text())
    del facts["sha256"]
    facts_path.write_text(json.dumps(facts))
    _assert_rejected_then_recomputed(cache, clean, "no checksum")


def test_a_sample_wise_claim_is_rechecked_on_load(cache, clean):
    """Same noise for every image of a class passes the checksum once restamped, not `verify`."""
    a = clean.uint8().numpy().copy()
    assert a[:, 0, 0, 0].max() < 255
    a[:, 0, 0, 0] += 1  # one identical change per image: within budget, but class-wise
    _rewrite(cache, a, restamp=True)
    _assert_rejected_then_recomputed(cache, clean, "claims to be sample-wise")


def test_an_absent_entry_is_silently_none(tmp_path):
    lines: list[str] = []
    assert PoisonCache(tmp_path, log=lines.append).load("nothere") is None
    assert lines == []


# -- artifacts ---------------------------------------------------------------------------------


def build(store: ArtifactStore, value: str = "42", recipe: dict | None = None):
    art = store.get("demo", recipe or {"what": "demo"})
    if not art.done:
        (art.path / "value.txt").write_text(value)
        store.finish(art, note="built")
    return art


def test_an_artifact_is_built_once_then_reused_without_a_lock(tmp_path):
    store = ArtifactStore(tmp_path)
    first = build(store)
    assert first.done and not first.locked
    again = store.get("demo", {"what": "demo"})
    assert again.done and not again.locked
    assert again.manifest()["note"] == "built"


def test_a_changed_artifact_file_is_detected_and_rebuilt(tmp_path):
    lines: list[str] = []
    store = ArtifactStore(tmp_path, log=lines.append)
    art = build(store)
    (art.path / "value.txt").write_text("43")  # edited, or half-restored from a backup
    again = store.get("demo", {"what": "demo"})
    assert not again.done and again.locked
    assert len(lines) == 1
    assert lines[0].startswith(
        f"warning: artifact demo {art.key} at {art.path} failed its check (its files changed"
    )
    assert (art.path / "manifest.json.damaged").exists() and not (
        art.path / "manifest.json"
    ).exists()
    (again.path / "value.txt").write_text("42")
    store.finish(again)
    assert not again.locked and store.get("demo", {"what": "demo"}).done
    assert len(lines) == 1


def test_done_hashes_the_files_once_per_object(tmp_path, monkeypatch):
    store = ArtifactStore(tmp_path)
    build(store)
    calls = []
    real = artifacts_module.content_hash
    monkeypatch.setattr(
        artifacts_module, "content_hash", lambda folder: calls.append(folder) or real(folder)
    )
    art = store.get("demo", {"what": "demo"})
    assert art.done and art.done and art.done
    assert len(calls) == 1


def test_manifests_of_earlier_ueb_still_verify(tmp_path):
    """Same hash as before: files but the manifest and checkpoint folders, names then bytes."""
    store = ArtifactStore(tmp_path)
    art = store.get("demo", {"what": "old"})
    (art.path / "sub").mkdir()
    (art.path / "sub" / "w.bin").write_bytes(b"\x00\x01" * 1000)
    (art.path / "value.txt").write_text("7")
    (art.path / "checkpoints").mkdir()
    (art.path / "checkpoints" / "state.pt").write_bytes(b"resume")
    h = hashlib.sha256()
    for f in sorted(p for p in art.path.rglob("*") if p.is_file() and p.name != "manifest.json"):
        if f.parent.name != "checkpoints":
            h.update(f.relative_to(art.path).as_posix().encode())
            h.update(f.read_bytes())
    (art.path / "manifest.json").write_text(json.dumps({"content_hash": h.hexdigest()[:16]}))
    art.release()
    (art.path / "checkpoints" / "state.pt").unlink()  # builds may delete checkpoints when done
    assert store.get("demo", {"what": "old"}).done


def test_a_build_lock_is_released_by_with_by_failure_and_by_collection(tmp_path):
    store = ArtifactStore(tmp_path)
    lock_path = tmp_path / "demo" / f"{store.get('demo', {'what': 'x'}).key}.lock"
    gc.collect()
    probe = [
        sys.executable,
        "-c",
        "import sys; from ueb.locks import FileLock; FileLock(sys.argv[1], blocking=False)",
        str(lock_path),
    ]

    def free() -> bool:
        return subprocess.run(probe, capture_output=True).returncode == 0

    art = store.get("demo", {"what": "x"})
    assert art.locked and not free()
    del art
    gc.collect()
    assert free()
    with pytest.raises(RuntimeError), store.get("demo", {"what": "x"}) as art:
        assert art.locked and not free()
        raise RuntimeError("build failed")
    assert free() and not art.locked  # released by `with`, though `art` is still referenced


BUILDER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from ueb.artifacts import ArtifactStore
    root, counter, hold = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
    store = ArtifactStore(root, log=lambda line: print(line, flush=True))
    art = store.get("demo", {"what": "shared"})
    if not art.done:
        with counter.open("a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(hold)
        (art.path / "value.txt").write_text(str(os.getpid()))
        store.finish(art)
    print("value", (art.path / "value.txt").read_text(), flush=True)
    """
)


def _builder(tmp_path: Path, hold: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            BUILDER,
            str(tmp_path / "cache"),
            str(tmp_path / "builds"),
            str(hold),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )


def _wait_for_build_start(tmp_path: Path) -> None:
    deadline = time.monotonic() + 60
    while not (tmp_path / "builds").exists():
        assert time.monotonic() < deadline, "the first builder never started"
        time.sleep(0.05)


def test_two_processes_build_an_artifact_once(tmp_path):
    first = _builder(tmp_path, hold=2.0)
    _wait_for_build_start(tmp_path)
    second = _builder(tmp_path, hold=0.0)
    out_first, _ = first.communicate(timeout=120)
    out_second, _ = second.communicate(timeout=120)
    assert (tmp_path / "builds").read_text().split() == [str(first.pid)]  # built once
    assert out_first.strip() == f"value {first.pid}"
    waiting, value = out_second.strip().splitlines()
    assert (
        waiting.startswith("waiting for another process building demo ")
        and f"(pid {first.pid}" in waiting
    )
    assert value == f"value {first.pid}"


def test_a_builder_killed_mid_build_leaves_the_build_to_the_next(tmp_path):
    first = _builder(tmp_path, hold=60.0)
    _wait_for_build_start(tmp_path)
    first.kill()
    first.wait()
    second = _builder(tmp_path, hold=0.0)
    out_second, _ = second.communicate(timeout=120)
    assert (tmp_path / "builds").read_text().split() == [str(first.pid), str(second.pid)]
    assert out_second.strip() == f"value {second.pid}"


def test_a_cache_that_cannot_take_locks_is_still_read(cache, clean, monkeypatch):
    """A shared read-only cache: no lock file can be created, the entry is still checked and used."""
    from ueb import poison_cache
    from ueb.errors import UebError

    def no_lock(*args, **kwargs):
        raise UebError("permission denied writing the lock")

    monkeypatch.setattr(poison_cache, "FileLock", no_lock)
    images, _ = cache.load(KEY, verify=verifier(clean))
    assert torch.equal(images, make_poison(clean))
