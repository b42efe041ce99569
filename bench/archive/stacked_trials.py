"""Many small trials as one compiled program (issue #22, part 2), measured before it is built.

    python bench/archive/stacked_trials.py --data-dir ../shared/datasets [--slots 1,2,4,8,16]
        [--epochs 40] [--backends tensorflow,jax] [--storage URL --study NAME] [--window 8]

1. Speed. N Boston trials of the book's model (4-fold, batch 16, rmsprop) trained as one
   stacked model of N x 4 slots (hpo.train.model.FoldDense, the way a k-fold trial's folds
   are stacked today), against N such trials one after another, each a new model and a new
   compiled program as in a search. Per backend (a child process each): the seconds to the end
   of the first epoch (tracing and compiling) and per later epoch, and what one 200-epoch
   trial costs, alone or as one of N. All slots share the optimizer and the batch size: the
   best case for trials that share a program (a learning rate or dropout rate per slot would
   add no arithmetic).
2. Sharing. With --storage and --study (a finished search), the trials taken --window at a
   time in the order they were created, as a sampler asked for that many at once would give
   them, grouped by what one program cannot vary: depth, optimizer, activation, batch size and
   loss (widths would be padded to the widest of a group). Prints how many programs a window
   needs, and the search-wide gain part 1's figures predict for that grouping (pruning and
   trials that stop early left out: an upper bound).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRIAL_EPOCHS = 200  # studies/boston_housing.toml
CANNOT_VARY = ("layers", "optimizer", "activation", "batch_size", "loss")


def timed_stack(data, slots: int, epochs: int) -> tuple[float, float]:
    """(seconds to the end of epoch 1, seconds per later epoch) of `slots` stacked trials."""
    from hpo.backend import import_keras, set_random_seed
    from hpo.data.spec import Validation
    from hpo.results.one_factor import BOOK_CONFIGS
    from hpo.train import engine
    from hpo.train import model as model_lib

    import_keras().backend.clear_session()
    params = BOOK_CONFIGS["boston_housing"]
    folds = list(Validation.parse("kfold:4").splits(data.x_train, data.y_train))
    (x, y), (x_val, y_val) = model_lib.stack_folds(folds * slots)
    set_random_seed(0)
    start = time.perf_counter()
    trainer = engine.FusedTrainer(
        model_lib.build(params, data, folds=4 * slots),
        loss=params["loss"],
        task="regression",
        train=(x, y[..., None]),
        validation=(x_val, y_val[..., None]),
        batch_size=params["batch_size"],
        validation_batch_size=model_lib.validation_batch(params["batch_size"]),
        seed=0,
    )
    trainer.run_epoch()
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(epochs - 1):
        trainer.run_epoch()
    return first, (time.perf_counter() - start) / (epochs - 1)


def child(args) -> None:
    from hpo.backend import import_keras
    from hpo.data import builtin

    keras = import_keras()
    data = builtin.load("boston_housing", args.data_dir)
    timed_stack(data, 1, 3)  # warm the backend up
    rows = []
    for slots in map(int, args.slots.split(",")):
        first, per_epoch = timed_stack(data, slots, args.epochs)
        trial = (first + (TRIAL_EPOCHS - 1) * per_epoch) / slots  # one trial's share
        rows.append({"slots": slots, "first": first, "per_epoch": per_epoch, "trial": trial})
    print(json.dumps({"backend": keras.backend.backend(), "rows": rows}))


def sharing(storage: str, study_name: str, window: int) -> list[list[int]]:
    """Each window's group sizes: trials that one program could train together."""
    import optuna

    trials = optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)
    trials = [t for t in trials if t.params]
    windows = []
    for begin in range(0, len(trials), window):
        groups: dict[tuple, int] = {}
        for t in trials[begin : begin + window]:
            key = tuple(t.params.get(name) for name in CANNOT_VARY)
            groups[key] = groups.get(key, 0) + 1
        windows.append(sorted(groups.values(), reverse=True))
    return windows


def predicted_gain(windows: list[list[int]], rows: list[dict]) -> float:
    """Seconds of today's one-at-a-time trials over those of the windows' stacked programs, a
    group of s trials costing the measured stack of the fewest slots at least s."""
    measured = sorted(rows, key=lambda r: r["slots"])
    one = next(r for r in measured if r["slots"] == 1)["trial"]

    def program(size: int) -> float:
        row = next((r for r in measured if r["slots"] >= size), measured[-1])
        return row["trial"] * row["slots"] * max(1.0, size / row["slots"])

    today = sum(sum(w) for w in windows) * one
    stacked = sum(program(size) for w in windows for size in w)
    return today / stacked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slots", default="1,2,4,8,16")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--backends", default="tensorflow,jax")
    parser.add_argument("--storage", help="a finished search's storage, for part 2")
    parser.add_argument("--study", help="its study name")
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--data-dir", default=os.environ.get("HPO_DATA_DIR"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    results = []
    for backend in args.backends.split(","):
        cmd = [sys.executable, __file__, "--child", "--slots", args.slots]
        cmd += ["--epochs", str(args.epochs)] + (
            ["--data-dir", args.data_dir] * bool(args.data_dir)
        )
        env = {**os.environ, "KERAS_BACKEND": backend}
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    print(f"Boston book model, 4 folds a trial, {os.cpu_count()} cores; a trial = 200 epochs")
    header = ("backend", "trials", "epoch 1 s", "ms/epoch", "s a trial", "gain")
    print("{:<11} {:>6} {:>10} {:>9} {:>10} {:>6}".format(*header))
    for result in results:
        one = next(r for r in result["rows"] if r["slots"] == 1)["trial"]
        for r in result["rows"]:
            print(
                f"{result['backend']:<11} {r['slots']:>6} {r['first']:10.2f} "
                f"{r['per_epoch'] * 1000:9.2f} {r['trial']:10.3f} {one / r['trial']:5.1f}x"
            )
    out = {"speed": results}
    if args.storage and args.study:
        windows = sharing(args.storage, args.study, args.window)
        programs = [len(w) for w in windows]
        print(
            f"\n{args.study}: {sum(map(sum, windows))} trials in windows of {args.window}: "
            f"{sum(programs)} programs ({sum(map(sum, windows)) / sum(programs):.2f} trials a "
            f"program); largest groups {[w[0] for w in windows]}"
        )
        for result in results:
            gain = predicted_gain(windows, result["rows"])
            print(f"predicted search gain on {result['backend']}: {gain:.2f}x")
        out["windows"] = windows
    print(json.dumps(out))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
