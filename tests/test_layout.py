"""The house rules of the layout (docs/architecture.md), checked on the source itself: the library
never imports its Flower adapters, and its modules import each other without cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "fedchain"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, *, top_level_only: bool) -> set[str]:
    """Project modules ``path`` imports (``from a.b import c`` counts ``a.b`` and ``a.b.c``)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


LIBRARY_FILES = sorted(LIBRARY.rglob("*.py"))
MODULES = {module_name(p): p for p in LIBRARY_FILES}


@pytest.mark.parametrize("path", LIBRARY_FILES, ids=lambda p: module_name(p))
def test_library_never_imports_its_flower_adapters(path: Path) -> None:
    adapters = {
        m
        for m in imported_modules(path, top_level_only=False)
        if m.split(".")[0] in {"server", "clients"}
    }
    assert not adapters, f"{module_name(path)} imports {sorted(adapters)}"


def test_library_modules_import_each_other_without_cycles() -> None:
    graph = {
        name: {m for m in imported_modules(path, top_level_only=True) if m in MODULES and m != name}
        for name, path in MODULES.items()
    }
    # a package's __init__ is imported with any of its modules: not an edge that closes a cycle
    graph = {n: {m for m in deps if not n.startswith(m + ".")} for n, deps in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = [*path[path.index(dep) :], dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_the_readme_lists_every_module_once() -> None:
    """The README's one-line-per-module tree names exactly the modules on disk."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("<summary>Every module, one line each", 1)[1].split("</details>", 1)[0]
    words = [line.split() for line in section.splitlines()]
    listed = [w[0] for w in words if w and w[0].endswith(".py")]
    on_disk = sorted(
        str(p.relative_to(ROOT))
        for top in ("fedchain", "clients", "server")
        for p in (ROOT / top).rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py")
    )
    assert sorted(listed) == on_disk
    assert len(listed) == len(set(listed))
