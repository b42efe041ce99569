"""Where studies live: open an Optuna RDB storage from a URL, with clear one-line errors.

- SQLite (default `sqlite:///storage/hpo.db`, relative to the working directory) for one process;
- PostgreSQL (`postgresql+psycopg://user:pass@host/db`) or MySQL/MariaDB
  (`mysql+pymysql://user:pass@host/db`) when several workers share a study.

Every storage gets a heartbeat, so a trial whose process died is marked FAILED after the grace
period (its own worker's) and re-run, the re-run queued before the failure frees its slot
(as Optuna's RetryHeartbeatStaleTrialCallback would, but in that order). A database that
goes away for a while (a restart, a network cut) is waited for: each storage operation is
retried with exponential backoff for up to `reconnect_s` seconds, and the wait is logged.
Passwords never leave this module: use `redact(url)` in anything printed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import random
import threading
import time
import warnings
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.storages._rdb import models  # the schema, to find trials that never beat
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from hpo.errors import HpoError
from hpo.search.budget import DIED, OVER_BUDGET

DEFAULT_URL = "sqlite:///storage/hpo.db"
HEARTBEAT_S = 60  # seconds between a running trial's heartbeats; grace is 3 times that
GRACE_BEATS = 3  # a trial is stale after this many of its own heartbeat intervals of silence
# The trial system attr holding the heartbeat interval of the worker that runs the trial, so
# a checking worker judges it by that worker's setting, not its own (bounded: a trial cannot
# claim to be alive for ever).
HEARTBEAT_ATTR = "hpo_heartbeat_s"
HEARTBEAT_MAX_S = 3600
CAS_TRIES = 100  # compare-and-set attempts on a study attr before giving up (update_study_attr)
MAX_RETRY = 3
RECONNECT_S = float(os.environ.get("HPO_RECONNECT_S", 300))  # how long to wait for a lost DB
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
    in the host means an unencoded @ in the password, whose tail would show as the host."""
    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):  # ValueError: a port that is no number
        return None
    return None if "@" in (parsed.host or "") else parsed


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


class ReconnectingRDBStorage(optuna.storages.RDBStorage):
    """RDBStorage whose operations wait out a database that went away (pool_pre_ping replaces
    dead pooled connections; this retries while no new one can be made)."""

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
            self._version_manager.check_table_schema_compatibility()
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

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Fail the RUNNING trials whose worker died, each re-run queued first (_bury), and
        return none: Optuna's fail_stale_trials, which calls this, would fail them first and
        queue the re-run after, and another worker could take the slot in between. Dead is:

        - a trial silent for GRACE_BEATS of *its own* worker's heartbeat intervals
          (HEARTBEAT_ATTR), timed in the database's clock: a worker started with
          `--heartbeat 5` must not fail the live trials of workers that beat every 60 s;
        - a trial that never sent a first heartbeat for this worker's grace period: Optuna
          skips those, so a worker killed between creating a trial and its first heartbeat
          would hold a budget slot forever. The silence is timed on this process' clock, not
          against the trial's start time, which another machine's clock wrote."""
        trials, beats = models.TrialModel.__table__, models.TrialHeartbeatModel.__table__
        attrs = models.TrialSystemAttributeModel.__table__
        told = sqlalchemy.and_(attrs.c.trial_id == trials.c.trial_id, attrs.c.key == HEARTBEAT_ATTR)
        query = (
            sqlalchemy.select(trials.c.trial_id, beats.c.heartbeat, attrs.c.value_json)
            .select_from(
                trials.outerjoin(beats, beats.c.trial_id == trials.c.trial_id).outerjoin(
                    attrs, told
                )
            )
            .where(trials.c.study_id == study_id)
            .where(trials.c.state == TrialState.RUNNING)
        )
        own = self.grace_period or GRACE_BEATS * (self.heartbeat_interval or 0)
        with self.engine.connect() as connection:
            now = connection.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar_one()
            rows = connection.execute(query).all()
        now = now.replace(tzinfo=None)
        dead, silent = [], set()
        for trial_id, beat, interval in rows:
            if beat is None:
                silent.add(trial_id)
            elif now - beat.replace(tzinfo=None) > timedelta(seconds=_grace(interval, own)):
                dead.append((trial_id, beat))
        clock = time.monotonic()
        self._silent_since = {t: self._silent_since.get(t, clock) for t in silent}
        dead += [(t, None) for t, since in self._silent_since.items() if clock - since > own]
        for trial_id, beat in dead:
            self._bury(study_id, trial_id, beat)
        return []

    def _bury(self, study_id: int, trial_id: int, beat: Any) -> None:
        """Fail a trial whose worker died, its re-run queued *before* it is failed, so the
        budget slot its failure frees is the re-run's, not a new trial's:

        1. claim it (a compare-and-set on its heartbeat row): of several workers checking
           at once, one buries it; one that dies meanwhile leaves a fresh heartbeat, which
           goes stale again;
        2. say why (fail_reason DIED: not counted towards the budget);
        3. queue the re-run, as Optuna's RetryHeartbeatStaleTrialCallback does (the same
           parameters, system attrs failed_trial and retry_history, at most MAX_RETRY);
        4. fail it; if its worker was alive after all and ended it, withdraw the re-run;
        5. tell `after_death` (hpo.search.pool: a study whose workers keep dying is left)."""
        if not self._claim(trial_id, beat):
            return
        try:
            self.set_trial_user_attr(trial_id, "fail_reason", DIED)
        except optuna.exceptions.UpdateFinishedTrialError:
            return  # it ended meanwhile
        trial = self.get_trial(trial_id)
        rerun = self._queue_rerun(study_id, trial)
        try:
            self.set_trial_state_values(trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            if rerun is not None:
                self._withdraw(rerun)
            return
        trial = self.get_trial(trial_id)
        for hook in self.after_death:
            hook(study_id, trial)

    def _claim(self, trial_id: int, beat: Any) -> bool:
        """Take the burial of a dead trial: its heartbeat set to now only if it is still the
        one read (`beat`, None for none: a first one inserted, the row being unique)."""
        beats = models.TrialHeartbeatModel.__table__
        try:
            with self.engine.begin() as connection:
                if beat is None:
                    connection.execute(
                        sqlalchemy.insert(beats).values(
                            trial_id=trial_id, heartbeat=sqlalchemy.func.now()
                        )
                    )
                    return True
                claimed = connection.execute(
                    sqlalchemy.update(beats)
                    .where(beats.c.trial_id == trial_id, beats.c.heartbeat <= beat)
                    .values(heartbeat=sqlalchemy.func.now())
                )
                return claimed.rowcount == 1
        except sqlalchemy.exc.IntegrityError:
            return False  # another worker inserted it first

    def _queue_rerun(self, study_id: int, trial: optuna.trial.FrozenTrial) -> int | None:
        """The dead trial's re-run, WAITING (its id), or None after MAX_RETRY re-runs."""
        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        if len(history) > MAX_RETRY:
            return None
        attrs = {"failed_trial": trial.number, **trial.system_attrs, "retry_history": history}
        user_attrs = {k: v for k, v in trial.user_attrs.items() if k != "fail_reason"}
        template = optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=user_attrs,
            system_attrs=attrs,
        )
        return self.create_new_trial(study_id, template_trial=template)

    def _withdraw(self, trial_id: int) -> None:
        """A re-run no longer needed, if no worker took it yet: failed as never run."""
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            if self.get_trial(trial_id).state == TrialState.WAITING:
                self.set_trial_user_attr(trial_id, "fail_reason", OVER_BUDGET)
                self.set_trial_state_values(trial_id, TrialState.FAIL)

    def update_study_attr(
        self, study_id: int, key: str, change: Callable[[Any], Any]
    ) -> tuple[Any, bool]:
        """Change a study user attr with no lost update: read it, `change(value)` (None when
        absent) gives the new value (None: leave it), written only if the stored text is
        still what was read (compare-and-set in one UPDATE; a concurrent first write fails
        on the table's unique key), else read again and retried. Returns (the value now,
        whether this call wrote it). A writer whose value always differs (a version
        counter) is safe even where the database compares text without case."""
        table = models.StudyUserAttributeModel.__table__
        where = (table.c.study_id == study_id, table.c.key == key)
        for _ in range(CAS_TRIES):
            with self.engine.connect() as connection:
                read = sqlalchemy.select(table.c.value_json).where(*where)
                old = connection.execute(read).scalar_one_or_none()
            current = None if old is None else json.loads(old)
            value = change(current)
            if value is None:
                return current, False
            text = json.dumps(value)
            try:
                with self.engine.begin() as connection:
                    if old is None:
                        insert = sqlalchemy.insert(table)
                        connection.execute(
                            insert.values(study_id=study_id, key=key, value_json=text)
                        )
                        return value, True
                    written = connection.execute(
                        sqlalchemy.update(table)
                        .where(*where, table.c.value_json == old)
                        .values(value_json=text)
                    ).rowcount
            except sqlalchemy.exc.IntegrityError:
                continue  # another writer made it first: read theirs
            if written:
                return value, True
        raise HpoError(
            f"storage {self.shown}: study attr {key!r} kept changing under {CAS_TRIES} "
            "attempts to update it; try again"
        )

    def last_trial_id(self) -> int:
        """The newest trial's id in the whole storage (0 when none): ids are given in the
        order trials are made, by the database, so "started after" needs no clock."""
        trials = models.TrialModel.__table__
        with self.engine.connect() as connection:
            found = connection.execute(sqlalchemy.select(sqlalchemy.func.max(trials.c.trial_id)))
            return int(found.scalar() or 0)

    def trial_tally(self, study_ids: list[int], since: int) -> list[tuple]:
        """For the queue (hpo.search.queue.tallies): the trials of `study_ids` grouped by
        study, state and fail_reason (JSON), each group's count and how many of it were
        started after trial id `since` (last_trial_id: the database's order, not the
        workers' clocks, which may be in other time zones). One query, whatever the number
        of studies: a worker choosing among many queued studies costs the database no more
        than one study."""
        if not study_ids:
            return []
        trials, attrs = models.TrialModel.__table__, models.TrialUserAttributeModel.__table__
        reason = sqlalchemy.and_(
            attrs.c.trial_id == trials.c.trial_id, attrs.c.key == "fail_reason"
        )
        started = sqlalchemy.and_(trials.c.trial_id > since, trials.c.state != TrialState.WAITING)
        recent = sqlalchemy.case((started, 1), else_=0)
        query = (
            sqlalchemy.select(
                trials.c.study_id,
                trials.c.state,
                attrs.c.value_json,
                sqlalchemy.func.count(),
                sqlalchemy.func.sum(recent),
            )
            .select_from(trials.outerjoin(attrs, reason))
            .where(trials.c.study_id.in_(study_ids))
            .group_by(trials.c.study_id, trials.c.state, attrs.c.value_json)
        )
        with self.engine.connect() as connection:
            return [tuple(row) for row in connection.execute(query)]


def _grace(interval_json: str | None, own: float) -> float:
    """A trial's grace: GRACE_BEATS of the interval its worker recorded, else this worker's."""
    try:
        interval = json.loads(interval_json) if interval_json is not None else None
    except ValueError:
        interval = None
    if isinstance(interval, bool) or not isinstance(interval, int | float) or interval != interval:
        return own
    return GRACE_BEATS * min(max(float(interval), 1.0), HEARTBEAT_MAX_S)


for _name in (
    # BaseStorage and BaseHeartbeat, and the private methods Optuna's _CachedStorage calls.
    *sorted(optuna.storages.BaseStorage.__abstractmethods__),
    "get_trial_id_from_study_id_trial_number",
    "record_heartbeat",
    "_get_stale_trial_ids",
    "_create_new_trial",
    "_get_trials",
    "_set_trial_param",
    "_get_best_trial_id",
    "trial_tally",
    "update_study_attr",
    "last_trial_id",
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
        return {"connect_args": {"timeout": 60}}
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
        with storage.engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA journal_mode=WAL")
        sqlalchemy.event.listen(storage.engine, "connect", _sync_at_checkpoints)
        storage.engine.dispose()  # the connections opened so far: new ones run the listener
    return storage


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
