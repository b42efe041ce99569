"""A worker whose database goes away mid-study, against the real PostgreSQL and MariaDB
servers behind a TCP proxy the test cuts and restores."""

import time
import uuid

import optuna
import pytest
from conftest import rdb, tiny_study
from optuna.trial import TrialState
from sqlalchemy.engine import make_url
from tcp_proxy import TcpProxy
from test_distributed import counted, finish, hpo, running_mid_training

# Long enough that a poll of the study finds a trial mid-training: with the fused loop a tiny
# epoch takes milliseconds, and 30 of them slipped between polls on an idle machine.
EPOCHS = 300


def through_proxy(server_url: str) -> tuple[TcpProxy, str]:
    url = make_url(server_url)
    proxy = TcpProxy(url.port)
    proxy.start()
    return proxy, url.set(port=proxy.port).render_as_string(hide_password=False)


def wait_mid_training(name: str, server_url: str) -> optuna.trial.FrozenTrial:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.1)
        try:
            study = optuna.load_study(study_name=name, storage=rdb(server_url))
        except KeyError:
            continue
        trial = running_mid_training(study, EPOCHS)
        if trial is not None:
            return trial
    raise AssertionError("no trial got into training")


def test_worker_waits_out_a_database_outage(workdir, server_url):
    proxy, url = through_proxy(server_url)
    name = f"outage-{uuid.uuid4().hex[:8]}"
    args = ["--trials", "2", "--study", name, "--storage", url, "--heartbeat", "5"]
    worker = hpo(workdir, "optimize", str(tiny_study(workdir, epochs=EPOCHS)), *args)
    during = wait_mid_training(name, server_url)
    proxy.cut()
    time.sleep(5)
    proxy.start()
    out = finish(worker)
    assert "connection lost" in out and "reconnected after" in out, out
    assert "Traceback" not in out and "error" not in out, out
    study = optuna.load_study(study_name=name, storage=rdb(server_url))
    assert study.trials[during.number].state == TrialState.COMPLETE  # trained through it
    assert len(counted(study)) == 2
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    optuna.delete_study(study_name=name, storage=rdb(server_url))


# The give-up path is the same for every server once a lost connection is recognised, which the
# outage test checks on both; one server keeps the suite short.
@pytest.mark.parametrize("server_url", ["postgresql"], indirect=True)
def test_worker_gives_up_in_one_line_and_the_study_resumes(workdir, server_url):
    proxy, url = through_proxy(server_url)
    name = f"gone-{uuid.uuid4().hex[:8]}"
    path = str(tiny_study(workdir, epochs=EPOCHS))
    args = ["--trials", "2", "--study", name, "--storage", url, "--heartbeat", "1"]
    worker = hpo(workdir, "optimize", path, *args, "--reconnect", "3")
    during = wait_mid_training(name, server_url)
    proxy.cut()
    out, _ = worker.communicate(timeout=120)
    assert worker.returncode == 2, out
    assert "Traceback" not in out, out
    last = out.strip().splitlines()[-1]
    assert "lost the connection" in last and "did not come back within 3 s" in last, out
    assert "resume with: hpo optimize" in last and "--trials 2" in last, out
    proxy.start()
    out = finish(hpo(workdir, "optimize", path, *args))
    study = optuna.load_study(study_name=name, storage=rdb(server_url))
    assert study.trials[during.number].state == TrialState.FAIL  # failed by its heartbeat
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == during.number]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert len(counted(study)) == 2, out
    optuna.delete_study(study_name=name, storage=rdb(server_url))
