"""IMDB and Reuters per epoch through hpo vs a bare model.fit, and a worker's memory.

    python bench/imdb_overhead.py [--epochs 6] [--backends tensorflow,jax] [--rss-trials 3]

Question: how fast is an epoch through hpo, against the bare model.fit of the book's model,
and how much memory does a worker hold?
Goal: an epoch <= 1.05x a bare fit's; a worker's peak RSS <= 1 GB.
Machine: any; the TensorFlow child needs TensorFlow, the JAX child JAX.

For each backend (a child process each, since KERAS_BACKEND is read at import) and dataset,
seconds per training epoch (epoch 1, which compiles, left out; validation pass included) of
the book's model (IMDB 2x16 relu, Reuters 2x64 relu, rmsprop, batch 512, the book's holdout):

- bare fit: what a reader of the book writes, float32 multi-hot arrays (the book's
  vectorize_sequences, in float32) straight into `model.fit`;
- hpo fit / hpo fused: hpo's objective with HPO_ENGINE=fit or fused (bit-packed rows from the
  memory-mapped cache, unpacked inside the compiled step), the fused loop's first layer dense
  (HPO_FIRST_LAYER=dense, unpacked multi-hot rows);
- hpo ids: the fused loop with its first layer summed from word ids (hpo.train.word_ids);
- hpo auto: the loop hpo chooses by itself on this backend, and its ratio to the bare fit
  (target <= 1.05).

Then the memory of `hpo optimize imdb` under TensorFlow with 1 and with 2 workers
(--rss-trials trials of 5 epochs each), sampled from /proc over the workers' process tree:
the largest peak RSS of one worker (VmHWM; target <= 1 GB), and the peak of the workers'
summed proportional (PSS) and private memory. RSS counts every shared page a worker touched
(TensorFlow's libraries, the memory-mapped dataset) in full; PSS divides each shared page
among the processes that map it, so the sum of PSS is what K workers really cost together,
and private memory what none of them shares.

Needs the real files: --data-dir or HPO_DATA_DIR (e.g. ../shared/datasets). Prints a table
and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import _common

ROOT = Path(__file__).resolve().parents[1]
BOOK_MODELS = {
    "imdb": (16, 1, "binary_crossentropy"),
    "reuters": (64, 46, "categorical_crossentropy"),
}


class EpochClock:
    def __init__(self) -> None:
        self.stamps = [time.perf_counter()]

    def tick(self, *_: object) -> None:
        self.stamps.append(time.perf_counter())

    def per_epoch(self) -> float:
        """Mean seconds of the epochs after the first (which includes compilation)."""
        gaps = [b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)][1:]
        return sum(gaps) / len(gaps)


def bare_fit(prepared, holdout: int, epochs: int) -> float:
    """The book's listing: float32 multi-hot rows and (one-hot) labels into model.fit."""
    import keras
    import numpy as np

    from hpo.data.arrays import unpacked

    x = unpacked(prepared, prepared.x_train).astype(np.float32)
    units, outputs, loss = BOOK_MODELS[prepared.name]
    if outputs == 1:
        y = np.asarray(prepared.y_train, dtype=np.float32)
    else:
        y = keras.utils.to_categorical(prepared.y_train, outputs)
    model = keras.Sequential(
        [
            keras.Input((x.shape[1],)),
            keras.layers.Dense(units, activation="relu"),
            keras.layers.Dense(units, activation="relu"),
            keras.layers.Dense(outputs, activation="sigmoid" if outputs == 1 else "softmax"),
        ]
    )
    model.compile(optimizer="rmsprop", loss=loss, metrics=["accuracy"])
    clock = EpochClock()
    model.fit(
        x[holdout:],
        y[holdout:],
        epochs=epochs,
        batch_size=512,
        verbose=0,
        validation_data=(x[:holdout], y[:holdout]),
        callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=clock.tick)],
    )
    return clock.per_epoch()


def hpo_fit(prepared, spec, epochs: int, engine: str | None, first_layer: str = "auto") -> float:
    import optuna

    from hpo.results.one_factor import BOOK_CONFIGS
    from hpo.train.objective import Objective

    if engine:
        os.environ["HPO_ENGINE"] = engine
    else:
        os.environ.pop("HPO_ENGINE", None)
    os.environ["HPO_FIRST_LAYER"] = first_layer
    spec = spec.with_overrides(max_epochs=epochs, pruner="none")
    clock = EpochClock()
    objective = Objective(spec, prepared, on_epoch=lambda *_: clock.tick())
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(BOOK_CONFIGS[prepared.name])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=1)
    return clock.per_epoch()


def child(data_dir: str | None, epochs: int, datasets: list[str]) -> None:
    """One backend's per-epoch figures, as one JSON line on stdout."""
    from hpo.backend import import_keras
    from hpo.data import builtin
    from hpo.study import studyfile
    from hpo.train import engine, word_ids

    keras = import_keras()
    out = {}
    for name in datasets:
        spec = studyfile.load(name)
        prepared = builtin.load(name, data_dir, spec.num_words)
        holdout = spec.validation.n
        bare_fit(prepared, holdout, 2)  # warm the backend up so neither side pays for it
        row = {
            "bare fit": bare_fit(prepared, holdout, epochs),
            "hpo fit": hpo_fit(prepared, spec, epochs, "fit"),
            "hpo fused": hpo_fit(prepared, spec, epochs, "fused", "dense"),
            "hpo ids": hpo_fit(prepared, spec, epochs, "fused", "ids"),
        }
        os.environ.pop("HPO_ENGINE", None)
        os.environ.pop("HPO_FIRST_LAYER", None)
        row["auto"] = engine.choose()
        if row["auto"] == "fused" and word_ids.choose(prepared.packed) == "ids":
            row["auto"] = "ids"
        row["hpo auto"] = row[f"hpo {row['auto']}"]
        row["ratio"] = row["hpo auto"] / row["bare fit"]
        out[name] = row
    print(json.dumps({"backend": keras.backend.backend(), "keras": keras.__version__, **out}))


def memory_kb(pid: int) -> dict[str, int]:
    """Peak RSS (VmHWM), and now Pss and Private (clean + dirty), of a live process, in kB."""
    fields: dict[str, int] = {}
    for name in (f"/proc/{pid}/status", f"/proc/{pid}/smaps_rollup"):
        with open(name) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[1].isdigit():
                    fields[parts[0].rstrip(":")] = int(parts[1])
    private = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return {"hwm": fields.get("VmHWM", 0), "pss": fields.get("Pss", 0), "private": private}


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (a --workers K run is a parent and K-1 children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with open(task / "children") as f:
                todo += [int(child) for child in f.read().split()]
    return found


def worker_memory(trials: int, workers: int, data_dir: str | None, python: str) -> dict:
    """Memory of `hpo optimize imdb --workers K`, sampled every 0.1 s over its process tree, MB:
    the largest peak RSS of one worker, and the peak of the workers' summed PSS and private
    memory (what K workers cost together: the TensorFlow libraries and the memory-mapped
    dataset are shared pages, counted once across processes by PSS)."""
    with tempfile.TemporaryDirectory() as tmp:
        total = str(trials * workers)  # --trials is the study's budget: `trials` a worker
        args = ["optimize", "imdb", "--trials", total, "--seed", "0"]
        args += ["--max-epochs", "5", "--workers", str(workers)]
        args += ["--storage", f"sqlite:///{tmp}/bench.db"]
        if data_dir:  # the worker runs in the temporary folder
            args += ["--data-dir", str(Path(data_dir).resolve())]
        env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
        proc = _common.start_hpo(args, env, Path(tmp), python, stdout=subprocess.DEVNULL)
        hwm: dict[int, int] = {}
        peaks = {"pss": 0, "private": 0}

        def sample() -> None:
            while proc.poll() is None:
                totals = {"pss": 0, "private": 0}
                for pid in process_tree(proc.pid):
                    try:
                        now = memory_kb(pid)
                    except OSError:  # ended between the listing and the read
                        continue
                    hwm[pid] = max(hwm.get(pid, 0), now["hwm"])
                    for key in totals:
                        totals[key] += now[key]
                for key in peaks:
                    peaks[key] = max(peaks[key], totals[key])
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        proc.wait()
        sampler.join()
        if proc.returncode:
            raise SystemExit(f"hpo optimize imdb exited with {proc.returncode}")
    return {
        "workers": workers,
        "peak RSS of one worker": max(hwm.values()) / 1024,
        "peak PSS, all workers": peaks["pss"] / 1024,
        "peak private, all workers": peaks["private"] / 1024,
    }


def parser() -> argparse.ArgumentParser:
    parser = _common.parser(__doc__)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--backends", default="tensorflow,jax")
    parser.add_argument("--datasets", default="imdb,reuters")
    parser.add_argument("--rss-trials", type=int, default=3, help="0: skip the memory figures")
    _common.add_data_dir(parser)
    parser.add_argument(
        "--worker-python",
        default=sys.executable,
        help="the Python of the measured worker: one of a plain `pip install -e .`, as users "
        "run it (the dev extra adds JAX, which TensorFlow then imports: about 120 MB more)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser


def main() -> None:
    args = parser().parse_args()
    datasets = args.datasets.split(",")
    if args.child:
        child(args.data_dir, args.epochs, datasets)
        return
    results = []
    for backend in filter(None, args.backends.split(",")):  # --backends "": memory only
        cmd = [sys.executable, __file__, "--child", "--epochs", str(args.epochs)]
        cmd += ["--datasets", args.datasets]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        env = {**os.environ, "KERAS_BACKEND": backend}
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    if results:
        print(f"seconds per epoch (epoch 1 left out), {os.cpu_count()} cores, {args.epochs} epochs")
        header = ("backend", "dataset", "bare fit", "hpo fit", "hpo fused", "hpo ids", "hpo auto")
        print("{:<11} {:<8} {:>9} {:>9} {:>10} {:>8} {:>15} {:>10}".format(*header, "auto/bare"))
    for result in results:
        for name in datasets:
            row = result[name]
            print(
                f"{result['backend']:<11} {name:<8} {row['bare fit']:9.3f} {row['hpo fit']:9.3f} "
                f"{row['hpo fused']:10.3f} {row['hpo ids']:8.3f} {row['hpo auto']:9.3f} "
                f"({row['auto']:<5}) {row['ratio']:9.2f}"
            )
    memory = [
        worker_memory(args.rss_trials, k, args.data_dir, args.worker_python)
        for k in (1, 2)
        if args.rss_trials
    ]
    if memory:
        print(f"hpo optimize imdb on TensorFlow, {args.rss_trials} trials of 5 epochs a worker, MB")
        print("workers  peak RSS of one  peak PSS, all  peak private, all")
    for row in memory:
        workers, rss, pss, private = row.values()
        print(f"{workers:>7} {rss:>16.0f} {pss:>14.0f} {private:>18.0f}")
    _common.emit({"per_epoch": results, "worker_memory_mb": memory})


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
