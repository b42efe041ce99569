"""`--workers K`: K processes on this machine, each an ordinary worker on the same study.

The parent runs one worker itself and starts K-1 copies of its own command line with
`--workers 1`; their output goes to storage/logs/. They share nothing but the storage, so they
are exactly what a user would start by hand on several machines. Ctrl-C in the terminal
reaches every process of the group, and each stops after its current epoch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

CHILD_PIDS = "HPO_CHILD_PIDS"
DEADLINE = "HPO_DEADLINE"
RESTARTED = "HPO_RESTARTED"


RECYCLE_AFTER = 10  # trials a worker runs before it restarts itself (--recycle-after)
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def with_option(argv: list[str], option: str, value: str) -> list[str]:
    """`argv` with `option` (given as "--x v" or "--x=v", or not at all) set to `value`."""
    return [*without_option(argv, option), option, value]


def without_option(argv: list[str], option: str) -> list[str]:
    """`argv` without `option` (given as "--x v" or "--x=v") and its value."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == option:
            skip = True
            continue
        if arg.startswith(option + "="):
            continue
        out.append(arg)
    return out


def deadline(timeout: float | None) -> float | None:
    """The wall-clock time --timeout ends at: set by the first process, kept by restarts."""
    inherited = os.environ.pop(DEADLINE, None)
    if inherited:
        return float(inherited)
    return None if timeout is None else time.time() + timeout


def restart(argv: list[str], children: list[int], ends_at: float | None) -> None:
    """Replace this process by a fresh one running `hpo ARGV` (same PID, so the children it
    started stay its children; their PIDs travel in HPO_CHILD_PIDS to be waited for)."""
    os.environ[CHILD_PIDS] = ",".join(map(str, children))
    os.environ[RESTARTED] = "1"
    if ends_at is not None:
        os.environ[DEADLINE] = repr(ends_at)
    sys.stdout.flush()
    sys.stderr.flush()
    # Held, not lost, across the exec: until the new process can handle them (hpo.__main__),
    # a Ctrl-C or SIGTERM would kill it silently.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    os.execv(sys.executable, [sys.executable, "-m", "hpo", *argv])


def restarted() -> bool:
    """Whether this process is a worker that restarted itself (it has said its notes once)."""
    return os.environ.pop(RESTARTED, None) == "1"


def inherited_children() -> list[int]:
    """PIDs of workers started by this process before it restarted itself."""
    text = os.environ.pop(CHILD_PIDS, "")
    return [int(pid) for pid in text.split(",") if pid]


def wait_pids(pids: list[int]) -> list[int]:
    """Exit codes of inherited children (started before an exec, so not Popen objects)."""
    codes = []
    for pid in pids:
        try:
            _, status = os.waitpid(pid, 0)
            codes.append(os.waitstatus_to_exitcode(status))
        except ChildProcessError:  # already reaped
            codes.append(0)
    return codes


def spawn(count: int, log_dir: Path, study: str, argv: list[str]) -> list[subprocess.Popen]:
    """`count` more workers running `hpo ARGV`, each logging to LOG_DIR/STUDY-workerI.log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    children = []
    for i in range(1, count + 1):
        log = open(log_dir / f"{study}-worker{i}.log", "w")  # noqa: SIM115 (kept by the child)
        children.append(
            subprocess.Popen(
                [sys.executable, "-m", "hpo", *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        )
        log.close()  # the child holds its own descriptor
    return children


def interrupt(children: list[subprocess.Popen], inherited: list[int]) -> None:
    """Ask every child to stop as Ctrl-C would, and wait for them."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
    for pid in inherited:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
    wait(children)
    wait_pids(inherited)


def wait(children: list[subprocess.Popen]) -> list[int]:
    """Exit codes of the children, after all have ended."""
    return [child.wait() for child in children]
