"""Many workers on one study, against the real PostgreSQL and MariaDB servers and SQLite.

Each worker is a real `hpo optimize` process. The objective is the tiny study's (1-2 epochs on
a few hundred samples), so a trial takes about a second and the storage is what is tested.
"""

import os
import signal
import subprocess
import sys
import time
import uuid

import optuna
from conftest import rdb, tiny_study
from optuna.trial import TrialState

from hpo.search.budget import counts_toward_budget


def hpo(workdir, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hpo", *args],
        cwd=workdir,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def counted(study: optuna.Study) -> list:
    return [t for t in study.get_trials() if counts_toward_budget(t)]


def test_four_workers_started_at_once_make_one_study_and_meet_its_budget(workdir, server_url):
    """Two `hpo optimize --workers 2` started at once on a new study of a server, as on two
    machines: both race to create it, yet there is one study, and its four workers end it with
    exactly its budget (the budget is the study's, not each worker's)."""
    name = f"w4-{uuid.uuid4().hex[:8]}"
    path = tiny_study(workdir, epochs=1)
    args = ["optimize", str(path), "--trials", "20", "--study", name, "--storage", server_url]
    args += ["--workers", "2"]
    # Restarts cost start-up time; test_local_workers_started_at_once_on_sqlite_recycled has them.
    args += ["--recycle-after", "0"]
    machines = [workdir / "a", workdir / "b"]  # each its own storage/logs
    for folder in machines:
        folder.mkdir()
    for proc in [hpo(folder, *args) for folder in machines]:
        finish(proc)
    assert optuna.get_all_study_names(storage=rdb(server_url)).count(name) == 1
    study = optuna.load_study(study_name=name, storage=rdb(server_url))
    numbers = [t.number for t in study.get_trials()]
    assert len(numbers) == len(set(numbers))
    assert len(counted(study)) == 20  # not 21, 23: the budget is the study's, not each worker's
    assert len({t.user_attrs["worker"]["pid"] for t in counted(study)}) >= 2  # workers at once
    for folder in machines:
        (log,) = (folder / "storage" / "logs").glob(f"{name}-worker*.log")
        assert "Traceback" not in log.read_text()
    optuna.delete_study(study_name=name, storage=rdb(server_url))


def running_mid_training(study: optuna.Study, epochs: int) -> optuna.trial.FrozenTrial | None:
    """A RUNNING trial that has reported an epoch and still has most of its epochs ahead."""
    for t in study.get_trials():
        if t.state == TrialState.RUNNING and 1 <= len(t.intermediate_values) <= epochs // 2:
            return t
    return None


def test_killed_worker_trial_is_failed_and_rerun(workdir, server_url):
    name = f"kill-{uuid.uuid4().hex[:8]}"
    # Long trials, so the victim is caught and killed mid-trial rather than as it finishes:
    # with the fused loop a tiny epoch takes milliseconds, and 20 of them slipped between two
    # polls of the study on MariaDB.
    epochs = 200
    path = tiny_study(workdir, epochs=epochs)
    args = [
        "optimize",
        str(path),
        "--trials",
        "2",
        "--study",
        name,
        "--storage",
        server_url,
        "--heartbeat",
        "1",
    ]
    victim = hpo(workdir, *args)
    target = None
    deadline = time.monotonic() + 120
    while target is None and time.monotonic() < deadline:
        time.sleep(0.1)
        try:
            target = running_mid_training(
                optuna.load_study(study_name=name, storage=rdb(server_url)), epochs
            )
        except KeyError:
            continue
    assert target is not None, "the victim never got a trial into training"
    victim.send_signal(signal.SIGKILL)  # no chance to clean up: only the heartbeat tells
    victim.wait()
    study = optuna.load_study(study_name=name, storage=rdb(server_url))
    assert study.trials[target.number].state == TrialState.RUNNING
    out = finish(hpo(workdir, *args))
    study = optuna.load_study(study_name=name, storage=rdb(server_url))
    dead = study.trials[target.number]
    assert dead.state == TrialState.FAIL
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retried) == 1 and retried[0].params == dead.params
    assert len(counted(study)) == 2, out
    optuna.delete_study(study_name=name, storage=rdb(server_url))


def test_local_workers_started_at_once_on_sqlite_recycled(workdir, monkeypatch):
    """`hpo optimize --workers 2` and `hpo optimize` started at once in one folder: on a fresh
    SQLite file, where even Optuna's table creation can race, they make one study, and its
    three workers, each restarting itself every 2 trials (as every 10 by default, to release
    what Keras keeps between trials), end it with exactly its budget."""
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
    path = tiny_study(workdir, epochs=1)
    args = ["optimize", str(path), "--trials", "12", "--recycle-after", "2"]
    pair, single = hpo(workdir, *args, "--workers", "2"), hpo(workdir, *args)
    out = finish(pair) + finish(single)
    assert "restarting this worker after 2 trials" in out
    assert "database is locked" not in out
    url = "sqlite:///storage/hpo.db"
    assert optuna.get_all_study_names(storage=url) == ["tiny"]
    study = optuna.load_study(study_name="tiny", storage=url)
    assert len(counted(study)) == 12
    assert not [t for t in study.get_trials() if t.state == TrialState.RUNNING]
    (log,) = (workdir / "storage" / "logs").glob("tiny-worker*.log")  # the pair's second
    assert "Traceback" not in log.read_text() and "error" not in log.read_text()
    pids = {t.user_attrs["worker"]["pid"] for t in counted(study)}
    assert len(pids) == 3  # a restart keeps its PID (exec), so three processes in all
    for trial in counted(study):
        worker = trial.user_attrs["worker"]
        # The pair shares 0.9 of a GPU; a lone worker leaves JAX its own default.
        alone = worker["pid"] == single.pid
        assert worker["gpu_memory_fraction"] == (None if alone else "0.450")
        loads = worker["data_loads"]
        # Each process reads the data once (from the disk cache, or vectorizing it if it came
        # first) and never again: no trial reloads it.
        assert loads["prepared"] + loads["disk_hits"] == 1 and loads["memory_hits"] == 0


def test_trial_that_never_sent_a_heartbeat_is_rerun(workdir):
    """A worker killed between creating its trial and the first heartbeat leaves a RUNNING
    trial that Optuna's own stale check never finds; it must not hold a slot forever."""
    path = str(tiny_study(workdir, epochs=1))
    url = "sqlite:///storage/hpo.db"
    (workdir / "storage").mkdir(exist_ok=True)
    orphan = optuna.create_study(study_name="tiny", storage=url, direction="maximize").ask()
    out = finish(
        hpo(workdir, "optimize", path, "--trials", "2", "--heartbeat", "1", "--timeout", "60")
    )
    study = optuna.load_study(study_name="tiny", storage=url)
    assert study.trials[orphan.number].state == TrialState.FAIL, out
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == orphan.number]
    assert len(retried) == 1 and counts_toward_budget(retried[0])
    assert len(counted(study)) == 2
