"""Core asks for roles, never for a built-in plugin by name (ueb.roles, ueb.defaults)."""

from __future__ import annotations

import ast
from pathlib import Path

from ueb import roles
from ueb.config import RunConfig
from ueb.plan import resolve
from ueb.registry import get_registry, is_own

CORE = Path(__file__).resolve().parent.parent / "ueb"
# The one module that names built-ins: what a run or a profile uses when it names nothing.
DEFAULTS = CORE / "defaults.py"
# Core vocabulary that a plugin's name happens to share: the device type, not the CUDA poisoner.
VOCABULARY = {"cuda"}


def _string_constants(path: Path) -> list[tuple[int, str]]:
    """Every string literal in code (docstrings excluded), with its line."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def test_no_builtin_plugin_name_in_core_outside_the_defaults():
    registry = get_registry()
    builtin = {
        name
        for kind, entries in registry.entries.items()
        for name, entry in entries.items()
        if is_own(entry)
    }
    found = [
        f"{path.relative_to(CORE.parent)}:{line}: {value!r}"
        for path in sorted(CORE.rglob("*.py"))
        if path != DEFAULTS
        for line, value in _string_constants(path)
        if value in builtin - VOCABULARY
    ]
    assert found == []


def test_the_roles_name_the_builtins_and_the_plan_records_them():
    registry = get_registry()
    assert roles.reference_poisoner(registry) == "clean"
    assert roles.baseline_countermeasure(registry) == "vanilla"
    plan = resolve(RunConfig(poisoners=("lsp",), profile="smoke"), registry, load_data=False)
    assert (plan.reference, plan.baseline) == ("clean", "vanilla")
    assert plan.poisoners[0] == "clean"  # the reference row is added first


def test_the_reference_row_follows_the_role_not_the_name(tmp_path):
    """A registry whose reference poisoner has another name: the plan adds that one, and a
    report marks that row (not one called 'clean') as the row the others are read against."""
    from ueb.report import build_table
    from ueb.store import CellRecord

    registry = get_registry()
    entry = registry.entries["poisoner"]["clean"]
    registry.entries["poisoner"]["unperturbed"] = entry.__class__(
        entry.kind, "unperturbed", entry.target, entry.summary, entry.plugin,
        entry.distribution, entry.defaults, {**entry.meta},
    )  # fmt: skip
    registry.entries["poisoner"]["clean"] = entry.__class__(
        entry.kind, "clean", entry.target, entry.summary, entry.plugin,
        entry.distribution, entry.defaults, {k: v for k, v in entry.meta.items() if k != "role"},
    )  # fmt: skip
    try:
        assert roles.reference_poisoner(registry) == "unperturbed"
        plan = resolve(RunConfig(poisoners=("lsp",), profile="smoke"), registry, load_data=False)
        assert plan.poisoners == ("unperturbed", "lsp")

        def record(poisoner: str, acc: float) -> CellRecord:
            return CellRecord(
                cell_id=f"{poisoner}-0", ordinal=0, dataset="d", poisoner=poisoner, seed=0,
                countermeasure="vanilla", victim="v", status="ok", final_acc=acc, peak_acc=acc,
            )  # fmt: skip

        records = [record("clean", 50.0), record("unperturbed", 90.0), record("lsp", 40.0)]
        table = build_table(records, config={"reference": "unperturbed"})
        marked = [r.poisoner for r in table.rows if r.is_clean]
        assert marked == ["unperturbed"]
        assert table.rows[0].poisoner == "unperturbed"
    finally:
        del registry.entries["poisoner"]["unperturbed"]
        registry.entries["poisoner"]["clean"] = entry
