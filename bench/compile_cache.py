"""What JAX's persistent compilation cache saves per trial under KERAS_BACKEND=jax.

    KERAS_BACKEND=jax python bench/compile_cache.py [--data-dir DIR] [--epochs 3]

Question: how much of a JAX trial is compilation that JAX's persistent cache saves?
Goal: a warm cache removes the compile time of every shape compiled before.
Machine: any, under KERAS_BACKEND=jax; needs the real imdb.npz.

Runs the same IMDB trials (the book's model and two other shapes, hpo's objective, 3 epochs)
in three fresh processes: with the cache switched off, with an empty cache (it fills), and
with the cache the previous process filled (what a recycled or second worker sees). Prints
seconds per trial for each, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common

REPO = Path(__file__).resolve().parents[1]
SHAPES = [{}, {"units": 32}, {"layers": 1}]  # changes to the book's IMDB model


def child(epochs: int) -> None:
    """One process: each shape's trial, timed; prints a JSON list of seconds."""
    import optuna

    from hpo.data import builtin
    from hpo.results.one_factor import BOOK_CONFIGS
    from hpo.study import studyfile
    from hpo.train.objective import Objective

    spec = studyfile.load("imdb").with_overrides(max_epochs=epochs, seed=0)
    prepared = builtin.load("imdb")
    seconds = []
    for shape in SHAPES:
        start = time.perf_counter()
        Objective(spec, prepared)(optuna.trial.FixedTrial({**BOOK_CONFIGS["imdb"], **shape}))
        seconds.append(round(time.perf_counter() - start, 2))
    print(json.dumps(seconds))


def run(env: dict[str, str], epochs: int) -> list[float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--epochs", str(epochs)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def parser() -> argparse.ArgumentParser:
    parser = _common.parser(__doc__)
    _common.add_data_dir(parser)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser


def main() -> None:
    args = parser().parse_args()
    if args.child:
        child(args.epochs)
        return
    base = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(REPO)}
    if args.data_dir:
        base["HPO_DATA_DIR"] = args.data_dir
    with tempfile.TemporaryDirectory() as cache:
        modes = {
            "cache off": {**base, "JAX_ENABLE_COMPILATION_CACHE": "false"},
            "empty cache": {**base, "JAX_COMPILATION_CACHE_DIR": cache},
            "warm cache (new process)": {**base, "JAX_COMPILATION_CACHE_DIR": cache},
        }
        results = {mode: run(env, args.epochs) for mode, env in modes.items()}
    print(f"IMDB trials of {args.epochs} epochs, KERAS_BACKEND=jax, seconds per trial")
    names = [", ".join(f"{k}={v}" for k, v in s.items()) or "book model" for s in SHAPES]
    print(f"{'mode':<26} " + " ".join(f"{name:>12}" for name in names))
    for mode, seconds in results.items():
        print(f"{mode:<26} " + " ".join(f"{s:>12.2f}" for s in seconds))
    _common.emit({"epochs": args.epochs, "shapes": SHAPES, "seconds": results})


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
