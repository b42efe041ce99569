"""Data flows one way through hpo's stages: study file → data → training → search → results.

Each module imports only modules of its own stage or of the stages below it, and no module
imports, even inside a function or only for type checking, one that imports it back (directly
or round a longer circle)."""

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


def hpo_imports(path: Path, modules: set[str], type_checking: bool = True) -> set[str]:
    """The hpo modules `path` imports anywhere in its code (module level, functions, methods,
    and under `if TYPE_CHECKING:` unless `type_checking` is False)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if not type_checking and isinstance(node, ast.If) and _type_checking_only(node):
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


def test_the_walk_sees_function_level_and_type_checking_imports(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text(
        "from hpo import data\nimport hpo.study.space\nfrom typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from hpo.search import runner\n"
        "def f():\n    from hpo.search.budget import finished\n    from hpo import __version__\n"
    )
    modules = {"hpo", "hpo.data", "hpo.study.space", "hpo.search.budget", "hpo.search.runner"}
    run_time = {"hpo", "hpo.data", "hpo.study.space", "hpo.search.budget"}
    assert hpo_imports(source, modules) == {*run_time, "hpo.search.runner"}
    assert hpo_imports(source, modules, type_checking=False) == run_time
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_among_hpo_modules():
    graph = import_graph()
    assert {"hpo.cli", "hpo.results.analysis", "hpo.results.report"} <= set(graph)
    assert "hpo.results.retrained" in graph["hpo.results.report"]  # the walk sees hpo's imports
    found = circles(graph)
    assert not found, "modules importing each other: " + "; ".join(map(" ↔ ".join, found))


# The pipeline, bottom first. A module of the package's top folder that is not named here is a
# new module whose stage nobody chose yet: the test below fails until it is added.
BOTTOM = {"hpo.errors", "hpo.cache", "hpo.backend", "hpo.resources", "hpo.artifacts", "hpo.names"}
BOTTOM |= {"hpo.optuna_private"}
STAGES = ["hpo.data", "hpo.study", "hpo.train", "hpo.search", "hpo.results"]
TOP = {"hpo", "hpo.__main__", "hpo.api", "hpo.cli", "hpo.options"}


def stage(module: str) -> int:
    """0 for the bottom, 1-5 for the stages in order, 6 for the top."""
    if module in BOTTOM:
        return 0
    for number, package in enumerate(STAGES, start=1):
        if module == package or module.startswith(package + "."):
            return number
    if module in TOP:
        return len(STAGES) + 1
    raise AssertionError(
        f"{module}: in no stage; add it to a subpackage or to tests/unit/test_imports.py"
    )


def test_every_import_goes_down_the_pipeline():
    graph = import_graph()
    assert any(module.startswith("hpo.train.") for module in graph)  # the stages are found
    upward = sorted(
        f"{module} → {imported}"
        for module, imports in graph.items()
        for imported in imports
        if stage(imported) > stage(module)
    )
    assert not upward, "imports that go up the pipeline: " + "; ".join(upward)


def test_the_stage_check_catches_an_upward_import():
    assert stage("hpo.data.own") < stage("hpo.study.studyfile") < stage("hpo.results.report")
    assert stage("hpo.backend") == 0 and stage("hpo.cli") == len(STAGES) + 1
