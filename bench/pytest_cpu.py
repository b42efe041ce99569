"""A pytest plugin: the CPU time of each test, its own process's and its subprocesses', summed.

    PYTHONPATH=bench python -m pytest -p pytest_cpu [--cpu-top 30]

On 2 cores the suite's wall time follows its CPU time, and a test's wall time under
pytest-xdist says more about the tests beside it than about itself. This counts, per test,
the CPU seconds of the test process (getrusage SELF) and of the children it waited for
(getrusage CHILDREN: the `hpo` processes a test starts), and at the end prints the tests that
took the most, the totals, and each test process's sum of wall times (how evenly xdist spread
the tests). Works with and without xdist (each worker writes its rows to a file of its own).
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from pathlib import Path

import pytest

ROWS = Path(os.environ.get("PYTEST_CPU_DIR", Path(tempfile.gettempdir()) / "pytest-cpu"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--cpu-top", type=int, default=30, help="tests to list by CPU time")


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the controller (or the only process): start anew
        ROWS.mkdir(parents=True, exist_ok=True)
        for old in ROWS.glob("*.tsv"):
            old.unlink()


def _cpu() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem):
    own, children = _cpu()
    start = time.monotonic()
    yield
    own_after, children_after = _cpu()
    row = [item.nodeid, own_after - own, children_after - children, time.monotonic() - start]
    with open(ROWS / f"{os.getpid()}.tsv", "a") as out:
        out.write("\t".join(str(v) for v in row) + "\n")


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return
    rows, walls = [], {}
    for path in ROWS.glob("*.tsv"):
        for line in path.read_text().splitlines():
            test, own, children, wall = line.split("\t")
            rows.append((float(own) + float(children), float(own), float(children), test))
            walls[path.stem] = walls.get(path.stem, 0.0) + float(wall)
    if not rows:
        return
    write = terminalreporter.write_line
    write(f"CPU seconds per test, the top {config.option.cpu_top}:")
    write("  total     own  subproc  test")
    for total, own, children, test in sorted(rows, reverse=True)[: config.option.cpu_top]:
        write(f"{total:7.1f} {own:7.1f} {children:7.1f}  {test}")
    write(
        f"all {len(rows)} tests: {sum(r[1] for r in rows):.0f} s in test processes, "
        f"{sum(r[2] for r in rows):.0f} s in their subprocesses"
    )
    write(
        "wall seconds of tests per test process: " + ", ".join(f"{w:.0f}" for w in walls.values())
    )
