"""Issue 35's end-to-end check: one shared PostgreSQL study walked through as a team would,
with what a careless or hostile writer of the shared storage can do to it.

A user submits an own-data study and moves its CSV away; a pool of two slots, started from
a script with `&` in another folder, serves it to its budget beside two malformed queue
records, with a password in its URL; SIGTERM to the pool's PID alone ends it. Then analyze
will not replace a user's folder, a handover record naming a path outside the cache writes
nothing there, no listing shows a password, and the dashboard refuses a foreign Host header
on loopback and an unauthenticated DELETE beyond it. The pieces have tests of their own
(tests/*/test_shared_*.py); this one holds them together as the commands are used.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from conftest import SERVERS, rdb, run_cli
from optuna.trial import TrialState
from test_own_data import churn, study_file
from test_queue import postgres  # noqa: F401  (the fixture)

from hpo.search import budget, queue

SECRET = "Zq7-not-a-real-password"
POSTGRES = SERVERS["postgresql"]
# Trust authentication takes any password: the URL works, and its password must never show.
WITH_PASSWORD = f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:5432/test"
AS_QUERY = f"postgresql+psycopg://postgres@127.0.0.1:5432/test?password={SECRET}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dashboard(folder: Path, host: str, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hpo", "dashboard", "--storage", POSTGRES, "--host", host,
         "--port", str(port)],
        cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={k: v for k, v in os.environ.items() if k != "HPO_DASHBOARD_TOKEN"},
    )  # fmt: skip


def http_status(port: int, method: str, path: str, host: str | None = None) -> int:
    deadline = time.monotonic() + 60  # the server's start-up imports optuna-dashboard
    while True:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request(method, path, headers={"Host": host} if host else {})
            return connection.getresponse().status
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
        finally:
            connection.close()


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.add(int(entry.name))
            except (OSError, IndexError):
                pass
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.usefixtures("postgres")
def test_a_shared_study_survives_its_storage_and_its_users(workdir, tmp_path_factory, capsys):
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    store = rdb(POSTGRES)
    shared = workdir / "shared-artifacts"
    where = ["--storage", POSTGRES, "--artifacts", str(shared)]

    # An own-data study is submitted, then its CSV is moved away.
    churn(160).to_csv(workdir / "churn.csv", index=False)
    churn(5, seed=1).drop(columns="left").to_csv(workdir / "new.csv", index=False)
    data = 'train = "churn.csv"\ntarget = "left"\ndrop = ["id"]\ncategorical = ["plan"]'
    path = study_file(workdir, name, data)
    assert run_cli(capsys, "submit", str(path), "--trials", "4", *where)[0] == 0
    (workdir / "churn.csv").rename(workdir / "moved.csv")

    # Two malformed queue records beside it, as a hand or an older hpo might write them.
    bad = [f"{name}-bad-{i}" for i in range(2)]
    for study_name, record in zip(
        bad, ({"state": "queued"}, {"state": "queued", "trials": 3, "priority": 0}), strict=True
    ):
        optuna.create_study(study_name=study_name, storage=store).set_user_attr(queue.ATTR, record)

    # The pool, in another folder, started from a script with `&` (SIGINT ignored), with the
    # password in its URL; dashboards on loopback and on every address meanwhile.
    elsewhere = tmp_path_factory.mktemp("pool-machine")
    script = elsewhere / "pool.sh"
    script.write_text(
        f"{sys.executable} -m hpo worker --storage '{WITH_PASSWORD}' --artifacts '{shared}' "
        f"--studies '{name}*' --slots 2 --poll 0.5 --recycle-after 0 > pool.out 2>&1 &\n"
        "echo $! > pool.pid\nwait $!\necho $? > pool.status\n"
    )
    env = {**os.environ, "HPO_CACHE_DIR": str(elsewhere / "cache")}
    runner = subprocess.Popen(["bash", str(script)], cwd=elsewhere, env=env)
    loopback, everyone = free_port(), free_port()
    servers = [dashboard(workdir, "127.0.0.1", loopback), dashboard(workdir, "0.0.0.0", everyone)]
    try:
        deadline = time.monotonic() + 240
        study = optuna.load_study(study_name=name, storage=store)
        while budget.finished(study) < 4:
            assert time.monotonic() < deadline, (elsewhere / "pool.out").read_text()
            assert runner.poll() is None, (elsewhere / "pool.out").read_text()
            time.sleep(1)
        pid = int((elsewhere / "pool.pid").read_text())
        slots = children_of(pid)
        assert len(slots) == 1  # --slots 2: the parent and one child

        # The dashboards: a foreign Host refused on loopback; no DELETE without the token.
        study_id = study._study_id
        assert http_status(loopback, "GET", "/api/studies", f"127.0.0.1:{loopback}") == 200
        assert http_status(loopback, "GET", "/api/studies", "evil.example") == 403
        assert http_status(everyone, "DELETE", f"/api/studies/{study_id}") == 401
        assert optuna.load_study(study_name=name, storage=store).trials  # still there

        # SIGTERM to the pool's PID alone: 143 within 90 s, no child left, no trial RUNNING.
        os.kill(pid, signal.SIGTERM)
        runner.wait(timeout=90)
    finally:
        for process in (runner, *servers):
            if process.poll() is None:
                process.kill()
        for server in servers:
            server.communicate()
    assert (elsewhere / "pool.status").read_text().strip() == "143"
    assert not [child for child in slots if alive(child)]
    trials = optuna.load_study(study_name=name, storage=store).trials
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert budget.finished(optuna.load_study(study_name=name, storage=store)) == 4
    said = (elsewhere / "pool.out").read_text()
    said += "".join(p.read_text() for p in (elsewhere / "storage" / "logs").glob("*.log"))
    assert f"{name}: serving" in said and SECRET not in said and "Traceback" not in said

    # Every listing: no password, and the malformed records each one study left, with why.
    for url in (WITH_PASSWORD, AS_QUERY):
        code, out, err = run_cli(capsys, "list", "--storage", url)
        assert code == 0 and SECRET not in out + err and name in out
        assert all(b in out for b in bad) and "left" in out
    code, out, err = run_cli(capsys, "list", "--storage", f"postgresql://u:{SECRET}@h:port/x")
    assert code == 2 and SECRET not in out + err and len(err.strip().splitlines()) == 1

    # analyze --out onto a user's folder: refused, the user's file kept. (The submitter
    # has the CSV back: analyze retrains on it.)
    (workdir / "moved.csv").rename(workdir / "churn.csv")
    mine = workdir / "my-notes"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    code, _, err = run_cli(capsys, "analyze", str(path), "--study", name, "--out", str(mine),
                           *where)  # fmt: skip
    assert code == 2 and "Traceback" not in err
    assert (mine / "thesis.tex").read_text() == "years of work"
    assert run_cli(capsys, "analyze", str(path), "--study", name, *where)[0] == 0

    # A handover record rewritten to a path outside the cache; predict on a machine without
    # analyze's folder (here: another folder, analyze's removed), which fetches the handover.
    shutil.rmtree(workdir / "storage" / "reports" / name)
    study = optuna.load_study(study_name=name, storage=store)
    record = dict(study.user_attrs["handover_artifacts"])
    target = tmp_path_factory.mktemp("site-packages") / "evil.pth"
    record["file"] = "/../../../../../../../../.." + str(target)
    study.set_user_attr("handover_artifacts", record)
    laptop = tmp_path_factory.mktemp("laptop")
    os.chdir(laptop)
    code, _, err = run_cli(capsys, "predict", str(path), str(workdir / "new.csv"), "--study",
                           name, *where)  # fmt: skip
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not target.exists() and not list(target.parent.iterdir())
    for study_name in (name, *bad):
        optuna.delete_study(study_name=study_name, storage=store)
