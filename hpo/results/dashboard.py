"""`hpo dashboard`: optuna-dashboard's WSGI app on the storage and artifact store hpo writes.

The server is optuna-dashboard's own Python API (`optuna_dashboard.wsgi`) behind the standard
library's WSGI server, one thread a connection so that a stalled client stalls only itself,
and bound here so that a port in use is one clear line. optuna-dashboard's API deletes,
renames and `tell`s, and serves every artifact, so `guard` stands in front of it: on loopback
the Host header must name this machine (no DNS rebinding) and a write must come from the
dashboard's own page; beyond loopback a token is needed (given, or generated and printed as
Jupyter does) unless `--read-only` refuses every write. `screenshot()` drives Debian's
headless Chromium to a study's page, for the README and the end-to-end test.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from rich.console import Console

from hpo.artifacts import open_store
from hpo.errors import HpoError
from hpo.search.storage import open_storage, redact

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--hide-scrollbars",
]


MIN_TOKEN = 16
COOKIE = "hpo_dashboard"
READS = ("GET", "HEAD")  # every other method may write, and read-only refuses it
WILDCARDS = ("0.0.0.0", "::", "")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def is_loopback(host: str) -> bool:
    """Whether `host` (an address to bind, or a Host header's name) is this machine only."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Access:
    """Who may do what on one dashboard: the Host check on loopback, the token, writes."""

    loopback: bool
    token: str | None
    read_only: bool
    generated: bool = False


def access_for(host: str, token: str | None, read_only: bool) -> Access:
    """A dashboard beyond loopback with neither a token nor --read-only gets a fresh token."""
    if token is not None and len(token) < MIN_TOKEN:
        raise HpoError(
            f"the dashboard's token (--token or HPO_DASHBOARD_TOKEN) has {len(token)} "
            f"characters; give at least {MIN_TOKEN}, e.g. "
            "python -c 'import secrets; print(secrets.token_urlsafe())'"
        )
    loopback = is_loopback(host)
    if token is None and not loopback and not read_only:
        return Access(loopback, secrets.token_urlsafe(32), read_only, generated=True)
    return Access(loopback, token, read_only)


def _cookie_value(token: str) -> str:
    """What the browser keeps: derived from the token, so the cookie is not the token."""
    return hmac.new(token.encode(), b"hpo dashboard session", hashlib.sha256).hexdigest()


def _cookies(environ: dict[str, Any]) -> dict[str, str]:
    """The request's cookies, read leniently (another app's odd cookie on localhost must not
    hide ours, as it would from http.cookies)."""
    pairs = (part.strip().partition("=") for part in environ.get("HTTP_COOKIE", "").split(";"))
    return {name: value for name, _, value in pairs if name}


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _authorized(environ: dict[str, Any], token: str) -> bool:
    scheme, _, given = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() == "bearer" and _same(given.strip(), token):
        return True
    return _same(_cookies(environ).get(COOKIE, ""), _cookie_value(token))


def _host_name(header: str) -> str:
    """A Host header's name without its port: `[::1]:8080` → `::1`, `localhost:80` → `localhost`."""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else ""
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _same_origin(environ: dict[str, Any]) -> bool:
    """No Origin (curl, scripts) or this very host: a browser page of another site fails."""
    origin = environ.get("HTTP_ORIGIN")
    if origin is None:
        return True
    return urlsplit(origin).netloc.lower() == environ.get("HTTP_HOST", "").lower()


def guard(app: WsgiApp, access: Access) -> WsgiApp:
    """`app` behind the Host check, the token and read-only, each refusal one line of text."""

    def refuse(start_response: Callable[..., Any], status: str, text: str, *headers):
        body = (text + "\n").encode()
        start_response(
            status,
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
                *headers,
            ],
        )
        return [body]

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"].upper()
        if access.loopback and not is_loopback(_host_name(environ.get("HTTP_HOST", ""))):
            return refuse(
                start_response,
                "403 Forbidden",
                "this dashboard answers only to localhost, 127.0.0.1 and [::1] "
                "(bind it beyond loopback with a token to reach it by another name)",
            )
        if method not in READS and access.read_only:
            return refuse(
                start_response,
                "405 Method Not Allowed",
                "this dashboard is read-only (hpo dashboard --read-only): nothing is changed",
                ("Allow", "GET, HEAD"),
            )
        if method not in READS and not _same_origin(environ):
            # A page of another site may send a form to 127.0.0.1, or to this host with the
            # browser's cookie (same-site ignores ports): its Origin gives it away.
            return refuse(
                start_response, "403 Forbidden", "a write from another site's page is refused"
            )
        if access.token is None:
            return app(environ, start_response)
        query = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        given = [value for name, value in query if name == "token"]
        if given and method in READS and _same(given[-1], access.token):
            # The printed URL, opened once: a cookie for this site only, and the token
            # leaves the address bar (and the history, and any Referer).
            rest = urlencode([(name, value) for name, value in query if name != "token"])
            # One leading slash: `//evil.example` would send the browser to another site.
            path = "/" + quote(environ.get("PATH_INFO", "/").encode("latin-1")).lstrip("/")
            # Lax, not Strict: the URL clicked in a chat or a mail (another site) lands here
            # with the cookie; writes from another site are refused by their Origin above.
            cookie = f"{COOKIE}={_cookie_value(access.token)}; HttpOnly; SameSite=Lax; Path=/"
            start_response(
                "303 See Other",
                [
                    ("Location", path + (f"?{rest}" if rest else "")),
                    ("Set-Cookie", cookie),
                    ("Cache-Control", "no-store"),
                    ("Referrer-Policy", "no-referrer"),
                    ("Content-Length", "0"),
                ],
            )
            return [b""]
        if not _authorized(environ, access.token):
            return refuse(
                start_response,
                "401 Unauthorized",
                "this dashboard needs its token: open the URL `hpo dashboard` printed "
                "(…/dashboard?token=…), or send the header Authorization: Bearer TOKEN",
                ("WWW-Authenticate", 'Bearer realm="hpo dashboard"'),
            )
        return app(environ, start_response)

    return guarded


class _QuietHandler(WSGIRequestHandler):
    # A client that stops sending is dropped after this long, its thread with it.
    timeout = 60

    def log_message(self, format: str, *args: object) -> None:
        """One line per request would bury the URL; errors still reach the app's log."""


class DashboardServer(ThreadingMixIn, WSGIServer):
    """wsgiref's server, one thread a connection: a slow or stalled client waits alone."""

    daemon_threads = True  # an open connection never keeps hpo from exiting
    block_on_close = False  # nor does closing wait for a stalled one
    access: Access


def make_app_server(
    storage_url: str,
    host: str,
    port: int,
    artifacts: str | Path,
    *,
    token: str | None = None,
    read_only: bool = False,
) -> DashboardServer:
    """The dashboard on `host:port`, guarded as `access_for` decides; `server.access` says how."""
    import optuna_dashboard

    access = access_for(host, token, read_only)
    storage = open_storage(storage_url)
    app = guard(optuna_dashboard.wsgi(storage, artifact_store=open_store(artifacts)), access)
    try:
        server = make_server(
            host, port, app, server_class=DashboardServer, handler_class=_QuietHandler
        )
    except OSError as exc:
        if exc.errno == 98:  # EADDRINUSE
            raise HpoError(f"port {port} on {host} is in use; choose another with --port") from exc
        raise HpoError(f"cannot serve on {host}:{port} ({exc.strerror})") from exc
    server.access = access
    return server


def study_path(storage_url: str, name: str) -> str:
    """The dashboard's page of study `name` (its URL uses the storage's study id)."""
    storage = open_storage(storage_url)
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError as exc:
        raise HpoError(f"no study named {name!r} to show") from exc
    return f"/dashboard/studies/{study_id}"


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise HpoError("no Chromium found for --screenshot (Debian: apt-get install chromium)")


def screenshot(
    url: str, png: Path, *, width: int = 1440, height: int = 1000, wait_ms: int = 8000
) -> str:
    """Render `url` in headless Chromium, save a PNG, and return the rendered DOM's text."""
    chromium = find_chromium()
    with tempfile.TemporaryDirectory() as profile:
        base = [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--virtual-time-budget={wait_ms}",
        ]
        shot = subprocess.run(
            [*base, f"--screenshot={png}", url], capture_output=True, text=True, timeout=120
        )
        dom = subprocess.run(
            [*base, "--dump-dom", url], capture_output=True, text=True, timeout=120
        )
    if not png.is_file():
        raise HpoError(f"Chromium made no screenshot of {url}: {shot.stderr.strip()[-300:]}")
    return dom.stdout


def serve_in_thread(server: WSGIServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


def describe(access: Access, host: str) -> str:
    """How the dashboard is guarded, for its start-up line; never a given token."""
    where = "every address of this machine" if host in WILDCARDS else host
    if access.token is None:
        guarded = "this machine only" if access.loopback else "anyone who reaches it reads all"
    elif access.generated:
        guarded = "a token made for this run: whoever has the URL reads and writes"
    else:
        guarded = "its token from --token or HPO_DASHBOARD_TOKEN (open the URL with ?token=…)"
    return f"on {where}, {guarded}" + (", read-only" if access.read_only else "")


def run(
    storage_url: str,
    host: str,
    port: int,
    artifacts: str,
    screenshot_to: Path | None,
    study: str | None,
    console: Console,
    token: str | None = None,
    read_only: bool = False,
) -> None:
    """`hpo dashboard`: serve until Ctrl-C, or, with `screenshot_to`, save a PNG of the page
    (the study's page with `study`) and stop."""
    server = make_app_server(storage_url, host, port, artifacts, token=token, read_only=read_only)
    access = server.access
    url = f"http://{'127.0.0.1' if host in WILDCARDS else host}:{server.server_port}"
    if screenshot_to is not None:
        page = url + (study_path(storage_url, study) if study else "/dashboard")
        serve_in_thread(server)
        try:
            screenshot(page + (f"?token={access.token}" if access.token else ""), screenshot_to)
        finally:
            server.shutdown()
            server.server_close()
        console.print(f"screenshot of {page} saved to {screenshot_to}")
        return
    # The one line that shows a generated token: the person who started it needs it.
    login = f"?token={access.token}" if access.generated else ""
    console.print(
        f"optuna-dashboard on {redact(storage_url)}: {url}/dashboard{login} "
        f"({describe(access, host)}; Ctrl-C to stop)",
        highlight=False,
        soft_wrap=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
