"""What the maintained benches share: their parser, hpo run as a user runs it, and the record.

A bench prints its rows for a reader, then `emit(record)`: one JSON line, the last of its
stdout, which `bench/run.py` keeps with its provenance in `bench/results/NAME.jsonl`. A bench
exposes `parser()` so that tests/unit/test_bench.py can check the commands the docs give.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parser(doc: str) -> argparse.ArgumentParser:
    """A bench's parser, described by the first line of its docstring."""
    return argparse.ArgumentParser(description=doc.strip().splitlines()[0])


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    """`--data-dir`: keras' real dataset files (e.g. ../shared/datasets)."""
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("HPO_DATA_DIR"),
        help="keras' dataset files (default: $HPO_DATA_DIR)",
    )


def needs(data_dir: str | None, name: str) -> Path:
    """The real dataset file `name`, or exit with what to pass."""
    path = Path(data_dir or "", name)
    if not path.is_file():
        sys.exit(f"needs {name}: pass --data-dir or set HPO_DATA_DIR (e.g. ../shared/datasets)")
    return path


def hpo_env(cache: Path | str, **settings: str) -> dict[str, str]:
    """A user's environment for the hpo beside this folder: its own cache, no shared storage."""
    env = {**os.environ, "HPO_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT), **settings}
    env.pop("HPO_STORAGE", None)
    return env


def start_hpo(
    args: list[str], env: dict[str, str], cwd: Path = ROOT, python: str = sys.executable, **popen
) -> subprocess.Popen:
    """`hpo ARGS` started as a user starts it, in a fresh process (of `python`: another
    install's), for a bench that watches it run (its memory); `run_hpo` when only its time
    counts."""
    return subprocess.Popen([python, "-m", "hpo", *args], cwd=cwd, env=env, **popen)


def run_hpo(args: list[str], env: dict[str, str], cwd: Path = ROOT) -> float:
    """Run `hpo ARGS` as a user does, in a fresh process; its wall seconds, start-up included."""
    start = time.perf_counter()
    proc = start_hpo(args, env, cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"hpo {' '.join(args[:4])} failed ({proc.returncode}):\n{err[-3000:]}")
    return seconds


def emit(record: dict) -> None:
    """The bench's record: one JSON line, the last of its output, for bench/run.py."""
    print(json.dumps(record, default=str), flush=True)
