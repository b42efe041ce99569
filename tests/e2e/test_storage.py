"""Storage URLs against the real PostgreSQL and MariaDB servers of this machine.

Servers are at 127.0.0.1 (PostgreSQL: user postgres, trust auth; MariaDB: root, no password;
database `test` on both). .ci/run starts them when they are down; when one is unreachable the
tests skip, which conftest turns into a failure under CI=true.
"""

import sqlite3
import threading
import uuid

import optuna
import pytest
from conftest import rdb, run_cli, tiny_study
from optuna.trial import TrialState

from hpo.errors import HpoError
from hpo.search.storage import open_storage, redact


def test_optimize_on_a_server(workdir, capsys, server_url):
    name = f"tiny-{uuid.uuid4().hex[:8]}"
    path = tiny_study(workdir, epochs=2)
    code, out, err = run_cli(
        capsys, "optimize", str(path), "--trials", "2", "--study", name, "--storage", server_url
    )
    assert code == 0, err
    study = optuna.load_study(study_name=name, storage=rdb(server_url))
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2
    assert study.get_trials()[0].user_attrs["history"]["val_accuracy"]
    code, out, _ = run_cli(capsys, "list", "--storage", server_url)
    assert code == 0 and name in out
    optuna.delete_study(study_name=name, storage=rdb(server_url))


def test_wrong_database_is_one_line(server_url):
    url = server_url.rsplit("/", 1)[0] + "/no_such_database"
    with pytest.raises(HpoError, match="cannot connect") as info:
        open_storage(url)
    assert "\n" not in str(info.value)


def test_password_never_shown():
    url = "postgresql+psycopg://alice:s3cret@127.0.0.1:1/test"
    assert "s3cret" not in redact(url) and "alice" in redact(url)
    with pytest.raises(HpoError) as info:
        open_storage(url)
    assert "s3cret" not in str(info.value)


def test_sqlite_commits_in_wal_without_waiting_for_the_disk(tmp_path):
    """Every connection hpo opens on a SQLite file is in WAL mode with synchronous=NORMAL
    (1): a commit, once an epoch, does not fsync."""
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    optuna.create_study(storage=storage, study_name="s")  # uses (and returns) connections
    with storage.engine.connect() as first, storage.engine.connect() as second:
        for connection in (first, second):
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1


def test_sqlite_switched_to_wal_while_another_worker_writes(tmp_path):
    """Workers that start together on a new SQLite file: switching it to WAL needs the file to
    itself, and SQLite refuses at once (no busy wait) while another connection writes. The
    switch waits for it instead of failing with "database is locked"."""
    path = tmp_path / "study.db"
    optuna.create_study(storage=f"sqlite:///{path}", study_name="first")  # rollback journal
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")  # another worker's write, in progress
    threading.Timer(1.0, writer.execute, ["COMMIT"]).start()
    storage = open_storage(f"sqlite:///{path}")
    with storage.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    writer.close()
