"""Claims the documentation makes that no other test held: `--dry-run` computes nothing, the
run-directory name, a registration that cannot be imported, a failing cell under the process
pool (and the rerun that resumes it), and the cell identity pinned to its canonical form."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from core_helpers import FIXTURES, isolated_registry, minimal_plugins, run_cli

from ueb import identity
from ueb.config import RunConfig
from ueb.errors import PluginError
from ueb.hookspecs import hookimpl
from ueb.plan import resolve
from ueb.plugins import set_host
from ueb.store import Store

SMOKE = [
    "--plugins-dir",
    str(FIXTURES),
    "run",
    "-c",
    "identity",
    "-v",
    "tiny",
    "--profile",
    "smoke",
]


def _run_dir_line(text: str) -> str:
    found = re.search(r"run directory\s+(\S+)", text)
    assert found, text
    return found.group(1)


@pytest.mark.slow
def test_dry_run_prints_the_configuration_and_the_run_directory_and_computes_nothing(tmp_path):
    env = {"UEB_CACHE": str(tmp_path / "cache")}
    dry = run_cli(*SMOKE, "-p", "random-noise", "--dry-run", env=env, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    name = _run_dir_line(dry.stdout)
    # runs/<profile>-<10 hex digits of the resolved configuration>
    assert re.fullmatch(r"runs/smoke-[0-9a-f]{10}", name), name
    config = json.loads(dry.stdout[dry.stdout.index("{") : dry.stdout.rindex("}") + 1])
    assert config["poisoners"] == ["clean", "random-noise"] and config["seeds"] == [0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no run directory, no cache
    # the name is of what was resolved, not of how it was written; another seed is another run
    glob = run_cli(
        *SMOKE,
        "-p",
        "random-nois*",
        "--param",
        "random-noise.eps=8/255",
        "--dry-run",
        env=env,
        cwd=tmp_path,
    )
    assert _run_dir_line(glob.stdout) == name, glob.stdout + glob.stderr
    other = run_cli(*SMOKE, "-p", "random-noise", "-s", "1", "--dry-run", env=env, cwd=tmp_path)
    assert _run_dir_line(other.stdout) not in (name, "")
    # and a real run without --run-dir writes exactly there
    real = run_cli(*SMOKE, "-p", "random-noise", "-q", env=env, cwd=tmp_path)
    assert real.returncode == 0, real.stderr
    assert [p.relative_to(tmp_path).as_posix() for p in (tmp_path / "runs").iterdir()] == [name]
    assert len(Store(tmp_path / name).records()) == 2


def test_the_run_directory_is_named_by_the_resolved_plan():
    registry = isolated_registry(minimal_plugins())
    try:
        base = {"countermeasures": ("identity",), "victims": ("tiny",), "profile": "smoke"}
        a = resolve(RunConfig(poisoners=("random-noise",), **base), registry)
        b = resolve(
            RunConfig(
                poisoners=("random-nois*",), params={"random-noise": {"eps": "8/255"}}, **base
            ),
            registry,
        )
        c = resolve(
            RunConfig(
                poisoners=("random-noise",), params={"random-noise": {"eps": "4/255"}}, **base
            ),
            registry,
        )
        assert a.run_id() == b.run_id() and a.run_id() != c.run_id()
        assert re.fullmatch(r"smoke-[0-9a-f]{10}", a.run_id())
    finally:
        set_host(None)


class _Unimportable:
    @hookimpl
    def register_poisoners(self, register):
        register(
            "ghost", "ueb_no_such_module.methods:Ghost", summary="registered, never importable"
        )


def test_a_registration_that_cannot_be_imported_fails_at_first_use_with_one_clear_error():
    registry = isolated_registry(_Unimportable())
    try:
        assert "ghost" in registry.names("poisoner")  # listing imports nothing
        with pytest.raises(
            PluginError,
            match=r"poisoner 'ghost'.*cannot be imported from ueb_no_such_module\.methods:Ghost",
        ) as err:
            registry.create("poisoner", "ghost")
        assert "ModuleNotFoundError" in str(err.value) and err.value.fix
        with pytest.raises(
            PluginError, match="cannot be imported"
        ):  # the plan stops before any work
            resolve(
                RunConfig(poisoners=("ghost",), countermeasures=("vanilla",), profile="smoke"),
                registry,
            )
    finally:
        set_host(None)


FAILING = '''
import os
from dataclasses import dataclass

from ueb.hookspecs import hookimpl
from ueb.interfaces import Budget, Poisoner


class Explodes(Poisoner):
    """Fails inside its worker process while UEB_TEST_EXPLODE is set; else the clean images."""

    version = "1"
    deterministic = True

    @dataclass(frozen=True)
    class Params:
        pass

    @property
    def sample_wise(self):
        return False

    def budget(self):
        return Budget("unbounded")

    def poison(self, train, ctx):
        if os.environ.get("UEB_TEST_EXPLODE"):
            raise RuntimeError("exploded on purpose")
        return train.float01()


@hookimpl
def register_poisoners(register):
    register("explodes", Explodes, summary="test: raises")
'''


@pytest.mark.slow
def test_a_failing_cell_under_the_process_pool_is_recorded_the_others_finish_and_a_rerun_resumes(
    tmp_path,
):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    shutil.copy(FIXTURES / "minimal_plugins.py", plugins)
    (plugins / "explodes.py").write_text(FAILING)
    args = [
        "--plugins-dir",
        str(plugins),
        "run",
        "-p",
        "explodes,random-noise",
        "-c",
        "identity,invert",
        "-v",
        "tiny",
    ]
    args += ["--profile", "smoke", "--workers", "2", "--run-dir", str(tmp_path / "run"), "-q"]
    cache = {"UEB_CACHE": str(tmp_path / "cache")}
    res = run_cli(*args, env={**cache, "UEB_TEST_EXPLODE": "1"})
    assert res.returncode != 0  # a run with a failed cell says so
    assert "exploded on purpose" in res.stdout + res.stderr
    records = {(r.poisoner, r.countermeasure): r for r in Store(tmp_path / "run").records()}
    assert len(records) == 6
    for cm in ("identity", "invert"):
        failed = records["explodes", cm]
        assert (
            failed.status != "ok"
            and failed.final_acc is None
            and "exploded on purpose" in (failed.error or "")
        )
        for ok in ("clean", "random-noise"):
            assert records[ok, cm].status == "ok" and records[ok, cm].final_acc is not None
    # the same command again, the cause gone: the failed cells are computed, the others kept
    again = run_cli(*args, env=cache)
    assert again.returncode == 0, again.stderr
    assert "4 done here" in " ".join(again.stdout.split()) and "2 to compute" in again.stdout
    after = {(r.poisoner, r.countermeasure): r for r in Store(tmp_path / "run").records()}
    assert len(after) == 6 and all(r.status == "ok" for r in after.values())
    kept = [k for k in records if k[0] != "explodes"]
    assert all(
        (after[k].cell_id, after[k].final_acc) == (records[k].cell_id, records[k].final_acc)
        for k in kept
    )


def test_identities_are_pinned_to_their_canonical_form():
    """A change of canonicalisation renames every cell of every stored run and cache: it must be
    seen (and the version of the store's layout considered), so the ids are pinned here."""
    assert identity.digest(8 / 255) == identity.digest(0.03137254901960784)
    assert identity.digest((1, 2), {"b": 1, "a": -0.0}) == identity.digest(
        [1, 2], {"a": 0.0, "b": 1}
    )
    assert identity.digest(1) != identity.digest(1.0) and identity.digest(True) != identity.digest(
        1
    )
    config = identity.cell_configuration(
        dataset={"class": "Embedded", "version": "1", "params": {}},
        poisoner={"class": "Clean", "version": "1", "params": {}},
        countermeasure={"class": "Vanilla", "version": "1", "params": {}},
        victim={"class": "FastNet", "version": "2", "params": {"widths": (32, 64, 128)}},
        fraction=1,
        training={"iterations": 600, "lr": 0.05},
        data={"train_per_class": 300},
    )
    assert config == PINNED_CONFIG
    assert (
        identity.cell_identity(config, 0, ("fashion-mnist", "clean", "vanilla", "fastnet"))
        == PINNED_CELL
    )


PINNED_CONFIG = "a522a629ef71b8d2"
PINNED_CELL = "0641ac29357be34e"
