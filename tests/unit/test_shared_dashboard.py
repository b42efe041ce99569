"""`hpo dashboard` on a shared machine: the Host check on loopback, a token beyond it or
`--read-only`, and a threaded server; checked with plain HTTP requests (issue 35, item 8).

The dashboard's own pages in Chromium, logged in with the token: tests/e2e/test_dashboard.py.
"""

from __future__ import annotations

import http.client
import json
import socket
import socketserver
import time
from collections.abc import Iterator

import optuna
import pytest
import yaml
from conftest import REPO, run_cli

from hpo.results import dashboard
from hpo.search.storage import DEFAULT_URL, open_storage

TOKEN = "a-long-enough-test-token-0123456789"


def request(
    port: int, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request to the dashboard on this machine; (status, headers, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def study_names() -> list[str]:
    return [s.study_name for s in optuna.get_all_study_summaries(DEFAULT_URL)]


@pytest.fixture
def study_id(workdir) -> int:
    """A study in the working directory's default storage, for the dashboard to show."""
    return optuna.create_study(study_name="shared", storage=open_storage(DEFAULT_URL))._study_id


@pytest.fixture
def serve(workdir) -> Iterator:
    """Start `make_app_server(…)` on a free port in a thread; stopped after the test."""
    servers = []

    def start(host: str = "127.0.0.1", **access):
        server = dashboard.make_app_server(
            DEFAULT_URL, host, 0, workdir / "storage" / "artifacts", **access
        )
        dashboard.serve_in_thread(server)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


# --- on loopback: the Host header is checked -----------------------------------------------


def test_loopback_refuses_a_foreign_host_header(serve, study_id):
    """A page of another site that rebinds its name to 127.0.0.1 reads nothing, writes nothing."""
    port = serve().server_port
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}"):
        status, _, body = request(port, "GET", "/api/studies", {"Host": host})
        assert status == 403, host
        assert b"shared" not in body
        assert request(port, "DELETE", f"/api/studies/{study_id}", {"Host": host})[0] == 403
    assert study_names() == ["shared"]
    # This machine's own names, with any port (an SSH tunnel or port-forward changes it)
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost:9999", f"[::1]:{port}"):
        status, _, body = request(port, "GET", "/api/studies", {"Host": host})
        assert status == 200, host
        assert [s["study_name"] for s in json.loads(body)["study_summaries"]] == ["shared"]


def test_loopback_refuses_a_write_from_another_sites_page(serve, study_id):
    """Without a token, a browser's cross-site form or fetch to 127.0.0.1 (Origin: another
    site) cannot delete or rename; the dashboard's own page (same origin) can."""
    port = serve().server_port
    own = {"Host": f"127.0.0.1:{port}", "Origin": f"http://127.0.0.1:{port}"}
    foreign = {**own, "Origin": "http://evil.example"}
    assert request(port, "DELETE", f"/api/studies/{study_id}", foreign)[0] == 403
    assert study_names() == ["shared"]
    assert request(port, "DELETE", f"/api/studies/{study_id}", own)[0] in (200, 204)
    assert study_names() == []


# --- beyond loopback: a token, or read-only ------------------------------------------------


def test_all_addresses_refuse_an_unauthenticated_delete(serve, study_id):
    """Bound to 0.0.0.0 without --token: a token is generated, and nothing is served without it."""
    server = serve("0.0.0.0")
    port = server.server_port
    for method, path in [
        ("DELETE", f"/api/studies/{study_id}"),
        ("POST", f"/api/studies/{study_id}/rename"),
        ("GET", "/api/studies"),
        ("GET", "/dashboard"),
    ]:
        status, headers, body = request(port, method, path)
        assert status == 401, (method, path)
        assert b"shared" not in body
        assert headers["WWW-Authenticate"].startswith("Bearer")
    wrong = {"Authorization": "Bearer " + "x" * 43}
    assert request(port, "DELETE", f"/api/studies/{study_id}", wrong)[0] == 401
    assert request(port, "GET", "/api/studies?token=" + "x" * 43)[0] == 401
    assert study_names() == ["shared"]
    token = server.access.token
    assert token and len(token) >= 32
    assert serve("0.0.0.0").access.token != token  # a new one each start
    bearer = {"Authorization": f"Bearer {token}"}
    assert request(port, "GET", "/api/studies", bearer)[0] == 200
    assert request(port, "DELETE", f"/api/studies/{study_id}", bearer)[0] in (200, 204)
    assert study_names() == []


def test_token_in_the_url_once_sets_a_cookie(serve, study_id):
    """`?token=` (the printed URL, clicked anywhere) logs a browser in: an HttpOnly cookie,
    the token leaves the address bar, and the redirect stays on this site; the cookie then
    reads and writes, but no page of another site writes with it (its Origin)."""
    port = serve("0.0.0.0", token=TOKEN).server_port
    status, headers, _ = request(port, "GET", f"/dashboard/studies/{study_id}?token={TOKEN}&a=1")
    assert status in (302, 303)
    assert headers["Location"] == f"/dashboard/studies/{study_id}?a=1"
    assert request(port, "GET", f"//evil.example?token={TOKEN}")[1]["Location"] == "/evil.example"
    cookie = headers["Set-Cookie"]
    attributes = {part.strip().lower() for part in cookie.split(";")}
    assert {"httponly", "samesite=lax", "path=/"} <= attributes
    assert TOKEN not in cookie  # the cookie is derived from the token, not the token
    session = {"Cookie": "other=1; " + cookie.split(";")[0]}
    assert request(port, "GET", "/api/studies", session)[0] == 200
    assert request(port, "GET", "/api/studies", {"Cookie": "hpo_dashboard=forged"})[0] == 401
    foreign = {**session, "Origin": "http://other-service.example:9000"}
    assert request(port, "DELETE", f"/api/studies/{study_id}", foreign)[0] == 403
    assert request(port, "DELETE", f"/api/studies/{study_id}", session)[0] in (200, 204)
    assert study_names() == []


def test_read_only_serves_reads_and_refuses_every_write(serve, study_id):
    """`--read-only` on 0.0.0.0: anyone reaching it reads; no method that writes gets through."""
    port = serve("0.0.0.0", read_only=True).server_port
    status, _, body = request(port, "GET", "/api/studies")
    assert status == 200 and b"shared" in body
    for method, path in [
        ("DELETE", f"/api/studies/{study_id}"),
        ("POST", f"/api/studies/{study_id}/rename"),
        ("POST", "/api/studies"),
        ("PUT", f"/api/studies/{study_id}/note"),
        ("PATCH", f"/api/studies/{study_id}"),
        ("POST", "/incompatible-rdb-schema"),
        ("OPTIONS", "/api/studies"),
    ]:
        status, headers, _ = request(port, method, path)
        assert status == 405, (method, path)
        assert headers["Allow"] == "GET, HEAD"
    assert study_names() == ["shared"]
    # With a token as well, the token does not lift read-only
    port = serve("0.0.0.0", read_only=True, token=TOKEN).server_port
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert request(port, "GET", "/api/studies")[0] == 401
    assert request(port, "GET", "/api/studies", bearer)[0] == 200
    assert request(port, "DELETE", f"/api/studies/{study_id}", bearer)[0] == 405
    assert study_names() == ["shared"]


def test_a_token_on_loopback_is_required_too(serve, study_id):
    port = serve(token=TOKEN).server_port
    assert request(port, "GET", "/api/studies")[0] == 401
    assert request(port, "GET", "/api/studies", {"Authorization": f"Bearer {TOKEN}"})[0] == 200


def test_short_token_is_one_line(workdir, capsys):
    """A placeholder such as the manifests' `change-me` is no protection: refused at start."""
    code, _, err = run_cli(capsys, "dashboard", "--host", "0.0.0.0", "--token", "change-me")
    assert code == 2 and "give at least 16" in err
    assert len(err.strip().splitlines()) == 1


# --- the command: what it prints -----------------------------------------------------------


@pytest.fixture
def started(monkeypatch):
    """`hpo dashboard` as if Ctrl-C came the moment it started serving."""

    def interrupted(self, poll_interval=0.5):
        raise KeyboardInterrupt

    monkeypatch.setattr(socketserver.BaseServer, "serve_forever", interrupted)


def test_command_prints_a_generated_token_once(workdir, capsys, started, monkeypatch):
    monkeypatch.delenv("HPO_DASHBOARD_TOKEN", raising=False)
    code, out, err = run_cli(capsys, "dashboard", "--host", "0.0.0.0", "--port", "0")
    assert code == 0, err
    [line] = [line for line in out.splitlines() if "token=" in line]
    token = line.split("token=")[1].split()[0]
    assert len(token) >= 32
    assert out.count(token) == 1


def test_command_takes_the_token_from_the_environment_and_never_prints_it(
    workdir, capsys, started, monkeypatch
):
    monkeypatch.setenv("HPO_DASHBOARD_TOKEN", TOKEN)
    code, out, err = run_cli(capsys, "dashboard", "--host", "0.0.0.0", "--port", "0")
    assert code == 0, err
    assert TOKEN not in out + err and "HPO_DASHBOARD_TOKEN" in out
    code, out, err = run_cli(capsys, "dashboard", "--host", "0.0.0.0", "--port", "0", "--read-only")
    assert code == 0 and "read-only" in out and TOKEN not in out + err


def test_command_read_only_on_all_addresses_prints_no_token(workdir, capsys, started, monkeypatch):
    monkeypatch.delenv("HPO_DASHBOARD_TOKEN", raising=False)
    code, out, err = run_cli(capsys, "dashboard", "--host", "0.0.0.0", "--port", "0", "--read-only")
    assert code == 0, err
    assert "token" not in out and "read-only" in out


# --- a stalled client ----------------------------------------------------------------------


def test_a_stalled_client_blocks_no_one(serve, study_id):
    """One connection that sends half a request and waits must not stall the next reader."""
    port = serve().server_port
    with socket.create_connection(("127.0.0.1", port)) as stalled:
        stalled.sendall(b"GET /api/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        time.sleep(0.2)
        start = time.monotonic()
        status, _, body = request(port, "GET", "/api/studies")
        assert status == 200 and b"shared" in body
        assert time.monotonic() - start < 5


# --- the manifests: the token comes from a Secret ------------------------------------------


def test_kubernetes_dashboard_takes_its_token_from_a_secret():
    docs = [
        doc
        for name in ("dashboard.yaml", "secret.yaml")
        for doc in yaml.safe_load_all((REPO / "deploy/k8s/base" / name).read_text())
    ]
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    ref = env["HPO_DASHBOARD_TOKEN"]["valueFrom"]["secretKeyRef"]
    [secret] = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == ref["name"]]
    assert ref["key"] in secret["stringData"]
    assert "--read-only" not in container["args"] and "--token" not in container["args"]
    kustomization = yaml.safe_load((REPO / "deploy/k8s/base/kustomization.yaml").read_text())
    assert "secret.yaml" in kustomization["resources"]


def test_compose_dashboard_takes_its_token_from_the_env_file():
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    token = compose["services"]["dashboard"]["environment"]["HPO_DASHBOARD_TOKEN"]
    assert token.startswith("${HPO_DASHBOARD_TOKEN:?")  # compose refuses to start without
    assert "HPO_DASHBOARD_TOKEN=" in (REPO / ".env.example").read_text()
