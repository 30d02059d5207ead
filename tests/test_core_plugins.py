"""Plugin discovery, isolation, broken and colliding plugins, lazy imports."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from core_helpers import FIXTURES, REPO, isolated_registry, minimal_plugins, run_cli

from ueb.errors import ConfigError, PluginError
from ueb.hookspecs import hookimpl
from ueb.plugins import set_host


@pytest.fixture(autouse=True)
def _fresh_host():
    yield
    set_host(None)


def test_builtin_plugins_register_through_entry_points():
    reg = isolated_registry()
    assert "fashion-mnist" in reg.names("dataset")
    assert {"clean", "random-noise"} <= set(reg.names("poisoner"))
    dists = {
        reg.get("dataset", "fashion-mnist").distribution,
        reg.get("poisoner", "clean").distribution,
    }
    assert dists == {"ueb"}


def test_unknown_name_suggests_the_closest():
    reg = isolated_registry()
    with pytest.raises(ConfigError, match="did you mean 'random-noise'"):
        reg.get("poisoner", "random-nose")


def test_glob_and_all_selection():
    reg = isolated_registry(minimal_plugins())
    assert reg.select("countermeasure", ["ident*", "inv*"]) == ["identity", "invert"]
    assert {"iss-jpeg", "identity", "invert"} <= set(reg.select("countermeasure", ["i*"]))
    assert "clean" not in reg.select(
        "poisoner", ["all"]
    )  # the reference row is added by the runner
    assert reg.select("countermeasure", ["invert,identity"]) == ["invert", "identity"]
    with pytest.raises(ConfigError, match="no countermeasure matches"):
        reg.select("countermeasure", ["zz*"])


def test_params_reject_unknown_keys_and_wrong_types():
    reg = isolated_registry(minimal_plugins())
    with pytest.raises(ConfigError, match="did you mean 'width'"):
        reg.create("victim", "tiny", {"widht": 3})
    with pytest.raises(ConfigError, match="should be an integer"):
        reg.create("victim", "tiny", {"width": "wide"})
    assert reg.create("victim", "tiny", {"width": "4"}).params.width == 4


def test_list_parameters_from_the_command_line_accept_bare_and_bracketed_lists():
    from dataclasses import dataclass

    from ueb.params import parse_params

    @dataclass(frozen=True)
    class P:
        widths: tuple[int, ...] = (1,)

    for text in ("16,64,128", "[16, 64, 128]", "(16,64,128)", " [16,64,128] "):
        assert parse_params(P, {"widths": text}, where="p").widths == (16, 64, 128)
    with pytest.raises(ConfigError, match="should be an integer"):
        parse_params(P, {"widths": "[16, wide]"}, where="p")


class _CollidingA:
    @hookimpl
    def register_poisoners(self, register):
        register("twin", "ueb_baselines.reference:Clean")


class _CollidingB:
    @hookimpl
    def register_poisoners(self, register):
        register("twin", "ueb_baselines.reference:Clean")


def test_two_plugins_registering_one_name_is_an_error_naming_both():
    with pytest.raises(PluginError) as err:
        isolated_registry(_CollidingA(), _CollidingB(), entry_points=False)
    assert "test-dist-0" in str(err.value) and "test-dist-1" in str(err.value)


class _RaisingHook:
    @hookimpl
    def register_victims(self, register):
        raise RuntimeError("boom")


def test_a_plugin_whose_hook_raises_is_marked_failed_not_fatal(capsys, monkeypatch):
    monkeypatch.setenv("UEB_STRICT_PLUGINS", "0")  # CI runs strict; this test is about the default
    reg = isolated_registry(_RaisingHook(), minimal_plugins(), entry_points=False)
    assert "tiny" in reg.names("victim")
    failed = [r for r in reg.host.records.values() if not r.ok]
    assert len(failed) == 1 and "boom" in failed[0].error
    assert "failed to load" in capsys.readouterr().err


def test_strict_mode_makes_a_failing_plugin_fatal(monkeypatch):
    monkeypatch.setenv("UEB_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="boom"):
        isolated_registry(_RaisingHook(), entry_points=False)


def test_broken_plugin_file_in_plugins_dir_does_not_take_down_the_cli(tmp_path):
    (tmp_path / "broken.py").write_text("raise ImportError('this plugin is broken')\n")
    (tmp_path / "fine.py").write_text((FIXTURES / "minimal_plugins.py").read_text())
    lenient = {"UEB_STRICT_PLUGINS": "0"}  # CI runs strict; this test is about the default
    res = run_cli("--plugins-dir", str(tmp_path), "plugins", env=lenient)
    assert res.returncode == 0, res.stderr
    assert "broken" in res.stdout and "FAILED" in res.stdout
    assert "failed to load" in res.stderr
    listed = run_cli("--plugins-dir", str(tmp_path), "list", "victims", env=lenient)
    strict = run_cli("--plugins-dir", str(tmp_path), "list", env={"UEB_STRICT_PLUGINS": "1"})
    assert strict.returncode == 2 and "broken" in strict.stderr
    assert "tiny" in listed.stdout


def test_import_cli_list_and_help_do_not_import_torch():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from ueb.cli import get_app\n"
        "app = get_app()\n"
        "r = CliRunner()\n"
        "assert r.invoke(app, ['--help']).exit_code == 0\n"
        "res = r.invoke(app, ['list'])\n"
        "assert res.exit_code == 0, res.output\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('OK')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr


@pytest.mark.slow
def test_installed_third_party_package_is_discovered_and_runs_in_a_matrix(tmp_path):
    target = tmp_path / "site"
    source = tmp_path / "src"
    shutil.copytree(
        REPO / "tests" / "thirdparty_plugin", source
    )  # the build must not write into the repo
    pip = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
    )
    assert pip.returncode == 0, pip.stderr
    env = {
        "PYTHONPATH": str(target),
        "UEB_PLUGINS": "ueb,ueb-example-plugin",
        "UEB_CACHE": str(tmp_path / "cache"),
    }
    plugins = run_cli("plugins", "--json", env=env)
    assert "ueb-example-plugin" in plugins.stdout
    res = run_cli(
        "--plugins-dir", str(FIXTURES), "run", "-p", "corner-patch", "-c", "identity,hflip-all", "-v", "tiny",
        "--profile", "smoke", "--run-dir", str(tmp_path / "run"), "-q", env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    table = (tmp_path / "run" / "table.md").read_text()
    assert "corner-patch" in table and "hflip-all" in table and "clean" in table
    # and whatever is installed does not leak into a run that does not allow it
    isolated = run_cli("list", "poisoners", env={**env, "UEB_PLUGINS": "ueb"})
    assert "corner-patch" not in isolated.stdout
