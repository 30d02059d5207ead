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
            "done": 5,
            "reusable": 40,
            "todo": 81,
            "poisons_cached": 2,
            "poisons_todo": 3,
        },
    )
    text = " ".join(out.console.file.getvalue().split())
    assert len(out.console.file.getvalue().splitlines()) <= 9
    assert "numerics cpu" in text and "core " in text  # how it computes, in one line
    # every count in its own place (distinct numbers, so a swapped field shows)
    for phrase in (
        "126",
        "5 done here",
        "40 reusable",
        "81 to compute",
        "2 cached",
        "3 to compute",
    ):
        assert phrase in text, phrase
    assert "deephiding" in text and "{" not in text
    # what the plan knows, not what was fed in: the countermeasures 'all' selects
    assert f"{len(plan.countermeasures)} in all" in text and len(plan.countermeasures) > 8
