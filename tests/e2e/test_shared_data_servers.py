"""Issue 35, items 9 and 13, against real processes and database servers: the stored
preparation is written once by one of two first workers on SQLite, PostgreSQL and MariaDB, and
no password reaches a line printed by a process stopped while it starts or by a failed
connection. The rest of these checks need neither: tests/unit/test_shared_data.py."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import optuna
import pytest
from conftest import SERVERS, reachable
from test_shared_data import SECRET, _preparation

import hpo
from hpo.data import stored_preparation
from hpo.search import storage


def test_an_unreachable_server_is_named_without_its_query_password():
    with pytest.raises(hpo.HpoError) as refused:
        storage.open_storage(f"postgresql+psycopg://u@127.0.0.1:1/hpo?password={SECRET}")
    assert "cannot connect" in str(refused.value)
    assert SECRET not in str(refused.value), refused.value


@pytest.fixture(params=["sqlite", *sorted(SERVERS)])
def shared_study(request, tmp_path):
    """A fresh study in each storage kind, and a second handle on it (another worker)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'shared.db'}"
    else:
        url = SERVERS[request.param]
        if not reachable(url):
            pytest.skip(f"{request.param} is not reachable at {url}")
    name = f"prep-{uuid.uuid4().hex[:12]}"
    first = optuna.create_study(storage=storage.open_storage(url), study_name=name)
    second = optuna.load_study(study_name=name, storage=storage.open_storage(url))
    yield first, second
    optuna.delete_study(study_name=name, storage=storage.open_storage(url))


@pytest.mark.parametrize("columns", [10, 12_000], ids=["one chunk", "many chunks"])
def test_two_first_workers_with_different_files_store_one_preparation(
    shared_study, monkeypatch, columns
):
    """Worker B checks, finds nothing and stores its file's preparation between worker A's
    check and A's write: exactly one of them must win, the other stop."""
    a_study, b_study = shared_study
    a, b = _preparation(1.0, columns), _preparation(2.0, columns // 2)
    real = optuna.Study.set_user_attr
    outcomes: dict[str, str] = {}

    def interleaved(self, key, value):
        if self is a_study and "b" not in outcomes:
            outcomes["b"] = "running"
            try:
                stored_preparation.save_or_check(b_study, b, "b.csv")
                outcomes["b"] = "stored"
            except hpo.HpoError:
                outcomes["b"] = "refused"
        return real(self, key, value)

    monkeypatch.setattr(optuna.Study, "set_user_attr", interleaved)
    try:
        stored_preparation.save_or_check(a_study, a, "a.csv")
        outcomes["a"] = "stored"
    except hpo.HpoError as exc:
        assert "file was changed" in str(exc)
        outcomes["a"] = "refused"
    monkeypatch.setattr(optuna.Study, "set_user_attr", real)
    assert sorted(outcomes.values()) == ["refused", "stored"], outcomes
    winner = a if outcomes["a"] == "stored" else b
    for study in shared_study:
        assert stored_preparation.load(study) == winner
        stored_preparation.save_or_check(study, winner, "same.csv")  # the winner's data goes on


def test_the_same_file_from_two_first_workers_is_accepted_by_both(shared_study, monkeypatch):
    a_study, b_study = shared_study
    same = _preparation(3.0)
    real = optuna.Study.set_user_attr
    done: list[str] = []

    def interleaved(self, key, value):
        if self is a_study and not done:
            done.append("b")
            stored_preparation.save_or_check(b_study, same, "b.csv")
        return real(self, key, value)

    monkeypatch.setattr(optuna.Study, "set_user_attr", interleaved)
    stored_preparation.save_or_check(a_study, same, "a.csv")
    assert done == ["b"] and stored_preparation.load(b_study) == same


def test_a_stop_while_starting_shows_no_query_password(tmp_path):
    """The "interrupted while starting" resume line (hpo/__main__.py, before hpo is imported)
    hides a ?password= as every other printed URL does."""
    import signal
    import subprocess
    import time

    url = f"postgresql+psycopg://u@db.example/hpo?password={SECRET}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpo", "list", "--storage", url],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    status = Path(f"/proc/{proc.pid}/status")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until __main__ catches SIGTERM: it is importing hpo
        caught = next(line for line in status.read_text().splitlines() if line[:7] == "SigCgt:")
        if int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "interrupted while starting" in err, err
    assert SECRET not in out + err and "password=***" in err
