"""Text's first layer on word ids against dense, by width: seconds per epoch of the fused loop.

    python bench/archive/word_ids.py --data-dir ../shared/datasets [--units 16,32,64,128]
        [--backends tensorflow,jax] [--datasets imdb,reuters] [--epochs 5]

For each backend (a child process each: KERAS_BACKEND is read at import), dataset and width of
the first layer, trains a 2-layer model of that width (relu, rmsprop, batch 512, the book's
holdout: IMDB's first 10,000 rows, Reuters' first 1,000) through hpo.train.engine's fused loop
twice from the same weights and batches, its first layer dense (multi-hot rows unpacked from
bits) and on word ids (hpo.train.word_ids), and prints the median seconds per epoch (epoch 1,
which compiles, left out), validation pass included, and how far apart the two forms' last
validation loss (their difference: float sums in another order, grown over the epochs). This
is the measurement behind word_ids.choose().
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HOLDOUT = {"imdb": 10000, "reuters": 1000}


def epochs_of(
    form: str,
    name: str,
    units: int,
    data,
    cache,
    epochs: int,
    *,
    optimizer: str = "rmsprop",
    batch_size: int = 512,
    frozen_first: bool = False,
) -> tuple:
    """(median seconds per epoch after the first, last validation loss). With `frozen_first`
    the first Dense layer is not trained: no kernel gradient, no update (first_layer_update.py)."""
    from hpo.backend import set_random_seed
    from hpo.train import engine, word_ids
    from hpo.train import model as model_lib

    loss = "binary_crossentropy" if name == "imdb" else "sparse_categorical_crossentropy"
    params = {
        "layers": 2,
        "units": units,
        "activation": "relu",
        "loss": loss,
        "optimizer": optimizer,
        "learning_rate": 0.001,
        "batch_size": batch_size,
        "dropout": 0.0,
    }
    y = model_lib.targets(data.y_train, data.task, loss, data.n_outputs)
    n = HOLDOUT[name]
    set_random_seed(0)
    model = model_lib.build(params, data)
    if frozen_first:  # before the trainer builds the optimizer
        word_ids.first_dense(model).trainable = False
    trainer = engine.FusedTrainer(
        model,
        loss=loss,
        task=data.task,
        train=(data.x_train[n:], y[n:]),
        validation=(data.x_train[:n], y[:n]),
        batch_size=batch_size,
        validation_batch_size=512,
        seed=0,
        cache=cache,
        first_layer=form,
    )
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        logs = trainer.run_epoch()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]), logs["val_loss"]


def child(args) -> None:
    from hpo.backend import import_keras
    from hpo.data import builtin
    from hpo.train import inputs as inputs_lib

    keras = import_keras()
    rows = []
    for name in args.datasets.split(","):
        data = builtin.load(name, args.data_dir)
        cache = inputs_lib.InputCache()  # the data converted once for both forms
        for units in map(int, args.units.split(",")):
            dense, dense_loss = epochs_of("dense", name, units, data, cache, args.epochs)
            ids, ids_loss = epochs_of("ids", name, units, data, cache, args.epochs)
            apart = abs(dense_loss - ids_loss)
            rows.append(
                {"dataset": name, "units": units, "dense": dense, "ids": ids, "apart": apart}
            )
    print(json.dumps({"backend": keras.backend.backend(), "rows": rows}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--units", default="16,32,64,128")
    parser.add_argument("--backends", default="tensorflow,jax")
    parser.add_argument("--datasets", default="imdb,reuters")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--data-dir", default=os.environ.get("HPO_DATA_DIR"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    results = []
    for backend in args.backends.split(","):
        cmd = [sys.executable, __file__, "--child", "--units", args.units]
        cmd += ["--datasets", args.datasets, "--epochs", str(args.epochs)]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        env = {**os.environ, "KERAS_BACKEND": backend}
        env.pop("HPO_FIRST_LAYER", None)
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    print(f"seconds per epoch, median of epochs 2-{args.epochs}, {os.cpu_count()} cores")
    header = ("backend", "dataset", "units", "dense", "ids", "gain", "Δ val_loss")
    print("{:<11} {:<8} {:>5} {:>7} {:>7} {:>6} {:>10}".format(*header))
    for result in results:
        for r in result["rows"]:
            print(
                f"{result['backend']:<11} {r['dataset']:<8} {r['units']:>5} {r['dense']:7.3f} "
                f"{r['ids']:7.3f} {r['dense'] / r['ids']:5.1f}x {r['apart']:10.1e}"
            )
    print(json.dumps(results))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
