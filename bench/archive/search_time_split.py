"""Where a finished search's time inside its trials went: compiling, epochs, the rest.

    python bench/archive/search_time_split.py STORAGE.db [...] [--study bench] [--keep 8]

Reads each storage's trials (from `bench/whole_search.py --keep DIR`: study "bench", one
worker), marks the trials that compiled a new program (bench/archive/program_replay.py's replay of a
worker's program cache) and fits each trial's duration, start to end, by least squares:

    seconds = compile x [new program] + per_trial + sum over first-layer widths of
              epoch(width) x epochs

(a width's epochs cost alike; a new program's first epoch is in `compile`). Prints the fit and
what it puts on each part of the time inside the trials. A fit, not a timer: its parts are
estimates, to be read beside measured ones (bench/archive/compile_time.py,
bench/archive/word_ids.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent))

# bench/archive/program_replay.py: what a program is compiled for, and a worker's cache replayed
from program_replay import KEY, kept_searches, new_programs


def main() -> None:
    args, searches = kept_searches(__doc__.splitlines()[0])
    for path, trials in searches:
        ended = [t for t in trials if t.datetime_start and t.datetime_complete]
        split(path, ended, args.keep)


def split(path: str, trials: list[optuna.trial.FrozenTrial], keep: int) -> None:
    widths = sorted({t.params.get("units") for t in trials}, key=str)
    rows, seconds = [], []
    for trial, new in zip(trials, new_programs(trials, KEY, keep), strict=True):
        epochs = len(trial.intermediate_values)
        per_width = [epochs if trial.params.get("units") == w else 0 for w in widths]
        rows.append([float(new), 1.0, *per_width])
        seconds.append((trial.datetime_complete - trial.datetime_start).total_seconds())
    x, y = np.array(rows), np.array(seconds)
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    parts = x * coef  # each trial's seconds, by part
    inside = y.sum()
    compiled = int(x[:, 0].sum())
    print(f"{path}: {len(trials)} trials, {inside:.1f} s inside them, {compiled} new programs")
    print(f"  compile {coef[0]:.2f} s a new program: {parts[:, 0].sum():.1f} s")
    print(f"  per trial {coef[1]:.2f} s: {parts[:, 1].sum():.1f} s")
    for i, width in enumerate(widths):
        epochs, total = int(x[:, 2 + i].sum()), parts[:, 2 + i].sum()
        print(f"  {width} units: {coef[2 + i]:.3f} s an epoch x {epochs} epochs = {total:.1f} s")
    print(f"  residual {np.abs(y - parts.sum(axis=1)).sum():.1f} s (sum of |fit - measured|)")


if __name__ == "__main__":
    main()
