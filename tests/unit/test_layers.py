"""docs/architecture.md's "may import" table, held true of the code.

The table is read from the document itself (so the two cannot drift apart), and every module's
imports are read with `ast`, lazy ones inside functions included; imports under
`if TYPE_CHECKING:` are types only and skipped. An import of a room the module's row does not
name fails, as does a row that names a room above it, a module no row holds, and an import cycle
between modules.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "pytest_erasure"
DOC = ROOT / "docs" / "architecture.md"


@dataclass
class Room:
    index: int
    members: list[str]
    may: list[str]
    everything: bool


def _tokens(cell: str) -> list[str]:
    """Module tokens of a cell: backticked paths ending in `.py` or `/`."""
    return [t for t in re.findall(r"`([^`]+)`", cell) if t.endswith((".py", "/"))]


def rooms(text: str) -> list[Room]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| room | holds | may import"))
    out = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        room, may = cells[0], cells[-1]
        out.append(Room(len(out), _tokens(room), _tokens(may), may == "everything"))
    return out


def module_of(token: str) -> tuple[str, bool]:
    """(dotted module name, is a package prefix) for a table token."""
    if token == "__init__.py":
        return "pytest_erasure", False
    if token.endswith("/"):
        return "pytest_erasure." + token.rstrip("/").replace("/", "."), True
    return "pytest_erasure." + token.removesuffix(".py").replace("/", "."), False


def room_of(module: str, table: list[Room]) -> Room | None:
    """The row holding `module`: an exact file beats a folder, a deeper folder a shallower."""
    best: tuple[int, Room] | None = None
    for room in table:
        for token in room.members:
            name, prefix = module_of(token)
            if module == name or (prefix and module.startswith(name + ".")):
                rank = 10_000 if not prefix else len(name)
                if best is None or rank > best[0]:
                    best = (rank, room)
    return best[1] if best else None


def named(token: str, table: list[Room]) -> list[Room]:
    """The rows a may-import token allows: its own row, and for a folder every row holding a
    part of it (`detectors/` allows `detectors/base.py`'s row too)."""
    name, prefix = module_of(token)
    found = [r for r in [room_of(name, table)] if r is not None]
    if prefix:
        found += [r for r in table for t in r.members
                  if module_of(t)[0].startswith(name + ".")]
    return found


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(path: Path, module: str, known: set[str]) -> set[str]:
    """Our modules `path` imports at run time (lazily or not)."""
    tree = ast.parse(path.read_text(), str(path))
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(n) for n in ast.walk(node))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if base in known:
                out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known)
    out.discard(module)
    return out


@pytest.fixture(scope="module")
def table() -> list[Room]:
    return rooms(DOC.read_text())


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(path, name, set(found)) for name, path in found.items()}


def violations(table: list[Room], graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, targets in sorted(graph.items()):
        room = room_of(module, table)
        if room is None:
            problems.append(f"{module}: no row of the table holds it")
            continue
        if room.everything:
            continue
        allowed = {id(room)} | {id(r) for t in room.may for r in named(t, table)}
        for target in sorted(targets):
            other = room_of(target, table)
            if other is not None and id(other) not in allowed:
                problems.append(f"{module} imports {target}, which its row does not allow")
    return problems


def test_the_table_is_read_whole(table: list[Room]) -> None:
    assert len(table) >= 15
    assert table[0].everything and table[0].members == ["plugin.py"]
    assert table[-1].may == [] and "records.py" in table[-1].members


def test_every_row_imports_only_rooms_below_it(table: list[Room]) -> None:
    for room in table:
        for token in room.may:
            others = named(token, table)
            assert others, f"{token} (row {room.members}) is in no row"
            for other in others:
                assert other.index > room.index, f"row {room.members} names {token}, above it"


def test_every_import_keeps_to_the_table(table: list[Room], graph: dict[str, set[str]]) -> None:
    assert violations(table, graph) == []


def test_an_upward_import_is_caught(table: list[Room], graph: dict[str, set[str]]) -> None:
    planted = {**graph, "pytest_erasure.samplers": graph["pytest_erasure.samplers"]
               | {"pytest_erasure.config"}}
    assert violations(table, planted) == [
        "pytest_erasure.samplers imports pytest_erasure.config, which its row does not allow"]


def test_lazy_imports_are_read_and_typing_only_ones_skipped(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text("from typing import TYPE_CHECKING\n"
                      "if TYPE_CHECKING:\n    from pytest_erasure import config\n"
                      "def f():\n    from pytest_erasure.context import Context\n")
    known = {"pytest_erasure.config", "pytest_erasure.context"}
    assert imports(source, "pytest_erasure.probe", known) == {"pytest_erasure.context"}


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    """Tarjan's strongly connected components: every one must be a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert cycles == []
