"""`--workers K`: K processes on this machine, each an ordinary worker on the same study.

The parent runs one worker itself and starts K-1 copies of its own command line with
`--workers 1`; their output goes to storage/logs/. They share nothing but the storage, so they
are exactly what a user would start by hand on several machines.

A stop reaches the children through the parent only, whoever sends it (a terminal's Ctrl-C,
`docker stop`, Kubernetes, `kill PID`): they run in their own process group, and the parent
passes each SIGINT or SIGTERM on as it came (hpo.search.interrupt), so each child gets it
once and stops after its current epoch. A child starts with both signals at their defaults,
whatever it inherited (a job started with `&` from a script has SIGINT ignored), and, on
Linux, gets SIGTERM when its parent dies without passing a signal on (SIGKILL, SIGHUP).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hpo import names
from hpo.errors import HpoError
from hpo.resources import resident_mb
from hpo.search.interrupt import GracefulInterrupt

# internal: hpo sets these for its own child and restarted processes, not for users
CHILD_PIDS = "HPO_CHILD_PIDS"  # internal
DEADLINE = "HPO_DEADLINE"  # internal
RESTARTED = "HPO_RESTARTED"  # internal


RECYCLE_AFTER = "auto"  # --recycle-after's default: restart on memory growth (Recycler)
RECYCLE_GROWTH_MB = 1024  # memory a worker may gain after its first trial before it restarts
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
PARENT_PID = "HPO_PARENT_PID"  # internal: a child's parent, for its start (hpo/__main__.py)


class Recycler:
    """When a worker restarts itself (`--recycle-after auto|N|0`).

    Keras and TensorFlow keep memory from trial to trial even after clear_session
    (docs/engine.md, "Workers restarted by memory"), and a fresh process gives it back. But a
    restart costs TensorFlow's import, the data's load and every compiled program again
    (seconds each on a CPU: docs/lab/performance.md), so `auto` restarts only once the
    process's resident memory has grown RECYCLE_GROWTH_MB since the end of its first trial (the
    data, the first programs and the backend's own start-up are in that baseline); N restarts
    after every N trials."""

    def __init__(self, setting: str | int | None) -> None:
        text = "0" if setting is None else str(setting).strip().lower()
        self.setting = text
        self.trials: int | None = None
        self.growth_mb: float | None = RECYCLE_GROWTH_MB if text == "auto" else None
        if text != "auto":
            try:
                every = int(text)
            except ValueError:
                raise HpoError(f"--recycle-after {setting}: expected auto or a number") from None
            if every < 0:
                raise HpoError("--recycle-after must be auto or at least 0")
            self.trials = every or None
        self.ran = 0  # trials this process ran
        self.baseline_mb: float | None = None  # its memory after its first trial

    def add_trials(self, count: int = 1) -> None:
        """Count trials this process ran (a batch's at once); the first set the baseline."""
        first = self.ran == 0
        self.ran += count
        if first and count and self.growth_mb is not None:
            self.baseline_mb = resident_mb()

    def due(self, running: int = 0) -> str | None:
        """Why this process should restart now (a phrase for "restarting this worker …"), or
        None; with `running` trials still to be added (is it due once they end?)."""
        after = f"after {self.ran} trial{'s' if self.ran != 1 else ''}"
        if self.trials is not None and self.ran + running >= self.trials:
            return after
        if self.growth_mb is not None and self.baseline_mb is not None:
            grown = (resident_mb() or 0.0) - self.baseline_mb
            if grown >= self.growth_mb:
                return f"{after}: its memory grew by {grown:,.0f} MB"
        return None


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


def _storage_in_environment(argv: list[str], storage_url: str) -> tuple[list[str], dict]:
    """`argv` without its --storage, and this process' environment with the storage it works
    on as HPO_STORAGE: a command line is shown by `ps` to every user of the machine, its
    password included; a process' environment is not. Always set, so a child never takes
    another storage from an HPO_STORAGE its parent was told to ignore (--storage given)."""
    return without_option(argv, "--storage"), {**os.environ, "HPO_STORAGE": storage_url}


def spawn(
    count: int, log_dir: Path, study: str, argv: list[str], storage_url: str
) -> list[subprocess.Popen]:
    """`count` more workers running `hpo ARGV`, each logging to LOG_DIR/STUDY-workerI.log, in
    a process group of its own: a stop reaches it through this process (the module's doc)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    argv, env = _storage_in_environment(argv, storage_url)
    # The child resets its stop signals and asks for one when this process dies, itself, at
    # its start (hpo/__main__.py): Python run between fork and exec (preexec_fn) may deadlock
    # in a process whose other threads (JAX's, TensorFlow's) held a lock at the fork.
    env[PARENT_PID] = str(os.getpid())
    children = []
    for i in range(1, count + 1):
        log_file = log_dir / f"{names.folder(study)}-worker{i}.log"  # a name read from storage
        log = open(log_file, "w")  # noqa: SIM115 (kept by the child)
        children.append(
            subprocess.Popen(
                [sys.executable, "-m", "hpo", *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                process_group=0,
            )
        )
        log.close()  # the child holds its own descriptor
    return children


def interrupt(
    signals: GracefulInterrupt, children: list[subprocess.Popen], inherited: list[int]
) -> None:
    """Ask every child not asked yet to stop (as this process was, else as Ctrl-C would), and
    wait for them."""
    signals.tell_children()
    wait(children)
    wait_pids(inherited)


def wait(children: list[subprocess.Popen]) -> list[int]:
    """Exit codes of the children, after all have ended."""
    return [child.wait() for child in children]
