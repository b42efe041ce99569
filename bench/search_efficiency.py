"""Epochs trained until an IMDB study first reaches a validation accuracy: TPE with median
pruning vs random search without pruning, over several seeds.

    python bench/search_efficiency.py [--target 0.885] [--seeds 0 1 2] [--max-trials 60]

Question: does TPE with median pruning reach a validation accuracy in fewer epochs than
random search without pruning?
Goal: fewer epochs trained to reach --target, median over the seeds.
Machine: any; needs the real imdb.npz.

Each run is a fresh in-memory study on hpo's objective and studies/imdb.toml's search space
(20 epochs at most per trial), stopped as soon as a trial's best epoch reaches --target. Prints
per mode the epochs trained (all epochs of all trials, pruned ones included) for each seed,
their median and range, and the trials it took; a run that never reaches the target within
--max-trials shows as "> N". Then one JSON line. Needs the real imdb.npz (--data-dir or
HPO_DATA_DIR).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import _common

MODES = {"TPE + median pruner": ("tpe", "median"), "random, no pruning": ("random", "none")}


def run(mode: str, seed: int, target: float, max_trials: int, prepared) -> dict:
    import optuna

    from hpo.study import algorithms, studyfile
    from hpo.train.objective import Objective
    from hpo.train.reporting import TrialFailed

    sampler, pruner = MODES[mode]
    spec = studyfile.load("imdb").with_overrides(sampler=sampler, pruner=pruner, seed=seed)
    study = optuna.create_study(
        direction="maximize",
        sampler=algorithms.make_sampler(spec.sampler, seed),
        pruner=algorithms.make_pruner(spec.pruner, spec.max_epochs),
    )

    def stop_at_target(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.value is not None and trial.value >= target:
            study.stop()

    start = time.perf_counter()
    study.optimize(
        Objective(spec, prepared),
        n_trials=max_trials,
        callbacks=[stop_at_target],
        catch=(TrialFailed,),
        gc_after_trial=True,
    )
    done = [t for t in study.trials if t.value is not None]
    return {
        "reached": bool(done) and max(t.value for t in done) >= target,
        "epochs": sum(len(t.intermediate_values) for t in study.trials),
        "trials": len(study.trials),
        "best": max((t.value for t in done), default=None),
        "s": time.perf_counter() - start,
    }


def parser() -> argparse.ArgumentParser:
    parser = _common.parser(__doc__)
    parser.add_argument("--target", type=float, default=0.885)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-trials", type=int, default=60)
    _common.add_data_dir(parser)
    return parser


def main() -> None:
    args = parser().parse_args()

    import optuna

    from hpo.backend import import_keras
    from hpo.data import builtin

    keras = import_keras()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    prepared = builtin.load("imdb", args.data_dir)
    results: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for seed in args.seeds:
        for mode in MODES:
            row = run(mode, seed, args.target, args.max_trials, prepared)
            results[mode].append(row)
            print(f"seed {seed} · {mode}: {row}", flush=True)

    print(
        f"\nIMDB, epochs until val_accuracy >= {args.target} (at most {args.max_trials} trials), "
        f"Keras {keras.__version__} on {keras.backend.backend()}, seeds {args.seeds}"
    )
    print(f"{'mode':<20} {'epochs per seed':<24} {'median':>7} {'trials per seed':<18}")
    summary = {}
    for mode, rows in results.items():
        shown = [str(r["epochs"]) if r["reached"] else f">{r['epochs']}" for r in rows]
        median = statistics.median(r["epochs"] for r in rows)
        trials = [str(r["trials"]) for r in rows]
        print(f"{mode:<20} {', '.join(shown):<24} {median:>7.0f} {', '.join(trials):<18}")
        summary[mode] = {"runs": rows, "median_epochs": median}
    _common.emit({"target": args.target, "backend": keras.backend.backend(), **summary})


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
