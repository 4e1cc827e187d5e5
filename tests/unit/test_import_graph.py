"""No import circle inside lookalike_server: read from every module's source, imports inside functions included
(a circle hidden in a function is still a circle; it only fails later, at the first call). Imports under
`if TYPE_CHECKING:` never run and are left out."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "lookalike_server"
# The source tree, read statically: nothing is imported, so a circle cannot break the test itself.
SOURCE = Path(__file__).resolve().parents[2] / "server" / PACKAGE


def _modules(root: Path) -> dict[str, Path]:
    """Every module of the package by dotted name; a package by its name (its __init__.py)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [PACKAGE, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of the tree but those under `if TYPE_CHECKING:` (type hints only, never run)."""
    nodes, todo = [], [tree]
    while todo:
        node = todo.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return nodes


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's own modules that `name` imports, anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            # `from . import x` imports the module x when there is one, else a name of the package.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            # Importing a.b.c runs a/__init__.py and a/b/__init__.py first: those are imported too.
            parts = target.split(".")
            found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in modules)
    found.discard(name)
    # A module's own package (__init__) is already being imported when the module is: not an edge.
    return {m for m in found if not name.startswith(m + ".")}


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle as a list of modules (first == last), or [] when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str]:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[module] = 2
        return []

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return []


def _graph() -> dict[str, set[str]]:
    modules = _modules(SOURCE)
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_no_module_of_lookalike_server_imports_itself_in_a_circle():
    cycle = _cycle(_graph())
    assert not cycle, "import circle: " + " -> ".join(cycle)


def test_the_graph_sees_imports_inside_functions_and_relative_levels():
    graph = _graph()
    assert "lookalike_server.server" in graph["lookalike_server.main"]  # imported inside a function
    assert "lookalike_server.config" in graph["lookalike_server.embedded_milvus.choice"]  # from ..config
    assert "lookalike_server.embedded_milvus.standalone" in graph["lookalike_server.embedded_milvus.choice"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    hinted = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x\nelse:\n    import y\n")
    imported = {n.names[0].name for n in _runtime_nodes(hinted) if isinstance(n, ast.Import | ast.ImportFrom)}
    assert imported == {"TYPE_CHECKING", "y"}
