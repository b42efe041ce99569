"""Milliseconds per epoch of the fused loop with TensorFlow's default thread pool and with one
intra-op thread, for small and large structures of the built-in dense studies.

    python bench/archive/intra_op_threads.py [--data-dir DIR] [--epochs 30]
        [--datasets boston_housing,mnist]

TensorFlow reads TF_NUM_INTRAOP_THREADS once, when it starts, so each setting runs in a child
process of its own (this script with --child). Each structure is a fresh FusedTrainer on the
study's own validation split (Boston's 4 folds stacked, MNIST's last 10,000 images), compiled
with XLA as a search's trial is (the study's max_epochs); its first epoch (compiling) is left
out and the next --epochs are timed. Needs the real files: --data-dir or HPO_DATA_DIR.
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
sys.path.insert(0, str(ROOT))

BOOK = {
    "layers": 2,
    "activation": "relu",
    "optimizer": "rmsprop",
    "learning_rate": 1e-3,
    "dropout": 0.1,
}
# (dataset, name, parameters): the smallest, the book's and the largest of each study's space
STRUCTURES = [
    ("boston_housing", "1 x 16, batch 64", {"layers": 1, "units": 16, "batch_size": 64}),
    ("boston_housing", "the book's, 2 x 64, batch 16", {"units": 64, "batch_size": 16}),
    (
        "boston_housing",
        "3 x 64, batch 8, adam",
        {"layers": 3, "units": 64, "batch_size": 8, "optimizer": "adam"},
    ),
    ("boston_housing", "3 x 128, batch 8", {"layers": 3, "units": 128, "batch_size": 8}),
    ("mnist", "1 x 64, batch 256", {"layers": 1, "units": 64, "batch_size": 256}),
    ("mnist", "the book's, 1 x 512, batch 128", {"layers": 1, "units": 512, "batch_size": 128}),
    ("mnist", "3 x 512, batch 64", {"layers": 3, "units": 512, "batch_size": 64}),
]
LOSS = {"boston_housing": "mse", "mnist": "sparse_categorical_crossentropy"}
SETTINGS = {"default": None, "one thread": "1"}


def child(data_dir: str, datasets: list[str], epochs: int) -> None:
    from hpo.backend import import_keras, set_random_seed
    from hpo.data import builtin
    from hpo.study import studyfile
    from hpo.train import engine
    from hpo.train import inputs as inputs_lib
    from hpo.train import model as model_lib

    keras = import_keras()
    for dataset in datasets:
        spec = studyfile.load(dataset)
        data = builtin.load(dataset, data_dir)
        splits = list(spec.validation.splits(data.x_train, data.y_train))
        folds = spec.validation.folds
        train, val = model_lib.stack_folds(splits) if len(splits) > 1 else splits[0]
        inputs = inputs_lib.InputCache()
        for name, params in [(n, p) for d, n, p in STRUCTURES if d == dataset]:
            params = {**BOOK, "loss": LOSS[dataset], **params}
            to_targets = lambda y: model_lib.targets(y, data.task, params["loss"], data.n_outputs)  # noqa: E731,B023
            keras.backend.clear_session()
            set_random_seed(0)
            trainer = engine.FusedTrainer(
                model_lib.build(params, data, folds=folds),
                loss=params["loss"],
                task=data.task,
                train=(train[0], to_targets(train[1])),
                validation=(val[0], to_targets(val[1])),
                batch_size=params["batch_size"],
                validation_batch_size=model_lib.validation_batch(params["batch_size"]),
                seed=0,
                cache=inputs,
                epochs=spec.max_epochs,
            )
            trainer.run_epoch()
            start = time.perf_counter()
            for _ in range(epochs):
                trainer.run_epoch()
            ms = 1000 * (time.perf_counter() - start) / epochs
            print(json.dumps({"dataset": dataset, "structure": name, "ms": ms}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("HPO_DATA_DIR"))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--datasets", default="boston_housing,mnist")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.data_dir:
        raise SystemExit("--data-dir (or HPO_DATA_DIR): the folder with keras' dataset files")
    datasets = args.datasets.split(",")
    if args.child:
        return child(args.data_dir, datasets, args.epochs)
    results: dict[str, dict[tuple, float]] = {}
    for setting, threads in SETTINGS.items():
        env = {k: v for k, v in os.environ.items() if k != "TF_NUM_INTRAOP_THREADS"}
        env |= {"KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
        if threads:
            env["TF_NUM_INTRAOP_THREADS"] = threads
        command = [
            sys.executable,
            __file__,
            "--child",
            "--data-dir",
            args.data_dir,
            "--datasets",
            args.datasets,
            "--epochs",
            str(args.epochs),
        ]
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
        rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        results[setting] = {(r["dataset"], r["structure"]): r["ms"] for r in rows}
    print(f"| dataset | structure | {' | '.join(SETTINGS)} (ms an epoch) | one thread / default |")
    print("|---|---|" + "---|" * (len(SETTINGS) + 1))
    for key, default in results["default"].items():
        one = results["one thread"][key]
        print(f"| {key[0]} | {key[1]} | {default:.1f} | {one:.1f} | {one / default:.2f} |")


if __name__ == "__main__":
    main()
