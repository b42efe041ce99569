"""Does an IMDB trial's best epoch still fit the retrain on more rows? And fused vs fit.

    python bench/archive/retrain_epochs.py --data-dir ../shared/datasets
        [--configs 7] [--seeds 0,1] [--fit-seeds 0] [--draw-seed 0] [--check]

`hpo analyze` retrains a configuration from scratch on all training rows for the best epoch E
its trial recorded on a holdout (IMDB: 15,000 rows to train, 10,000 to validate), so the
retrain takes 5/3 as many optimizer steps an epoch as the trial did. This measures whether E
epochs, or E x 15,000/25,000 epochs (the trial's step count, rounded, at least 1), test better,
without IMDB's test set: of the 25,000 training rows (keras' shuffled order) the last 5,000
are a pseudo-test and the first 20,000 play the training set. On those, with the same 60/40
split as the real search, a trial trains on rows 8,000..20,000 and validates on the first
8,000 for the study file's 20 epochs, unpruned (hpo.train.objective.Objective on hpo's fused
loop, the default on TensorFlow), and records E. The configuration is then retrained by
model.fit on all 20,000 rows with the trial's seed, as hpo.results.analysis.retrain does, and
its accuracy on the 5,000 pseudo-test rows read after every epoch up to
L = max(E, E_fit, round(E x 20/12)) (at most 20), so that each rule is scored on the same
retrained weights:

    (a) E epochs, what analyze does;
    (b) round(E x 12,000/20,000) epochs, at least 1: the trial's number of optimizer steps;
    (d) round(E x 20,000/12,000) epochs, at most 20: the other direction;
    oracle: the best pseudo-test epoch in 1..L, which no rule can know (an upper bound).

The retrain's epoch k is read from one model.fit(epochs=L) run; --check verifies on the first
configuration that analysis.retrain(epochs=E) with the same seed tests the same.

For the second question, with each --fit-seeds seed the same trial also runs through model.fit
(HPO_ENGINE=fit), and its best epoch E_fit is paired with the fused loop's E (as
bench/archive/engine_equivalence.py did for Boston's k-fold trials).

The configurations: the book's (2 x 16 relu, rmsprop 1e-3, batch 512, binary_crossentropy) and
--configs - 1 drawn uniformly from studies/imdb.toml's space (learning rate log-uniform) with
numpy's default_rng(--draw-seed). Prints a row per (configuration, seed) as it goes, a summary
(paired differences, mean ± standard error over the pairs and over the configurations' means),
then one JSON line. The defaults (book + 6 drawn x 2 seeds, model.fit for seed 0) took 20 min
on 2 shared cores without GPU (docs/results.md, "IMDB: the retrain's epoch count").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
PSEUDO_TEST = 5000  # the last rows of the training set
HOLDOUT = 8000  # the first rows of the remaining 20,000: 60/40 as the real 15,000/10,000


def draw(dim, rng: np.random.Generator):
    """One value of a space dimension, uniform (log-uniform where the space says log)."""
    from hpo.study.space import Choice, FloatRange

    if isinstance(dim, Choice):
        value = dim.values[int(rng.integers(len(dim.values)))]
        return value.item() if isinstance(value, np.generic) else value
    if isinstance(dim, FloatRange):
        if dim.log:
            value = math.exp(rng.uniform(math.log(dim.low), math.log(dim.high)))
        else:
            value = rng.uniform(dim.low, dim.high)
        if dim.step:
            value = dim.low + round((value - dim.low) / dim.step) * dim.step
        return float(value)
    return int(dim.low + dim.step * rng.integers(0, (dim.high - dim.low) // dim.step + 1))


def configurations(space, count: int, draw_seed: int) -> list[dict]:
    from hpo.results.one_factor import BOOK_CONFIGS

    rng = np.random.default_rng(draw_seed)
    drawn = [{k: draw(d, rng) for k, d in space.dims.items()} for _ in range(count - 1)]
    return [dict(BOOK_CONFIGS["imdb"]), *drawn][:count]


def split(prepared):
    """(data whose training rows are the first 20,000 and whose test rows are the last 5,000)."""
    x, y = prepared.x_train, prepared.y_train
    return replace(
        prepared,
        x_train=x[:-PSEUDO_TEST],
        y_train=y[:-PSEUDO_TEST],
        x_test=x[-PSEUDO_TEST:],
        y_test=y[-PSEUDO_TEST:],
    )


def trial(spec, data, params: dict, seed: int, engine: str) -> dict:
    """One unpruned trial on the 12,000/8,000 split: its best epoch, value and curve."""
    import optuna

    from hpo.train.objective import Objective

    os.environ["HPO_ENGINE"] = engine
    study = optuna.create_study(direction=spec.direction, pruner=optuna.pruners.NopPruner())
    study.enqueue_trial(params)
    start = time.perf_counter()
    study.optimize(Objective(replace(spec, seed=seed), data), n_trials=1, catch=())
    done = study.trials[0]
    return {
        "epoch": done.user_attrs["best_epoch"],
        "val_accuracy": done.value,
        "curve": [round(v, 5) for v in done.user_attrs["history"]["val_accuracy"]],
        "seconds": round(time.perf_counter() - start, 1),
    }


def retrain_curve(params: dict, data, epochs: int, seed: int) -> list[float]:
    """hpo.results.analysis.retrain for `epochs` epochs, with the pseudo-test accuracy read
    after each epoch (the validation pass changes no weight)."""
    from hpo.backend import import_keras, set_random_seed
    from hpo.train import model as model_lib

    keras = import_keras()
    keras.backend.clear_session()
    set_random_seed(seed)
    model = model_lib.build(params, data)

    def to_targets(y):
        return model_lib.targets(y, data.task, params["loss"], data.n_outputs)

    history = model.fit(
        data.x_train,
        to_targets(data.y_train),
        epochs=epochs,
        batch_size=params["batch_size"],
        validation_data=(data.x_test, to_targets(data.y_test)),
        validation_batch_size=model_lib.VALIDATION_BATCH,
        verbose=0,
    )
    return [float(v) for v in history.history["val_accuracy"]]


def rules(epoch: int, max_epochs: int, train_rows: int, retrain_rows: int) -> dict[str, int]:
    """Epoch counts for the retrain from the trial's best epoch (no ties: 3E/5 and 5E/3 are
    never k + 0.5 for whole E)."""
    return {
        "a": epoch,
        "b": max(1, round(epoch * train_rows / retrain_rows)),
        "d": min(max_epochs, round(epoch * retrain_rows / train_rows)),
    }


def mean_se(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return (statistics.fmean(values) if values else math.nan), math.nan
    return statistics.fmean(values), statistics.stdev(values) / len(values) ** 0.5


def by_config(rows: list[dict], fn) -> list[float]:
    """fn's mean per configuration (the pairs of one configuration are not independent)."""
    groups: dict[int, list[float]] = {}
    for r in rows:
        value = fn(r)
        if value is not None:
            groups.setdefault(r["config"], []).append(value)
    return [statistics.fmean(v) for v in groups.values()]


def line(label: str, rows: list[dict], fn, scale: float = 1.0, unit: str = "") -> str:
    pairs = [v for v in (fn(r) for r in rows) if v is not None]
    mean, se = mean_se([v * scale for v in pairs])
    c_mean, c_se = mean_se([v * scale for v in by_config(rows, fn)])
    wins = sum(v > 0 for v in pairs), sum(v < 0 for v in pairs), sum(v == 0 for v in pairs)
    return (
        f"  {label:34} {mean:+.2f} ± {se:.2f}{unit} over {len(pairs)} pairs  "
        f"(configurations' means: {c_mean:+.2f} ± {c_se:.2f}{unit})  +/−/0: {wins[0]}/{wins[1]}/"
        f"{wins[2]}"
    )


def describe(params: dict) -> str:
    return (
        f"{params['layers']}x{params['units']} {params['activation']} {params['loss'][:6]} "
        f"{params['optimizer']} lr {params['learning_rate']:.2g} batch {params['batch_size']} "
        f"dropout {params['dropout']:.2f}"
    )


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", type=int, default=7, help="the book's and N-1 drawn")
    parser.add_argument("--seeds", default="0,1", help="comma-separated trial seeds")
    parser.add_argument("--fit-seeds", default="0", help="seeds also run through model.fit")
    parser.add_argument("--draw-seed", type=int, default=0, help="numpy seed of the draws")
    parser.add_argument("--check", action="store_true", help="retrain(E) == the curve at E?")
    parser.add_argument("--data-dir", default=os.environ.get("HPO_DATA_DIR"))
    return parser


def main() -> None:
    args = parser().parse_args()
    if not args.data_dir:
        raise SystemExit("give --data-dir or set HPO_DATA_DIR (a folder with imdb.npz)")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    sys.path.insert(0, str(ROOT))
    import optuna

    from hpo.backend import import_keras
    from hpo.data import builtin
    from hpo.data.spec import Validation
    from hpo.results import analysis
    from hpo.study import studyfile

    keras = import_keras()  # with the backend's start-up notices kept quiet
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = studyfile.load(str(ROOT / "studies" / "imdb.toml"))
    spec = replace(spec, validation=Validation.parse(f"first:{HOLDOUT}"))
    data = split(builtin.load("imdb", args.data_dir, spec.num_words))
    retrain_rows = len(data.x_train)
    train_rows = retrain_rows - HOLDOUT
    seeds = [int(s) for s in args.seeds.split(",")]
    fit_seeds = {int(s) for s in args.fit_seeds.split(",") if s}
    configs = configurations(spec.space, args.configs, args.draw_seed)
    print(
        f"{keras.backend.backend()}, Keras {keras.__version__}, Optuna {optuna.__version__}: "
        f"trial {train_rows:,} rows / validation {HOLDOUT:,}, retrain {retrain_rows:,}, "
        f"pseudo-test {len(data.x_test):,}, max_epochs {spec.max_epochs}"
    )
    for number, params in enumerate(configs):
        print(f"  config {number}: {describe(params)}")
    print(
        "\nconfig seed | E  E_fit | val acc | L  | pseudo-test accuracy at (a) E · (b) 0.6E · "
        "(d) 1.67E · oracle epoch: acc | seconds"
    )
    rows, start = [], time.perf_counter()
    for number, params in enumerate(configs):
        for seed in seeds:
            row: dict = {"config": number, "seed": seed, "params": params}
            row["fused"] = trial(spec, data, params, seed, "fused")
            if seed in fit_seeds:
                row["fit"] = trial(spec, data, params, seed, "fit")
            best = row["fused"]["epoch"]
            counts = rules(best, spec.max_epochs, train_rows, retrain_rows)
            fit_epoch = row["fit"]["epoch"] if "fit" in row else 0
            length = min(spec.max_epochs, max(*counts.values(), fit_epoch))
            began = time.perf_counter()
            curve = retrain_curve(params, data, length, seed)
            row["retrain"] = {
                "epochs": counts,
                "curve": [round(v, 5) for v in curve],
                "seconds": round(time.perf_counter() - began, 1),
            }
            row["test"] = {k: curve[e - 1] for k, e in counts.items()}
            oracle = int(np.argmax(curve)) + 1
            row["oracle"] = {"epoch": oracle, "accuracy": curve[oracle - 1]}
            if fit_epoch:
                row["test"]["fit_epoch"] = curve[fit_epoch - 1]
            if args.check and not rows:
                _, scores = analysis.retrain(params, data, best, seed)
                row["check"] = {"retrain": scores["accuracy"], "curve": curve[best - 1]}
                print(
                    f"  check: analysis.retrain({best} epochs) {scores['accuracy']:.4f}, "
                    f"the curve at epoch {best} {curve[best - 1]:.4f}"
                )
            rows.append(row)
            t = row["test"]
            seconds = row["fused"]["seconds"] + row["retrain"]["seconds"]
            seconds += row["fit"]["seconds"] if "fit" in row else 0
            print(
                f"  {number:5} {seed:4} | {best:2} {fit_epoch or '-':>5} | "
                f"{row['fused']['val_accuracy']:.4f} | {length:2} | "
                f"{t['a']:.4f} · {t['b']:.4f} ({counts['b']}) · {t['d']:.4f} ({counts['d']}) · "
                f"{oracle:2}: {curve[oracle - 1]:.4f} | {seconds:4.0f}",
                flush=True,
            )
    elapsed = time.perf_counter() - start
    pct = 100.0
    print(
        f"\nsummary over {len(rows)} pairs ({len(configs)} configurations x {len(seeds)} seeds); "
        f"mean ± standard error; pseudo-test accuracy in percentage points"
    )
    print(line("(b) 0.6E − (a) E", rows, lambda r: r["test"]["b"] - r["test"]["a"], pct, " pt"))
    print(line("(d) 1.67E − (a) E", rows, lambda r: r["test"]["d"] - r["test"]["a"], pct, " pt"))
    print(
        line("oracle − (a) E", rows, lambda r: r["oracle"]["accuracy"] - r["test"]["a"], pct, " pt")
    )
    print(
        line(
            "oracle − (b) 0.6E",
            rows,
            lambda r: r["oracle"]["accuracy"] - r["test"]["b"],
            pct,
            " pt",
        )
    )
    print(line("epochs: E − oracle", rows, lambda r: r["fused"]["epoch"] - r["oracle"]["epoch"]))
    print(
        line(
            "epochs: 0.6E − oracle",
            rows,
            lambda r: r["retrain"]["epochs"]["b"] - r["oracle"]["epoch"],
        )
    )
    fitted = [r for r in rows if "fit" in r]
    if fitted:
        print(f"\nfused vs model.fit, same configuration and seed ({len(fitted)} pairs)")
        print(
            line(
                "best epoch: fused − fit", fitted, lambda r: r["fused"]["epoch"] - r["fit"]["epoch"]
            )
        )
        print(
            line(
                "best val acc: fused − fit",
                fitted,
                lambda r: r["fused"]["val_accuracy"] - r["fit"]["val_accuracy"],
                pct,
                " pt",
            )
        )
        print(
            line(
                "pseudo-test at E: fused − fit",
                fitted,
                lambda r: r["test"]["a"] - r["test"]["fit_epoch"],
                pct,
                " pt",
            )
        )
        spread = [
            statistics.stdev([r["fused"]["epoch"] for r in rows if r["config"] == c])
            for c in range(len(configs))
            if len(seeds) > 1
        ]
        if spread:
            print(
                f"  seed-to-seed std of E (fused), mean over configurations: "
                f"{statistics.fmean(spread):.2f}"
            )
    print(f"\n{elapsed:.0f} s in all")
    print(json.dumps({"backend": keras.backend.backend(), "seconds": round(elapsed), "rows": rows}))


if __name__ == "__main__":
    main()
