"""docs/plugins.md cannot drift: its tutorial is built, tested and run as a third-party package,
and its reference has an entry for every public name a plugin touches, naming every member."""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from core_helpers import pip_install_target

from ueb import errors, hookspecs, interfaces, testing
from ueb.imageset import ImageSet
from ueb.nn import Classifier
from ueb.training import Trainer

REPO = Path(__file__).parent.parent
DOC = REPO / "docs" / "plugins.md"
FILE_BLOCK = re.compile(r"^```\w+ file=(\S+)\n(.*?)^```", re.S | re.M)


def _text() -> str:
    return DOC.read_text()


def tutorial_files() -> dict[str, str]:
    """The tutorial package: every fenced block marked `file=PATH`."""
    return {path: body for path, body in FILE_BLOCK.findall(_text())}


def tutorial_run_command() -> tuple[dict[str, str], list[str]]:
    """(environment, arguments after `ueb`) of the tutorial's `ueb run` line."""
    lines = [ln for ln in _text().splitlines() if re.match(r"^(\w+=\S+ )*ueb run ", ln)]
    assert len(lines) == 1, f"the tutorial must show exactly one `ueb run` line, found {lines}"
    words = shlex.split(lines[0])
    env = {}
    while "=" in words[0] and words[0] != "ueb":
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    assert words[0] == "ueb"
    return env, words[1:]


def test_the_tutorial_is_a_complete_package_of_valid_files():
    files = tutorial_files()
    expected = {
        "pyproject.toml",
        "lab_methods/__init__.py",
        "lab_methods/poisoner.py",
        "lab_methods/countermeasures.py",
        "lab_methods/victim.py",
        "lab_methods/dataset.py",
        "make_data.py",
        "test_lab_methods.py",
    }
    assert set(files) == expected
    for path, body in files.items():
        if path.endswith(".py"):
            compile(body, path, "exec")
    import tomllib

    project = tomllib.loads(files["pyproject.toml"])
    assert project["project"]["entry-points"]["ueb"] == {"lab": "lab_methods"}
    hooks = files["lab_methods/__init__.py"]
    assert "stage=" not in hooks, "the stage is declared once, as the class attribute"
    kinds = {"poisoners", "countermeasures", "victims", "datasets"}
    assert {k for k in kinds if f"def register_{k}(register)" in hooks} == kinds
    stages = set(re.findall(r'^    stage = "(\w+)"', files["lab_methods/countermeasures.py"], re.M))
    assert stages == {"data", "train", "protocol"}


@pytest.mark.slow
def test_the_tutorial_package_installs_passes_its_tests_and_runs(tmp_path):
    source, site, work = tmp_path / "ueb-lab-methods", tmp_path / "site", tmp_path / "work"
    for path, body in tutorial_files().items():  # outside the repository: the build writes there
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        (source / path).write_text(body)
    pip_install_target(source, site)
    env = {
        **os.environ,
        "PYTHONPATH": str(site),
        "UEB_PLUGINS": "ueb",
        "UEB_CACHE": str(tmp_path / "cache"),
    }

    own_tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_lab_methods.py"],
        capture_output=True, text=True, cwd=source, env=env, timeout=600,
    )  # fmt: skip
    assert own_tests.returncode == 0, own_tests.stdout + own_tests.stderr

    work.mkdir()
    data = subprocess.run(
        [sys.executable, str(source / "make_data.py")],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
    )
    assert data.returncode == 0, data.stderr

    run_env, args = tutorial_run_command()
    run_dir = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-m", "ueb.cli", *args, "--run-dir", str(run_dir), "-q"],
        capture_output=True, text=True, cwd=work, env={**env, **run_env}, timeout=900,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    table = (run_dir / "table.md").read_text()
    names = [
        "stripes",
        "vanilla",
        "downsample",
        "noise-augment",
        "label-smoothing",
        "frozen-backbone",
        "tiny-cnn",
        "lab-npz",
    ]
    assert all(n in table for n in names), table

    from ueb.store import Store

    with Store.open_existing(run_dir) as store:
        records = store.records()
    assert records and all(r.status == "ok" for r in records)
    assert {r.victim_params["width"] for r in records} == {8}, "TinyCNN's smoke preset applies"
    stripes = [r for r in records if r.poisoner == "stripes"]
    assert stripes and all(len(r.poison_facts["angles_deg"]) == 4 for r in stripes), (
        "report() facts are stored"
    )
    frozen = [r for r in records if r.countermeasure == "frozen-backbone"]
    assert frozen and all(r.extra["trained_parameters"] > 0 for r in frozen)


# --------------------------------------------------------------------------- reference


def public_classes() -> list[type]:
    here = [
        obj
        for name, obj in vars(interfaces).items()
        if inspect.isclass(obj)
        and obj.__module__ == interfaces.__name__
        and not name.startswith("_")
    ]
    errs = [
        obj
        for obj in vars(errors).values()
        if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == errors.__name__
    ]
    return [*here, ImageSet, Classifier, Trainer, *errs]


def public_functions() -> list:
    hooks = [
        fn
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("register_")
    ]
    kit = [getattr(testing, name) for name in testing.__all__]
    return [*hooks, *kit]


def entries(text: str) -> dict[str, str]:
    """Name -> its entry's text: a heading naming it in backticks (the section up to the next
    heading of the same or a higher level), or a list item that starts with it."""
    found: dict[str, str] = {}
    reference = text[text.index("\n## Reference") :]
    lines = reference.splitlines()
    for i, line in enumerate(lines):
        heading = re.match(r"^(#+) (.*)", line)
        if heading:
            level = len(heading.group(1))
            end = next(
                (j for j in range(i + 1, len(lines)) if re.match(rf"^#{{1,{level}}} ", lines[j])),
                len(lines),
            )
            for name in re.findall(r"`([A-Za-z_]\w*)", heading.group(2)):
                found.setdefault(name, "\n".join(lines[i:end]))
            continue
        if line.startswith("* "):
            end = next(
                (j for j in range(i + 1, len(lines)) if not lines[j].startswith("  ")), len(lines)
            )
            item = " ".join(ln.strip() for ln in lines[i:end])
            lead = re.match(r"^\* ((?:`[^`]+`(?:, | and )?)+)", item)
            for name in re.findall(r"`([A-Za-z_]\w*)", lead.group(1) if lead else ""):
                found.setdefault(name, item)
    return found


def members(cls: type) -> set[str]:
    """Public names a class itself defines (fields, methods, properties, class attributes,
    constructor parameters), less those it only re-sets from a documented base (`kind`)."""
    names = {n for n in vars(cls) if not n.startswith("_")}
    if dataclasses.is_dataclass(cls):
        names |= {f.name for f in dataclasses.fields(cls)}
    elif "__init__" in vars(cls):
        params = inspect.signature(cls.__init__).parameters.values()
        names |= {
            p.name
            for p in params
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }
    documented_bases = [b for b in cls.__mro__[1:] if b in public_classes()]
    return {n for n in names if not any(n in vars(b) for b in documented_bases)}


def _mentions(text: str, name: str) -> bool:
    """`name` inside a code span or a fenced block of `text`."""
    fenced = re.findall(r"```.*?```", text, flags=re.S)
    spans = re.findall(r"`([^`]*)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return any(re.search(rf"\b{re.escape(name)}\b", s) for s in [*fenced, *spans])


def test_every_public_name_a_plugin_touches_has_a_reference_entry():
    found = entries(_text())
    names = [c.__name__ for c in public_classes()] + [f.__name__ for f in public_functions()]
    missing = [n for n in names if n not in found]
    assert not missing, (
        f"docs/plugins.md has no reference entry (heading or list item) for: {missing}"
    )


def test_each_reference_entry_names_every_member_and_parameter():
    found = entries(_text())
    gaps = []
    for cls in public_classes():
        text = found.get(cls.__name__, "")
        gaps += [f"{cls.__name__}.{m}" for m in sorted(members(cls)) if not _mentions(text, m)]
    for fn in public_functions():
        text = found.get(fn.__name__, "")
        gaps += [
            f"{fn.__name__}({p})"
            for p in inspect.signature(fn).parameters
            if not _mentions(text, p)
        ]
    assert not gaps, f"docs/plugins.md does not mention these members in their entries: {gaps}"


def test_the_entry_finder_sees_headings_and_list_items_and_misses_the_rest():
    text = "intro `Hidden`\n## Reference\n### `Shown`\nbody `a`\n#### sub\n`b`\n### Other\n* `one(x)`, `two`: text\n  more `c`\nplain `Prose`\n"
    found = entries(text)
    assert set(found) == {"Shown", "one", "two"}
    assert "`b`" in found["Shown"] and "Other" not in found["Shown"]
    assert "more `c`" in found["one"] and "plain" not in found["one"]
