"""`hpo dashboard`: optuna-dashboard's WSGI app on the storage and artifact store hpo writes.

The server is optuna-dashboard's own Python API (`optuna_dashboard.wsgi`) behind the standard
library's WSGI server, bound here so that a port in use is one clear line. `screenshot()`
drives Debian's headless Chromium to a study's page, for the README and the end-to-end test.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
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


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """One line per request would bury the URL; errors still reach the app's log."""


def make_app_server(storage_url: str, host: str, port: int, artifacts: str) -> WSGIServer:
    import optuna_dashboard

    storage = open_storage(storage_url)
    app = optuna_dashboard.wsgi(storage, artifact_store=open_store(artifacts))
    try:
        return make_server(host, port, app, handler_class=_QuietHandler)
    except OSError as exc:
        if exc.errno == 98:  # EADDRINUSE
            raise HpoError(f"port {port} on {host} is in use; choose another with --port") from exc
        raise HpoError(f"cannot serve on {host}:{port} ({exc.strerror})") from exc


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


def run(
    storage_url: str,
    host: str,
    port: int,
    artifacts: str,
    screenshot_to: Path | None,
    study: str | None,
    console: Console,
) -> None:
    """`hpo dashboard`: serve until Ctrl-C, or, with `screenshot_to`, save a PNG of the page
    (the study's page with `study`) and stop."""
    server = make_app_server(storage_url, host, port, artifacts)
    url = f"http://{host}:{server.server_port}"
    if screenshot_to is not None:
        page = url + (study_path(storage_url, study) if study else "/dashboard")
        serve_in_thread(server)
        try:
            screenshot(page, screenshot_to)
        finally:
            server.shutdown()
            server.server_close()
        console.print(f"screenshot of {page} saved to {screenshot_to}")
        return
    console.print(f"optuna-dashboard on {redact(storage_url)}: {url}/dashboard (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
