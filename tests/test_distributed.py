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


def test_four_workers_meet_the_budget_exactly(workdir, server_url):
    name = f"w4-{uuid.uuid4().hex[:8]}"
    path = tiny_study(workdir, epochs=1)
    finish(
        hpo(
            workdir,
            "optimize",
            str(path),
            "--trials",
            "20",
            "--study",
            name,
            "--storage",
            server_url,
            "--workers",
            "4",
            "--recycle-after",
            "0",  # restarts cost start-up time; test_local_workers_on_sqlite_recycled has them
        )
    )
    study = optuna.load_study(study_name=name, storage=rdb(server_url))
    numbers = [t.number for t in study.get_trials()]
    assert len(numbers) == len(set(numbers))
    assert len(counted(study)) == 20  # not 21, 23: the budget is the study's, not each worker's
    for log in (workdir / "storage" / "logs").glob(f"{name}-worker*.log"):
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


def test_workers_starting_at_once_create_one_study(workdir):
    """On a fresh SQLite file, where even Optuna's table creation can race."""
    path = tiny_study(workdir, epochs=1)
    procs = [
        hpo(workdir, "optimize", str(path), "--trials", "4", "--study", "same") for _ in range(2)
    ]
    for proc in procs:
        finish(proc)
    url = "sqlite:///storage/hpo.db"
    assert optuna.get_all_study_names(storage=url) == ["same"]
    assert len(counted(optuna.load_study(study_name="same", storage=url))) == 4


def test_workers_starting_at_once_on_a_server_create_one_study(workdir, server_url):
    name = f"same-{uuid.uuid4().hex[:8]}"
    path = tiny_study(workdir, epochs=1)
    args = ["optimize", str(path), "--trials", "2", "--study", name, "--storage", server_url]
    procs = [hpo(workdir, *args) for _ in range(2)]
    for proc in procs:
        finish(proc)
    assert optuna.get_all_study_names(storage=rdb(server_url)).count(name) == 1
    assert len(counted(optuna.load_study(study_name=name, storage=rdb(server_url)))) == 2
    optuna.delete_study(study_name=name, storage=rdb(server_url))


def test_local_workers_on_sqlite_recycled(workdir, monkeypatch):
    """Three local workers on the default SQLite file, each restarting itself every 2 trials
    (as every 10 by default, to release what Keras keeps between trials)."""
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
    path = tiny_study(workdir, epochs=1)
    out = finish(
        hpo(
            workdir,
            "optimize",
            str(path),
            "--trials",
            "12",
            "--workers",
            "3",
            "--recycle-after",
            "2",
        )
    )
    assert "restarting this worker after 2 trials" in out
    assert "database is locked" not in out
    study = optuna.load_study(study_name="tiny", storage="sqlite:///storage/hpo.db")
    assert len(counted(study)) == 12
    assert not [t for t in study.get_trials() if t.state == TrialState.RUNNING]
    logs = list((workdir / "storage" / "logs").glob("tiny-worker*.log"))
    assert len(logs) == 2
    for log in logs:
        assert "Traceback" not in log.read_text() and "error" not in log.read_text()
    pids = {t.user_attrs["worker"]["pid"] for t in counted(study)}
    assert len(pids) == 3  # a restart keeps its PID (exec), so three processes in all
    for trial in counted(study):
        worker = trial.user_attrs["worker"]
        assert worker["gpu_memory_fraction"] == "0.300"  # 0.9 of a GPU, split in three
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
