"""Data flows one way through hpo's modules: no module imports, even inside a function, one that
imports it back (directly or round a longer circle)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "hpo"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def hpo_imports(path: Path, modules: set[str]) -> set[str]:
    """The hpo modules `path` imports anywhere in its code (module level, functions, methods),
    except under `if TYPE_CHECKING:`, which never runs."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "hpo":
                    found.add(alias.name)
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").split(".")[0] == "hpo"
        ):
            for alias in node.names:  # `from hpo import data` names a module
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): hpo_imports(p, modules) - {module_name(p)} for p in paths}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_the_walk_sees_function_level_imports(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text(
        "from hpo import data\nimport hpo.space\nfrom typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from hpo import runner\n"
        "def f():\n    from hpo.budget import finished\n    from hpo import __version__\n"
    )
    modules = {"hpo", "hpo.data", "hpo.space", "hpo.budget", "hpo.runner"}
    assert hpo_imports(source, modules) == {"hpo", "hpo.data", "hpo.space", "hpo.budget"}
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_among_hpo_modules():
    graph = import_graph()
    assert {"hpo.cli", "hpo.analysis", "hpo.report"} <= set(graph)
    assert "hpo.retrained" in graph["hpo.report"]  # the walk does see hpo's imports
    found = circles(graph)
    assert not found, "modules importing each other: " + "; ".join(map(" ↔ ".join, found))
