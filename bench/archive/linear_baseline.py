"""hpo on small public tables against a cross-validated linear model on the same rows.

    python bench/archive/linear_baseline.py [--datasets wine,breast_cancer,diabetes] [--trials 15]
        [--seed 0] [--seeds 3] [--book] [--studies FILE.toml …] [--linear-only] [--keep DIR]

Each dataset is one that scikit-learn ships (no download): wine (178 rows, 13 features,
3 classes), breast_cancer (569 × 30, binary), diabetes (442 × 10, regression). The script
writes it as a CSV with a study file holding only [study] and [data] (test_fraction 0.2,
split_seed 0): the smallest file a user writes, which searches hpo's default space for a
table. In a scratch folder with its own SQLite storage and cache it runs, as a user would,

    hpo optimize NAME.toml --trials 15 --seed 0
    hpo analyze NAME.toml --seeds 3

and reads the handed-over model's test score (mean ± std over the seeds, and their
ensemble's) from the report's params.json. The baseline is scikit-learn's cross-validated
linear model, standardized: LogisticRegressionCV (classification, accuracy) or RidgeCV
(regression, MAE), fitted on exactly the training rows hpo's model was retrained on and
tested on the same test rows: the arrays hpo.data.own prepared for the study (the rows
shuffled with split_seed, the last test_fraction of them held out; hpo.data.learn.split_rows).

--book also runs each table with the book's fixed configuration written out in [space]
(2 × 16 relu units, rmsprop 1e-3, batch 512, max_epochs 20): what such a file searched before
hpo had a default space for tables. --studies adds existing study files (e.g.
examples/churn.toml), searched with their own [space]; with --linear-only only the baselines
are computed, for comparing with searches run before. Prints a table, then one JSON line;
--keep DIR keeps the scratch folder (studies, storage, reports), else it is removed.

scikit-learn is not a dependency of hpo: pip install scikit-learn.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

try:
    import numpy as np
    from sklearn import datasets as sk_datasets
    from sklearn.linear_model import LogisticRegressionCV, RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
except ImportError:  # said in main(), so that its parser is importable without it
    sk_datasets = None

LOADERS = {"wine": "load_wine", "breast_cancer": "load_breast_cancer", "diabetes": "load_diabetes"}
BOOK_STUDY = "max_epochs = 20\n"  # the book's configuration, fixed: what hpo searched before
BOOK_SPACE = """[space]
layers = 2
units = 16
activation = "relu"
optimizer = "rmsprop"
learning_rate = 1e-3
batch_size = 512
dropout = 0.0
"""


def write_table(name: str, folder: Path, book: bool = False) -> Path:
    """NAME.csv (the target in column "target") and a study file with [study] and [data]
    only; with `book`, NAME-book.toml with the book's fixed configuration written out."""
    table = getattr(sk_datasets, LOADERS[name])(as_frame=True).frame
    table.to_csv(folder / f"{name}.csv", index=False)
    study = f"{name}-book" if book else name
    path = folder / f"{study}.toml"
    path.write_text(
        f'[study]\nname = "{study}"\n{BOOK_STUDY if book else ""}'
        f'[data]\ntrain = "{name}.csv"\ntarget = "target"\ntest_fraction = 0.2\nsplit_seed = 0\n'
        f"{BOOK_SPACE if book else ''}"
    )
    return path


def hpo(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Run `hpo ARGS` in cwd; its wall time in seconds."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "hpo", *args],
        cwd=cwd,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def search(study: Path, args, scratch: Path, env: dict[str, str]) -> dict:
    """hpo optimize + hpo analyze on one study file: the handed-over model's test score."""
    import optuna

    name = study.stem
    storage = f"sqlite:///{scratch}/hpo.db"
    common = ["--study", name, "--storage", storage]
    opt = hpo(
        ["optimize", str(study), "--trials", str(args.trials), "--seed", str(args.seed), *common],
        scratch,
        env,
    )
    out = scratch / "reports" / name
    ana = hpo(
        ["analyze", str(study), "--seeds", str(args.seeds), "--out", str(out), *common],
        scratch,
        env,
    )
    summary = json.loads((out / "params.json").read_text())
    trials = optuna.load_study(study_name=name, storage=storage).trials
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in trials)
    metric = "mae" if "mae" in summary["test"] else "accuracy"
    return {
        "metric": metric,
        "test": summary["test"][metric]["mean"],
        "test_std": summary["test"][metric]["std"],
        "ensemble": (summary.get("ensemble_test") or {}).get(metric),
        "epochs": summary["epochs"],
        "params": summary["params"],
        "pruned": pruned,
        "optimize_s": round(opt, 1),
        "analyze_s": round(ana, 1),
    }


def linear(study: Path) -> dict:
    """The cross-validated linear model on the rows hpo prepared for this study."""
    from hpo.data import own
    from hpo.study import studyfile

    spec = studyfile.load(str(study))
    data = own.load(spec.data)
    if spec.task == "regression":
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
        model.fit(data.x_train, data.y_train)
        score = float(np.mean(np.abs(model.predict(data.x_test) - data.y_test)))
        kind = "RidgeCV"
    else:
        model = make_pipeline(
            StandardScaler(), LogisticRegressionCV(max_iter=5000, scoring="accuracy")
        )
        model.fit(data.x_train, data.y_train)
        score = float(np.mean(model.predict(data.x_test) == data.y_test))
        kind = "LogisticRegressionCV"
    return {
        "task": spec.task,
        "train_rows": len(data.x_train),
        "test_rows": len(data.x_test),
        "max_epochs": spec.max_epochs,
        "batch_sizes": list(getattr(spec.space.dims["batch_size"], "values", ())),
        "linear": kind,
        "linear_test": score,
    }


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default=",".join(LOADERS))
    parser.add_argument("--studies", nargs="*", default=[], help="existing study files too")
    parser.add_argument("--trials", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--book", action="store_true", help="also the book's fixed configuration")
    parser.add_argument("--linear-only", action="store_true", help="no hpo runs, baselines only")
    parser.add_argument("--keep", help="scratch folder to use and keep (default: a temporary one)")
    return parser


def main() -> None:
    args = parser().parse_args()
    if sk_datasets is None:
        sys.exit("bench/archive/linear_baseline.py needs scikit-learn: pip install scikit-learn")
    warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn")  # 1.9's notices

    scratch = Path(args.keep or tempfile.mkdtemp(prefix="hpo-linear-")).resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    os.environ["HPO_CACHE_DIR"] = str(scratch / "cache")  # this process's reads, and the runs'
    env = {key: value for key, value in os.environ.items() if key != "HPO_STORAGE"}

    studies = []
    for name in [d for d in args.datasets.split(",") if d]:
        if name not in LOADERS:
            sys.exit(f"unknown dataset {name!r} (known: {', '.join(LOADERS)})")
        studies.append(write_table(name, scratch))
        if args.book:
            studies.append(write_table(name, scratch, book=True))
    studies += [Path(s).resolve() for s in args.studies]

    rows = []
    for study in studies:
        row = {"study": study.stem, **linear(study)}
        if not args.linear_only:
            row.update(search(study, args, scratch, env))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)

    if args.keep:
        print(f"\nstudies, storage and reports kept in {scratch}")
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    print()
    head = "| study | task | train / test rows | max_epochs · batch sizes "
    head += f"| hpo test ({args.seeds} seeds) | ensemble | linear | pruned | optimize + analyze |"
    print(head)
    print("|" + "---|" * 9)
    for r in rows:
        metric = "MAE" if r["task"] == "regression" else "accuracy"
        hpo_test = f"{metric} {r['test']:.3f} ± {r['test_std']:.3f}" if "test" in r else "(not run)"
        ensemble = f"{r['ensemble']:.3f}" if r.get("ensemble") is not None else ""
        batches = "/".join(map(str, r["batch_sizes"]))
        timing = f"{r['optimize_s']:.0f} + {r['analyze_s']:.0f} s" if "test" in r else ""
        print(
            f"| {r['study']} | {r['task']} | {r['train_rows']} / {r['test_rows']} "
            f"| {r['max_epochs']} · {batches} | {hpo_test} | {ensemble} "
            f"| {r['linear']} {r['linear_test']:.3f} | {r.get('pruned', '')} | {timing} |"
        )
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
