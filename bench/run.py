"""Run one bench and keep what it measured, with where and on what it ran.

    python bench/run.py NAME [OPTIONS OF THE BENCH ...]

Runs `python bench/NAME.py OPTIONS` in a child process, shows its output as it comes, and
appends one line to `bench/results/NAME.jsonl` (append-only, committed): the bench's record
(the JSON object its last output line holds) with its provenance: the command, the commit and
whether the code the bench runs (hpo/, bench/, studies/, pyproject.toml) differed from it, the
UTC date, the CPU model and count, the GPU if any, the load average at start and end,
Python's, Keras', its backend's, Optuna's and NumPy's versions, and the wall seconds. A bench
that fails, or prints no JSON object last, leaves no record. $BENCH_RESULTS names another
folder for the records (bench/gpu_check.sh's, to bring them back from a device machine).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CODE = ["hpo", "bench", "studies", "pyproject.toml"]  # what a dirty flag is about
PACKAGES = ["keras", "tensorflow", "jax", "torch", "optuna", "numpy"]


def parser() -> argparse.ArgumentParser:
    """The runner's own options: the bench's name, and everything after it for the bench."""
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("name", help="a bench: bench/NAME.py")
    p.add_argument("options", nargs=argparse.REMAINDER, help="the bench's own options")
    return p


def git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu() -> str | None:
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def provenance(command: list[str]) -> dict:
    """Where, when and on what a bench runs, read before it starts."""
    return {
        "command": " ".join(command),
        "commit": git("rev-parse", "--short=12", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--", *CODE)),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "gpu": gpu(),
            "load_start": [round(x, 2) for x in os.getloadavg()],
        },
        "backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
        "versions": versions(),
    }


def last_record(lines: list[str]) -> dict | None:
    """The JSON object on the bench's last non-empty output line."""
    for line in reversed(lines):
        if line.strip():
            try:
                record = json.loads(line)
            except ValueError:
                return None
            return record if isinstance(record, dict) else {"result": record}
    return None


def main() -> None:
    args = parser().parse_args()
    options = args.options[1:] if args.options[:1] == ["--"] else args.options
    script = BENCH / f"{args.name}.py"
    if not script.is_file():
        sys.exit(f"no bench {args.name}: bench/{args.name}.py does not exist")
    shown = ["python", f"bench/{args.name}.py", *options]
    entry = provenance(shown)
    start = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, str(script), *options],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},  # its rows as they come
    )
    lines = []
    for line in child.stdout:
        sys.stdout.write(line)
        lines.append(line)
    code = child.wait()
    entry["seconds"] = round(time.perf_counter() - start, 1)
    entry["host"]["load_end"] = [round(x, 2) for x in os.getloadavg()]
    record = last_record(lines)
    if code != 0 or record is None:
        sys.exit(f"bench/{args.name}.py exited {code}" + ("" if record else ", no JSON record"))
    out = Path(os.environ.get("BENCH_RESULTS", BENCH / "results"), f"{Path(args.name).name}.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps({**entry, "record": record}) + "\n")
    print(f"recorded in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
