"""The study queue and its pool of workers: fairness, exact budgets, a killed worker, the time
from submit to a first trial, and the database's load per trial, on PostgreSQL.

    python bench/study_queue.py [--workers 4] [--trial-s 0.4] [--scale-workers 32]
        [--budget 150] [--parts fairness,latency,scale]

Question: does a pool of workers share itself by priority, keep every budget exact when a
worker dies, and start a new study at once?
Goal: shares within a few % of the priorities; exactly --budget trials a study; a first trial
within a second of `hpo submit`.
Machine: any; PostgreSQL at 127.0.0.1:5432 (user postgres).

Workers are real `hpo.search.queue_worker.Worker`s (the queue reads, the choice, the budget,
the stop check, the heartbeat), each in its own process, with one change: a trial trains nothing, it
sleeps --trial-s seconds in 10 "epochs" (what a short real trial does between database calls)
and returns a random value, so the figures are the queue's, not Keras'. Three parts:

1. Fairness: --workers workers; study A (priority 1) is submitted, B (priority 2) 8 s later,
   C (priority 1) 16 s later, each with a budget of 150 trials. While all three are running,
   their shares of the trials started should be 1/4, 1/2, 1/4. One worker is killed
   (SIGKILL) mid-trial 24 s in and a new one started: its trial must be failed by the
   heartbeat and re-run, and every study must end with exactly 150 trials.
2. Latency: on the idle queue_worker, a study is submitted 5 times; the time from submit's return to
   its first trial's start.
3. Scale: --scale-workers workers on 8 studies of 40 trials, then on 1 study of 320 trials:
   database queries per trial (counted by each worker's SQLAlchemy engine), and the queries of
   one read of an idle queue.

The database `hpo_bench_queue` is created (and emptied) on 127.0.0.1:5432.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import signal
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402  (imported once, before the workers fork)
import sqlalchemy  # noqa: E402
from rich.console import Console  # noqa: E402

from hpo.search import queue, queue_worker  # noqa: E402
from hpo.search.budget import Budget, OverBudget, finished  # noqa: E402
from hpo.search.search_options import SearchOptions  # noqa: E402
from hpo.study import studyfile  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
import _common  # noqa: E402

ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
URL = "postgresql+psycopg://postgres@127.0.0.1:5432/hpo_bench_queue"
TARGET = str(ROOT / "studies" / "imdb.toml")  # its space is sampled; its data is never read


def fresh_database() -> None:
    engine = sqlalchemy.create_engine(ADMIN, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.exec_driver_sql("DROP DATABASE IF EXISTS hpo_bench_queue WITH (FORCE)")
        connection.exec_driver_sql("CREATE DATABASE hpo_bench_queue")
    engine.dispose()


class Sleeper:
    """A trial that sleeps instead of training, reporting and checking for stop each epoch."""

    def __init__(self, spec, budget: Budget, seconds: float) -> None:
        self.spec, self.budget, self.seconds = spec, budget, seconds
        self.trial_number: int | None = None
        self.check_interrupt = None

    def __call__(self, trial: optuna.Trial) -> float:
        self.trial_number = trial.number
        trial.set_user_attr("pid", os.getpid())
        self.budget.admit(trial)
        self.spec.space.suggest(trial)
        for epoch in range(10):
            time.sleep(self.seconds / 10)
            if self.check_interrupt:
                self.check_interrupt()
            trial.report(random.random(), epoch)
        return random.random()


class BenchWorker(queue_worker.Worker):
    seconds = 0.4

    def _open(self, entry: queue.Entry, study: optuna.Study, spec) -> queue_worker.Served:
        budget = Budget(entry.trials)
        return queue_worker.Served(
            study, Sleeper(spec, budget, self.seconds), budget, (OverBudget,)
        )


def count_queries(engine) -> list[int]:
    """A one-item list counting the statements `engine` sends from now on."""
    seen = [0]

    def one(*_) -> None:
        seen[0] += 1

    sqlalchemy.event.listen(engine, "before_cursor_execute", one)
    return seen


def serve(seconds: float, counts) -> None:
    """One worker process; adds its query count to `counts` when stopped."""
    BenchWorker.seconds = seconds
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    worker = BenchWorker(URL, console=Console(quiet=True), poll_s=0.5, heartbeat_s=2)
    queries = count_queries(worker.store.engine)
    try:
        worker.serve()
    finally:
        counts.put(queries[0])


def start(n: int, seconds: float, counts) -> list[mp.Process]:
    procs = [mp.Process(target=serve, args=(seconds, counts)) for _ in range(n)]
    for p in procs:
        p.start()
    return procs


def stop(procs: list[mp.Process], counts) -> int:
    for p in procs:
        if p.is_alive():
            os.kill(p.pid, signal.SIGTERM)
    for p in procs:
        p.join(timeout=60)
    return sum(counts.get(timeout=10) for p in procs if p.exitcode != -signal.SIGKILL)


def submit(name: str, trials: int, priority: float = 1.0) -> float:
    options = SearchOptions(TARGET, trials=trials, study=name, storage_url=URL)
    queue.submit(options, priority, Console(quiet=True))
    return time.time()


def storage():
    return optuna.storages.RDBStorage(URL)


def in_training(pid: int, names: list[str]) -> tuple[str, int]:
    """(study, trial number) of a trial that worker `pid` has in training: waited for, so
    that the kill lands mid-trial."""
    store = storage()
    while True:
        for name in names:
            for t in optuna.load_study(study_name=name, storage=store).get_trials(deepcopy=False):
                if (
                    t.state.name == "RUNNING"
                    and t.user_attrs.get("pid") == pid
                    and len(t.intermediate_values) >= 2
                ):
                    return name, t.number
        time.sleep(0.02)


def wait_done(names: list[str], trials: int, timeout: float = 900) -> None:
    store = storage()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(finished(optuna.load_study(study_name=n, storage=store)) >= trials for n in names):
            return
        time.sleep(1)
    raise SystemExit(f"timed out waiting for {names}")


def fairness(opts, counts) -> dict:
    fresh_database()
    submit("warmup", 1)  # creates the tables before the workers race to
    procs = start(opts.workers, opts.trial_s, counts)
    names, priorities, joined = ["A", "B", "C"], [1, 2, 1], []
    for name, priority in zip(names, priorities, strict=True):
        joined.append(submit(name, opts.budget, priority))
        time.sleep(8)
    time.sleep(8)
    victim = procs[0]
    killed = in_training(victim.pid, names)
    os.kill(victim.pid, signal.SIGKILL)
    victim.join()
    procs[0] = start(1, opts.trial_s, counts)[0]
    wait_done(names, opts.budget)
    time.sleep(3)
    stop(procs, counts)
    store = storage()
    studies = {n: optuna.load_study(study_name=n, storage=store) for n in names}
    trials = {n: s.get_trials(deepcopy=False) for n, s in studies.items()}
    ends = [max(t.datetime_complete for t in trials[n] if t.datetime_complete) for n in names]
    window = (datetime.fromtimestamp(joined[-1]), min(ends))  # all three running
    started = {
        n: sum(t.datetime_start and window[0] <= t.datetime_start < window[1] for t in trials[n])
        for n in names
    }
    total = sum(started.values())
    dead = trials[killed[0]][killed[1]]
    reruns = [
        t for n in names for t in trials[n] if t.system_attrs.get("failed_trial") == dead.number
    ]
    print(f"\n1. fairness: {opts.workers} workers, {opts.trial_s} s trials, budget {opts.budget}")
    print(f"   window with all three running: {(window[1] - window[0]).total_seconds():.0f} s")
    shares = {}
    for n, p in zip(names, priorities, strict=True):
        share, want = started[n] / total, p / sum(priorities)
        counted = finished(studies[n])
        running = sum(t.state.name == "RUNNING" for t in trials[n])
        shares[n] = {"priority": p, "share": round(share, 3), "want": round(want, 3)}
        shares[n] |= {"finished": counted, "running": running}
        print(
            f"   {n} (priority {p}): {started[n]} trials started in the window, share "
            f"{share:.3f} (wanted {want:.3f}, off by {abs(share - want) / want:.1%}); "
            f"finished {counted} of {opts.budget}, {running} left running"
        )
    print(
        f"   the killed worker's trial ({killed[0]} #{dead.number}): {dead.state.name}; "
        f"re-run as #{', #'.join(str(t.number) for t in reruns)} "
        f"({reruns[0].state.name if reruns else 'never'})"
    )
    rerun = reruns[0].state.name if reruns else None
    return {"budget": opts.budget, "studies": shares, "killed": dead.state.name, "rerun": rerun}


def latency(opts, counts) -> dict:
    procs = start(opts.workers, opts.trial_s, counts)
    time.sleep(5)  # idle
    delays = []
    for i in range(5):
        name = f"late{i}"
        submitted = submit(name, 2)
        wait_done([name], 2, timeout=60)
        study = optuna.load_study(study_name=name, storage=storage())
        first = min(t.datetime_start for t in study.get_trials() if t.datetime_start)
        delays.append(first.timestamp() - submitted)
        time.sleep(2)
    stop(procs, counts)
    print(
        f"\n2. submit to first trial on an idle pool (poll 0.5 s): mean "
        f"{statistics.fmean(delays):.2f} s, worst {max(delays):.2f} s"
    )
    return {"mean_s": round(statistics.fmean(delays), 2), "worst_s": round(max(delays), 2)}


def scale(opts, counts) -> dict:
    print(f"\n3. scale: {opts.scale_workers} workers, trials of {opts.trial_s} s")
    rows = []
    for studies, each in ((8, 40), (1, 320)):
        fresh_database()
        submit("warmup", 1)
        procs = start(opts.scale_workers, opts.trial_s, counts)
        time.sleep(3)
        start_s = time.monotonic()
        names = [f"s{i}" for i in range(studies)]
        for name in names:
            submit(name, each)
        wait_done(names, each)
        wall = time.monotonic() - start_s
        queries = stop(procs, counts)
        done = studies * each
        print(
            f"   {studies} studies x {each} trials: {queries / done:.0f} queries a trial "
            f"(all workers', idle reads included), {done / wall:.1f} trials/s"
        )
        rows.append({"studies": studies, "trials": each, "queries_per_trial": queries / done})
        rows[-1]["trials_per_s"] = round(done / wall, 1)
    worker = queue_worker.Worker(URL, console=Console(quiet=True))
    seen = count_queries(worker.store.engine)
    worker.choose()
    print(
        f"   one read of the idle queue ({len(queue.entries(worker.store))} studies, all done): "
        f"{seen[0]} queries; at the default poll of {queue_worker.POLL_S:g} s, "
        f"{seen[0] / queue_worker.POLL_S:.1f} queries/s per idle worker"
    )
    return {"workers": opts.scale_workers, "rows": rows, "idle_read_queries": seen[0]}


def parser() -> argparse.ArgumentParser:
    p = _common.parser(__doc__)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--trial-s", type=float, default=0.4)
    p.add_argument("--budget", type=int, default=150)
    p.add_argument("--scale-workers", type=int, default=32)
    p.add_argument("--parts", default="fairness,latency,scale")
    return p


def main() -> None:
    opts = parser().parse_args()
    mp.set_start_method("fork")
    counts = mp.Queue()
    print(f"bench/study_queue.py on {os.cpu_count()} cores, {datetime.now():%Y-%m-%d %H:%M}")
    parts = {"fairness": fairness, "latency": latency, "scale": scale}
    record = {"workers": opts.workers, "trial_s": opts.trial_s}
    for part in opts.parts.split(","):
        record[part] = parts[part](opts, counts)
    _common.emit(record)


if __name__ == "__main__":
    studyfile.load(TARGET)  # fails early if the study file is missing
    main()
