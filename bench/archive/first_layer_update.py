"""Where a wide text epoch goes: the first layer's gradient and update, by optimizer.

    python bench/archive/first_layer_update.py [--data-dir DIR] [--epochs 6] [--units 128,16]
        [--batches 128,512]

IMDB on word ids (the fused loop's "ids" form; the book's holdout of 10,000 reviews), 2 layers,
relu, no dropout (bench/archive/word_ids.py's model and timing), for each optimizer hpo's
spaces offer and once with the first Dense layer frozen: then no kernel gradient is made dense
and the 10,000 x units kernel is not updated, so the difference is what the first layer's
gradient and update cost every step. Prints the median seconds of an epoch after the first.
The backend is KERAS_BACKEND's. Needs the real imdb.npz: --data-dir or HPO_DATA_DIR.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from word_ids import epochs_of  # bench/archive/word_ids.py: one model's epochs, timed

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

    from hpo.backend import import_keras
    from hpo.data import builtin
    from hpo.train import inputs

    keras = import_keras()
    data = builtin.load("imdb", args.data_dir)
    cache = inputs.InputCache()
    print(f"{keras.backend.backend()}: IMDB on word ids, seconds an epoch")
    print("| units | batch | optimizer | first layer | seconds |")
    print("|---|---|---|---|---|")
    for units in map(int, args.units.split(",")):
        for batch in map(int, args.batches.split(",")):
            for optimizer, frozen in VARIANTS:
                keras.backend.clear_session()
                seconds, _ = epochs_of(
                    "ids", "imdb", units, data, cache, args.epochs,
                    optimizer=optimizer, batch_size=batch, frozen_first=frozen,
                )  # fmt: skip
                what = "frozen" if frozen else "trained"
                print(f"| {units} | {batch} | {optimizer} | {what} | {seconds:.3f} |", flush=True)


if __name__ == "__main__":
    main()
