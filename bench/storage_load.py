"""Storage load: W worker processes share one study through hpo's budget loop, no training.

    python bench/storage_load.py [--trials 200] [--workers 2 4 8 16]
                                 [--storages sqlite postgresql postgresql300 mariadb
                                             pgbouncer journal]
                                 [--pool 1] [--growth]

Question: how many trials a second can W workers push through one storage, and does any
trial get lost or counted twice?
Goal: exactly --trials counted trials on every storage, no worker error, 128 workers served.
Machine: any; PostgreSQL, MariaDB and PgBouncer at 127.0.0.1 for those storages.

Each worker is a separate process doing what `hpo optimize` does around a trial (wait for a
slot in the study-wide budget, ask, admit, tell; Optuna's heartbeat thread beats once per
trial) with an objective that returns at once, so the time measured is the storage's and the
budget logic's. Workers are forked from a server process that imported everything once (their
import time is not measured); they open their storage, and all start together.

Prints, per storage and W: trials per second, storage seconds per trial (wall time x W /
trials), the counted trials against --trials (none lost, none extra), the trials created in
all (over-budget ones end at once and do not count), workers that died with an error, hpo's
"connection lost; retrying" waits (a refused connection shows here), the most server
connections one worker held at once (counted by its own connection pool), and the most
connections the server showed for the benchmark's database (pg_stat_activity /
information_schema.processlist, sampled every 50 ms). With --growth, also the median time of
the budget's admission check and of the whole trial loop at trials 100-199 against
1000-1099 of the same study (use --trials 1200 or more).

Servers at 127.0.0.1, each in a database `hpo_bench` created here (so that nothing else on the
server is counted): PostgreSQL 5432 (user postgres), MariaDB 3306 (root), PgBouncer 6432 in
front of that PostgreSQL (deploy/pgbouncer/pgbouncer.ini: there the database is
`hpo_bench_pgbouncer`, and the server connections counted are PgBouncer's), postgresql300: a
second PostgreSQL at 5433 (user postgres) with max_connections=300, for more workers than a
default server takes (docs/cluster.md says how it was started); SQLite and the journal file in
a temporary folder. --pool: HPO_DB_POOL of the workers, 1 (one connection kept) or null.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import _common

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna  # imported once in the fork server, before any worker
import sqlalchemy

from hpo.search.budget import Budget, OverBudget, finished
from hpo.search.storage import open_storage

DATABASE = "hpo_bench"
URLS = {
    "postgresql": f"postgresql+psycopg://postgres@127.0.0.1:5432/{DATABASE}",
    "mariadb": f"mysql+pymysql://root@127.0.0.1:3306/{DATABASE}",
    "pgbouncer": f"postgresql+psycopg://postgres@127.0.0.1:6432/{DATABASE}",
    "postgresql300": f"postgresql+psycopg://postgres@127.0.0.1:5433/{DATABASE}",
}
# Where the server's own count of connections to DATABASE is read (PgBouncer: at PostgreSQL).
ADMIN = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    "pgbouncer": "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    "postgresql300": "postgresql+psycopg://postgres@127.0.0.1:5433/postgres",
    "mariadb": "mysql+pymysql://root@127.0.0.1:3306/",
}
COUNT_SQL = {
    # Client connections only: an autovacuum worker on the database is the server's own.
    "postgresql": (
        f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{DATABASE}' "
        "AND backend_type = 'client backend'"
    ),
    "mariadb": f"SELECT count(*) FROM information_schema.processlist WHERE db = '{DATABASE}'",
}
COUNT_SQL["pgbouncer"] = COUNT_SQL["postgresql"].replace(DATABASE, f"{DATABASE}_pgbouncer")
COUNT_SQL["postgresql300"] = COUNT_SQL["postgresql"]
GROWTH = {"early": (100, 200), "late": (1000, 1100)}  # trial numbers compared by --growth


def ensure_database(kind: str) -> None:
    """Create the benchmark's database on the server if it is not there."""
    name = f"{DATABASE}_pgbouncer" if kind == "pgbouncer" else DATABASE
    engine = sqlalchemy.create_engine(ADMIN[kind], isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        if kind == "mariadb":
            connection.exec_driver_sql(f"CREATE DATABASE IF NOT EXISTS {name}")
        elif not connection.exec_driver_sql(
            f"SELECT 1 FROM pg_database WHERE datname = '{name}'"
        ).scalar():
            connection.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()


def open_any(url: str, reconnect_s: float = 60.0):
    if url.startswith("journal:"):
        path = url.removeprefix("journal:")
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
    return open_storage(url, reconnect_s=reconnect_s)


class _Held:
    """Counts the DBAPI connections this process has open, and the most it had at once."""

    def __init__(self) -> None:
        self.now = self.most = 0
        self.lock = threading.Lock()
        for event, call in (
            ("connect", self._opened),
            ("close", self._closed),
            ("close_detached", self._closed),
        ):
            sqlalchemy.event.listen(sqlalchemy.pool.Pool, event, call)

    def _opened(self, *_) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def _closed(self, *_) -> None:
        with self.lock:
            self.now -= 1


class _Retries(logging.Handler):
    """hpo's "connection lost; retrying" warnings (hpo.search.storage): a refused connection."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def worker(url, name, total, pool, limit_s, reconnect_s, ready, go, results) -> None:
    os.environ["HPO_DB_POOL"] = pool  # the fork server's environment is not the caller's
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    retries = _Retries()
    logging.getLogger("hpo.search.storage").addHandler(retries)
    result: dict = {"error": None, "timings": []}
    held, started = _Held(), False
    try:
        storage = open_any(url, reconnect_s)
        study = optuna.load_study(
            study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler()
        )
        ready.put(None)
        started = True
        go.wait()
        budget = Budget(total, poll_s=0.05)
        deadline = time.monotonic() + limit_s
        this: dict = {}

        def objective(trial):
            start = time.perf_counter()
            this["number"] = trial.number
            try:
                budget.admit(trial)
            finally:
                this["admit_s"] = time.perf_counter() - start
            return trial.suggest_float("x", 0, 1)

        while True:
            start = time.perf_counter()
            if not budget.wait_for_slot(study, deadline):
                break
            polled = time.perf_counter()
            study.optimize(objective, n_trials=1, catch=(OverBudget,))
            result["timings"].append(
                (this["number"], this["admit_s"], polled - start, time.perf_counter() - start)
            )
    except Exception as exc:  # counted and printed, never hidden
        result["error"] = _describe(exc)
        if not started:
            ready.put(result["error"])
    result["retries"] = retries.messages[:2]
    result["n_retries"] = len(retries.messages)
    result["held"] = held.most
    results.put(result)


def _describe(exc: BaseException) -> str:
    """The error and what caused it, one line each joined: Optuna wraps driver errors."""
    parts, seen = [], set()
    while exc is not None and id(exc) not in seen and len(parts) < 3:
        seen.add(id(exc))
        lines = str(exc).strip().splitlines()
        parts.append(f"{type(exc).__name__}: {lines[0][:160] if lines else ''}")
        exc = exc.__cause__ or exc.__context__
    return " <- ".join(parts)


class _ServerCount(threading.Thread):
    """Samples the server's count of connections to the benchmark's database."""

    def __init__(self, kind: str) -> None:
        super().__init__(daemon=True)
        self.kind, self.stop = kind, threading.Event()
        self.phase, self.most = "open", {"open": 0, "trials": 0}

    def run(self) -> None:
        engine = sqlalchemy.create_engine(ADMIN[self.kind], poolclass=sqlalchemy.pool.NullPool)
        with engine.connect() as connection:
            while not self.stop.wait(0.05):
                found = connection.exec_driver_sql(COUNT_SQL[self.kind]).scalar() or 0
                self.most[self.phase] = max(self.most[self.phase], int(found))
                connection.commit()  # a fresh snapshot for the next count
        engine.dispose()


def _median_ms(values: list[float]) -> float | None:
    return round(1000 * statistics.median(values), 2) if values else None


def run(
    url: str,
    workers: int,
    total: int,
    *,
    kind: str = "",
    pool: str = "1",
    limit_s: float = 600.0,
    reconnect_s: float = 60.0,
) -> dict:
    """One study, `workers` processes, `total` trials: what they did and what it cost."""
    name = f"load-{uuid.uuid4().hex[:8]}"
    made = open_any(url)
    optuna.create_study(study_name=name, storage=made)
    if hasattr(made, "engine"):
        made.engine.dispose()  # this process holds no connection while the workers run
    ctx = mp.get_context("forkserver")  # a clean server process imports hpo once
    ctx.set_forkserver_preload([worker.__module__])
    ready, go, results = ctx.Queue(), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(
            target=worker, args=(url, name, total, pool, limit_s, reconnect_s, ready, go, results)
        )
        for _ in range(workers)
    ]
    counter = _ServerCount(kind) if kind in COUNT_SQL else None
    if counter:
        counter.start()
    opening = time.perf_counter()
    for proc in procs:
        proc.start()
    not_ready = [m for m in (ready.get(timeout=limit_s) for _ in procs) if m is not None]
    start = time.perf_counter()
    if counter:
        counter.phase = "trials"
    go.set()
    found = [results.get(timeout=limit_s + 60) for _ in procs]
    wall = time.perf_counter() - start
    for proc in procs:
        proc.join(timeout=60)
    if counter:
        counter.stop.set()
        counter.join()
    study = optuna.load_study(study_name=name, storage=made)
    counted, all_trials = finished(study), len(study.trials)
    if not url.startswith("journal:"):
        optuna.delete_study(study_name=name, storage=made)
    if hasattr(made, "engine"):
        made.engine.dispose()
    errors = [r["error"] for r in found if r["error"]]  # those not ready are among them
    assert len(not_ready) <= len(errors)
    timings = [t for r in found for t in r["timings"]]
    growth = {}
    for label, (low, high) in GROWTH.items():
        inside = [t for t in timings if low <= t[0] < high]
        growth[label] = {
            "trials": len(inside),
            "admit_ms": _median_ms([t[1] for t in inside]),
            "poll_ms": _median_ms([t[2] for t in inside]),
            "loop_ms": _median_ms([t[3] for t in inside]),
        }
    return {
        "workers": workers,
        "pool": pool,
        "budget": total,
        "trials_per_s": counted / wall,
        "storage_s_per_trial": wall * workers / max(counted, 1),
        "counted": counted,
        "all_trials": all_trials,
        "errors": len(errors),
        "first_error": errors[:1],
        "retries": sum(r["n_retries"] for r in found),
        "first_retry": [m for r in found for m in r["retries"]][:1],
        "held_per_worker": max((r["held"] for r in found), default=0),
        "server_peak": counter.most["trials"] if counter else None,
        "server_peak_open": counter.most["open"] if counter else None,
        "open_s": start - opening,
        "growth": growth,
    }


def parser() -> argparse.ArgumentParser:
    parser = _common.parser(__doc__)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument(
        "--storages",
        nargs="+",
        default=["sqlite", "postgresql", "journal"],
        choices=["sqlite", "postgresql", "postgresql300", "mariadb", "pgbouncer", "journal"],
    )
    parser.add_argument("--pool", default="1", help="HPO_DB_POOL of the workers (1 or null)")
    parser.add_argument("--growth", action="store_true", help="admission at trial 100 vs 1000")
    parser.add_argument("--limit", type=float, default=600.0, help="seconds per run at most")
    parser.add_argument(
        "--reconnect", type=float, default=60.0, help="the workers' --reconnect (seconds)"
    )
    return parser


def main() -> None:
    args = parser().parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        urls = {
            **URLS,
            "sqlite": f"sqlite:///{tmp}/load.db",
            "journal": f"journal:{tmp}/load.journal",
        }
        header = (
            f"{'storage':<13} {'W':>3} {'pool':>4} {'trials/s':>8} {'s/trial':>7} "
            f"{'counted':>9} {'all':>5} {'errors':>6} {'retries':>7} {'conn/W':>6} "
            f"{'server':>6} {'at open':>7} {'open s':>6}"
        )
        if args.growth:
            header += "  admit ms @100 → @1000  loop ms @100 → @1000"
        print(header)
        for kind in args.storages:
            if kind in ADMIN:
                ensure_database(kind)
            for workers in args.workers:
                row = {
                    "storage": kind,
                    **run(
                        urls[kind],
                        workers,
                        args.trials,
                        kind=kind,
                        pool=args.pool,
                        limit_s=args.limit,
                        reconnect_s=args.reconnect,
                    ),
                }
                rows.append(row)
                line = (
                    f"{kind:<13} {workers:>3} {args.pool:>4} {row['trials_per_s']:>8.1f} "
                    f"{row['storage_s_per_trial']:>7.3f} "
                    f"{row['counted']:>4}/{args.trials:<4} {row['all_trials']:>5} "
                    f"{row['errors']:>6} {row['retries']:>7} {row['held_per_worker']:>6} "
                    f"{row['server_peak'] if row['server_peak'] is not None else '-':>6} "
                    f"{row['server_peak_open'] if row['server_peak_open'] is not None else '-':>7} "
                    f"{row['open_s']:>6.1f}"
                )
                if args.growth:
                    early, late = row["growth"]["early"], row["growth"]["late"]
                    line += (
                        f"  {early['admit_ms']} → {late['admit_ms']}"
                        f"  {early['loop_ms']} → {late['loop_ms']}"
                    )
                print(line, row["first_error"] or "", row["first_retry"] or "", flush=True)
    _common.emit({"trials": args.trials, "rows": rows})


if __name__ == "__main__":
    main()
