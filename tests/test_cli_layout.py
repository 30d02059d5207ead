"""What a terminal user reads: `ueb list` and the run's introduction fit the terminal, in full."""

from __future__ import annotations

import io

import pytest
from core_helpers import run_cli


@pytest.mark.parametrize("columns", [80, 120])
def test_list_fits_the_terminal_and_keeps_every_word(columns):
    res = run_cli("list", env={"COLUMNS": str(columns), "TERM": "xterm"})
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert max(len(line) for line in lines) <= columns
    assert "…" not in res.stdout
    words = " ".join(line.strip("│┃ ") for line in lines).split()
    assert "Cutout:" in words and "ITU-R" in words  # summaries wrap, they are not cut
    one_word_lines = [
        line for line in lines if line.startswith("│") and len(line.split("│")[-2].split()) == 1
    ]
    assert len(one_word_lines) < len(lines) / 4, "summaries wrap one word per line"


def test_a_run_introduces_itself_in_a_few_lines():
    from rich.console import Console

    from ueb.config import RunConfig
    from ueb.output import Output
    from ueb.plan import resolve
    from ueb.registry import get_registry

    plan = resolve(RunConfig(poisoners=("deephiding",), countermeasures=("all",)), get_registry())
    out = Output()
    out.console = Console(file=io.StringIO(), width=80)
    out.introduce(
        plan,
        plan.config.run_dir or "runs/x",
        {
            "cells": 126,
            "done": 0,
            "reusable": 63,
            "todo": 63,
            "poisons_cached": 1,
            "poisons_todo": 1,
        },
    )
    text = out.console.file.getvalue()
    assert len(text.splitlines()) <= 8
    assert (
        "deephiding" in text and "21 in all" in text and "63 to compute" in text and "{" not in text
    )
