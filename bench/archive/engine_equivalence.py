"""Does the training loop change what a Boston trial records? fit and fused, paired.

    python bench/archive/engine_equivalence.py --data-dir ../shared/datasets
        [--backend tensorflow] [--configs 6] [--config JSON ...] [--seeds 0,1,2] [--test]

A study picks its best trial by the 4-fold validation curve, and `hpo analyze` retrains that
configuration with `model.fit` for the trial's best epoch whichever loop ran the search: the
loop can change a search's outcome only through what its trials record, the value (the
curve's best point) and the best epoch. So this trains the same configurations with the same
seeds through both loops (HPO_ENGINE=fit: 4 models by model.fit, in chunks of 20 epochs, the
engine before hpo/train/engine.py; HPO_ENGINE=fused: the stacked 4-fold model, one compiled call per
epoch), with the built-in study file's 200 epochs and no pruning, and prints per configuration
the mean best val_mae and best epoch of each loop, then the paired differences (fused - fit)
over all configurations and seeds, against the seed-to-seed spread of one loop. With --test,
each trial's configuration is also retrained by model.fit on all training rows for its best
epoch and evaluated on the test set (what analyze does), so the test MAE each loop's choice of
epoch leads to is paired too.

The configurations: the book's (2 x 64 relu, rmsprop, mse, batch 16) and --configs - 1 drawn
at random from the study file's space (optuna's RandomSampler, seed 0), then each --config
(JSON over the book's, for the configurations searches pick). Then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def configurations(space, count: int, extra: list[str]) -> list[dict]:
    """The book's, count - 1 random ones (none for 0), then each --config given."""
    import optuna

    from hpo.results.one_factor import BOOK_CONFIGS

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = [space.suggest(study.ask()) for _ in range(count - 1)]
    given = [{**BOOK_CONFIGS["boston_housing"], **json.loads(text)} for text in extra]
    return ([BOOK_CONFIGS["boston_housing"], *drawn] if count else []) + given


def one_trial(spec, prepared, params: dict, seed: int, engine: str) -> dict:
    """One unpruned trial of `params` with `seed` through `engine`: its value and best epoch."""
    import optuna

    from hpo.train.objective import Objective

    os.environ["HPO_ENGINE"] = engine
    study = optuna.create_study(direction=spec.direction, pruner=optuna.pruners.NopPruner())
    study.enqueue_trial(params)
    start = time.perf_counter()
    study.optimize(Objective(replace(spec, seed=seed), prepared), n_trials=1, catch=())
    trial = study.trials[0]
    return {
        "val_mae": trial.value,
        "epoch": trial.user_attrs["best_epoch"],
        "seconds": time.perf_counter() - start,
    }


def test_mae(params: dict, prepared, epochs: int, seed: int) -> float:
    from hpo.results import analysis

    return analysis.retrain(params, prepared, epochs, seed)[1]["mae"]


def paired(rows: list[dict], key: str) -> tuple[float, float]:
    """Mean and standard error of fused - fit over all (configuration, seed) pairs."""
    diffs = [r["fused"][key] - r["fit"][key] for r in rows]
    return statistics.fmean(diffs), statistics.stdev(diffs) / len(diffs) ** 0.5


def seed_spread(rows: list[dict], key: str) -> float:
    """The mean over configurations of the seed-to-seed standard deviation (fit loop)."""
    by_config: dict[int, list[float]] = {}
    for r in rows:
        by_config.setdefault(r["config"], []).append(r["fit"][key])
    return statistics.fmean(statistics.stdev(v) for v in by_config.values() if len(v) > 1)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "tensorflow"))
    parser.add_argument("--configs", type=int, default=6, help="the book's and N-1 random")
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        help="one more configuration, as JSON over the book's: '{\"units\": 128}'",
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated trial seeds")
    parser.add_argument("--test", action="store_true", help="also retrain and test each trial")
    parser.add_argument("--epochs", type=int, help="max_epochs (default: the study file's 200)")
    parser.add_argument("--data-dir", default=os.environ.get("HPO_DATA_DIR"))
    return parser


def main() -> None:
    args = parser().parse_args()
    if not args.data_dir:
        raise SystemExit("give --data-dir or set HPO_DATA_DIR (a folder with boston_housing.npz)")
    os.environ["KERAS_BACKEND"] = args.backend
    sys.path.insert(0, str(ROOT))
    import optuna

    from hpo.data import builtin
    from hpo.study import studyfile

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = studyfile.load(str(ROOT / "studies" / "boston_housing.toml"))
    spec = replace(spec, max_epochs=args.epochs or spec.max_epochs)
    prepared = builtin.load("boston_housing", args.data_dir, spec.num_words)
    seeds = [int(s) for s in args.seeds.split(",")]
    if len(seeds) < 2:
        raise SystemExit("give at least 2 --seeds: the spread between seeds is the yardstick")
    rows = []
    for number, params in enumerate(configurations(spec.space, args.configs, args.config)):
        for seed in seeds:
            row = {"config": number, "seed": seed}
            for engine in ("fit", "fused"):
                row[engine] = one_trial(spec, prepared, params, seed, engine)
                if args.test:
                    row[engine]["test_mae"] = test_mae(params, prepared, row[engine]["epoch"], seed)
            rows.append(row)
        mine = [r for r in rows if r["config"] == number]
        shown = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
        )
        print(f"config {number}: {shown}")
        for engine in ("fit", "fused"):
            cells = [
                f"{key} {statistics.fmean(r[engine][key] for r in mine):.3f}"
                for key in ("val_mae", "epoch", "test_mae", "seconds")
                if key in mine[0][engine]
            ]
            print(f"  {engine:5}  " + "  ".join(cells), flush=True)
    count = len({r["config"] for r in rows})
    print(
        f"\n{args.backend}: fused - fit over {len(rows)} pairs ({count} configurations "
        f"x {len(seeds)} seeds), mean ± standard error; seed-to-seed std of one loop"
    )
    keys = ("val_mae", "epoch", "test_mae") if args.test else ("val_mae", "epoch")
    for key in keys:
        mean, se = paired(rows, key)
        print(f"  {key:8} {mean:+.3f} ± {se:.3f}   (seed std {seed_spread(rows, key):.3f})")
    fit_s = sum(r["fit"]["seconds"] for r in rows)
    fused_s = sum(r["fused"]["seconds"] for r in rows)
    print(f"  trial seconds: fit {fit_s:.0f}, fused {fused_s:.0f} ({fit_s / fused_s:.1f}x)")
    print(json.dumps({"backend": args.backend, "rows": rows}))


if __name__ == "__main__":
    main()
