"""What a new program of the fused loop costs before its first epoch ends, and an epoch after.

    python bench/archive/compile_time.py [--data-dir DIR] [--epochs 200] [--later 20] [--reverse]

Boston's 4-fold trials, one structure after another in one process (the first warms up
TensorFlow's or JAX's own machinery and is printed apart), each a fresh FusedTrainer as a
search's first trial of that structure gets: the book's 2 x 64 relu model with RMSprop, batch
16, dropout 0.1, and one change at a time (width, depth, optimizer, dropout, batch size).
Prints, per structure, the seconds to the end of the first epoch (tracing the epoch function,
compiling it, one epoch), the milliseconds of a later epoch, and of the compiled call alone
with its arguments ready (the rest of a later epoch is hpo's host work); with --epochs 200
TensorFlow compiles with XLA as a 200-epoch trial does (engine.use_xla), with --epochs 0 it
runs its graph executor. The backend is KERAS_BACKEND's. Needs the real boston_housing.npz:
--data-dir or HPO_DATA_DIR (e.g. ../shared/datasets). --reverse traces the structures after
the warm-up in the opposite order, as another process of a search meets them (TensorFlow's
persistent XLA cache, `TF_XLA_FLAGS=--tf_xla_persistent_cache_directory=DIR`, finds a program
only when it is traced at the same point: docs/lab/performance.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

CHANGES = [
    ("warm-up (the book's)", {}),
    ("the book's again, new program", {}),
    ("32 units", {"units": 32}),
    ("128 units", {"units": 128}),
    ("1 layer", {"layers": 1}),
    ("3 layers", {"layers": 3}),
    ("no dropout", {"dropout": 0.0}),
    ("adam", {"optimizer": "adam"}),
    ("tanh", {"activation": "tanh"}),
    ("batch 8", {"batch_size": 8}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("HPO_DATA_DIR"))
    parser.add_argument("--epochs", type=int, default=200, help="the trial's epoch budget")
    parser.add_argument("--later", type=int, default=20, help="epochs timed after the first")
    parser.add_argument("--reverse", action="store_true", help="the changes in reverse order")
    args = parser.parse_args()
    if not args.data_dir:
        raise SystemExit("--data-dir (or HPO_DATA_DIR): the folder with keras' dataset files")

    from hpo.backend import import_keras, set_random_seed
    from hpo.data import builtin
    from hpo.data.spec import Validation
    from hpo.results.one_factor import BOOK_CONFIGS
    from hpo.train import engine
    from hpo.train import inputs as inputs_lib
    from hpo.train import model as model_lib

    keras = import_keras()
    data = builtin.load("boston_housing", args.data_dir)
    folds = list(Validation.parse("kfold:4").splits(data.x_train, data.y_train))
    (x, y), (x_val, y_val) = model_lib.stack_folds(folds)
    inputs = inputs_lib.InputCache()
    print(f"{keras.backend.backend()}, epochs budget {args.epochs or 'none'}")
    print(f"{'structure':32s} {'first epoch':>12s} {'later epoch':>12s} {'call alone':>12s}  xla")
    changes = [CHANGES[0], *CHANGES[:0:-1]] if args.reverse else CHANGES
    for name, change in changes:
        # The book's model with dropout, as the search's space draws it (0 to 0.3).
        params = {**BOOK_CONFIGS["boston_housing"], "dropout": 0.1, **change}
        keras.backend.clear_session()
        set_random_seed(0)
        model = model_lib.build(params, data, folds=4)
        start = time.perf_counter()
        trainer = engine.FusedTrainer(
            model,
            loss=params["loss"],
            task="regression",
            train=(x, y[..., None]),
            validation=(x_val, y_val[..., None]),
            batch_size=params["batch_size"],
            validation_batch_size=model_lib.validation_batch(params["batch_size"]),
            seed=0,
            cache=inputs,
            epochs=args.epochs or None,
        )
        trainer.run_epoch()
        first = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(args.later):
            trainer.run_epoch()
        later = (time.perf_counter() - start) / args.later
        batches = inputs_lib.batch_plan(trainer.n_train, trainer.batch_size, trainer.rng)
        # The same compiled call alone, its arguments ready: what run_epoch adds is host work
        # (the shuffle, the call's arguments, reading the logs and predictions back).
        call = trainer._traced
        arguments = (trainer.state, trainer.arrays, trainer.rates, *batches, *trainer.val_plan)
        start = time.perf_counter()
        for _ in range(args.later):
            call(*arguments)
        alone = (time.perf_counter() - start) / args.later
        print(
            f"{name:32s} {first:10.2f} s {1000 * later:9.1f} ms {1000 * alone:9.1f} ms  "
            f"{trainer.xla}",
            flush=True,
        )


if __name__ == "__main__":
    main()
