"""Values checked before any work: profiles, grids, cache and run folders, dataset labels."""

from __future__ import annotations

import pytest
import torch
from core_helpers import run_cli

from ueb.errors import ConfigError, DataError
from ueb.imageset import ImageSet
from ueb.interfaces import Dataset, Splits
from ueb.profile import DataConfig, load_profile
from ueb.splits import forget, load_splits


def test_an_unknown_profile_gets_a_did_you_mean():
    with pytest.raises(ConfigError) as info:
        load_profile("quik")
    assert "did you mean 'quick'?" in info.value.line()


def test_a_grid_without_values_names_the_problem(tmp_path):
    res = run_cli(
        "run",
        "-p",
        "random-noise",
        "-c",
        "jpeg10",
        "--grid",
        "jpeg10.quality=",
        "--profile",
        "smoke",
        "--dry-run",
    )
    assert res.returncode == 2
    assert "--grid 'jpeg10.quality=' names no values" in res.stderr


@pytest.mark.parametrize("case", ["file", "long-name"])
def test_a_cache_folder_that_cannot_work_stops_before_any_poison(tmp_path, case):
    if case == "file":
        cache = tmp_path / "cache"
        cache.write_text("not a folder")
        want = "is a file, not a folder"
    else:
        cache = tmp_path / ("x" * 300) / "cache"
        want = "over the 255 a file system allows"
    res = run_cli(
        "run", "-p", "random-noise", "-c", "vanilla", "--profile", "smoke",
        "--cache-dir", str(cache), "--run-dir", str(tmp_path / "run"),
    )  # fmt: skip
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and want in lines[0], res.stderr
    assert not (tmp_path / "run").exists()


class _BadLabels(Dataset):
    def load(self, root):
        images = torch.zeros(6, 3, 8, 8, dtype=torch.uint8)
        good = ImageSet(images, torch.tensor([0, 1, 0, 1, 0, 1]), ("a", "b"))
        bad = ImageSet(images, torch.tensor([0, 1, 0, 12, 0, 1]), ("a", "b"))
        return Splits(train=bad, test=good)


def test_labels_outside_the_classes_are_one_line_when_the_data_loads():
    forget()
    with pytest.raises(DataError) as info:
        load_splits(_BadLabels(name="broken"), "digest-bad-labels", None, DataConfig())
    assert "train label 12, outside 0..1 for its 2 classes" in info.value.line()


def test_ueb_plugins_is_legible_at_80_columns():
    from ueb.registry import get_registry

    res = run_cli("plugins", env={"COLUMNS": "80"})
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines)
    for rec in get_registry().host.records.values():
        head = f"{rec.name}  {rec.distribution} {rec.version}  {'ok' if rec.ok else 'FAILED'}"
        assert head in lines, (head, res.stdout[:2000])
    words = " ".join(lines).split()
    assert "poisoner:deephiding," in words or "poisoner:deephiding" in words  # never cut


def test_debug_shows_where_a_plugin_failed_during_a_run(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "raising.py").write_text(
        "from ueb.hookspecs import hookimpl\n"
        "from ueb.interfaces import Countermeasure\n\n\n"
        "class Raising(Countermeasure):\n"
        "    stage = 'data'\n\n"
        "    def transform_train_set(self, train, ctx):\n"
        "        raise RuntimeError('the filter exploded')\n\n\n"
        "@hookimpl\n"
        "def register_countermeasures(register):\n"
        "    register('raising', Raising, stage='data')\n"
    )
    args = ["--plugins-dir", str(plugins), "run", "-p", "random-noise", "-c", "raising"]
    args += ["--profile", "smoke", "--run-dir", str(tmp_path / "run")]
    env = {"UEB_CACHE": str(tmp_path / "cache")}
    plain = run_cli(*args, env=env)
    assert plain.returncode == 1 and "the filter exploded at raising.py:9" in plain.stderr
    assert "Traceback" not in plain.stderr
    debug = run_cli(*args, "--debug", "--run-dir", str(tmp_path / "run2"), env=env)
    assert debug.returncode == 1
    assert (
        "Traceback (most recent call last)" in debug.stderr
        and 'raising.py", line 9' in debug.stderr
    )


def test_on_an_80_column_terminal_lines_break_between_words_never_inside(tmp_path):
    """A run's output on a terminal (a pseudo-terminal here, as tmux gives one): every line fits
    80 columns and every number and timing stays whole."""
    import os
    import pty
    import re
    import select
    import subprocess
    import sys

    from core_helpers import FIXTURES, REPO

    primary, secondary = pty.openpty()
    env = {**os.environ, "COLUMNS": "80", "LINES": "50", "UEB_CACHE": str(tmp_path / "cache")}
    env.pop("NO_COLOR", None)
    cmd = [sys.executable, "-m", "ueb.cli", "--plugins-dir", str(FIXTURES), "run"]
    cmd += ["-p", "random-noise", "-c", "identity,invert", "-v", "tiny", "--profile", "smoke"]
    cmd += ["--run-dir", str(tmp_path / "a-run-directory-with-a-long-name" / "run")]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=secondary, stderr=secondary)
    os.close(secondary)
    chunks = []
    while True:
        ready, _, _ = select.select([primary], [], [], 120)
        if not ready:
            break
        try:
            data = os.read(primary, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=120)
    os.close(primary)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))
    lines = [ln.rstrip() for ln in text.replace("\r", "\n").split("\n")]
    assert proc.returncode == 0, text[-2000:]
    assert all(len(ln) <= 80 for ln in lines), [ln for ln in lines if len(ln) > 80]
    cell_lines = [ln for ln in lines if "final " in ln and "%" in ln]
    assert cell_lines
    for ln in lines:  # no line starts inside a number, a timing or an id
        assert not re.match(r"^[.0-9]*[0-9]s\)|^\.[0-9]|^[0-9a-f]{2,9}\]", ln), ln
