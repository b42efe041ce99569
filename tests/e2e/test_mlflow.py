"""--mlflow: each trial an MLflow run nested under its study's run, and analyze's handed-over
model logged and registered; against a real `mlflow server` (SQLite backend, a free loopback
port) started here, and a local SQLite store. A server that cannot be reached is one warning."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import optuna
import pytest
from conftest import run_cli, tiny_study
from mlflow import MlflowClient
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from rich.console import Console

from hpo.search import queue_worker, study_loop, tracking
from hpo.search.storage import DEFAULT_URL, open_storage
from hpo.study import studyfile

BOSTON_SPACE = """
layers = 1
units = 16
optimizer = "sgd"
loss = "mse"
learning_rate = { choices = [10.0, 0.01] }
batch_size = 16
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> str:
    """`mlflow server` on SQLite and a free port, shared by this module's tests (it takes
    seconds to start); its whole process group killed at the end."""
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = (folder / "server.log").open("w")
    mlflow_cli = Path(sys.executable).parent / "mlflow"
    server = subprocess.Popen(
        [str(mlflow_cli), "server", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
         "--default-artifact-root", (folder / "artifacts").as_uri(), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=folder,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (folder / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server did not start in 240 s"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def runs_of(client: MlflowClient, study: str) -> tuple[object, list]:
    """The study's parent run and its trials' runs (by trial number)."""
    experiment = client.get_experiment_by_name(study)
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get(tracking.ROLE_TAG) == "study"]
    assert len(parents) == 1, [r.data.tags for r in parents]
    trials = [r for r in runs if r.data.tags.get(tracking.ROLE_TAG) == "trial"]
    return parents[0], sorted(trials, key=lambda r: int(r.data.tags["hpo.trial"]))


def check_registered(uri: str, study: str, folder: Path) -> None:
    """The handed-over model registered under the study's name, tagged with its kind (as
    handover.json says), with a signature and an input example; it predicts what the
    handed-over file predicts."""
    import keras
    import mlflow.artifacts
    import mlflow.keras
    from mlflow.models import Model

    client = MlflowClient(uri)
    (version,) = client.search_model_versions(f"name = '{study}'")
    assert version.tags[tracking.STUDY_TAG] == study
    handed = json.loads((folder / "handover.json").read_text())
    kind = version.tags["hpo.handover"]
    assert kind == handed["handover"]
    local = mlflow.artifacts.download_artifacts(
        run_id=version.run_id, artifact_path="model", tracking_uri=uri, dst_path=str(folder.parent)
    )
    info = Model.load(local)
    assert info.signature is not None and info.saved_input_example_info is not None
    x = np.asarray(info.load_input_example(local))
    original = keras.saving.load_model(folder / handed["model"], compile=False)
    logged = mlflow.keras.load_model(local)
    np.testing.assert_allclose(logged.predict(x, verbose=0), original.predict(x, verbose=0))
    run = client.get_run(version.run_id)
    assert run.data.tags[tracking.ROLE_TAG] == "analysis"
    assert run.data.tags[tracking.PARENT_TAG] == runs_of(client, study)[0].info.run_id
    assert any(k.startswith("test_") for k in run.data.metrics)
    reported = {a.path for a in client.list_artifacts(version.run_id, "report")}
    assert "report/report.md" in reported


def test_trials_nest_under_the_study_and_analyze_registers_the_model(
    workdir, capsys, mlflow_server
):
    """3 trials of 2 epochs against the server, the first failed (its loss NaN): a parent run,
    a nested run a trial with its params, curve (step = epoch), state and fail reason; then
    analyze registers the handed-over model with its kind."""
    path = tiny_study(
        workdir,
        "boston_housing",
        epochs=2,
        validation="first:30",
        space=BOSTON_SPACE,
        name="served",
    )
    spec = studyfile.load(str(path))
    study = study_loop.open_study(spec, DEFAULT_URL, "served")
    study.enqueue_trial({"learning_rate": 10.0})  # diverges: its loss NaN, failed
    study.enqueue_trial({"learning_rate": 0.01})
    study.enqueue_trial({"learning_rate": 0.01})
    code, out, err = run_cli(
        capsys, "optimize", str(path), "--trials", "3", "--mlflow", mlflow_server
    )
    assert code == 0, err
    assert "Traceback" not in out + err and "warning" not in out + err
    client = MlflowClient(mlflow_server)
    parent, trials = runs_of(client, "served")
    assert parent.data.params["dataset"] == "boston_housing"
    assert parent.data.tags[tracking.STUDY_TAG] == "served"
    stored = {t.number: t for t in study.get_trials()}
    assert [int(r.data.tags["hpo.trial"]) for r in trials] == sorted(stored) == [0, 1, 2]
    for run in trials:
        trial = stored[int(run.data.tags["hpo.trial"])]
        assert run.data.tags[tracking.PARENT_TAG] == parent.info.run_id
        assert run.data.params["learning_rate"] == str(trial.params["learning_rate"])
        assert run.data.tags["hpo.state"] == trial.state.name
        curve = client.get_metric_history(run.info.run_id, "val_mae")
        assert [m.step for m in curve] == list(
            range(1, len(trial.user_attrs["history"]["val_mae"]) + 1)
        )
        if trial.state == TrialState.COMPLETE:
            assert run.info.status == "FINISHED"
            assert run.data.metrics["value"] == pytest.approx(trial.value)
            assert run.data.metrics["best_epoch"] == trial.user_attrs["best_epoch"]
            assert [m.value for m in curve] == pytest.approx(trial.user_attrs["history"]["val_mae"])
    assert [r.data.tags["hpo.state"] for r in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert trials[0].info.status == "FAILED"
    assert trials[0].data.tags["hpo.fail_reason"] == stored[0].user_attrs["fail_reason"]
    assert "became" in trials[0].data.tags["hpo.fail_reason"]

    code, out, err = run_cli(capsys, "analyze", str(path), "--mlflow", mlflow_server)
    assert code == 0, err
    assert "registered" in out and "warning" not in out + err
    check_registered(mlflow_server, "served", workdir / "storage/reports/served")


def test_a_pool_worker_logs_its_trials_and_a_pruned_one_is_killed(workdir, capsys, mlflow_server):
    """`hpo worker --mlflow`: a queued study's trial nested under its study's run; a pruned
    trial's run ends KILLED with its state."""
    path = tiny_study(workdir, epochs=1, name="pool")
    assert run_cli(capsys, "submit", str(path), "--trials", "1")[0] == 0
    worker = queue_worker.Worker(
        "sqlite:///storage/hpo.db", console=Console(quiet=True), mlflow=mlflow_server
    )
    worker.run_one(worker.choose())
    pruned = create_trial(
        state=TrialState.PRUNED,
        params={"learning_rate": 0.01},
        distributions={"learning_rate": FloatDistribution(0.001, 0.1)},
        user_attrs={"history": {"val_loss": [0.9, 0.8]}},
        intermediate_values={1: 0.9, 2: 0.8},
    )
    worker.runs(optuna.create_study(study_name="pool"), pruned)  # only the name is logged
    worker.close()  # the trials are logged on a thread: waited for
    client = MlflowClient(mlflow_server)
    parent, runs = runs_of(client, "pool")
    assert parent.data.params["metric"] == "val_accuracy"
    done = [r for r in runs if r.data.tags["hpo.state"] == "COMPLETE"]
    assert len(done) == 1 and done[0].data.params["units"] in ("8", "16")
    killed = [r for r in runs if r.data.tags["hpo.state"] == "PRUNED"]
    assert len(killed) == 1 and killed[0].info.status == "KILLED"
    steps = client.get_metric_history(killed[0].info.run_id, "val_loss")
    assert [(m.step, m.value) for m in steps] == [(1, 0.9), (2, pytest.approx(0.8))]


def claim_in(url: str, name: str, uri: str) -> tracking.ParentClaim:
    """The parent-run claim of a new study `name` in the hpo storage at `url`."""
    store = open_storage(url)
    study = optuna.create_study(storage=store, study_name=name)
    return tracking.ParentClaim(store, study._study_id, uri)


def test_workers_starting_a_study_at_once_share_one_parent_run(mlflow_server, tmp_path):
    """Four workers looking for the study's run at once settle on one through the study's
    storage (compare-and-set): the first proposed; the others' runs are deleted."""
    url = f"sqlite:///{tmp_path}/race.db"
    claim = claim_in(url, "race", mlflow_server)
    found: list[str] = []
    start = threading.Barrier(4)

    def look() -> None:
        mine = tracking.ParentClaim(open_storage(url), claim.study_id, mlflow_server)
        start.wait()
        found.append(tracking.study_run(MlflowClient(mlflow_server), "race", mine)[1])

    threads = [threading.Thread(target=look) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(found) == 4 and len(set(found)) == 1
    parent, _ = runs_of(MlflowClient(mlflow_server), "race")  # one active parent run
    assert parent.info.run_id == found[0] == claim.stored()


@pytest.mark.parametrize("kept", ["../../etc", "0" * 32, "{run}"])
def test_a_stored_parent_id_that_is_no_run_of_the_study_here_is_replaced(
    mlflow_server, tmp_path, kept
):
    """The storage is shared: an id in it that is not a run id, names no run on this server,
    or names another study's run is data to replace, never a run to log under."""
    client = MlflowClient(mlflow_server)
    claim = claim_in(f"sqlite:///{tmp_path}/stale.db", "stale", mlflow_server)
    _, other = tracking.study_run(client, "other", claim_in(f"sqlite:///{tmp_path}/o.db",
                                                            "other", mlflow_server))  # fmt: skip
    runs = {tracking.uri_key(mlflow_server): kept.format(run=other)}
    claim.store.set_study_user_attr(claim.study_id, tracking.RUNS_ATTR, runs)
    exp_id, parent = tracking.study_run(client, "stale", claim)
    assert parent not in {kept, other} and claim.stored() == parent
    assert client.get_run(parent).data.tags[tracking.STUDY_TAG] == "stale"
    assert tracking.study_run(client, "stale", claim) == (exp_id, parent)  # found again


def test_a_local_sqlite_store_shared_by_two_workers(workdir, capsys):
    """--mlflow sqlite:///FILE, no server, and two worker processes that open the new store at
    once (the second waits out the first's table creation): every trial under one parent run,
    and the registered model."""
    uri = f"sqlite:///{workdir}/mlflow.db"
    path = tiny_study(workdir, epochs=1)
    argv = ["optimize", str(path), "--trials", "4", "--workers", "2", "--mlflow", uri]
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert "warning" not in out + err and "worker(s) failed" not in out + err
    client = MlflowClient(uri)
    _, trials = runs_of(client, "tiny")  # one parent run
    assert [r.data.tags["hpo.trial"] for r in trials] == ["0", "1", "2", "3"]
    code, _, err = run_cli(capsys, "analyze", str(path), "--mlflow", uri)
    assert code == 0, err
    check_registered(uri, "tiny", workdir / "storage/reports/tiny")


def test_an_unreachable_server_is_one_warning_and_the_search_goes_on(workdir, capsys):
    """A closed port: the search and the analysis complete, each with one warning line."""
    closed = f"http://127.0.0.1:{free_port()}"
    path = tiny_study(workdir, epochs=1)
    code, out, err = run_cli(capsys, "optimize", str(path), "--trials", "2", "--mlflow", closed)
    assert code == 0, err
    assert "Traceback" not in out + err
    warnings = [line for line in (out + err).splitlines() if "--mlflow" in line]
    assert len(warnings) == 1 and "cannot log the trials" in warnings[0], out + err
    assert len(optuna.load_study(study_name="tiny", storage="sqlite:///storage/hpo.db").trials) == 2
    code, out, err = run_cli(capsys, "analyze", str(path), "--mlflow", closed)
    assert code == 0, err
    warnings = [line for line in (out + err).splitlines() if "--mlflow" in line]
    assert len(warnings) == 1 and "the analysis stands" in warnings[0]
    assert (workdir / "storage/reports/tiny/report.md").exists()


def test_a_file_store_mlflow_refuses_is_one_line(workdir, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    path = tiny_study(workdir, epochs=1)
    uri = (workdir / "mlruns").as_uri()
    code, out, err = run_cli(capsys, "optimize", str(path), "--trials", "1", "--mlflow", uri)
    assert code == 2
    assert "MLflow 3 refuses a file store; use sqlite:///PATH.db" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in out + err


def test_without_a_uri_mlflow_is_never_imported():
    program = (
        "import sys\n"
        "import hpo.api, hpo.cli, hpo.search.study_loop, hpo.search.queue_worker\n"
        "from hpo.search.search_options import SearchOptions\n"
        "SearchOptions('imdb', mlflow=None)\n"
        "assert 'mlflow' not in sys.modules, 'imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
