"""Trials per minute on IMDB: the naive Optuna/Keras loop vs hpo with 1 and K workers.

    python bench/throughput.py [--trials 8] [--workers 2] [--epochs 20] [--json out.json]

Question: how many more trials a minute does hpo run than the loop users write from Optuna's
Keras example, with one worker and with K?
Goal: >= 5x the naive loop's trials/min on a CPU, >= 10x on one GPU (docs/benchmarks.md).
Machine: any; the figures in docs/benchmarks.md are from this project's 2-core CPU.

Side by side on this machine, the same search space (studies/imdb.toml), sampler, pruner and
seed, `--epochs` epochs at most per trial, each mode a fresh process timed from its start:

- naive: what users write from Optuna's Keras example, one process, trials one after another,
  each trial calling keras.datasets.imdb.load_data() and vectorizing with the book's
  vectorize_sequences (float64), then model.fit with optuna_integration's KerasPruningCallback;
- hpo, 1 worker: `hpo optimize` as it stands (the data read once into its disk cache, which
  starts empty, and memory-mapped; reviews trained on their word ids; one compiled call an
  epoch, the fused loop of hpo/train/engine.py, not model.fit);
- hpo, K workers: the same with `--workers K`.

Prints trials/min, epochs/min (pruning differs between modes, so both count), mean GPU
utilisation where nvidia-smi exists, and each mode's ratio to the naive loop; then one JSON
line. Needs the real imdb.npz: --data-dir or HPO_DATA_DIR (e.g. ../shared/datasets).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import _common

ROOT = Path(__file__).resolve().parents[1]


def naive_loop(trials: int, epochs: int, seed: int) -> dict[str, int]:
    """The naive loop itself; run in a child process (see main). Returns trial/epoch counts."""
    import keras
    import numpy as np
    import optuna
    from optuna_integration.keras import KerasPruningCallback

    from hpo.study import algorithms, studyfile

    spec = studyfile.load("imdb")

    def vectorize_sequences(sequences, dimension=10000):  # Deep Learning with Python, 3.4
        results = np.zeros((len(sequences), dimension))
        for i, sequence in enumerate(sequences):
            results[i, sequence] = 1.0
        return results

    def objective(trial: optuna.Trial) -> float:
        params = spec.space.suggest(trial)
        (train_data, train_labels), _ = keras.datasets.imdb.load_data(num_words=10000)
        x_train = vectorize_sequences(train_data)
        y_train = np.asarray(train_labels).astype("float32")
        keras.backend.clear_session()
        model = keras.Sequential([keras.Input((10000,))])
        for _ in range(params["layers"]):
            model.add(keras.layers.Dense(params["units"], activation=params["activation"]))
            if params["dropout"]:
                model.add(keras.layers.Dropout(params["dropout"]))
        model.add(keras.layers.Dense(1, activation="sigmoid"))
        optimizer = {"rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam}
        model.compile(
            optimizer=optimizer[params["optimizer"]](learning_rate=params["learning_rate"]),
            loss=params["loss"],
            metrics=["accuracy"],
        )
        history = model.fit(
            x_train[10000:],
            y_train[10000:],
            epochs=epochs,
            batch_size=params["batch_size"],
            validation_data=(x_train[:10000], y_train[:10000]),
            callbacks=[KerasPruningCallback(trial, "val_accuracy")],
            verbose=0,
        )
        return max(history.history["val_accuracy"])

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        sampler=algorithms.make_sampler(spec.sampler, seed),
        pruner=algorithms.make_pruner(spec.pruner, epochs),
    )
    study.optimize(objective, n_trials=trials)
    return {
        "trials": len(study.trials),
        "epochs": sum(len(t.intermediate_values) for t in study.trials),
        "best": study.best_value,
    }


class GpuSampler:
    """Mean GPU utilisation (%) over a run, from nvidia-smi every half second; None without."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
        while not self.stop.wait(0.5):
            out = subprocess.run(query, capture_output=True, text=True, check=False).stdout
            values = [float(v) for v in out.split() if v.strip().isdigit()]
            if values:
                self.samples.append(sum(values) / len(values))

    def __enter__(self) -> GpuSampler:
        if shutil.which("nvidia-smi"):
            self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float | None, str]:
    """(wall seconds, mean GPU utilisation, stdout) of a child process."""
    with GpuSampler() as gpu:
        start = time.perf_counter()
        done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd[:6])} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return wall, gpu.mean, done.stdout


def study_counts(storage: str, name: str) -> dict[str, float]:
    import optuna

    study = optuna.load_study(study_name=name, storage=storage)
    counted = [t for t in study.trials if t.state.is_finished() and t.intermediate_values]
    return {
        "trials": len(counted),
        "epochs": sum(len(t.intermediate_values) for t in counted),
        "best": study.best_value,
    }


def parser() -> argparse.ArgumentParser:
    parser = _common.parser(__doc__)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="K for the last mode")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    _common.add_data_dir(parser)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--naive-child", action="store_true", help=argparse.SUPPRESS)
    return parser


def main() -> None:
    args = parser().parse_args()
    if args.naive_child:
        print(json.dumps(naive_loop(args.trials, args.epochs, args.seed)))
        return
    source = _common.needs(args.data_dir, "imdb.npz")

    with tempfile.TemporaryDirectory() as tmp:
        # keras' own cache, where load_data finds the byte-identical file without a download
        (Path(tmp) / "keras" / "datasets").mkdir(parents=True)
        shutil.copy(source, Path(tmp) / "keras" / "datasets" / "imdb.npz")
        # the cache starts empty: hpo pays for vectorizing once
        keras_home = {"KERAS_HOME": f"{tmp}/keras", "HPO_DATA_DIR": str(source.parent)}
        env = _common.hpo_env(f"{tmp}/cache", **keras_home)
        modes: dict[str, dict] = {}
        cmd = [sys.executable, __file__, "--naive-child", "--trials", str(args.trials)]
        cmd += ["--epochs", str(args.epochs), "--seed", str(args.seed)]
        wall, gpu, out = timed(cmd, env)
        modes["naive Optuna loop"] = {**json.loads(out.splitlines()[-1]), "s": wall, "gpu": gpu}
        for k in (1, args.workers):
            storage, name = f"sqlite:///{tmp}/bench.db", f"workers-{k}"
            cmd = ["optimize", "imdb", "--trials", str(args.trials)]
            cmd += ["--max-epochs", str(args.epochs), "--seed", str(args.seed)]
            cmd += ["--workers", str(k), "--storage", storage, "--study", name]
            with GpuSampler() as gpu:
                wall = _common.run_hpo(cmd, env)
            label = f"hpo, {k} worker" + ("s" if k > 1 else "")
            modes[label] = {**study_counts(storage, name), "s": wall, "gpu": gpu.mean}

    import keras

    naive = modes["naive Optuna loop"]
    print(
        f"IMDB, {args.trials} trials of at most {args.epochs} epochs, Keras {keras.__version__} "
        f"on {keras.backend.backend()}, {os.cpu_count()} cores"
    )
    print(
        f"{'mode':<20} {'trials/min':>10} {'epochs/min':>10} {'GPU %':>6} "
        f"{'× naive (trials)':>17} {'best val_acc':>12}"
    )
    for label, row in modes.items():
        row["trials_per_min"] = 60 * row["trials"] / row["s"]
        row["epochs_per_min"] = 60 * row["epochs"] / row["s"]
        row["ratio"] = row["trials_per_min"] / (60 * naive["trials"] / naive["s"])
        gpu = "-" if row["gpu"] is None else f"{row['gpu']:.0f}"
        print(
            f"{label:<20} {row['trials_per_min']:>10.2f} {row['epochs_per_min']:>10.1f} "
            f"{gpu:>6} {row['ratio']:>17.2f} {row['best']:>12.4f}"
        )
    report = {
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "cores": os.cpu_count(),
        "trials": args.trials,
        "epochs": args.epochs,
        "modes": modes,
    }
    _common.emit(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
