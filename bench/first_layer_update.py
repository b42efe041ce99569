"""Where a wide text epoch goes: the first layer's gradient and update, by optimizer.

    python bench/first_layer_update.py [--data-dir DIR] [--epochs 6] [--units 128,16]
        [--batches 128,512]

IMDB on word ids (the fused loop's "ids" form; the book's holdout of 10,000 reviews), 2 layers,
relu, no dropout, for each optimizer hpo's spaces offer and once with the first Dense layer
frozen: then no kernel gradient is made dense and the 10,000 x units kernel is not updated, so
the difference is what the first layer's gradient and update cost every step. Prints the median
seconds of an epoch after the first. The backend is KERAS_BACKEND's. Needs the real imdb.npz:
--data-dir or HPO_DATA_DIR.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HOLDOUT = 10000
LOSS = "binary_crossentropy"
VARIANTS = [("rmsprop", False), ("sgd", False), ("adam", False), ("rmsprop", True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("HPO_DATA_DIR"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--units", default="128,16")
    parser.add_argument("--batches", default="128,512")
    args = parser.parse_args()
    if not args.data_dir:
        raise SystemExit("--data-dir (or HPO_DATA_DIR): the folder with keras' dataset files")

    from hpo.backend import import_keras, set_random_seed
    from hpo.data import builtin
    from hpo.train import engine, inputs
    from hpo.train import model as model_lib

    keras = import_keras()
    data = builtin.load("imdb", args.data_dir)
    y = model_lib.targets(data.y_train, data.task, LOSS, data.n_outputs)
    train, val = (data.x_train[HOLDOUT:], y[HOLDOUT:]), (data.x_train[:HOLDOUT], y[:HOLDOUT])
    cache = inputs.InputCache()
    print(f"{keras.backend.backend()}: IMDB on word ids, seconds an epoch")
    print("| units | batch | optimizer | first layer | seconds |")
    print("|---|---|---|---|---|")
    for units in map(int, args.units.split(",")):
        for batch in map(int, args.batches.split(",")):
            for optimizer, frozen in VARIANTS:
                params = {
                    "layers": 2,
                    "units": units,
                    "activation": "relu",
                    "loss": LOSS,
                    "optimizer": optimizer,
                    "learning_rate": 0.001,
                    "batch_size": batch,
                    "dropout": 0.0,
                }
                keras.backend.clear_session()
                set_random_seed(0)
                model = model_lib.build(params, data)
                if frozen:
                    first = next(x for x in model.layers if isinstance(x, keras.layers.Dense))
                    first.trainable = False  # before the trainer builds the optimizer
                trainer = engine.FusedTrainer(
                    model,
                    loss=LOSS,
                    task=data.task,
                    train=train,
                    validation=val,
                    batch_size=batch,
                    validation_batch_size=512,
                    seed=0,
                    cache=cache,
                    first_layer="ids",
                )
                times = []
                for _ in range(args.epochs):
                    start = time.perf_counter()
                    trainer.run_epoch()
                    times.append(time.perf_counter() - start)
                what = "frozen" if frozen else "trained"
                seconds = statistics.median(times[1:])
                print(f"| {units} | {batch} | {optimizer} | {what} | {seconds:.3f} |", flush=True)


if __name__ == "__main__":
    main()
