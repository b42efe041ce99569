"""Where studies live: open an Optuna RDB storage from a URL, with clear one-line errors.

- SQLite (default `sqlite:///storage/hpo.db`, relative to the working directory) for one process;
- PostgreSQL (`postgresql+psycopg://user:pass@host/db`) or MySQL/MariaDB
  (`mysql+pymysql://user:pass@host/db`) when several workers share a study.

Every storage gets a heartbeat, so a trial whose process died is marked FAILED after the grace
period and re-run by RetryHeartbeatStaleTrialCallback. Passwords never leave this module: use
`redact(url)` in anything printed.
"""

from __future__ import annotations

import logging
import random
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url

from hpo.errors import HpoError

DEFAULT_URL = "sqlite:///storage/hpo.db"
HEARTBEAT_S = 60  # seconds between a running trial's heartbeats; grace is 3 times that
MAX_RETRY = 3
DRIVERS = {
    "psycopg": "psycopg[binary]",
    "psycopg2": "psycopg2-binary",
    "pymysql": "pymysql",
    "mysqldb": "mysqlclient",
}

log = logging.getLogger("hpo.storage")


def redact(url: str) -> str:
    """The URL with its password replaced by ***, safe to print."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable storage URL>"


def _engine_kwargs(url: sqlalchemy.URL) -> dict:
    if url.get_backend_name() == "sqlite":
        return {"connect_args": {"timeout": 60}}
    # Idle connections drop during long trials; pre-ping replaces them instead of failing.
    return {"pool_pre_ping": True, "pool_size": 2, "max_overflow": 2, "pool_recycle": 1800}


def _prepare_sqlite(url: sqlalchemy.URL, shown: str) -> None:
    if not url.database or url.database == ":memory:":
        return
    folder = Path(url.database).expanduser().parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HpoError(f"storage {shown}: cannot create folder {folder} ({exc.strerror})") from exc


def _rdb_storage(url: str, parsed: sqlalchemy.URL, heartbeat_s: int) -> optuna.storages.RDBStorage:
    """RDBStorage with heartbeat; retries the first-time table creation that several workers
    starting at once on a fresh database can race on (one wins, the others load)."""
    for attempt in range(4):
        try:
            storage = optuna.storages.RDBStorage(
                url,
                engine_kwargs=_engine_kwargs(parsed),
                heartbeat_interval=heartbeat_s,
                grace_period=3 * heartbeat_s,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=MAX_RETRY
                ),
            )
            break
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as exc:
            if attempt == 3:
                raise
            log.info(
                "storage: tables being created by another worker (%s); retrying",
                type(exc.orig).__name__,
            )
            time.sleep(0.5 + random.random())
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        # WAL lets workers of one machine read while one writes; waits for locks up to the
        # connect timeout instead of failing with "database is locked" at once.
        with storage.engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA journal_mode=WAL")
    return storage


def open_storage(url: str, heartbeat_s: int = HEARTBEAT_S) -> optuna.storages.RDBStorage:
    shown = redact(url)
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError as exc:
        raise HpoError(
            f"storage {url!r} is not a database URL (examples: {DEFAULT_URL}, "
            "postgresql+psycopg://user:pass@host/db, mysql+pymysql://user:pass@host/db)"
        ) from exc
    if parsed.get_backend_name() == "sqlite":
        _prepare_sqlite(parsed, shown)
    try:
        with warnings.catch_warnings():  # heartbeat and its retry callback are "experimental"
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return _rdb_storage(url, parsed, heartbeat_s)
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as exc:
        driver = parsed.get_driver_name()
        package = DRIVERS.get(driver, driver)
        raise HpoError(
            f"storage {shown}: the database driver {driver!r} is not installed "
            f"(pip install '{package}')"
        ) from exc
    except sqlalchemy.exc.ArgumentError as exc:
        raise HpoError(f"storage {shown}: {exc}") from exc
    except sqlalchemy.exc.OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise HpoError(f"storage {shown}: cannot connect ({reason})") from exc
    except sqlalchemy.exc.DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise HpoError(f"storage {shown}: {reason}") from exc
