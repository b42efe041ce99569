"""The queue shared by a team (issue 35, items 3, 6, 7 and 12): a worker needs only what
`hpo submit` stored, no update to a queue record is lost, a malformed record or a study that
kills its workers is one study left with a reason, and neither the workers' clocks nor their
own heartbeat settings decide for the others.

In-process workers (queue_worker.Worker) and fake trials: what is tested is the queue's bookkeeping,
so each test takes a second or two. The races are forced, not hoped for: a hook runs the
competing write between one side's read and its write.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from datetime import datetime, timedelta

import optuna
import pytest
import sqlalchemy
from conftest import run_cli, tiny_study
from optuna.trial import TrialState
from rich.console import Console

from hpo.optuna_private import models
from hpo.search import budget, dead_trials, queue, queue_worker, storage, study_loop
from hpo.search.search_options import SearchOptions

# The tests ask for trials as a worker does, beating their heartbeat by hand.
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def submit(capsys, path, name: str, url: str, *args: str) -> None:
    code, _, err = run_cli(
        capsys, "submit", str(path), "--study", name, "--storage", url, *args
    )  # fmt: skip
    assert code == 0, err


def record(url: str, name: str) -> dict:
    study = optuna.load_study(study_name=name, storage=storage.open_storage(url))
    return study.user_attrs[queue.ATTR]


def list_rows(capsys, url: str) -> tuple[dict[str, str], str]:
    code, out, err = run_cli(capsys, "list", "--storage", url)
    assert code == 0, err
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if "│" in line}
    return rows, out


def delete(url: str, *names: str) -> None:
    store = storage.open_storage(url)
    for name in names:
        optuna.delete_study(study_name=name, storage=store)


# --- item 3: own data served from what submit stored --------------------------------------


def test_own_data_is_specified_without_the_csv_and_a_worker_says_why_it_left(workdir, capsys):
    """The worker's study file is parsed from the record alone (task and rows as submit
    found them), so the CSV may be gone; a worker that cannot serve the study (here: no
    access to the artifact store) says why on `hpo list` and the dashboard note."""
    from optuna_dashboard import get_note
    from test_own_data import churn, study_file

    from hpo.data import own

    url = f"sqlite:///{workdir}/own.db"
    churn(160).to_csv(workdir / "churn.csv", index=False)
    data = 'train = "churn.csv"\ntarget = "left"\ndrop = ["id"]\ncategorical = ["plan"]'
    path = study_file(workdir, "own", data)
    submit(capsys, path, "own", url, "--trials", "2", "--artifacts", str(workdir / "shared"))
    (workdir / "churn.csv").unlink()
    own.clear_caches()  # as a worker on another machine

    (entry,) = queue.entries(storage.open_storage(url), "own")
    spec = queue.spec_of(entry)  # read the CSV before: HpoError, the worker left
    assert (spec.task, spec.dataset, spec.metric) == ("binary", "churn.csv", "val_accuracy")

    out = Console(record=True, width=200)
    elsewhere = queue_worker.Worker(url, console=out, artifacts=str(workdir / "not-shared"))
    elsewhere.run_one(elsewhere.choose())
    assert "own: this worker leaves the study" in out.export_text()
    rows, shown = list_rows(capsys, url)
    assert "queued" in rows["own"]
    assert "own: left by" in shown and "not in the artifact store" in shown, shown
    note = get_note(optuna.load_study(study_name="own", storage=url))
    assert note.startswith("**Queue:** queued") and "not in the artifact store" in note


def test_a_record_that_names_a_local_file_is_left_unread(workdir, capsys):
    """A queue record whose shipped arrays were removed (data: null) by whoever writes the
    storage would make a worker read the [data] path the record names and copy its values
    into the storage: the worker leaves the study instead, and reads nothing."""
    from test_own_data import churn, study_file

    url = f"sqlite:///{workdir}/files.db"
    churn(160).to_csv(workdir / "churn.csv", index=False)
    data = 'train = "churn.csv"\ntarget = "left"\ndrop = ["id"]\ncategorical = ["plan"]'
    path = study_file(workdir, "files", data)
    submit(capsys, path, "files", url, "--trials", "2", "--artifacts", str(workdir / "shared"))
    study = optuna.load_study(study_name="files", storage=url)
    study.set_user_attr(queue.ATTR, {**study.user_attrs[queue.ATTR], "data": None})
    (workdir / "churn.csv").write_text("secret,left\nhunter2,yes\nhunter3,no\n")

    out = Console(record=True, width=200)
    worker = queue_worker.Worker(url, console=out, artifacts=str(workdir / "shared"))
    worker.run_one(worker.choose())
    assert "not shipped" in out.export_text(), out.export_text()
    stored = json.dumps(optuna.load_study(study_name="files", storage=url).user_attrs)
    assert "hunter" not in stored


# --- item 6: no lost update to the queue record -------------------------------------------


@contextlib.contextmanager
def before_its_write(engine: sqlalchemy.Engine, competing) -> list:
    """Run `competing` once, just before `engine` writes a study user attr (the queue
    record): after its read, before its write."""
    fired: list[int] = []

    def before(connection, cursor, statement, parameters, context, executemany) -> None:
        text = statement.lstrip().lower()
        if not fired and "study_user_attributes" in text and text.startswith(("update", "insert")):
            fired.append(1)
            competing()

    sqlalchemy.event.listen(engine, "before_cursor_execute", before)
    try:
        yield fired
    finally:
        sqlalchemy.event.remove(engine, "before_cursor_execute", before)


def test_a_submit_between_a_workers_read_and_write_is_not_lost(workdir, capsys, server_url):
    """A worker finds the budget met and marks the study done; `hpo submit --trials 5`
    commits between its read and its write. The submit wins: queued, 5 trials."""
    name = unique("cas")
    path = tiny_study(workdir, epochs=1)
    submit(capsys, path, name, server_url, "--trials", "1")
    worker = queue_worker.Worker(server_url, console=Console(quiet=True), pattern=name)
    study = optuna.load_study(study_name=name, storage=worker.store)
    study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.5))

    def extend() -> None:
        quiet = Console(quiet=True)
        queue.submit(SearchOptions(path, trials=5, study=name, storage_url=server_url), None, quiet)

    with before_its_write(worker.store.engine, extend) as fired:
        assert worker.choose() is None  # budget met: it marks the study done
    assert fired
    after = record(server_url, name)
    assert (after["state"], after["trials"]) == (queue.QUEUED, 5)
    assert worker.choose().name == name  # served again, to 5
    delete(server_url, name)


class Interrupted:
    """A trial that samples x and is stopped at its first epoch, as Objective.run is."""

    trial_number = None
    check_interrupt = None

    def __call__(self, trial: optuna.Trial) -> float:
        self.trial_number = trial.number
        trial.suggest_float("x", 0.0, 1.0)
        try:
            self.check_interrupt()
        except KeyboardInterrupt as exc:
            trial.set_user_attr("fail_reason", getattr(exc, "reason", "interrupted"))
            raise
        return 0.0


def other_worker_takes_the_slot_at_fail(
    monkeypatch, first: queue_worker.Worker, other: queue_worker.Worker, name: str
) -> list[dict]:
    """Force the interleaving: the instant `first` writes a trial's FAIL, `other` chooses
    the study, asks a trial and finishes it; returns the parameters `other` ran."""
    taken: list[dict] = []
    write = first.store.set_trial_state_values

    def then_the_other_worker(trial_id, state, values=None):
        done = write(trial_id, state, values)
        if state == TrialState.FAIL and not taken:
            assert other.choose().name == name
            study = optuna.load_study(study_name=name, storage=other.store)
            trial = study.ask()
            budget.Budget(1).admit(trial)
            trial.suggest_float("x", 0.0, 1.0)
            taken.append(trial.params)
            study.tell(trial, 0.5)
        return done

    monkeypatch.setattr(first.store, "set_trial_state_values", then_the_other_worker)
    return taken


def test_an_interrupted_trials_parameters_are_queued_before_its_slot_frees(
    workdir, capsys, server_url, monkeypatch
):
    """`hpo stop` ends a study's last trial; the moment its FAIL is written another worker
    takes the free slot. That worker must run the stopped trial's parameters: queued after
    the FAIL they would stay WAITING for ever, the budget met by a new trial."""
    name = unique("requeue")
    path = tiny_study(workdir, epochs=1)
    submit(capsys, path, name, server_url, "--trials", "1")

    class Stopping(queue_worker.Worker):
        def _open(self, entry, study, spec):
            return queue_worker.Served(study, Interrupted(), budget.Budget(entry.trials), ())

    def stop_now(self) -> None:
        raise queue_worker.Stopped

    monkeypatch.setattr(queue_worker.StopCheck, "__call__", stop_now)
    first = Stopping(server_url, console=Console(quiet=True), pattern=name)
    other = queue_worker.Worker(server_url, console=Console(quiet=True), pattern=name)
    taken = other_worker_takes_the_slot_at_fail(monkeypatch, first, other, name)
    first.run_one(first.choose())
    trials = optuna.load_study(study_name=name, storage=server_url).trials
    stopped = trials[0]
    assert stopped.user_attrs["fail_reason"] == budget.STOPPED
    assert taken == [stopped.params]  # the other worker ran the stopped parameters
    assert not [t for t in trials if t.state == TrialState.WAITING]
    assert budget.trial_counts(trials)["finished"] == 1
    delete(server_url, name)


def test_a_dead_workers_parameters_are_queued_before_its_slot_frees(
    workdir, capsys, server_url, monkeypatch
):
    """The same race when a worker dies: the moment the heartbeat check writes its trial's
    FAIL, another worker takes the free slot; it must run the dead trial's parameters."""
    name = unique("dead")
    path = tiny_study(workdir, epochs=1)
    submit(capsys, path, name, server_url, "--trials", "1")
    checker = queue_worker.Worker(server_url, console=Console(quiet=True), pattern=name)
    other = queue_worker.Worker(server_url, console=Console(quiet=True), pattern=name)
    study = optuna.load_study(study_name=name, storage=checker.store)
    dead = study.ask()
    dead.suggest_float("x", 0.0, 1.0)
    checker.store.record_heartbeat(dead._trial_id)
    stale(checker.store, dead._trial_id)
    taken = other_worker_takes_the_slot_at_fail(monkeypatch, checker, other, name)

    def broken(study_id, trial):
        raise RuntimeError("a hook that fails")

    checker.store.after_death.append(broken)  # its error is logged, not the served study's
    budget.fail_stale(study)
    trials = optuna.load_study(study_name=name, storage=server_url).trials
    assert trials[dead.number].user_attrs["fail_reason"] == budget.DIED
    assert taken == [trials[dead.number].params]  # the re-run took the slot
    assert not [t for t in trials if t.state == TrialState.WAITING]
    assert budget.trial_counts(trials)["finished"] == 1
    (rerun,) = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    assert dead_trials.HEARTBEAT_ATTR not in rerun.system_attrs  # the dead worker's interval
    delete(server_url, name)


# --- item 7: a malformed record, bounds, a study that kills its workers -------------------


def test_a_malformed_queue_record_is_one_study_left_not_a_crash(workdir, capsys):
    url = f"sqlite:///{workdir}/bad.db"
    path = tiny_study(workdir, epochs=1)
    for name in ("good", "no-trials", "zero", "text"):
        submit(capsys, path, name, url, "--trials", "3")
    store = storage.open_storage(url)
    bad = {
        "no-trials": {"state": "queued"},
        "zero": {**record(url, "zero"), "priority": 0},
        "text": "queued",
    }
    for name, value in bad.items():
        store.set_study_user_attr(store.get_study_id_from_name(name), queue.ATTR, value)

    out = Console(record=True, width=200)
    chooser = queue_worker.Worker(url, console=out)
    assert chooser.choose().name == "good"  # no KeyError, no ZeroDivisionError
    rows, shown = list_rows(capsys, url)
    for name in bad:
        assert "left" in rows[name], shown
    assert "no-trials: its queue record is malformed (trials: missing)" in shown, shown
    assert "zero: its queue record is malformed (priority:" in shown, shown
    code, _, err = run_cli(capsys, "resume", "zero", "--storage", url)
    assert code == 2 and "malformed" in err and len(err.strip().splitlines()) == 1, err
    submit(capsys, path, "zero", url, "--trials", "3")  # submitting again repairs it
    assert record(url, "zero")["priority"] == 1


def test_an_older_hpos_record_keeps_its_study_and_options(workdir, capsys):
    """A record an older hpo wrote with a priority beyond today's bounds is served with its
    priority bounded, not left; a malformed record submitted again keeps its options; shipped
    data named by anything but a UUID and a SHA-256 (both become paths) is malformed."""
    url = f"sqlite:///{workdir}/old.db"
    path = tiny_study(workdir, epochs=1)
    for name in ("big", "small", "odd"):
        submit(capsys, path, name, url, "--trials", "3", "--max-epochs", "2")
    store = storage.open_storage(url)
    for name, priority in (("big", 200.0), ("small", 0.001)):
        study_id = store.get_study_id_from_name(name)
        store.set_study_user_attr(study_id, queue.ATTR, {**record(url, name), "priority": priority})
    entries = {e.name: e for e in queue.entries(store)}
    assert entries["big"].state == entries["small"].state == queue.QUEUED
    assert (entries["big"].priority, entries["small"].priority) == (
        queue.PRIORITY_MAX,
        queue.PRIORITY_MIN,
    )
    odd = {**record(url, "odd"), "data": {"artifact_id": "../../x", "sha256": "../y"}}
    store.set_study_user_attr(store.get_study_id_from_name("odd"), queue.ATTR, odd)
    assert queue.malformed(odd).startswith("data:")
    assert {e.name: e for e in queue.entries(store)}["odd"].state == queue.LEFT
    submit(capsys, path, "odd", url, "--trials", "4")
    assert record(url, "odd")["options"]["max_epochs"] == 2  # kept from the malformed record


def test_submit_bounds_the_priority_and_the_space(workdir, capsys):
    """A shared pool's limits: no infinite priority, no layer or vocabulary that would run
    every worker out of memory; checked on submit, and again by the worker (a record
    written by hand)."""
    url = f"sqlite:///{workdir}/bounds.db"
    path = tiny_study(workdir, epochs=1)
    huge = tiny_study(workdir, epochs=1, name="huge", space="units = { choices = [8, 1000000] }")
    cases = [
        (["--priority", "inf"], path, "--priority must be"),
        (["--priority", "1e9"], path, "--priority must be"),
        ([], huge, "space.units: 1000000 is more than a shared pool allows"),
    ]
    for args, study_path, message in cases:
        code, _, err = run_cli(capsys, "submit", str(study_path), "--storage", url, *args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)

    submit(capsys, path, "tiny", url, "--trials", "2")
    store = storage.open_storage(url)
    study_id = store.get_study_id_from_name("tiny")
    recorded = store.get_study_user_attrs(study_id)[study_loop.SPEC_ATTR]
    text = recorded["study_file_text"].replace("num_words = 100", "num_words = 100000000")
    store.set_study_user_attr(study_id, study_loop.SPEC_ATTR, {**recorded, "study_file_text": text})
    (entry,) = queue.entries(store, "tiny")
    with pytest.raises(Exception, match=r"study\.num_words: 100000000 is more than a shared pool"):
        queue.spec_of(entry)


def stale(store, trial_id: int) -> None:
    """The trial's last heartbeat long ago: its worker died."""
    beats = models.TrialHeartbeatModel.__table__
    with store.engine.begin() as connection:
        connection.execute(
            sqlalchemy.update(beats)
            .where(beats.c.trial_id == trial_id)
            .values(heartbeat=datetime(2000, 1, 1))
        )


@pytest.mark.parametrize("name", ["oom", "oom[1]"])  # a name that is also a glob pattern
def test_a_study_whose_workers_die_in_a_row_is_left(workdir, capsys, name):
    """Each trial's worker is killed (out of memory): after DEATHS_TO_LEAVE in a row the
    study is left for every worker, with the reason on `hpo list`; resume queues it again."""
    url = f"sqlite:///{workdir}/oom.db"
    path = tiny_study(workdir, epochs=1)
    submit(capsys, path, name, url, "--trials", "5")
    chooser = queue_worker.Worker(url, console=Console(quiet=True), heartbeat_s=1)
    study = optuna.load_study(study_name=name, storage=chooser.store)
    for _ in range(queue_worker.DEATHS_TO_LEAVE):
        assert chooser.choose().name == name
        trial = study.ask()
        trial.suggest_int("units", 8, 16)
        chooser.store.record_heartbeat(trial._trial_id)
        stale(chooser.store, trial._trial_id)
        budget.fail_stale(study)
    assert chooser.choose() is None
    after = record(url, name)
    assert after["state"] == queue.LEFT and "died" in after["reason"], after
    rows, shown = list_rows(capsys, url)
    assert "left" in rows[name] and "died" in shown
    assert budget.finished(study) == 0  # the dead trials do not count
    assert run_cli(capsys, "resume", name, "--storage", url)[0] == 0
    assert chooser.choose().name == name


# --- item 12: clocks and heartbeat settings across machines -------------------------------


def test_fairness_does_not_read_the_workers_clocks(workdir, capsys):
    """Trials written by a worker whose clock is 5 hours ahead (its local time zone) do not
    count as started after a later study joined: the two studies alternate."""
    url = f"sqlite:///{workdir}/clock.db"
    path = tiny_study(workdir, epochs=1)
    submit(capsys, path, "east", url, "--trials", "100")
    chooser = queue_worker.Worker(url, console=Console(quiet=True))
    east = optuna.load_study(study_name="east", storage=chooser.store)
    for _ in range(10):
        east.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.5))
    trials = models.TrialModel.__table__
    ahead = datetime.now() + timedelta(hours=5)
    with chooser.store.engine.begin() as connection:
        connection.execute(sqlalchemy.update(trials).values(datetime_start=ahead))
    submit(capsys, path, "late", url, "--trials", "100")

    picks = []
    for _ in range(4):
        entry = chooser.choose()
        study = optuna.load_study(study_name=entry.name, storage=chooser.store)
        study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.5))
        picks.append(entry.name)
    assert sorted(picks) == ["east", "east", "late", "late"], picks


def test_each_trial_is_judged_by_its_own_workers_heartbeat(server_url):
    """A worker started with --heartbeat 1 finds a trial silent for 10 s stale only if that
    trial's own worker beats every second, not one that beats every 60 s."""
    name = unique("beat")
    slow = storage.open_storage(server_url, heartbeat_s=60)
    fast = storage.open_storage(server_url, heartbeat_s=1)
    study = optuna.create_study(study_name=name, storage=slow)
    alive = study.ask()
    slow.record_heartbeat(alive._trial_id)
    dead = optuna.load_study(study_name=name, storage=fast).ask()
    fast.record_heartbeat(dead._trial_id)
    beats = models.TrialHeartbeatModel.__table__
    with fast.engine.begin() as connection:
        for trial in (alive, dead):
            when = connection.execute(
                sqlalchemy.select(beats.c.heartbeat).where(beats.c.trial_id == trial._trial_id)
            ).scalar_one()
            connection.execute(
                sqlalchemy.update(beats)
                .where(beats.c.trial_id == trial._trial_id)
                .values(heartbeat=when - timedelta(seconds=10))
            )
    budget.fail_stale(optuna.load_study(study_name=name, storage=fast))
    states = {t.number: t.state for t in optuna.load_study(study_name=name, storage=fast).trials}
    assert states[alive.number] == TrialState.RUNNING  # its grace is 3 x 60 s
    assert states[dead.number] == TrialState.FAIL  # its grace is 3 x 1 s
    delete(server_url, name)


def test_a_worker_in_another_time_zone_is_not_taken_for_dead(server_url, monkeypatch):
    """Heartbeats are the server's CURRENT_TIMESTAMP in a column without a zone: a worker whose
    session runs in New York (PGTZ, a server default) must not look 5 hours silent to a
    checker in UTC. Every hpo session speaks UTC."""
    name = unique("zone")
    monkeypatch.setenv("PGTZ", "America/New_York")  # libpq's session zone, for PostgreSQL
    writer = storage.open_storage(server_url, heartbeat_s=60)
    with writer.engine.connect() as connection:
        if "mysql" in server_url:  # the server's default zone, for MariaDB: the session's own
            zone = connection.exec_driver_sql("SELECT @@session.time_zone").scalar_one()
        else:
            zone = connection.exec_driver_sql("SHOW TIME ZONE").scalar_one()
    assert zone in ("UTC", "+00:00"), zone
    study = optuna.create_study(study_name=name, storage=writer)
    alive = study.ask()
    writer.record_heartbeat(alive._trial_id)
    monkeypatch.delenv("PGTZ")
    checker = storage.open_storage(server_url, heartbeat_s=60)
    budget.fail_stale(optuna.load_study(study_name=name, storage=checker))
    trials = optuna.load_study(study_name=name, storage=checker).trials
    assert trials[alive.number].state == TrialState.RUNNING
    delete(server_url, name)
