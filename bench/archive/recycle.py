"""What restarting a worker costs, and how much memory it holds back: `--recycle-after`.

    python bench/archive/recycle.py [--dataset boston_housing] [--trials 50] [--seed 0]
        [--modes 10,auto,0] [--data-dir DIR]

For each mode, `hpo optimize DATASET --trials N --seed S --recycle-after MODE` as a user runs
it (the built-in study file, a fresh SQLite storage and cache folder), one after another.
A worker restarts itself by exec, keeping its PID, so the process is sampled every second
for its resident memory. Prints per mode: the command's wall time, the restarts it made, the
seconds between one trial's end and the next one's start (the mean where the worker
restarted, and elsewhere: TPE and the storage), the peak and last resident memory, trials
pruned and the best value; then one JSON line.

The searches do not train the same trials (float sums in another order and other dropout
masks after a restart move the pruner and TPE), so compare the gaps and the memory; the wall
times differ by which configurations each search tried as well.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from hpo.resources import resident_mb  # noqa: E402  (the hpo beside this script)


def one_search(mode: str, args, tmp: Path) -> dict:
    folder = Path(tempfile.mkdtemp(dir=tmp))
    storage = f"sqlite:///{folder}/bench.db"
    env = {**os.environ, "HPO_CACHE_DIR": str(folder / "cache"), "PYTHONPATH": str(ROOT)}
    env.pop("HPO_STORAGE", None)
    command = [sys.executable, "-m", "hpo", "optimize", args.dataset, "--trials", str(args.trials)]
    command += ["--seed", str(args.seed), "--recycle-after", mode, "--storage", storage]
    command += ["--artifacts", str(folder / "artifacts"), "--data-dir", args.data_dir]
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    memory: list[float] = []

    def sample() -> None:
        while proc.poll() is None:
            value = resident_mb(proc.pid)
            if value:
                memory.append(value)
            time.sleep(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    seconds = time.perf_counter() - start
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"mode {mode}: hpo exited {proc.returncode}")
    study = optuna.load_study(study_name=args.dataset, storage=storage)
    trials = sorted(study.trials, key=lambda t: t.number)
    restarts = out.count("restarting this worker")
    # One worker: a count N restarts it between trials kN-1 and kN. Under auto the places are
    # not known here; its gaps all count as "elsewhere", restarts included.
    every = int(mode) if mode.isdigit() else 0
    gaps: dict[str, list[float]] = {"restart": [], "elsewhere": []}
    for before, after in itertools.pairwise(trials):
        if before.datetime_complete and after.datetime_start:
            gap = (after.datetime_start - before.datetime_complete).total_seconds()
            at_restart = every and after.number % every == 0
            gaps["restart" if at_restart else "elsewhere"].append(gap)
    return {
        "mode": mode,
        "seconds": round(seconds, 1),
        "restarts": restarts,
        "gap at a restart": round(mean(gaps["restart"]), 2),
        "gap elsewhere": round(mean(gaps["elsewhere"]), 2),
        "peak MB": round(max(memory, default=0.0)),
        "last MB": round(memory[-1] if memory else 0.0),
        "pruned": sum(t.state.name == "PRUNED" for t in trials),
        "best value": round(study.best_value, 4),
    }


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="boston_housing")
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", default="10,auto,0")
    parser.add_argument("--data-dir", default=os.environ.get("HPO_DATA_DIR"))
    args = parser.parse_args()
    if not args.data_dir:
        raise SystemExit("--data-dir (or HPO_DATA_DIR): the folder with keras' dataset files")
    args.data_dir = str(Path(args.data_dir).resolve())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            rows.append(one_search(mode, args, Path(tmp)))
            print("  ".join(f"{key} {value}" for key, value in rows[-1].items()), flush=True)
    print(json.dumps({"dataset": args.dataset, "trials": args.trials, "rows": rows}))


if __name__ == "__main__":
    main()
