"""Stop signals reach a worker's whole tree (issue 35, item 5): a signal to the parent's PID
alone, as `docker stop`, Kubernetes or `kill PID` send it, ends its child workers too, within an
epoch and a grace period, with no trial left RUNNING.

Each test starts one real parent with one child (`--slots 2`, `--workers 2`) on a tiny study in
SQLite, and signals the parent only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import rdb, run_cli, tiny_study
from optuna.trial import TrialState

from hpo.search import budget

EPOCHS = 20_000  # a trial lasts a minute or more (an epoch of the tiny data: milliseconds)
GRACE_S = 90  # the bound for the whole tree to end


def start(workdir: Path, *args: str, sigint: signal.Handlers = signal.SIG_DFL) -> subprocess.Popen:
    """`hpo ARGS` as its own process, output to workdir/out.log; `sigint` SIG_IGN is how a job
    started with `&` from a script begins (a non-interactive shell ignores SIGINT for it)."""
    out = open(workdir / "out.log", "w")  # noqa: SIM115 (held by the child)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpo", *args],
        cwd=workdir,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(signal.SIGINT, sigint),
    )
    out.close()
    return proc


def children_of(pid: int) -> list[int]:
    """The live processes whose parent is `pid` (from /proc: no psutil)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(condition, what: str, proc: subprocess.Popen, workdir: Path, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while not condition():
        log = (workdir / "out.log").read_text()
        assert proc.poll() is None, f"ended early ({proc.returncode}): {log}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {log}"
        time.sleep(0.3)


def in_training(url: str, name: str) -> int:
    """RUNNING trials that have reported an epoch and have most of their epochs ahead."""
    study = optuna.load_study(study_name=name, storage=rdb(url))
    return sum(
        1
        for t in study.get_trials(deepcopy=False, states=[TrialState.RUNNING])
        if 1 <= len(t.intermediate_values) < EPOCHS // 2
    )


def signal_parent_alone(proc: subprocess.Popen, sig: int, workdir: Path) -> tuple[int, str]:
    """Send `sig` to the parent's PID only; its exit status and output once it ended, and
    check that it left no child behind (each killed here if it did, so a failure leaks none)."""
    kids = children_of(proc.pid)
    assert kids, "the parent started no child"
    sent = time.monotonic()
    proc.send_signal(sig)
    try:
        code = proc.wait(timeout=GRACE_S)
    except subprocess.TimeoutExpired:
        code = None
    took = time.monotonic() - sent
    left = [pid for pid in kids if alive(pid)]
    for pid in [proc.pid, *left]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    log = (workdir / "out.log").read_text()
    assert code is not None, f"the parent still waits {GRACE_S} s after the signal: {log}"
    assert not left, f"children left running after the parent ended: {left}"
    assert "Traceback" not in log, log
    return code, log + f"\n(ended {took:.1f} s after the signal)"


def running(url: str, name: str) -> list[int]:
    study = optuna.load_study(study_name=name, storage=rdb(url))
    return [t.number for t in study.get_trials(states=[TrialState.RUNNING])]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_a_signal_to_an_idle_pool_parent_ends_its_children(workdir, sig):
    """`hpo worker --slots 2` stopped as `docker stop` does with the image's STOPSIGNAL
    SIGINT, to the parent only: its child must stop too, not poll on while the parent waits.
    A parent killed outright (SIGKILL, the OOM killer) passes nothing on: its child stops
    all the same (Linux's parent-death signal, asked for by the child at its start)."""
    url = f"sqlite:///{workdir}/pool.db"
    proc = start(workdir, "worker", "--storage", url, "--slots", "2", "--poll", "0.5")
    log = workdir / "storage" / "logs" / "pool-worker1.log"
    wait_for(
        lambda: log.exists() and "waiting for studies" in log.read_text(),
        "the child to idle",
        proc,
        workdir,
    )
    if sig == signal.SIGINT:
        code, out = signal_parent_alone(proc, sig, workdir)
        assert code == 130, out
        return
    (child,) = children_of(proc.pid)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + GRACE_S
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    if alive(child):
        os.kill(child, signal.SIGKILL)
        raise AssertionError(f"the child outlived its killed parent: {log.read_text()}")


def test_sigterm_to_a_pool_started_with_sigint_ignored_ends_the_tree(workdir, capsys):
    """The issue's end-to-end case: `hpo worker --slots 2 &` from a script (SIGINT ignored,
    inherited by the children), then SIGTERM to that PID alone: exit 143 within 90 s, no
    child left and no trial RUNNING; the trials in flight are queued again."""
    url = f"sqlite:///{workdir}/pool.db"
    path = tiny_study(workdir, epochs=EPOCHS)
    code, _, err = run_cli(capsys, "submit", str(path), "--trials", "4", "--storage", url)
    assert code == 0, err
    proc = start(
        workdir, "worker", "--storage", url, "--slots", "2", "--poll", "0.5",
        "--recycle-after", "0", sigint=signal.SIG_IGN,
    )  # fmt: skip
    wait_for(lambda: in_training(url, "tiny") == 2, "both slots in training", proc, workdir)
    code, out = signal_parent_alone(proc, signal.SIGTERM, workdir)
    assert code == 143, out
    assert running(url, "tiny") == [], out
    children = (workdir / "storage" / "logs" / "pool-worker1.log").read_text()
    assert "interrupted; its parameters run again first" in out, out
    assert "interrupted; its parameters run again first" in children, children


def test_sigterm_to_optimize_with_workers_ends_the_tree_and_counts_right(workdir):
    """`hpo optimize --workers 2`: a SIGTERM to the parent ends its child at its epoch too,
    instead of waiting for it to finish the study, and the count it prints is the storage's
    after the child ended."""
    path = tiny_study(workdir, epochs=EPOCHS)
    proc = start(workdir, "optimize", str(path), "--trials", "4", "--workers", "2")
    url = f"sqlite:///{workdir}/storage/hpo.db"
    # The study exists once the child is started: the storage is opened only then (opening
    # it first would race the parent creating its tables).
    started = lambda: "1 more workers started" in (workdir / "out.log").read_text()  # noqa: E731
    wait_for(started, "the child to start", proc, workdir)
    wait_for(lambda: in_training(url, "tiny") == 2, "both workers in training", proc, workdir)
    code, out = signal_parent_alone(proc, signal.SIGTERM, workdir)
    assert code == 143, out
    assert running(url, "tiny") == [], out
    finished = budget.finished(optuna.load_study(study_name="tiny", storage=rdb(url)))
    assert f"interrupted: {finished} of 4 trials finished and saved" in out, out


def test_a_signal_while_the_parent_waits_for_its_children_is_passed_on(monkeypatch):
    """`hpo optimize --workers K` after its own last trial: waiting for the children, it still
    passes a SIGTERM on (before, the default handler ended the parent alone, and in a
    container its children with it, mid-trial) and reports the run interrupted."""
    import threading
    from types import SimpleNamespace

    from hpo.search import launch
    from hpo.search.interrupt import GracefulInterrupt

    child = subprocess.Popen(["sleep", "60"])
    result = SimpleNamespace(interrupted=False, signum=None, study=None, finished_after=0)
    run = SimpleNamespace(children=[child], inherited=[], result=result, exit_codes=[])
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
    started = time.monotonic()
    monkeypatch.setattr(launch.budget, "finished", lambda study: 7)  # the trials counted again
    with GracefulInterrupt() as signals:
        signals.adopt([child])
        launch._wait_for_children(run, signals)
    assert time.monotonic() - started < 30 and child.returncode == -signal.SIGTERM
    assert run.exit_codes == [-signal.SIGTERM] and result.interrupted
    assert (result.signum, result.finished_after) == (signal.SIGTERM, 7)
