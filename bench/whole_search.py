"""Several trials as one program, in whole searches: `--batch-trials N` side by side with 1.

    python bench/batch_trials.py [--target boston_housing] [--trials 50] [--seeds 0,1,2]
        [--sizes 1,8] [--data-dir DIR]

For each seed and size, `hpo optimize TARGET --trials N --seed S --batch-trials SIZE` as a user
runs it (a fresh SQLite storage and cache folder), one after another, with the hpo beside this
script. TARGET is a built-in dataset or a study file: bench/boston_rates.toml is the book's
Boston model with only the learning rate and the dropout searched, where every trial of a
batch shares one structure (the most stacking can give); the built-in study searches eight
parameters, and a batch's trials rarely share a structure.

Prints one row per search: the command's wall time, the trials that trained stacked and in how
many groups, trials pruned and the best value; then per size the mean wall time and the mean
and worst best value over the seeds, and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]


def one_search(target: str, size: str, seed: int, args, tmp: Path) -> dict:
    folder = Path(tempfile.mkdtemp(dir=tmp))
    storage = f"sqlite:///{folder}/bench.db"
    env = {**os.environ, "HPO_CACHE_DIR": str(folder / "cache"), "PYTHONPATH": str(ROOT)}
    env.pop("HPO_STORAGE", None)
    command = [sys.executable, "-m", "hpo", "optimize", target, "--trials", str(args.trials)]
    command += ["--seed", str(seed), "--batch-trials", size, "--storage", storage]
    command += ["--artifacts", str(folder / "artifacts"), "--data-dir", args.data_dir]
    command += ["--study", "bench"]
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    study = optuna.load_study(study_name="bench", storage=storage)
    stacked = [t.user_attrs.get("worker", {}).get("stacked", 1) for t in study.trials]
    return {
        "size": size,
        "seed": seed,
        "seconds": round(seconds, 1),
        "stacked trials": sum(n > 1 for n in stacked),
        "groups": round(sum(1 / n for n in stacked if n > 1)),
        "pruned": sum(t.state.name == "PRUNED" for t in study.trials),
        "best value": round(study.best_value, 4),
        "direction": study.direction.name.lower(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="boston_housing")
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--sizes", default="1,8")
    parser.add_argument("--data-dir", default=os.environ.get("HPO_DATA_DIR"))
    args = parser.parse_args()
    if not args.data_dir:
        raise SystemExit("--data-dir (or HPO_DATA_DIR): the folder with keras' dataset files")
    args.data_dir = str(Path(args.data_dir).resolve())
    target = args.target
    if target.endswith(".toml"):
        target = str(Path(target).resolve())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for size in args.sizes.split(","):
                rows.append(one_search(target, size, seed, args, Path(tmp)))
                print("  ".join(f"{k} {v}" for k, v in rows[-1].items()), flush=True)
    for size in args.sizes.split(","):
        mine = [row for row in rows if row["size"] == size]
        best = [row["best value"] for row in mine]
        worst = min(best) if mine[0]["direction"] == "maximize" else max(best)
        print(
            f"--batch-trials {size}: {statistics.mean(r['seconds'] for r in mine):.1f} s mean, "
            f"best value mean {statistics.mean(best):.4f}, worst {worst:.4f}"
        )
    print(json.dumps({"target": args.target, "trials": args.trials, "rows": rows}))


if __name__ == "__main__":
    main()
