"""The core's floors: each uses only the floors below it, and no module imports in a circle.

    model  <  effects  <  platform  <  reconcile, observe  <  the faces (daemon, cli, ...)

Imports under TYPE_CHECKING count too: a type-only circle is still a circle to a reader.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "smbgw_agent"
FLOORS = {"model": 0, "effects": 1, "platform": 2, "reconcile": 3, "observe": 3}
FACES = 4


def import_graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for file in PACKAGE.rglob("*.py"):
        module = ".".join(file.relative_to(PACKAGE.parent).with_suffix("").parts)
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("smbgw_agent"):
                for target in (node.module, *(f"{node.module}.{alias.name}" for alias in node.names)):
                    if (PACKAGE.parent / Path(*target.split("."))).with_suffix(".py").is_file():
                        edges[module].add(target)
    return edges


def floor(module: str) -> tuple[int, str]:
    parts = module.split(".")
    room = parts[1] if len(parts) > 2 else ""
    return FLOORS.get(room, FACES), room


def test_every_import_points_down_or_within_a_room() -> None:
    wrong = []
    for source, targets in import_graph().items():
        for target in targets:
            (here, room), (there, other) = floor(source), floor(target)
            if there > here or (there == here and room != other and here != FACES):
                wrong.append(f"{source} -> {target}")
    assert wrong == []


def test_no_module_imports_in_a_circle() -> None:
    edges = import_graph()
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                circles.append([*path[path.index(target):], target])
            elif target not in state:
                visit(target, path)
        path.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [])
    assert circles == []


def test_the_checks_see_the_imports() -> None:
    edges = import_graph()
    assert "smbgw_agent.model.config" in edges["smbgw_agent.model.shares"]
    assert "smbgw_agent.platform.pluginhost" in edges["smbgw_agent.reconcile.reconciler"]
    assert floor("smbgw_agent.daemon") == (FACES, "")
