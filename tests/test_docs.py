"""Docs that tests enforce do not drift: the README's commands, hook documentation."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from ueb import hookspecs

REPO = Path(__file__).parent.parent


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (REPO / "README.md").read_text()
    commands = [
        line
        for block in _bash_blocks(readme)[:2]
        for line in block.splitlines()
        if line and not line.startswith("#")
    ]
    assert len(commands) == 2, "the README's quick start must hold exactly two commands"
    main_job, tests = commands
    assert "ueb run --poisoner deephiding --countermeasures all" in main_job
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert tests in ci, "the last step of .ci/run must be the README's test command"


def test_every_hook_is_documented_in_hookspecs():
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction):
        if name.startswith("register_"):
            assert fn.__doc__, f"hook {name} has no docstring"
            assert list(inspect.signature(fn).parameters) in (["register"], ["cli"])


def test_files_the_docs_point_to_exist():
    """Paths such as `benchmarks/matrices/table1-cifar10.toml` in the README and docs exist
    (placeholders like NAME.json and outputs a command writes are listed as allowed)."""
    allowed = {"benchmarks/baselines/NAME.json", "benchmarks/baselines/smoke-cpu.json"}
    pattern = re.compile(
        r"(?:benchmarks|docs|ueb|plugins|tests)/[A-Za-z0-9_./-]+\.(?:toml|md|py|json|png|sh)"
    )
    texts = [
        REPO / "README.md",
        REPO / "DEVELOPERS.md",
        *sorted((REPO / "docs").glob("*.md")),
        REPO / "benchmarks" / "RESULTS.md",
    ]
    missing = {
        m
        for t in texts
        for m in pattern.findall(t.read_text())
        if m not in allowed and not (REPO / m).exists()
    }
    assert not missing, f"docs point to files that do not exist: {sorted(missing)}"


def test_shipped_matrix_files_resolve_and_their_parameters_are_accepted(tmp_path):
    import json

    from ueb.config import build_config, load_matrix_file
    from ueb.plan import resolve
    from ueb.registry import get_registry

    registry = get_registry()
    files = sorted((REPO / "benchmarks" / "matrices").glob("*.toml"))
    assert files
    for path in files:
        # the plan types every parameter of every plugin (it raises on an unknown or mistyped one)
        values = load_matrix_file(path)
        # Deep Hiding on the paper profile needs SIG's weight folders, given at run time
        dh = {"deephiding", "deephiding-s"} & set(values.get("poisoners", []))
        flags = (
            {"params": {n: {"sig_backend": "offline"} for n in dh}}
            if values.get("profile") == "paper"
            else {}
        )
        # the CLIP poisoners read a local model folder, named at run time (a tiny one here)
        clip = {"uc", "14a"} & set(values.get("poisoners", []))
        if clip:
            from ueb_attacks_clip.tiny_clip import save_tiny_clip

            folder = str(save_tiny_clip(tmp_path / "clip"))
            names = tmp_path / "index.json"
            names.write_text(json.dumps({"0": ["n01440764", "tench"]}))
            given = {
                "uc": {"clip_path": folder},
                "14a": {"clip_path": folder, "concept_names": str(names)},
            }
            flags = {"params": {**flags.get("params", {}), **{n: given[n] for n in clip}}}
        plan = resolve(build_config(values, flags), registry, load_data=False)
        assert plan.poisoners and plan.countermeasures and plan.victims, path.name
        assert all(s.params is not None for s in plan.specs.values())


def test_shipped_files_hold_no_path_of_one_machine():
    """Docs, baselines and results travel: an absolute path of the machine that wrote them
    (a temporary run folder, a home directory) means nothing anywhere else."""
    import subprocess

    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    machine_path = re.compile(r"(?<![\w.~])/(?:tmp|home|root|work|Users)/[\w.-]+")
    found = {}
    for name in tracked:
        if name.startswith("tests/") or not name.endswith(
            (".md", ".json", ".toml", ".csv", ".py", ".sh")
        ):
            continue
        hits = machine_path.findall((REPO / name).read_text(errors="replace"))
        if hits:
            found[name] = hits[:3]
    assert not found, f"machine paths in shipped files: {found}"
