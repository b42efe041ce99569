"""The study queue and the worker pool (`hpo submit`, `hpo worker`, `hpo stop`, `hpo resume`,
`hpo list`), against the real PostgreSQL and MariaDB servers.

Workers are real `hpo worker` processes on the tiny studies (a trial takes about a second), so
what is tested is the queue: budgets, fairness, signals, the heartbeat, data that travels.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import optuna
import pytest
from conftest import SERVERS, default_sigint, rdb, reachable, run_cli, tiny_study
from optuna.trial import TrialState
from rich.console import Console

from hpo.search import budget, queue, queue_worker

POSTGRES = SERVERS["postgresql"]


def worker(folder: Path, url: str, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hpo", "worker", "--storage", url, "--poll", "0.5", *args],
        cwd=folder,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=default_sigint,  # as from a terminal, even when the tests run in the background
    )


def read_until(proc: subprocess.Popen, text: str, timeout: float = 120) -> str:
    """A worker's output up to the first line holding `text`: its start-up (TensorFlow, the
    storage) may take many seconds on a loaded machine, so a test waits for what it says."""
    lines: list[str] = []
    done = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if text in line:
                break
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(timeout) and text in "".join(lines), "".join(lines)
    return "".join(lines)


def load(name: str, url: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=rdb(url))


def counted(name: str, url: str) -> int:
    return budget.finished(load(name, url))


def wait_for(condition, timeout: float = 120, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def in_training(name: str, epochs: int) -> optuna.trial.FrozenTrial | None:
    """A RUNNING trial of the study that has reported an epoch and has most of its epochs
    ahead: one a signal can catch mid-trial."""
    return next(
        (
            t
            for t in load(name, POSTGRES).trials
            if t.state == TrialState.RUNNING and 1 <= len(t.intermediate_values) < epochs // 2
        ),
        None,
    )


@pytest.fixture
def postgres() -> str:
    """The PostgreSQL server's URL; a skip (a failure under CI=true) when it is down."""
    if not reachable(POSTGRES):
        pytest.skip("postgresql is not reachable")
    return POSTGRES


def stop_worker(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> str:
    proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()  # a failed test leaves no worker behind
        proc.communicate()
        raise
    assert proc.returncode == 128 + sig, out
    assert "Traceback" not in out, out
    return out


def delete(url: str, *names: str) -> None:
    for name in names:
        optuna.delete_study(study_name=name, storage=rdb(url))


def test_two_workers_serve_the_queue_to_exact_budgets(workdir, server_url, capsys):
    """Two studies submitted, two workers: each study ends with exactly its budget. A study
    submitted while the workers idle is picked up; SIGTERM ends a worker with 143."""
    token = uuid.uuid4().hex[:6]
    names = [f"q{i}-{token}" for i in range(3)]
    path = tiny_study(workdir, epochs=2)
    for name, trials, priority in ((names[0], 4, 1), (names[1], 3, 2)):
        code, out, _ = run_cli(
            capsys, "submit", str(path), "--trials", str(trials), "--study", name,
            "--priority", str(priority), "--storage", server_url,
        )  # fmt: skip
        assert code == 0 and f"queued study {name}" in out
    mine = ["--studies", f"q*-{token}"]  # not the studies of tests running beside this one
    workers = [worker(workdir, server_url, *mine, "--recycle-after", "3") for _ in range(2)]
    try:
        wait_for(lambda: counted(names[0], server_url) == 4, what="the first study")
        wait_for(lambda: counted(names[1], server_url) == 3, what="the second study")
        time.sleep(1.5)  # both idle now
        code, _, _ = run_cli(
            capsys, "submit", str(path), "--trials", "2", "--study", names[2],
            "--storage", server_url,
        )  # fmt: skip
        assert code == 0
        wait_for(lambda: counted(names[2], server_url) == 2, what="the late study")
        time.sleep(1.5)
    finally:
        outs = [stop_worker(w) for w in workers]
    for name, trials in zip(names, (4, 3, 2), strict=True):
        assert counted(name, server_url) == trials  # exact: not one over with two workers
        assert not [t for t in load(name, server_url).trials if t.state == TrialState.RUNNING]
    assert all("waiting for studies" in out for out in outs)
    assert any("restarting this worker after 3 trials" in out for out in outs)
    code, out, _ = run_cli(capsys, "list", "--storage", server_url)
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if "│" in line}
    for name in names:
        assert "done" in rows[name]
    from optuna_dashboard import get_note

    assert get_note(load(names[0], server_url)).startswith("**Queue:** done")
    delete(server_url, *names)


@pytest.mark.usefixtures("postgres")
def test_stop_resume_and_sigterm_requeue_the_trial_in_flight(workdir, capsys):
    """`hpo stop` ends the running trial at an epoch ("stopped", not counted) and queues its
    parameters again; `hpo resume` runs them first. SIGTERM does the same ("interrupted")
    and the worker exits 143. No trial is lost: the study ends with exactly its budget."""
    name = f"stop-{uuid.uuid4().hex[:6]}"
    epochs = 400
    path = tiny_study(workdir, epochs=epochs)
    assert run_cli(capsys, "submit", str(path), "--trials", "2", "--study", name,
                   "--storage", POSTGRES)[0] == 0  # fmt: skip
    env = {"HPO_STOP_CHECK_S": "0.2"}

    proc = worker(workdir, POSTGRES, "--studies", name, "--recycle-after", "0", env=env)
    try:
        wait_for(lambda: in_training(name, epochs) is not None, what="a trial in training")
        first = in_training(name, epochs)
        code, out, _ = run_cli(capsys, "stop", name, "--storage", POSTGRES)
        assert code == 0 and "paused" in out

        def requeued_then_failed() -> bool:  # in that order: the re-run holds the freed slot
            trials = load(name, POSTGRES).trials
            queued = trials[-1].state == TrialState.WAITING
            return queued and trials[first.number].state.is_finished()

        wait_for(requeued_then_failed)
        trials = load(name, POSTGRES).trials
        assert trials[first.number].state == TrialState.FAIL
        assert trials[first.number].user_attrs["fail_reason"] == budget.STOPPED
        waiting = [t for t in trials if t.state == TrialState.WAITING]
        assert [t.system_attrs["fixed_params"] for t in waiting] == [first.params]
        time.sleep(1.0)  # paused: nothing starts
        assert not [t for t in load(name, POSTGRES).trials if t.state == TrialState.RUNNING]
        code, out, _ = run_cli(capsys, "list", "--storage", POSTGRES)
        assert "paused" in next(line for line in out.splitlines() if name in line)
        from optuna_dashboard import get_note

        assert "**Queue:** paused" in get_note(load(name, POSTGRES))  # on the dashboard
        assert run_cli(capsys, "resume", name, "--storage", POSTGRES)[0] == 0
        wait_for(lambda: in_training(name, epochs) is not None, what="the resumed trial")
        again = in_training(name, epochs)
        assert again.number == waiting[0].number and again.params == first.params
    finally:
        out = stop_worker(proc)
    assert "stopped (hpo stop)" in out and "interrupted" in out
    trials = load(name, POSTGRES).trials
    assert trials[again.number].state == TrialState.FAIL
    assert trials[again.number].user_attrs["fail_reason"] == "interrupted"
    assert trials[-1].state == TrialState.WAITING
    assert trials[-1].system_attrs["fixed_params"] == first.params
    assert budget.finished(load(name, POSTGRES)) == 0
    delete(POSTGRES, name)


@pytest.mark.usefixtures("postgres")
def test_own_data_reaches_a_worker_without_the_file(workdir, tmp_path_factory, capsys):
    """The prepared arrays travel through the shared artifact store: a worker in another
    folder, with neither the study file nor the CSV (deleted after submit: not even at its
    absolute path), trains the study from what submit stored; its cache is reused."""
    from test_own_data import churn, study_file

    name = f"own-{uuid.uuid4().hex[:6]}"
    churn(160).to_csv(workdir / "churn.csv", index=False)
    data = 'train = "churn.csv"\ntarget = "left"\ndrop = ["id"]\ncategorical = ["plan"]'
    path = study_file(workdir, name, data)
    shared = workdir / "shared-artifacts"
    args = ["--storage", POSTGRES, "--artifacts", str(shared)]
    assert run_cli(capsys, "submit", str(path), "--trials", "3", *args)[0] == 0
    assert run_cli(capsys, "submit", str(path), "--trials", "4", *args)[0] == 0  # extended
    assert len(list(shared.rglob("*"))) == 1  # the same arrays: uploaded once
    (workdir / "churn.csv").unlink()  # the worker needs only the record and the arrays
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    proc = worker(elsewhere, POSTGRES, "--artifacts", str(shared), "--studies", name,
                  "--recycle-after", "0",
                  env={"HPO_CACHE_DIR": str(elsewhere / "cache")})  # fmt: skip
    try:
        wait_for(lambda: counted(name, POSTGRES) == 4, what="the own-data study")
    finally:
        out = stop_worker(proc)
    assert f"{name}: serving" in out and "leaves the study" not in out
    assert len(list((elsewhere / "cache" / "shipped").glob("*.npz"))) == 1
    assert not (elsewhere / "churn.csv").exists()
    delete(POSTGRES, name)


@pytest.mark.usefixtures("postgres")
def test_a_killed_worker_is_recovered_through_the_heartbeat(workdir, capsys):
    name = f"kill-{uuid.uuid4().hex[:6]}"
    epochs = 300
    path = tiny_study(workdir, epochs=epochs)
    assert run_cli(capsys, "submit", str(path), "--trials", "2", "--study", name,
                   "--storage", POSTGRES)[0] == 0  # fmt: skip
    mine = ["--studies", name, "--heartbeat", "1", "--recycle-after", "0"]
    victim = worker(workdir, POSTGRES, *mine)

    wait_for(lambda: in_training(name, epochs) is not None, what="a trial in training")
    dead = in_training(name, epochs)
    victim.kill()
    victim.communicate()
    rescuer = worker(workdir, POSTGRES, *mine)
    try:
        wait_for(lambda: counted(name, POSTGRES) == 2, what="the rescued study")
    finally:
        stop_worker(rescuer)
    trials = load(name, POSTGRES).trials
    assert trials[dead.number].state == TrialState.FAIL
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retried) == 1 and retried[0].params == dead.params
    delete(POSTGRES, name)


def test_priorities_share_the_trials_and_a_late_study_joins_fairly(workdir, capsys):
    """Worker.choose on real queue records: trials started in proportion to the priorities;
    a study submitted later is not served alone until it catches up."""
    url = f"sqlite:///{workdir}/queue.db"
    path = tiny_study(workdir, epochs=1)
    for name, priority in (("high", "2"), ("low", "1")):
        assert run_cli(capsys, "submit", str(path), "--trials", "100", "--study", name,
                       "--priority", priority, "--storage", url)[0] == 0  # fmt: skip
    chooser = queue_worker.Worker(url, console=Console(quiet=True))

    def serve(picks: int) -> list[str]:
        order = []
        for _ in range(picks):
            entry = chooser.choose()
            study = optuna.load_study(study_name=entry.name, storage=chooser.store)
            study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.5))
            order.append(entry.name)
        return order

    first = serve(30)
    assert first.count("high") == 20 and first.count("low") == 10
    assert run_cli(capsys, "submit", str(path), "--trials", "100", "--study", "late",
                   "--storage", url)[0] == 0  # fmt: skip
    then = serve(20)
    assert (then.count("high"), then.count("low"), then.count("late")) == (10, 5, 5)
    assert run_cli(capsys, "stop", "high", "--storage", url)[0] == 0
    assert "high" not in serve(6)


def test_bad_queue_input_is_one_line(workdir, capsys):
    path = tiny_study(workdir, epochs=1)
    unreachable = "postgresql+psycopg://postgres@127.0.0.1:1/none"
    cases = [
        (["submit", str(path), "--storage", unreachable], "cannot connect"),
        (["submit", str(path), "--priority", "0"], "--priority must be above 0"),
        (["submit", str(path), "--trials", "0"], "--trials must be at least 1"),
        (["stop", "nosuch"], "no study named 'nosuch'"),
        (["resume", "nosuch"], "no study named 'nosuch'"),
        (["worker", "--slots", "x"], "--slots must be a positive number or auto"),
    ]
    for args, message in cases:
        code, _, err = run_cli(capsys, *args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)
    assert run_cli(capsys, "optimize", str(path), "--trials", "1")[0] == 0
    code, _, err = run_cli(capsys, "stop", "tiny")
    assert code == 2 and "was not submitted to the queue" in err


def test_an_idle_worker_says_so_once(workdir):
    """On a storage with no study it waits, says so once, reads the queue cheaply, and a
    SIGINT ends it with 130."""
    url = f"sqlite:///{workdir}/empty.db"
    proc = worker(workdir, url, "--recycle-after", "0")
    seen = read_until(proc, "waiting for studies")
    time.sleep(3)  # six reads of the queue, every 0.5 s
    out = seen + stop_worker(proc, signal.SIGINT)
    assert out.count("waiting for studies") == 1, out


@pytest.mark.usefixtures("postgres")
def test_an_idle_worker_waits_out_a_database_outage(workdir, capsys):
    """The queue reads are retried as optimize's storage calls are: a worker idling through
    a cut connection reconnects and serves what is submitted after it."""
    from test_reconnect import through_proxy

    proxy, url = through_proxy(POSTGRES)
    name = f"outage-{uuid.uuid4().hex[:6]}"
    proc = worker(
        workdir, url, "--studies", name, "--recycle-after", "0", env={"HPO_RECONNECT_S": "60"}
    )
    seen = ""
    try:
        # Cut only once it idles, reading the queue: a cut during its start-up (seconds on a
        # loaded machine) is not an outage it lives through.
        seen = read_until(proc, "waiting for studies")
        time.sleep(1)
        proxy.cut()
        time.sleep(5)
        proxy.start()
        path = tiny_study(workdir, epochs=1)
        assert run_cli(capsys, "submit", str(path), "--trials", "2", "--study", name,
                       "--storage", POSTGRES)[0] == 0  # fmt: skip
        wait_for(lambda: counted(name, POSTGRES) == 2, what="the study after the outage")
    finally:
        out = seen + stop_worker(proc)
        proxy.cut()
    assert "connection lost" in out and "reconnected after" in out, out
    delete(POSTGRES, name)


def test_a_failing_study_is_left_after_three_trials_not_the_worker(workdir, capsys):
    """A trial that raises (not a NaN loss) fails and is not counted; three in a row and the
    worker leaves that study, saying why in one line, and serves the others."""
    url = f"sqlite:///{workdir}/fail.db"
    path = tiny_study(workdir, epochs=1)
    assert run_cli(capsys, "submit", str(path), "--trials", "5", "--study", "bad",
                   "--storage", url)[0] == 0  # fmt: skip

    class Broken:
        trial_number = None
        check_interrupt = None

        def __call__(self, trial):
            raise ValueError("a shape that does not fit")

    class BrokenWorker(queue_worker.Worker):
        def _open(self, entry, study, spec):
            return queue_worker.Served(study, Broken(), budget.Budget(entry.trials), ())

    out = Console(record=True, width=200)
    chooser = BrokenWorker(url, console=out)
    for _ in range(queue_worker.FAILURES_TO_LEAVE):
        chooser.run_one(chooser.choose())
    assert chooser.choose() is None  # left: no other study to serve
    text = out.export_text()
    assert text.count("trial failed (ValueError: a shape that does not fit)") == 3
    assert "bad: this worker leaves the study: 3 trials in a row failed" in text
    assert budget.finished(optuna.load_study(study_name="bad", storage=url)) == 0


def test_a_worker_stacks_a_batch_and_requeues_all_of_a_stopped_one(workdir, capsys, monkeypatch):
    """`hpo worker --batch-trials 2` trains two trials of a study side by side; `hpo stop`
    during a batch ends both at the epoch and queues both parameter sets again."""
    url = f"sqlite:///{workdir}/batch.db"
    space = 'layers = 1\nunits = 8\noptimizer = "adam"\nbatch_size = 16\n'
    space += "learning_rate = { float = [0.001, 0.01] }\ndropout = { float = [0.0, 0.2] }\n"
    path = tiny_study(workdir, "boston_housing", epochs=3, validation="kfold:2", space=space)
    for name in ("whole", "stopped"):
        assert run_cli(capsys, "submit", str(path), "--trials", "2", "--study", name,
                       "--storage", url)[0] == 0  # fmt: skip
    out = Console(record=True, width=200)
    serving = queue_worker.Worker(url, console=out, pattern="whole", batch_trials=2)
    serving.run_one(serving.choose())
    whole = optuna.load_study(study_name="whole", storage=url).trials
    assert [t.state for t in whole] == [TrialState.COMPLETE] * 2
    assert [t.user_attrs["worker"]["stacked"] for t in whole] == [2, 2]

    checks = []

    def pause_at_epoch_2(self):
        checks.append(1)
        if len(checks) == 2:
            raise queue_worker.Stopped

    monkeypatch.setattr(queue_worker.StopCheck, "__call__", pause_at_epoch_2)
    serving = queue_worker.Worker(url, console=out, pattern="stopped", batch_trials=2)
    serving.run_one(serving.choose())
    trials = optuna.load_study(study_name="stopped", storage=url).trials
    ended, waiting = trials[:2], trials[2:]
    assert all(t.user_attrs["fail_reason"] == budget.STOPPED for t in ended)
    assert all(len(t.user_attrs["history"]["val_mae"]) == 2 for t in ended)
    assert [t.system_attrs["fixed_params"] for t in waiting] == [t.params for t in ended]
    assert "stopped: trial 0, 1 stopped (hpo stop)" in out.export_text()


def test_submit_keeps_the_dashboard_note_and_what_was_submitted(workdir, capsys):
    """Submitting again extends the budget and keeps the priority and options given before;
    the queue's note never replaces one that analyze or a user wrote."""
    from optuna_dashboard import get_note, save_note

    url = f"sqlite:///{workdir}/note.db"
    path = tiny_study(workdir, epochs=1)
    args = ["--study", "s", "--storage", url]
    assert run_cli(capsys, "submit", str(path), "--trials", "3", "--priority", "2",
                   "--max-epochs", "2", "--patience", "1", *args)[0] == 0  # fmt: skip
    study = optuna.load_study(study_name="s", storage=url)
    assert get_note(study).startswith(queue.NOTE)
    save_note(study, "## Best configuration (written by hpo analyze)")
    import hpo  # from Python, as from the shell

    assert hpo.submit(path, trials=6, study="s", storage=url, progress=False) == "s"
    study = optuna.load_study(study_name="s", storage=url)
    assert get_note(study) == "## Best configuration (written by hpo analyze)"
    record = study.user_attrs[queue.ATTR]
    options = {"max_epochs": 2, "patience": 1}
    assert (record["trials"], record["priority"], record["options"]) == (6, 2, options)
    (entry,) = queue.entries(study._storage, "s")
    assert queue.spec_of(entry).patience == 1  # what a worker trains with
