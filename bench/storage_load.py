"""Storage load: W worker processes share one study through hpo's budget loop, no training.

    python bench/storage_load.py [--trials 200] [--workers 2 4 8 16]
                                  [--storages sqlite postgresql journal]

Each worker is a separate process doing what `hpo optimize` does around a trial (wait for a
slot in the study-wide budget, ask, admit, tell) with an objective that returns at once, so
the time measured is the storage's and the budget logic's. Prints, per storage and W: trials
per second, storage seconds per trial (wall time x W / trials), the counted trials (must equal
--trials: none lost, none extra) and errors. Servers: PostgreSQL at 127.0.0.1 (user postgres,
database test); SQLite and the journal file in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def open_any(url: str):
    import optuna

    from hpo.storage import open_storage

    if url.startswith("journal:"):
        path = url.removeprefix("journal:")
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
    return open_storage(url)


def worker(url: str, name: str, total: int, errors) -> None:
    import optuna

    from hpo.budget import Budget, OverBudget

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        study = optuna.load_study(
            study_name=name, storage=open_any(url), sampler=optuna.samplers.RandomSampler()
        )
        budget = Budget(total, poll_s=0.05)

        def objective(trial):
            budget.admit(trial)
            return trial.suggest_float("x", 0, 1)

        while budget.wait_for_slot(study):
            study.optimize(objective, n_trials=1, catch=(OverBudget,))
    except Exception as exc:  # counted and printed, never hidden
        errors.put(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")


def run(url: str, workers: int, total: int) -> dict:
    import optuna

    from hpo.budget import finished

    name = f"load-{uuid.uuid4().hex[:8]}"
    optuna.create_study(study_name=name, storage=open_any(url))
    errors = mp.get_context("spawn").Queue()
    procs = [
        mp.get_context("spawn").Process(target=worker, args=(url, name, total, errors))
        for _ in range(workers)
    ]
    start = time.perf_counter()
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    wall = time.perf_counter() - start
    study = optuna.load_study(study_name=name, storage=open_any(url))
    found = []
    while not errors.empty():
        found.append(errors.get())
    counted, all_trials = finished(study), len(study.trials)
    if not url.startswith("journal:"):
        optuna.delete_study(study_name=name, storage=open_any(url))
    return {
        "workers": workers,
        "trials_per_s": counted / wall,
        "storage_s_per_trial": wall * workers / max(counted, 1),
        "counted": counted,
        "all_trials": all_trials,
        "errors": len(found),
        "first_error": found[:1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--storages", nargs="+", default=["sqlite", "postgresql", "journal"])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        urls = {
            "sqlite": f"sqlite:///{tmp}/load.db",
            "postgresql": POSTGRES,
            "journal": f"journal:{tmp}/load.journal",
        }
        print(
            f"{'storage':<11} {'W':>3} {'trials/s':>9} {'s/trial':>8} {'counted':>8} "
            f"{'all':>5} {'errors':>6}"
        )
        for kind in args.storages:
            for workers in args.workers:
                row = {"storage": kind, **run(urls[kind], workers, args.trials)}
                rows.append(row)
                print(
                    f"{kind:<11} {workers:>3} {row['trials_per_s']:>9.1f} "
                    f"{row['storage_s_per_trial']:>8.3f} {row['counted']:>8} "
                    f"{row['all_trials']:>5} {row['errors']:>6} {row['first_error'] or ''}",
                    flush=True,
                )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
