"""Many workers on one server: connections per worker bounded, 32 processes on PostgreSQL.

The 32-worker run is bench/storage_load.py's (an objective that returns at once, so only the
storage and the budget are exercised); its workers are forked from a server process that
imported hpo once, so the test costs what the storage costs, not 32 imports of Optuna.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
import threading
import time

import optuna
import pytest
import sqlalchemy
from conftest import REPO, SERVERS, reachable, run_cli

from hpo.errors import HpoError
from hpo.search import storage

sys.path.insert(0, str(REPO / "bench"))
import storage_load


def test_pool_setting(monkeypatch):
    monkeypatch.delenv("HPO_DB_POOL", raising=False)
    assert storage.pool_setting() == "1"
    for value in ("null", "NULL", "1"):
        monkeypatch.setenv("HPO_DB_POOL", value)
        assert storage.pool_setting() == value.lower()
    for value in ("0", "3", "-1", "many"):
        monkeypatch.setenv("HPO_DB_POOL", value)
        with pytest.raises(HpoError, match="HPO_DB_POOL"):
            storage.pool_setting()


def postgres() -> str:
    url = SERVERS["postgresql"]
    if not reachable(url):
        pytest.skip(f"postgresql is not reachable at {url}")
    return url


def test_a_worker_keeps_one_connection_and_prepares_nothing(monkeypatch):
    """One pooled connection (a second only for the worker that creates a new database's
    tables: Optuna nests its calls there), and no server-side prepared statements, which a
    pooler in transaction mode would hand to other clients."""
    monkeypatch.delenv("HPO_DB_POOL", raising=False)
    store = storage.open_storage(postgres())
    pool = store.engine.pool
    assert isinstance(pool, sqlalchemy.pool.QueuePool)
    assert (pool.size(), pool._max_overflow) == (1, 1)
    with store.engine.connect() as connection:
        assert connection.connection.dbapi_connection.prepare_threshold is None
    store.engine.dispose()


def test_null_pool_keeps_no_connection(monkeypatch):
    monkeypatch.setenv("HPO_DB_POOL", "null")
    store = storage.open_storage(postgres())
    assert isinstance(store.engine.pool, sqlalchemy.pool.NullPool)
    opened, closed = [], []
    sqlalchemy.event.listen(store.engine, "connect", lambda *_: opened.append(1))
    sqlalchemy.event.listen(store.engine, "close", lambda *_: closed.append(1))
    for _ in range(3):
        assert isinstance(store.get_all_studies(), list)
    assert len(opened) == len(closed) == 3  # a connection per call, none kept


@pytest.mark.parametrize(
    "message",
    [
        "connection failed: FATAL:  sorry, too many clients already",
        "FATAL:  remaining connection slots are reserved for non-replication superuser",
        "(1040, 'Too many connections')",
    ],
)
@pytest.mark.parametrize("wrapped", [False, True])
def test_a_full_server_at_start_is_waited_for(monkeypatch, caplog, message, wrapped):
    """Workers starting together can find the server at its connection limit: they wait for
    a free connection (logged) instead of dying with 'cannot connect'. The refusal comes
    from SQLAlchemy (creating the tables) or wrapped by Optuna (its schema version check)."""
    calls = []
    real_init = storage.ReconnectingRDBStorage.__init__

    def refuse_once(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            refused = sqlalchemy.exc.OperationalError("connect", {}, Exception(message))
            if not wrapped:
                raise refused
            raise optuna.exceptions.StorageInternalError("during the commit") from refused
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(storage.ReconnectingRDBStorage, "__init__", refuse_once)
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    with caplog.at_level(logging.WARNING, logger="hpo.search.storage"):
        store = storage.open_storage("sqlite:///:memory:", reconnect_s=5)
    assert len(calls) == 2 and store.get_all_studies() == []
    assert "no free connection" in caplog.text


def test_a_server_that_stays_full_is_one_line(monkeypatch):
    def refuse(self, *args, **kwargs):
        raise sqlalchemy.exc.OperationalError("connect", {}, Exception("too many clients"))

    monkeypatch.setattr(storage.ReconnectingRDBStorage, "__init__", refuse)
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    with pytest.raises(HpoError, match="cannot connect"):
        storage.open_storage("postgresql+psycopg://u:secret@127.0.0.1:1/db", reconnect_s=3)


@pytest.mark.slow
def test_32_workers_on_postgresql_meet_the_budget_exactly():
    postgres()
    storage_load.ensure_database("postgresql")
    workers, budget = 32, 100
    row = storage_load.run(
        storage_load.URLS["postgresql"],
        workers,
        budget,
        kind="postgresql",
        limit_s=240,
        reconnect_s=60,
    )
    assert row["counted"] == budget  # not one more, not one less, across 32 processes
    assert row["errors"] == 0, row["first_error"]
    assert row["retries"] == 0, row["first_retry"]  # no connection refused or lost
    assert row["held_per_worker"] == 1  # the heartbeat waits for the trial's call
    # The server's own count (pg_stat_activity's client connections): one a worker.
    assert 0 < row["server_peak"] <= workers + 1
    assert row["server_peak_open"] <= workers + 1


def test_a_failed_start_closes_its_connections(monkeypatch):
    """A worker that fails half-way through opening the storage (the server filled up between
    two of Optuna's start-up queries) closes the connection it had, instead of keeping a slot
    of the full server until garbage collection; then waits and retries."""
    real_version_check = optuna.storages._rdb.storage._VersionManager.__init__
    engines, closed = [], []

    def full_after_tables(self, url, engine, *args, **kwargs):
        if not engines:
            engines.append(engine)
            sqlalchemy.event.listen(engine, "close", lambda *_: closed.append(1))
            with engine.connect():  # a pooled connection, idle once returned
                pass
            refused = sqlalchemy.exc.OperationalError("connect", {}, Exception("too many clients"))
            raise optuna.exceptions.StorageInternalError("during the commit") from refused
        real_version_check(self, url, engine, *args, **kwargs)

    monkeypatch.setattr(optuna.storages._rdb.storage._VersionManager, "__init__", full_after_tables)
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    store = storage.open_storage("sqlite:///:memory:", reconnect_s=5)
    assert closed  # closed at the failure, not at garbage collection
    assert store.get_all_studies() == []


def test_a_worker_takes_one_connection_at_a_time(workdir):
    """Optuna's heartbeat thread beats while the trial's own storage calls run: serialized,
    the two never hold two connections at once, so a worker needs one server connection."""
    store = storage.open_storage(f"sqlite:///{workdir}/one.db")
    study = optuna.create_study(storage=store)
    trial_id = store.create_new_trial(study._study_id)
    held, most, first = [0], [0], [True]

    def checkout(*_):
        held[0] += 1
        most[0] = max(most[0], held[0])
        if first[0]:  # keep the first call's connection long enough for the other to start
            first[0] = False
            time.sleep(0.3)

    def checkin(*_):
        held[0] -= 1

    sqlalchemy.event.listen(store.engine, "checkout", checkout)
    sqlalchemy.event.listen(store.engine, "checkin", checkin)
    beat = threading.Thread(target=store.get_all_trials, args=(study._study_id,))
    beat.start()
    time.sleep(0.1)
    store.record_heartbeat(trial_id)  # the heartbeat thread's call, during the trial's
    beat.join()
    assert most[0] == 1


def test_an_old_schema_is_one_line(workdir, capsys):
    """A database made by an older Optuna: Optuna's advice, in one line, not a traceback."""
    url = f"sqlite:///{workdir}/old.db"
    storage.open_storage(url).engine.dispose()
    with sqlite3.connect(workdir / "old.db") as db:
        db.execute("UPDATE alembic_version SET version_num = 'v3.0.0.a'")
    code, _, err = run_cli(capsys, "list", "--storage", url)
    assert code == 2
    assert "optuna storage upgrade" in err and len(err.strip().splitlines()) == 1
