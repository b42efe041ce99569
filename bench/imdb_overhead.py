"""IMDB on this machine: hpo's per-epoch overhead over a bare model.fit, and a worker's peak RSS.

    python bench/imdb_overhead.py [--epochs 6] [--rss-trials 3] [--full-study]

Prints, as a table and as JSON:
- seconds per training epoch (epoch 1, which compiles, left out) of the book's IMDB model
  (2x16 relu, rmsprop, binary_crossentropy, batch 512, 15,000 train / 10,000 validation)
  trained through hpo's objective and through a bare `model.fit` on the book's float32
  arrays, in the same process; the ratio is hpo's overhead (target <= 1.05);
- the peak RSS of an `hpo optimize imdb` worker process (target <= 1 GB);
- with --full-study, the wall time of `hpo optimize imdb --trials 50` in a fresh storage.

Needs the real IMDB file: --data-dir or HPO_DATA_DIR (e.g. ../shared/datasets).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


class EpochClock:
    def __init__(self) -> None:
        self.stamps = [time.perf_counter()]

    def tick(self, *_: object) -> None:
        self.stamps.append(time.perf_counter())

    def per_epoch(self) -> float:
        """Mean seconds of the epochs after the first (which includes compilation)."""
        gaps = [b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)][1:]
        return sum(gaps) / len(gaps)


def bare_fit(prepared, epochs: int) -> float:
    """What a reader of the book writes: float32 multi-hot arrays straight into model.fit."""
    import keras
    import numpy as np

    x = np.asarray(prepared.x_train, dtype=np.float32)
    y = np.asarray(prepared.y_train, dtype=np.float32)
    model = keras.Sequential(
        [
            keras.Input((x.shape[1],)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer="rmsprop", loss="binary_crossentropy", metrics=["accuracy"])
    clock = EpochClock()
    model.fit(
        x[10000:],
        y[10000:],
        epochs=epochs,
        batch_size=512,
        verbose=0,
        validation_data=(x[:10000], y[:10000]),
        callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=clock.tick)],
    )
    return clock.per_epoch()


def hpo_fit(prepared, epochs: int) -> float:
    import optuna

    from hpo import studyfile
    from hpo.experiment import BOOK_CONFIGS
    from hpo.objective import Objective

    spec = studyfile.load("imdb").with_overrides(max_epochs=epochs, pruner="none")
    clock = EpochClock()
    objective = Objective(spec, prepared, on_epoch=lambda *_: clock.tick())
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(BOOK_CONFIGS["imdb"])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=1)
    return clock.per_epoch()


def run_optimize(args: list[str], data_dir: str | None, *, quiet: bool) -> float:
    """Run `hpo optimize imdb ARGS` on a fresh storage; its wall time in seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "hpo",
            "optimize",
            "imdb",
            *args,
            "--storage",
            f"sqlite:///{tmp}/bench.db",
        ]
        if data_dir:
            cmd += ["--data-dir", data_dir]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=quiet)
        return time.perf_counter() - start


def worker_rss(trials: int, data_dir: str | None) -> float:
    """Peak RSS (MB) of an `hpo optimize imdb` process running `trials` 5-epoch trials."""
    run_optimize(
        ["--trials", str(trials), "--max-epochs", "5", "--seed", "0"], data_dir, quiet=True
    )
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--rss-trials", type=int, default=3)
    parser.add_argument("--data-dir", default=os.environ.get("HPO_DATA_DIR"))
    parser.add_argument("--full-study", action="store_true")
    args = parser.parse_args()

    from hpo import data
    from hpo.backend import import_keras

    keras = import_keras()
    prepared = data.load("imdb", args.data_dir)
    rows = {}
    bare_fit(prepared, 2)  # warm up the backend once so neither side pays for it
    rows["bare model.fit s/epoch"] = bare_fit(prepared, args.epochs)
    rows["hpo objective s/epoch"] = hpo_fit(prepared, args.epochs)
    rows["overhead ratio (target <= 1.05)"] = (
        rows["hpo objective s/epoch"] / rows["bare model.fit s/epoch"]
    )
    rows["worker peak RSS MB (target <= 1024)"] = worker_rss(args.rss_trials, args.data_dir)
    if args.full_study:
        rows["hpo optimize imdb --trials 50, s"] = run_optimize(
            ["--trials", "50"], args.data_dir, quiet=False
        )
    width = max(map(len, rows))
    print(f"IMDB, Keras {keras.__version__} on {keras.backend.backend()}, {os.cpu_count()} cores")
    for key, value in rows.items():
        print(f"{key:<{width}}  {value:10.3f}")
    print(json.dumps({"backend": keras.backend.backend(), "keras": keras.__version__, **rows}))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
