"""`hpo dashboard`: optuna-dashboard serves what hpo records; checked over HTTP and in Chromium."""

import json
import shutil
import socket
import subprocess
import tempfile
import urllib.request
import uuid
from pathlib import Path

import optuna
import pytest
from conftest import ANALYSIS_ARTIFACTS, run_cli, tiny_study

from hpo.results import dashboard
from hpo.search.storage import DEFAULT_URL


@pytest.fixture
def served(workdir, capsys):
    """A short real study, and the dashboard serving its storage on a free loopback port."""
    path = tiny_study(workdir, epochs=3)
    code, _, err = run_cli(capsys, "optimize", str(path), "--trials", "3")
    assert code == 0, err
    code, _, err = run_cli(capsys, "analyze", str(path))
    assert code == 0, err
    server = dashboard.make_app_server(
        DEFAULT_URL, "127.0.0.1", 0, workdir / "storage" / "artifacts"
    )
    dashboard.serve_in_thread(server)
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def test_api_serves_studies_trials_and_curves(served):
    summaries = get_json(f"{served}/api/studies")["study_summaries"]
    assert [s["study_name"] for s in summaries] == ["tiny"]
    detail = get_json(f"{served}/api/studies/{summaries[0]['study_id']}?after=0")
    study = optuna.load_study(study_name="tiny", storage=DEFAULT_URL)
    assert len(detail["trials"]) == len(study.trials) == 3
    for served_trial, trial in zip(detail["trials"], study.trials, strict=True):
        curve = {point["step"]: point["value"] for point in served_trial["intermediate_values"]}
        assert curve == pytest.approx(trial.intermediate_values)
        attrs = {a["key"] for a in served_trial["user_attrs"]}
        assert {"history", "best_epoch"} <= attrs
    assert "Best configuration" in detail["note"]["body"]  # written by hpo analyze
    # analyze's figures, report and handed-over model
    names = sorted(artifact["filename"] for artifact in detail["artifacts"])
    assert names == ANALYSIS_ARTIFACTS
    assert {a["key"] for a in detail["user_attrs"]} >= {"hpo", "analysis"}


def test_port_in_use_and_bad_url_are_one_line(workdir, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = run_cli(capsys, "dashboard", "--port", str(port))
    assert code == 2 and f"port {port} on 127.0.0.1 is in use" in err
    code, _, err = run_cli(capsys, "dashboard", "--storage", "nonsense")
    assert code == 2 and "is not a database URL" in err
    assert len(err.strip().splitlines()) == 1


needs_chromium = pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="Debian's chromium is not installed (.ci/run installs it)",
)


def dom_of(url: str, *flags: str) -> str:
    """The page at `url` as headless Chromium renders it (its scripts run), as text."""
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [
                dashboard.find_chromium(),
                *dashboard.CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "--virtual-time-budget=8000",
                *flags,
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout


@needs_chromium
def test_page_renders_in_headless_chromium(served, workdir):
    png = workdir / "trials.png"
    dom = dashboard.screenshot(f"{served}/dashboard/studies/1/trials", png)
    assert "tiny (id=1)" in dom
    assert "3 Trials" in dom
    assert png.stat().st_size > 20_000  # a rendered page, not a blank one
    # DNS rebinding: another site's name resolved to 127.0.0.1 gets nothing from the server.
    port = served.rsplit(":", 1)[1]
    rebound = dom_of(
        f"http://rebind.example:{port}/dashboard/studies/1/trials",
        "--host-resolver-rules=MAP rebind.example 127.0.0.1",
    )
    assert "answers only to localhost" in rebound and "tiny" not in rebound
    # Beyond loopback: nothing without the token; the printed URL (?token=) logs in, and the
    # page's own requests then carry the cookie it set.
    guarded = dashboard.make_app_server(
        DEFAULT_URL, "0.0.0.0", 0, workdir / "storage" / "artifacts"
    )
    read_only = dashboard.make_app_server(
        DEFAULT_URL, "0.0.0.0", 0, workdir / "storage" / "artifacts", read_only=True
    )
    for server in (guarded, read_only):
        dashboard.serve_in_thread(server)
    try:
        page = f"http://127.0.0.1:{guarded.server_port}/dashboard/studies/1/trials"
        refused = dom_of(page)
        assert "needs its token" in refused and "tiny" not in refused
        dom = dom_of(f"{page}?token={guarded.access.token}")
        assert "tiny (id=1)" in dom and "3 Trials" in dom
        # --read-only without a token: the page reads as on loopback
        dom = dom_of(f"http://127.0.0.1:{read_only.server_port}/dashboard/studies/1/trials")
        assert "tiny (id=1)" in dom and "3 Trials" in dom
    finally:
        for server in (guarded, read_only):
            server.shutdown()
            server.server_close()


@needs_chromium
def test_screenshot_command(workdir, capsys):
    path = tiny_study(workdir, epochs=2)
    assert run_cli(capsys, "optimize", str(path), "--trials", "2")[0] == 0
    png = workdir / "study.png"
    code, out, err = run_cli(
        capsys, "dashboard", "--port", "0", "--study", "tiny", "--screenshot", str(png)
    )
    assert code == 0, err
    assert "/dashboard/studies/1" in out and png.stat().st_size > 20_000
    # Beyond loopback the screenshot logs in with the token it made (a refusal is a small PNG)
    png.unlink()
    code, out, err = run_cli(
        capsys, "dashboard", "--host", "0.0.0.0", "--port", "0", "--study", "tiny",
        "--screenshot", str(png),
    )  # fmt: skip
    assert code == 0, err
    assert "token" not in out and png.stat().st_size > 20_000


def test_serves_database_server_storages(server_url):
    """The same command on PostgreSQL and MariaDB URLs (the study list comes from the server)."""
    name = f"dash-{uuid.uuid4().hex[:8]}"
    optuna.create_study(study_name=name, storage=server_url)
    server = dashboard.make_app_server(server_url, "127.0.0.1", 0, Path(tempfile.mkdtemp()))
    dashboard.serve_in_thread(server)
    try:
        names = [
            s["study_name"]
            for s in get_json(f"http://127.0.0.1:{server.server_port}/api/studies")[
                "study_summaries"
            ]
        ]
        assert name in names
    finally:
        server.shutdown()
        server.server_close()
        optuna.delete_study(study_name=name, storage=server_url)
