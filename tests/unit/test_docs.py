"""The README is a short manual whose links resolve and whose commands exist as typed; the pages
of docs/ link only to what exists. Fast: nothing is trained, `--help` runs in this process."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest
import typer
from conftest import REPO
from typer.testing import CliRunner

from hpo.cli import app

README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
FENCE_WITH_INFO = re.compile(r"^```([^\n]*)\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")
HPO_CALL = re.compile(r"(?:^|[\s;&|(])hpo((?: +(?:[\w.,=:/|-]|…|\[[^\]]*\])+)*)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {slug(m) for m in re.findall(r"^#+ +(.+)$", text, re.M)}


def links(page: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", page.read_text(encoding="utf-8")))


def test_readme_is_a_short_manual():
    assert README.stat().st_size <= 12 * 1024
    ci_command = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    fenced = [line for block in FENCE.findall(README.read_text()) for line in block.splitlines()]
    assert ci_command in fenced  # the test command is .ci/run's, byte for byte


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    for target in links(page):
        if re.match(r"[a-z]+:", target):  # https:, mailto:: not checked offline
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: {target} does not exist"
        if anchor:
            assert resolved.suffix == ".md", f"{page.name}: {target}: anchor into a non-page"
            assert anchor in anchors(resolved), f"{page.name}: {target}: no such heading"


def test_every_page_of_docs_is_linked_from_the_readme():
    linked = {(REPO / t.partition("#")[0]).resolve() for t in links(README)}
    for page in PAGES[1:]:
        assert page.resolve() in linked, f"{page.name} is not linked from the README"


def readme_commands() -> list[list[str]]:
    """Each `hpo …` the README names, in code blocks of commands (continuation lines joined;
    not the ```text blocks of output) and inline code, as its words."""
    text = README.read_text(encoding="utf-8")
    snippets = [
        re.sub(r"\n[ \t]+", " ", block)
        for info, block in FENCE_WITH_INFO.findall(text)
        if info.strip() in ("", "sh", "bash", "console")
    ]
    snippets += INLINE.findall(FENCE.sub("", text))
    calls = []
    for snippet in snippets:
        for line in snippet.splitlines():
            for match in HPO_CALL.finditer(line.split("#")[0]):
                calls.append(match.group(1).split())
    return calls


def test_the_readme_names_commands_and_options_that_exist():
    group = typer.main.get_command(app)
    calls = readme_commands()
    named = {words[0] for words in calls if words}
    assert {"optimize", "analyze", "experiment", "dashboard", "list", "studies"} <= named
    for words in calls:
        if not words:
            continue
        command = group if words[0].startswith("-") else group.commands.get(words[0])
        assert command is not None, f"hpo {words[0]}: no such command"
        known = {opt for param in command.params for opt in param.opts} | {"--help"}
        for word in words:
            for option in re.findall(r"(?<![\w-])--?[a-z][\w-]*", word):
                assert option in known, f"hpo {' '.join(words)}: {option} is no option"


@pytest.mark.parametrize("command", sorted(typer.main.get_command(app).commands))
def test_each_commands_help_ends_with_an_example(command):
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1].strip()
    assert last.startswith(f"Example: hpo {command}"), last


def test_the_code_map_lists_every_module_and_only_those():
    """docs/development.md's code map is where a newcomer finds each module's job."""
    page = (REPO / "docs" / "development.md").read_text(encoding="utf-8")
    code_map = page.split("## Code map", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `(hpo/[\w/]+\.py)` \| \S", code_map, re.M))
    on_disk = {
        str(path.relative_to(REPO))
        for path in (REPO / "hpo").rglob("*.py")
        if path.name != "__init__.py" or path.parent.name == "hpo"
    }
    assert on_disk - listed == set(), "modules missing from the code map"
    assert listed - on_disk == set(), "the code map lists modules that do not exist"
    packages = {p.parent.name for p in (REPO / "hpo").glob("*/__init__.py")}
    assert packages == {"data", "study", "train", "search", "results"}
    assert all(f"hpo/{name}/" in code_map for name in packages)  # each stage in the picture


def test_the_commands_page_is_the_commands_help():
    """docs/commands.md is generated from `--help` (docs/commands.py), as sqlite-utils keeps
    its CLI reference: a changed option or help text without a regenerated page fails."""
    spec = importlib.util.spec_from_file_location("commands_page", REPO / "docs" / "commands.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    page = (REPO / "docs" / "commands.md").read_text(encoding="utf-8")
    assert page == generator.render(), "docs/commands.md is stale: run python docs/commands.py"


def hpo_variables() -> dict[str, bool]:
    """Each HPO_* name hpo's code holds as a whole string, and whether its line marks it
    `# internal` (hpo's hand-off to its own child processes, not a user's setting)."""
    found: dict[str, bool] = {}
    for path in sorted((REPO / "hpo").rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            value = node.value if isinstance(node, ast.Constant) else None
            if isinstance(value, str) and re.fullmatch(r"HPO_[A-Z0-9_]+", value):
                internal = "# internal" in lines[node.lineno - 1]
                found[value] = found.get(value, False) or internal
    return found


def test_every_variable_hpo_reads_is_in_the_environment_table():
    page = (REPO / "docs" / "environment.md").read_text(encoding="utf-8")
    rows = [line for line in page.splitlines() if line.startswith("| `HPO_")]
    documented = {name for row in rows for name in re.findall(r"`(HPO_[A-Z0-9_]+)`", row)}
    read = hpo_variables()
    assert {"HPO_STORAGE", "HPO_DEBUG", "HPO_CHILD_PIDS"} <= set(read)  # the scan finds them
    missing = {name for name, internal in read.items() if not internal} - documented
    assert not missing, f"read by hpo, not in docs/environment.md: {sorted(missing)}"
    elsewhere = " ".join(
        (REPO / name).read_text(encoding="utf-8")
        for name in ("compose.yaml", ".env.example", "tests/conftest.py")
    )
    stale = {name for name in documented - set(read) if name not in elsewhere}
    assert not stale, f"in docs/environment.md, read nowhere: {sorted(stale)}"
