"""The matrix runner: cache reuse, failing cells, integrity, resume after a kill, bad input."""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest
import torch
from core_helpers import FIXTURES, REPO, isolated_registry, minimal_plugins, run_cli

from ueb.config import RunConfig, build_config
from ueb.errors import ConfigError, IntegrityError, UebError
from ueb.hookspecs import hookimpl
from ueb.integrity import check_poison, perturbation_stats
from ueb.interfaces import Budget, Poisoner
from ueb.plan import resolve
from ueb.plugins import set_host
from ueb.progress import silent
from ueb.runner import MatrixRunner
from ueb.store import Store
from ueb.testing import make_imageset

CALLS = {"count": 0}


class CountingPoisoner(Poisoner):
    """Adds a fixed class-wise +4/255 and counts how often it is asked to poison."""

    @dataclass(frozen=True)
    class Params:
        level: int = 4

    def budget(self):
        return Budget("linf", 8 / 255)

    @property
    def sample_wise(self):
        return False

    def poison(self, train, ctx):
        CALLS["count"] += 1
        return (train.float01() + self.params.level / 255).clamp(0, 1)


class RaisingPoisoner(CountingPoisoner):
    def poison(self, train, ctx):
        raise RuntimeError("generator exploded")


class GreedyPoisoner(CountingPoisoner):
    """Declares 8/255 but adds 16/255: must be stopped by the integrity check."""

    def poison(self, train, ctx):
        return (train.float01() + 16 / 255).clamp(0, 1)


class _TestPoisoners:
    @hookimpl
    def register_poisoners(self, register):
        register("counting", CountingPoisoner)
        register("raising", RaisingPoisoner)
        register("greedy", GreedyPoisoner)


@pytest.fixture
def registry():
    reg = isolated_registry(minimal_plugins(), _TestPoisoners())
    yield reg
    set_host(None)


def _run(registry, tmp_path, run_name="run", **kw):
    cfg = RunConfig(
        **{
            "poisoners": ("counting",),
            "countermeasures": ("identity", "invert"),
            "victims": ("tiny",),
            "profile": "smoke",
            "cache_dir": str(tmp_path / "cache"),
            **kw,
        }
    )
    run = resolve(cfg, registry)
    return MatrixRunner(run, registry, tmp_path / run_name, silent(), log=lambda m: None)


def test_poison_is_computed_once_and_reused_across_countermeasures_and_runs(registry, tmp_path):
    CALLS["count"] = 0
    summary = _run(registry, tmp_path).execute()
    assert summary.ok == 4 and summary.failed == 0  # clean + counting, x 2 countermeasures
    assert CALLS["count"] == 1
    _run(registry, tmp_path, run_name="other", countermeasures=("invert",)).execute()
    assert (
        CALLS["count"] == 1
    )  # a new run with another countermeasure list reuses the cached poison


def test_records_carry_versions_params_clean_reference_and_history(registry, tmp_path):
    runner = _run(registry, tmp_path)
    runner.execute()
    recs = {(r.poisoner, r.countermeasure): r for r in runner.store.records()}
    rec = recs[("counting", "identity")]
    assert rec.status == "ok" and rec.poisoner_params == {"level": 4}
    assert rec.clean_final_acc == recs[("clean", "identity")].final_acc
    assert rec.history and rec.peak_acc >= rec.final_acc
    assert rec.poison_facts["linf_max"] == pytest.approx(4 / 255, abs=1e-6)
    manifest = runner.store.manifest()
    assert manifest["environment"]["torch"] == torch.__version__
    assert manifest["config"]["countermeasures"] == ["identity", "invert"]


def test_a_reference_saved_after_its_poisoned_cells_fills_them_at_once(registry, tmp_path):
    """In a parallel run a poisoned cell can finish before its clean reference; a stop before
    the end-of-run pass must not leave it without the reference (a resume would rewrite it)."""
    runner = _run(registry, tmp_path)
    runner.execute()
    recs = {(r.poisoner, r.countermeasure): r for r in runner.store.records()}
    poisoned, reference = recs[("counting", "identity")], recs[("clean", "identity")]
    poisoned.clean_final_acc = poisoned.clean_peak_acc = None
    runner.store.put(poisoned)  # as saved before its reference existed
    other = recs[("counting", "invert")]
    other.clean_final_acc = None
    runner.store.put(other)
    runner.write(reference)
    filled = runner.store.get(poisoned.cell_id)
    assert (filled.clean_final_acc, filled.clean_peak_acc) == (
        reference.final_acc,
        reference.peak_acc,
    )
    assert runner.store.get(other.cell_id).clean_final_acc is None  # another row's reference


def test_a_raising_poisoner_fails_its_cells_and_the_matrix_goes_on(registry, tmp_path):
    runner = _run(registry, tmp_path, poisoners=("raising", "counting"))
    summary = runner.execute()
    recs = runner.store.records()
    failed = [r for r in recs if r.status == "error"]
    assert {r.poisoner for r in failed} == {"raising"} and len(failed) == 2
    assert "generator exploded" in failed[0].error
    assert summary.ok == 4


def test_partial_poisoning_is_a_matrix_axis_with_a_fixed_subset(registry, tmp_path):
    from ueb.worker import mix_poison

    runner = _run(registry, tmp_path, countermeasures=("identity",), poison_fractions=(0.5, 1.0))
    runner.execute()
    recs = runner.store.records()
    assert sorted((r.poisoner, r.poison_fraction) for r in recs) == [
        ("clean", 1.0),
        ("counting", 0.5),
        ("counting", 1.0),
    ]
    clean = make_imageset(per_class=10, num_classes=2)
    poisoned = clean.with_images((clean.float01() + 4 / 255).clamp(0, 1))
    mixed = mix_poison(clean, poisoned, 0.3, seed=0)
    changed = (mixed.images != clean.images).flatten(1).any(1)
    assert int(changed.sum()) == 6
    assert torch.equal(mix_poison(clean, poisoned, 0.3, seed=0).images, mixed.images)


def test_parameter_grid_becomes_variants_in_the_matrix(registry, tmp_path):
    runner = _run(
        registry, tmp_path, countermeasures=("identity",), grid={"counting": {"level": [1, 3]}}
    )
    summary = runner.execute()
    assert summary.ok == 3
    names = sorted(r.poisoner for r in runner.store.records())
    assert names == ["clean", "counting[level=1]", "counting[level=3]"]
    facts = {r.poisoner: r.poison_facts["linf_max"] for r in runner.store.records()}
    assert facts["counting[level=3]"] == pytest.approx(3 / 255, abs=1e-6)


class LayeredPoisoner(CountingPoisoner):
    """Params with several fields, to see which layer wins."""

    presets = {"smoke": {"level": 3, "other": 3, "scale": 3, "user": 3}}

    @dataclass(frozen=True)
    class Params:
        level: int = 4
        other: int = 0
        scale: int = 0
        user: int = 0


def test_grid_values_beat_profile_globs_and_variants_keep_the_base_settings(tmp_path, monkeypatch):
    """preset < profile (globs, exact wins) < user; a variant takes its base's layers, then its
    grid values, then settings given for the variant itself. A profile's `[plugins."deephiding*"]
    per_class = 10` must not undo `--grid deephiding-s.per_class=1,2`."""
    from ueb.profile import profile_from_dict

    class _Plugins:
        @hookimpl
        def register_poisoners(self, register):
            register("layered", LayeredPoisoner)

    registry = isolated_registry(minimal_plugins(), _Plugins())
    try:
        profile = profile_from_dict(
            {
                "name": "smoke",
                "datasets": ["fashion-mnist"],
                "plugins": {"layer*": {"level": 7, "other": 1}, "layered": {"scale": 2}},
                "data": {"train_per_class": 4, "test_per_class": 2},
            },
            where="test profile",
        )
        monkeypatch.setattr("ueb.plan.load_profile", lambda _name: profile)
        cfg = RunConfig(
            poisoners=("layered",), countermeasures=("identity",), victims=("tiny",),
            params={"layered": {"user": 5}, "layered[level=1]": {"other": 9}}, grid={"layered": {"level": [1, 2]}},
        )  # fmt: skip
        plan = resolve(cfg, registry)
        assert dict(plan.spec("poisoner", "layered[level=1]").params) == {
            "level": 1,
            "other": 9,
            "scale": 2,
            "user": 5,
        }
        assert dict(plan.spec("poisoner", "layered[level=2]").params) == {
            "level": 2,
            "other": 1,
            "scale": 2,
            "user": 5,
        }
        plain = resolve(
            RunConfig(poisoners=("layered",), countermeasures=("identity",), victims=("tiny",)),
            registry,
        )
        assert dict(plain.spec("poisoner", "layered").params) == {
            "level": 7,
            "other": 1,
            "scale": 2,
            "user": 3,
        }
    finally:
        set_host(None)


def test_fail_fast_stops_at_the_first_failure(registry, tmp_path):
    with pytest.raises(UebError, match="generator exploded"):
        _run(
            registry, tmp_path, poisoners=("raising",), fail_fast=True, include_clean=False
        ).execute()


def test_out_of_budget_poison_is_rejected_naming_the_poisoner(registry, tmp_path):
    runner = _run(registry, tmp_path, poisoners=("greedy",), include_clean=False)
    runner.execute()
    (rec, _) = runner.store.records()
    assert rec.status == "error" and "poisoner 'greedy' exceeds its Linf budget" in rec.error


def test_full_disk_while_writing_the_cache_is_one_clear_error_and_keeps_finished_cells(
    registry, tmp_path, monkeypatch
):
    import ueb.atomic

    runner = _run(registry, tmp_path)
    real = ueb.atomic._write_all
    poisons = {"n": 0}

    def write_all(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").count("/poisons/"):
            poisons["n"] += 1
            if (
                poisons["n"] > 2
            ):  # the clean poison (images + facts) is written, the next one hits a full disk
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(ueb.atomic, "_write_all", write_all)
    with pytest.raises(UebError, match="disk full while writing") as err:
        runner.execute()
    assert "free on the disk" in str(err.value) and "to resume" in str(err.value)
    done = [r for r in Store(tmp_path / "run").records() if r.status == "ok"]
    assert len(done) == 2  # both clean cells were stored before the failure
    assert not [
        p
        for p in (tmp_path / "cache").rglob("*")
        if p.name.endswith(".tmp")
        or (p.is_file() and p.stat().st_size == 0 and p.suffix != ".lock")
    ]


# -- integrity checks ------------------------------------------------------------------------


def test_integrity_rejects_nan_range_shape_and_fake_sample_wise():
    clean = make_imageset(per_class=4, num_classes=2)
    x = clean.float01()
    with pytest.raises(IntegrityError, match="NaN"):
        check_poison(clean, torch.full_like(x, float("nan")), Budget("unbounded"), False, "p")
    with pytest.raises(IntegrityError, match="outside"):
        check_poison(clean, x * 2, Budget("unbounded"), False, "p")
    with pytest.raises(IntegrityError, match="shape"):
        check_poison(clean, x[:-1], Budget("unbounded"), False, "p")
    with pytest.raises(IntegrityError, match="sample-wise"):
        check_poison(clean, x - 2 / 255, Budget("linf", 8 / 255), True, "p")  # same shift for all


def test_integrity_budgets_hold_after_rounding():
    clean = make_imageset(per_class=4, num_classes=2)
    x = clean.float01()
    gen = torch.Generator().manual_seed(0)
    eps = 8 / 255
    noise = (torch.rand(x.shape, generator=gen) * 2 - 1) * eps
    check_poison(clean, (x + noise).clamp(0, 1), Budget("linf", eps), True, "p")  # passes
    with pytest.raises(IntegrityError, match="Linf"):
        check_poison(clean, (x + noise * 1.3).clamp(0, 1), Budget("linf", eps), True, "p")
    d = torch.randn(x.shape, generator=gen)
    d = d / d.flatten(1).norm(dim=1)[:, None, None, None]
    inside = (x + 0.9 * d).clamp(0, 1)
    check_poison(clean, inside, Budget("l2", 1.0), True, "p")
    with pytest.raises(IntegrityError, match="L2"):
        check_poison(clean, (x + 3 * d).clamp(0, 1), Budget("l2", 1.0), True, "p")
    one = x.clone()
    one[:, :, 0, 0] = 1 - one[:, :, 0, 0]
    check_poison(clean, one, Budget("l0", 1), False, "p")
    one[:, :, 1, 1] = 1 - one[:, :, 1, 1]
    with pytest.raises(IntegrityError, match="L0"):
        check_poison(clean, one, Budget("l0", 1), False, "p")


def test_rounding_slack_is_half_a_level_and_no_more():
    grey = make_imageset(per_class=2, num_classes=2)
    clean = grey.with_images(torch.full_like(grey.images, 100))  # room on both sides of every value
    x = clean.float01()

    def shifted(levels: float) -> torch.Tensor:
        out = x.clone()
        out[0, 0, 0, 0] += levels / 255
        return out

    linf, l2 = Budget("linf", 8 / 255), Budget("l2", 10 / 255)
    check_poison(clean, shifted(8.49), linf, False, "p")  # 8.49/255 stores as 8 levels: inside
    check_poison(clean, shifted(8), linf, False, "p")
    for over in (8.51, 9):  # stored as 9 levels: one level more than eps, never absorbed
        with pytest.raises(IntegrityError, match="Linf"):
            check_poison(clean, shifted(over), linf, False, "p")
    check_poison(clean, shifted(10), l2, False, "p")
    with pytest.raises(IntegrityError, match="L2"):
        check_poison(clean, shifted(11), l2, False, "p")  # one changed value: slack 0.5/255


def test_chroma_share_is_what_grayscale_can_remove():
    clean = torch.full((4, 3, 8, 8), 128, dtype=torch.uint8)
    grey = clean + torch.tensor([4, 4, 4], dtype=torch.uint8)[None, :, None, None]
    colour = clean.clone()
    colour[:, 0] += 4  # red only: 2/3 of its energy is off the grey axis
    balanced = clean.clone()
    balanced[:, 0] += 4
    balanced[:, 1] -= 4  # red up, green down: no grey component at all
    assert perturbation_stats(clean, grey)["chroma_share"] == 0.0
    assert perturbation_stats(clean, colour)["chroma_share"] == pytest.approx(2 / 3)
    assert perturbation_stats(clean, balanced)["chroma_share"] == pytest.approx(1.0)
    assert "chroma_share" not in perturbation_stats(clean[:, :1], grey[:, :1])


# -- configuration errors ------------------------------------------------------------------------


def test_matrix_file_type_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="seeds.*integer"):
        build_config({"seeds": ["zero"]}, {})
    with pytest.raises(ConfigError, match="did you mean 'countermeasures'"):
        build_config({"countermeasure": ["vanilla"]}, {})


def test_flags_override_the_matrix_file(registry):
    cfg = build_config(
        {"profile": "quick", "countermeasures": ["identity"]},
        {"profile": "smoke", "countermeasures": None},
    )
    assert cfg.profile == "smoke" and cfg.countermeasures == ("identity",)


def test_cli_errors_are_one_line_with_a_fix(tmp_path):
    env = {"UEB_CACHE": str(tmp_path / "c")}
    res = run_cli("run", "-p", "random-nose", "--profile", "smoke", env=env)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "did you mean 'random-noise'" in res.stderr
    bad = tmp_path / "m.toml"
    bad.write_text('poisoners = ["random-noise"]\nseeds = "x"\n')
    res = run_cli("run", "--matrix", str(bad), env=env)
    assert res.returncode == 2 and "seeds" in res.stderr
    res = run_cli(
        "run",
        "-p",
        "random-noise",
        "-d",
        "cifar10",
        "--data-root",
        str(tmp_path / "nope"),
        "--profile",
        "smoke",
        "--fail-fast",
        env=env,
    )
    assert res.returncode == 2 and "does not exist" in res.stderr and "data-root" in res.stderr


# -- resume after a kill ------------------------------------------------------------------------------


def _ok_rows(db):
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as c:
            return c.execute("SELECT COUNT(*) FROM cells WHERE status='ok'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_rows(tmp_path):
    env = {**os.environ, "UEB_CACHE": str(tmp_path / "cache")}
    args = [
        "--plugins-dir",
        str(FIXTURES),
        "run",
        "-p",
        "random-noise",
        "-c",
        "identity,invert",
        "-v",
        "tiny",
        "--profile",
        "smoke",
        "-s",
        "0",
        "-s",
        "1",
        "-q",
    ]
    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ueb.cli", *args, "--run-dir", str(killed_dir)],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while (
        _ok_rows(killed_dir / "results.sqlite") < 2
        and time.time() < deadline
        and proc.poll() is None
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = _ok_rows(killed_dir / "results.sqlite")
    assert 2 <= partial < 8, "the kill should land mid-matrix"
    resumed = run_cli(*args, "--run-dir", str(killed_dir), env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{partial} reused" in resumed.stdout.replace("\n", " ")
    straight = run_cli(
        *args,
        "--run-dir",
        str(tmp_path / "straight"),
        env={**env, "UEB_CACHE": str(tmp_path / "cache2")},
    )
    assert straight.returncode == 0, straight.stderr

    def rows(d):
        return sorted((r.cell_id, r.final_acc, r.peak_acc) for r in Store(d).records())

    assert rows(killed_dir) == rows(tmp_path / "straight") and len(rows(killed_dir)) == 8
