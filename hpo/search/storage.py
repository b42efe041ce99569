"""Where studies live: open an Optuna RDB storage from a URL, with clear one-line errors.

- SQLite (default `sqlite:///storage/hpo.db`, relative to the working directory) for one process;
- PostgreSQL (`postgresql+psycopg://user:pass@host/db`) or MySQL/MariaDB
  (`mysql+pymysql://user:pass@host/db`) when several workers share a study.

Every storage gets a heartbeat, so a trial whose process died is marked FAILED after the grace
period (its own worker's) and re-run, the re-run queued before the failure frees its slot
(hpo.search.dead_trials). A database that
goes away for a while (a restart, a network cut) is waited for: each storage operation is
retried with exponential backoff for up to `reconnect_s` seconds, and the wait is logged.
Passwords never leave this module: use `redact(url)` in anything printed.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url

from hpo import optuna_private
from hpo.errors import HpoError
from hpo.search.dead_trials import GRACE_BEATS, HEARTBEAT_ATTR, DeadTrials
from hpo.search.storage_queries import StudyQueries

DEFAULT_URL = "sqlite:///storage/hpo.db"
HEARTBEAT_S = 60  # seconds between a running trial's heartbeats; grace is 3 times that
RECONNECT_S = float(os.environ.get("HPO_RECONNECT_S", 300))  # how long to wait for a lost DB
SQLITE_LOCK_S = 60  # how long a SQLite connection waits for another's lock
DRIVERS = {
    "psycopg": "psycopg[binary]",
    "psycopg2": "psycopg2-binary",
    "pymysql": "pymysql",
    "mysqldb": "mysqlclient",
}

log = logging.getLogger("hpo.search.storage")
# When the server goes away, SQLAlchemy's pool logs a traceback for each connection it fails to
# roll back on return ("Exception during reset or similar"); the retry below reports the outage
# in one line and replaces the connection, so that traceback is noise on the user's terminal.
logging.getLogger("sqlalchemy.pool").setLevel(logging.CRITICAL)


UNPARSEABLE = "<a storage URL that cannot be parsed>"
# Query keys that carry a secret: ?password= (psycopg, PyMySQL), ?passwd= (MySQLdb, PyMySQL),
# ?sslpassword=, a token, a key; any key naming one of these is hidden.
SECRET_KEYS = ("pass", "pwd", "secret", "token", "key", "auth", "credential")


def _parsed(url: str) -> sqlalchemy.URL | None:
    """SQLAlchemy's reading of `url`, or None when it has none or an ambiguous one: an @ left
    in a server's host or database name means an unencoded @ in the password (and a / after
    it, for the database), whose tail would show as the host or the database."""
    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):  # ValueError: a port that is no number
        return None
    if "@" in (parsed.host or ""):
        return None
    if parsed.get_backend_name() != "sqlite" and "@" in (parsed.database or ""):
        return None  # a SQLite file's path may hold an @; a server's database name does not
    return parsed


def redact(url: str) -> str:
    """The URL with its password and any secret query value (?password=, ?passwd=, …)
    replaced by ***, safe to print; nothing of a URL that cannot be parsed."""
    parsed = _parsed(url)
    if parsed is None:
        return UNPARSEABLE
    query = {
        key: "***" if any(word in key.lower() for word in SECRET_KEYS) else value
        for key, value in parsed.query.items()
    }
    shown = parsed.set(query=query).render_as_string(hide_password=True)
    return shown.replace("%2A%2A%2A", "***")  # as the password is shown, not percent-encoded


def redact_arg(arg: str) -> str:
    """A command-line argument safe to print: a URL in it, alone or as `--option=URL`,
    redacted."""
    if "://" not in arg:
        return arg
    name, equals, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
    return f"{name}{equals}{redact(value)}"


class StorageUnavailable(HpoError):
    """The database stayed unreachable for longer than the reconnect window."""


def unavailable_in(exc: BaseException) -> StorageUnavailable | None:
    """The StorageUnavailable behind `exc`, if any: Optuna's trial bookkeeping can replace it
    with an error of its own when it cannot record the trial's end either."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, StorageUnavailable):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _lost_connection(exc: BaseException) -> BaseException | None:
    """The driver error behind `exc` when it means the connection is gone (server down,
    restarted, network cut, SQLite locked for too long), else None."""
    cause = exc.__cause__ if isinstance(exc, optuna.exceptions.StorageInternalError) else exc
    if isinstance(cause, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
        return cause
    if isinstance(cause, sqlalchemy.exc.DBAPIError) and cause.connection_invalidated:
        return cause
    return None


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__


def _server_full(exc: BaseException) -> bool:
    """The server refused a new connection for being at its connection limit."""
    text = str(getattr(exc, "orig", None) or exc).lower()
    return any(
        phrase in text
        for phrase in (
            "too many clients",  # PostgreSQL: max_connections reached
            "remaining connection slots are reserved",  # PostgreSQL: only reserved ones left
            "too many connections",  # MySQL / MariaDB error 1040
        )
    )


def _retried(method):
    """Retry `method` while the database is unreachable: 1, 2, 4, … 30 s apart, up to the
    storage's reconnect window; then StorageUnavailable (and no more waiting after that).

    One call at a time per storage: Optuna's heartbeat thread beats as the trial's first
    storage calls run, and two calls at once take two server connections. Serialized, a worker
    keeps one, so a server's connection limit is its worker limit."""

    @functools.wraps(method)
    def call(self: ReconnectingRDBStorage, *args, **kwargs):
        with self.one_call_at_a_time:
            return _with_retries(self, method, args, kwargs)

    return call


def _with_retries(storage: ReconnectingRDBStorage, method, args: tuple, kwargs: dict):
    waited, pause = 0.0, 1.0
    while True:
        try:
            result = method(storage, *args, **kwargs)
        except optuna.exceptions.UpdateFinishedTrialError:
            # A retried write whose first attempt committed before its answer was lost.
            if waited and method.__name__ == "set_trial_state_values":
                trial = storage.get_trial(args[0])
                if trial.state == kwargs.get("state", args[1] if len(args) > 1 else None):
                    return True
            raise
        except Exception as exc:
            lost = _lost_connection(exc)
            if lost is None:
                raise
            if storage.gave_up or waited >= storage.reconnect_s:
                storage.gave_up = True
                raise StorageUnavailable(
                    f"storage {storage.shown}: lost the connection ({_reason(lost)}) and it did "
                    f"not come back within {storage.reconnect_s:.0f} s"
                ) from exc
            pause = min(pause, 30.0, storage.reconnect_s - waited)
            log.warning(
                "storage %s: connection lost (%s); retrying in %.0f s",
                storage.shown,
                _reason(lost),
                pause,
            )
            time.sleep(pause)
            waited += pause
            pause *= 2
            continue
        if waited:
            log.warning("storage %s: reconnected after %.0f s", storage.shown, waited)
        storage.gave_up = False
        return result


class ReconnectingRDBStorage(DeadTrials, StudyQueries, optuna.storages.RDBStorage):
    """RDBStorage whose operations wait out a database that went away (pool_pre_ping replaces
    dead pooled connections; this retries while no new one can be made), which buries dead
    workers' trials itself (DeadTrials) and makes the queue's queries (StudyQueries)."""

    shown = ""
    reconnect_s = RECONNECT_S
    gave_up = False

    def __init__(self, *args, **kwargs) -> None:
        self.one_call_at_a_time = threading.RLock()
        try:
            super().__init__(*args, **kwargs)
        except BaseException:
            # A start that failed half-way (a full server) closes what it opened now, not at
            # garbage collection: its idle connection would keep the server full.
            if getattr(self, "engine", None) is not None:
                self.engine.dispose()
            raise
        self._silent_since: dict[int, float] = {}
        self._beats_told: set[int] = set()  # trials whose heartbeat interval is recorded
        # Called with (study id, trial) after a dead worker's trial is failed (_bury).
        self.after_death: list[Callable[[int, optuna.trial.FrozenTrial], None]] = []

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        del state["one_call_at_a_time"]  # a lock does not pickle
        state["after_death"] = []  # nor need a copy call back into this process
        return state

    def __setstate__(self, state: dict) -> None:
        self.one_call_at_a_time = threading.RLock()
        super().__setstate__(state)

    def check_schema(self) -> None:
        """Optuna's schema version check, one connection at a time: Optuna's own
        (check_table_schema_compatibility) holds a session while it opens a second connection,
        so every worker's start would take two. Optuna's says what to do when they differ."""
        if self.get_current_version() == self.get_head_version():
            return
        try:
            optuna_private.check_schema_compatibility(self)
        except RuntimeError as exc:  # "... Please execute `$ optuna storage upgrade ...`"
            raise HpoError(f"storage {redact(self.url)}: {exc}") from exc

    def record_heartbeat(self, trial_id: int) -> None:
        """Optuna's heartbeat (written in the database's time); with the first, the trial
        records this worker's interval (HEARTBEAT_ATTR), by which every checker judges it."""
        super().record_heartbeat(trial_id)
        if trial_id in self._beats_told or not self.heartbeat_interval:
            return
        # A trial that ended meanwhile is judged by nobody.
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, self.heartbeat_interval)
        self._beats_told.add(trial_id)


# What Optuna's fail_stale_trials asks for: the dead trials, buried here (DeadTrials).
optuna_private.answer_stale_trial_ids(
    ReconnectingRDBStorage, ReconnectingRDBStorage.bury_dead_trials
)
for _name in (
    # BaseStorage and BaseHeartbeat, and the private methods Optuna's _CachedStorage calls.
    *sorted(optuna.storages.BaseStorage.__abstractmethods__),
    "get_trial_id_from_study_id_trial_number",
    "record_heartbeat",
    *optuna_private.CACHED_STORAGE_CALLS,
    # hpo's own queries, each retried as Optuna's calls are.
    *(name for name in vars(StudyQueries) if not name.startswith("_")),
):
    setattr(ReconnectingRDBStorage, _name, _retried(getattr(ReconnectingRDBStorage, _name)))


def pool_setting() -> str:
    """HPO_DB_POOL: `1` (the default) keeps one server connection per process, which its
    storage calls share in turn; `null` opens one per storage call and keeps none (for a
    dashboard or other occasional reader)."""
    value = os.environ.get("HPO_DB_POOL", "1").strip().lower()
    if value in ("1", "null"):
        return value
    raise HpoError(
        f"HPO_DB_POOL={value!r}: give 1 (one connection kept, the default) or null (none kept); "
        "a worker's storage calls take turns, so it never uses more than one"
    )


def _engine_kwargs(url: sqlalchemy.URL) -> dict:
    if url.get_backend_name() == "sqlite":
        return {"connect_args": {"timeout": SQLITE_LOCK_S}}
    # A server has a connection limit shared by all workers (PostgreSQL's default is 100,
    # MariaDB's 151): each worker keeps one connection (its calls take turns: _retried). The
    # overflow of 1 is for the worker that creates a new database's tables, where Optuna
    # nests a connection in a session.
    pool = pool_setting()
    kwargs: dict = {}
    if url.get_driver_name() == "psycopg":
        # No server-side prepared statements: behind a pooler in transaction mode (PgBouncer
        # before 1.21) the next transaction may run on another server connection, where the
        # statement is missing or another client's ("_pg3_0 already exists").
        kwargs["connect_args"] = {"prepare_threshold": None}
    if pool == "null":
        return {**kwargs, "poolclass": sqlalchemy.pool.NullPool}
    # Idle connections drop during long trials; pre-ping replaces them instead of failing.
    return {
        **kwargs,
        "pool_pre_ping": True,
        "pool_size": 1,
        "max_overflow": 1,
        "pool_recycle": 1800,
    }


def _prepare_sqlite(url: sqlalchemy.URL, shown: str) -> None:
    if not url.database or url.database == ":memory:":
        return
    folder = Path(url.database).expanduser().parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HpoError(f"storage {shown}: cannot create folder {folder} ({exc.strerror})") from exc


def _rdb_storage(
    url: str, parsed: sqlalchemy.URL, heartbeat_s: int, reconnect_s: float
) -> ReconnectingRDBStorage:
    """RDBStorage with heartbeat; retries the first-time table creation that several workers
    starting at once on a fresh database can race on (one wins, the others load), and waits
    (up to `reconnect_s`) for a server that is at its connection limit."""
    attempt, waited, pause = 0, 0.0, 1.0
    while True:
        try:
            storage = ReconnectingRDBStorage(
                url,
                engine_kwargs=_engine_kwargs(parsed),
                skip_compatibility_check=True,  # checked below, with one connection
                heartbeat_interval=heartbeat_s,
                grace_period=GRACE_BEATS * heartbeat_s,
            )
            try:
                storage.check_schema()
            except BaseException:
                storage.engine.dispose()  # its connection would keep a full server full
                raise
            break
        except (sqlalchemy.exc.DBAPIError, optuna.exceptions.StorageInternalError) as exc:
            # Optuna's own sessions (the schema version check) wrap the driver's error.
            if _server_full(exc.__cause__ or exc) and waited < reconnect_s:
                # Many workers starting at once: wait for others' connections to close.
                pause = min(pause, 30.0, reconnect_s - waited)
                log.warning(
                    "storage %s: the server has no free connection (%s); retrying in %.0f s",
                    redact(url),
                    _reason(exc.__cause__ or exc),
                    pause,
                )
                time.sleep(pause)
                waited, pause = waited + pause, pause * 2
                continue
            if isinstance(exc, optuna.exceptions.StorageInternalError):
                raise
            racing = isinstance(
                exc, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError)
            ) or "already exists" in str(exc.orig)  # SQLite says so in an OperationalError
            attempt += 1
            if attempt == 4 or not racing:
                raise
            log.info(
                "storage: tables being created by another worker (%s); retrying",
                type(exc.orig).__name__,
            )
            time.sleep(0.5 + random.random())
    storage.shown = redact(url)
    storage.reconnect_s = reconnect_s
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        # WAL lets workers of one machine read while one writes; waits for locks up to the
        # connect timeout instead of failing with "database is locked" at once.
        _journal_in_wal(storage.engine, SQLITE_LOCK_S)
        sqlalchemy.event.listen(storage.engine, "connect", _sync_at_checkpoints)
        storage.engine.dispose()  # the connections opened so far: new ones run the listener
    elif parsed.get_backend_name() in UTC_SESSION:
        utc = functools.partial(_utc_session, UTC_SESSION[parsed.get_backend_name()])
        sqlalchemy.event.listen(storage.engine, "connect", utc)
        storage.engine.dispose()
    return storage


def _journal_in_wal(engine: sqlalchemy.Engine, within_s: float) -> None:
    """Switch a SQLite database to WAL (once set, it stays in the file). The switch needs the
    database to itself, and SQLite answers "database is locked" at once, without waiting out
    its busy timeout, when another process holds it (workers starting together on a new
    file): tried again for up to `within_s` seconds."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA journal_mode=WAL")
            return
        except sqlalchemy.exc.OperationalError as exc:
            if "locked" not in str(exc.orig) or time.monotonic() > deadline:
                raise
            time.sleep(0.05 + 0.2 * random.random())


# Optuna writes heartbeats and start times as the server's CURRENT_TIMESTAMP into columns
# without a time zone: each session's own zone (PGTZ, a server default, DST) would shift them
# by hours against another worker's now(), and a live trial would look dead. Every hpo session
# speaks UTC (PgBouncer keeps a client's TimeZone across server connections); SQLite's
# CURRENT_TIMESTAMP is UTC already.
UTC_SESSION = {
    "postgresql": "SET TIME ZONE 'UTC'",
    "mysql": "SET time_zone = '+00:00'",
    "mariadb": "SET time_zone = '+00:00'",
}


def _utc_session(statement: str, connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute(statement)
    cursor.close()
    connection.commit()  # a SET in PostgreSQL's open transaction would be rolled back with it


def _sync_at_checkpoints(connection, _record) -> None:
    """SQLite's synchronous=NORMAL: in WAL mode a commit no longer waits for the disk (fsync)
    but the checkpoints do. Every epoch's report is a commit, and this halves its cost (2.2
    to 1.2 ms on this project's machine); a process that crashes or is killed loses nothing,
    a power cut may lose the last commits but never corrupts the database (sqlite.org/wal)."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def open_storage(
    url: str, heartbeat_s: int = HEARTBEAT_S, reconnect_s: float = RECONNECT_S
) -> ReconnectingRDBStorage:
    """The study database at `url`. Failing to reach it now is an error at once; losing it
    later is waited out for `reconnect_s` seconds."""
    shown = redact(url)
    parsed = _parsed(url)
    if parsed is None:  # not echoed: it may be, or hold, a password
        raise HpoError(
            f"--storage (or HPO_STORAGE) is not a database URL (examples: {DEFAULT_URL}, "
            "postgresql+psycopg://user:pass@host/db, mysql+pymysql://user:pass@host/db; "
            "write an @ or / in a password as %40 or %2F)"
        )
    if parsed.get_backend_name() == "sqlite":
        _prepare_sqlite(parsed, shown)
    try:
        with warnings.catch_warnings():  # heartbeat and its retry callback are "experimental"
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return _rdb_storage(url, parsed, heartbeat_s, reconnect_s)
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
