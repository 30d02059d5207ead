"""Core modules form a one-way flow (config -> plan -> cells -> store -> report): no import
cycles, counting imports inside functions and under TYPE_CHECKING too."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "ueb"


def _graph() -> dict[str, set[str]]:
    modules = {}
    for path in CORE.rglob("*.py"):
        parts = path.relative_to(CORE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t not in (name, "ueb")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    found: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_core_has_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles in ueb/: " + "; ".join(" -> ".join(c) for c in cycles)


def test_data_flows_one_way():
    graph = _graph()

    def reaches(a: str, b: str) -> bool:
        seen, todo = set(), [a]
        while todo:
            n = todo.pop()
            if n == b:
                return True
            if n not in seen:
                seen.add(n)
                todo.extend(graph[n])
        return False

    downstream = [
        ("ueb.config", "ueb.plan"),
        ("ueb.plan", "ueb.worker"),
        ("ueb.worker", "ueb.runner"),
        ("ueb.store", "ueb.runner"),
        ("ueb.store", "ueb.report"),
        ("ueb.report", "ueb.runner"),
        ("ueb.interfaces", "ueb.registry"),
        ("ueb.interfaces", "ueb.training"),
    ]
    wrong = [(a, b) for a, b in downstream if reaches(a, b)]
    assert not wrong, f"an upstream module imports a downstream one: {wrong}"
    assert reaches("ueb.runner", "ueb.plan") and reaches("ueb.worker", "ueb.plan")
