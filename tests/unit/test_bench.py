"""The benchmarks as the docs give them: every `python bench/…` command names a script that
exists and options its parser accepts, and every maintained bench has a line in
bench/README.md, a row in docs/benchmarks.md and a record in bench/results/. Cheap: no bench
runs, each script is only imported for its `parser()`."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import sys
from pathlib import Path

import pytest

# the checkout, wherever in tests/ this file sits
REPO = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
BENCH = REPO / "bench"
# the user's pages; docs/lab/ is historical and keeps the commands as they were
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), BENCH / "README.md"]
NOT_BENCHES = {"_common", "run", "pytest_cpu"}  # the helper, the runner, a pytest plugin
MAINTAINED = sorted(p.stem for p in BENCH.glob("*.py") if p.stem not in NOT_BENCHES)
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`]+)`")
SHELL = {"|", "||", "&&", ";", "&", ">", ">>", "2>&1"}


def commands(page: Path) -> list[str]:
    """Each `python bench/…` command of a page, from `bench/…` on: in code blocks (continuation
    lines joined, a quote left open carried on to the next line) and in inline code."""
    text = page.read_text(encoding="utf-8")
    found = []
    for block in FENCE.findall(text):
        lines = re.sub(r"\\\n[ \t]*", " ", block).splitlines()
        for i, line in enumerate(lines):
            if "python bench/" not in line:
                continue
            command = line.split("python ", 1)[1]
            for more in lines[i + 1 :]:
                try:
                    shlex.split(command, comments=True)
                    break
                except ValueError:  # a quoted argument goes on on the next line
                    command += "\n" + more
            found.append(command)
    for span in INLINE.findall(FENCE.sub("", text)):
        if "python bench/" in span:
            found.append(span.replace("\n", " ").split("python ", 1)[1])
    return found


def words(command: str) -> list[str]:
    """The command's words up to any shell operator; `[optional]` brackets dropped."""
    out = []
    for word in shlex.split(command, comments=True):
        if word in SHELL:
            break
        bare = word.strip("[]")  # "" stays: an empty argument, as in --datasets ""
        if (bare or not word) and bare not in ("…", "..."):
            out.append(bare)
    return out


def parser_of(script: Path):
    """The script's own parser: imported, never run."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # where a bench finds _common, as when it runs
    name = "bench_" + "_".join(script.relative_to(BENCH).with_suffix("").parts)
    spec = importlib.util.spec_from_file_location(name, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert hasattr(module, "parser"), f"{script.relative_to(REPO)} has no parser()"
    return module.parser()


def accepts(script: Path, options: list[str]) -> None:
    assert script.is_file(), f"{script.relative_to(REPO)} does not exist"
    parser = parser_of(script)
    parser.allow_abbrev = False  # the docs spell each option out
    try:
        parsed = parser.parse_args(options)
    except SystemExit:
        pytest.fail(f"{script.relative_to(REPO)} does not accept {' '.join(options)}")
    if script.name == "run.py":  # the runner: its bench, with the options after the name
        accepts(BENCH / f"{parsed.name}.py", [o for o in parsed.options if o != "--"])


CALLS = [(page, command) for page in PAGES for command in commands(page)]


def test_the_docs_give_bench_commands():
    assert len({page.name for page, _ in CALLS}) >= 2, "the command finder finds nothing"
    assert any(c.startswith("bench/run.py") for _, c in CALLS)


@pytest.mark.parametrize(("page", "command"), CALLS, ids=[f"{p.name}:{c[:60]}" for p, c in CALLS])
def test_each_bench_command_names_a_script_and_options_that_exist(page, command):
    script, *options = words(command)
    path = REPO / script
    assert path.is_file(), f"{page.name}: {script} does not exist"
    accepts(path, options)


@pytest.mark.parametrize("name", MAINTAINED)
def test_each_maintained_bench_has_a_line_a_row_and_a_record(name):
    assert f"`{name}.py`" in (BENCH / "README.md").read_text(), "no line in bench/README.md"
    rows = [
        line
        for line in (REPO / "docs" / "benchmarks.md").read_text().splitlines()
        if line.startswith("|") and re.search(rf"bench/run\.py {name}\b", line)
    ]
    assert rows, f"no row of docs/benchmarks.md runs bench/run.py {name}"
    record = BENCH / "results" / f"{name}.jsonl"
    assert record.is_file() and record.stat().st_size, f"no record: run bench/run.py {name}"
    for line in record.read_text().splitlines():
        entry = json.loads(line)
        assert entry["record"], f"{record.name}: an empty record"
        assert {"commit", "dirty", "date", "host", "versions"} <= entry.keys()


def test_each_archived_bench_has_a_line():
    listed = (BENCH / "README.md").read_text()
    for path in sorted((BENCH / "archive").glob("*.py")):
        assert f"`archive/{path.name}`" in listed, f"{path.name}: no line in bench/README.md"
