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
    commands = [line for block in _bash_blocks(readme)[:2] for line in block.splitlines() if line and not line.startswith("#")]
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
