"""`ueb new plugin NAME`: the generated package passes its own tests, installs, and runs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import typer
from core_helpers import pip_install_target, run_cli
from typer.testing import CliRunner

from ueb.cli_authoring import add_commands
from ueb.errors import ConfigError
from ueb.scaffold import package_name, write_plugin_package


def _env(tmp_path, **extra: str) -> dict[str, str]:
    return {**os.environ, "UEB_PLUGINS": "ueb", "UEB_CACHE": str(tmp_path / "cache"), **extra}


def test_generated_package_passes_its_own_tests(tmp_path):
    root = write_plugin_package("my-method", tmp_path)
    assert (root / "my_method" / "__init__.py").is_file() and (
        root / "tests" / "test_my_method.py"
    ).is_file()
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        capture_output=True, text=True, cwd=root, env=_env(tmp_path, PYTHONPATH=str(root)), timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert "5 passed" in res.stdout


@pytest.mark.slow
def test_generated_package_installs_and_its_plugins_run(tmp_path):
    root = write_plugin_package("ueb-demo", tmp_path / "src")
    site = tmp_path / "site"
    pip_install_target(root, site)
    env = {"PYTHONPATH": str(site), "UEB_PLUGINS": "ueb-demo", "UEB_CACHE": str(tmp_path / "cache")}
    listed = run_cli("list", env=env)
    assert listed.returncode == 0, listed.stderr
    for name in ("ueb-demo-noise", "ueb-demo-blur", "ueb-demo-cnn", "ueb-demo-npz"):
        assert name in listed.stdout
    run_dir = tmp_path / "run"
    res = run_cli(
        "run", "-p", "ueb-demo-noise", "-c", "vanilla,ueb-demo-blur", "-v", "ueb-demo-cnn",
        "--profile", "smoke", "--run-dir", str(run_dir), "-q", env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    table = (run_dir / "table.md").read_text()
    assert "ueb-demo-noise" in table and "ueb-demo-blur" in table and "ueb-demo-cnn" in table


def test_names_map_to_modules_and_bad_names_or_folders_are_refused(tmp_path):
    assert package_name("My-Method") == "my_method" and package_name("a__b--c") == "a_b_c"
    for bad in ("1st", "my method", "-x", "", "ueb"):
        with pytest.raises(ConfigError):
            write_plugin_package(bad, tmp_path)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already exists"):
        write_plugin_package("taken", tmp_path)
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    assert (write_plugin_package("empty", tmp_path) / "pyproject.toml").is_file()


def test_new_plugin_command_writes_the_package_into_dir(tmp_path):
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """A stand-in for the ueb app."""

    add_commands(app)
    result = CliRunner().invoke(app, ["new", "plugin", "demo", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "demo" / "demo" / "victim.py").is_file()
    assert str(tmp_path / "demo") in result.output.replace("\n", "")


def test_ueb_cli_offers_new_plugin(tmp_path):
    res = run_cli("new", "plugin", "cli-demo", "--dir", str(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "cli-demo" / "cli_demo" / "__init__.py").is_file()
    again = run_cli("new", "plugin", "cli-demo", "--dir", str(tmp_path))
    assert again.returncode == 2 and "already exists" in again.stderr
