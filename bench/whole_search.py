"""Whole searches as a user runs them, one variant of the command side by side with another.

    python bench/whole_search.py [--target boston_housing] [--trials 50] [--seeds 0,1,2]
        [--variants "--batch-trials 1" "--batch-trials 8"] [--trees DIR ...]
        [--data-dir DIR] [--keep DIR]

Question: how long does a whole `hpo optimize` search take as a user runs it, and does an
option (a variant) make it faster without a worse best value?
Goal: Boston's 50 trials <= 1 min, IMDB's <= 2 min (issue #22's goals, docs/benchmarks.md).
Machine: any; needs the real dataset files.

For each seed and variant, `hpo optimize TARGET --trials N --seed S VARIANT` as a user runs it
(a fresh SQLite storage and cache folder), one after another (seed by seed, the variants in
turn), with the hpo beside this script. TARGET is a built-in dataset or a study file:
bench/boston_rates.toml is the book's Boston model with only the learning rate and the dropout
searched, where every trial of a batch shares one structure (the most `--batch-trials` can
give). A variant is a string of extra options, after any NAME=VALUE environment settings as in
a shell ("HPO_ASK_AHEAD=1 --seed 0"); "" is the command as it stands. `--keep DIR`
keeps each search's storage as DIR/SEED-K.db (K: the variant's index; study "bench"), for
bench/patience_replay.py. `--trees A B` compares code instead: the command as it stands (or the
one variant given) with the hpo of each checkout in turn (e.g. `git worktree add /tmp/old
REV`), each variant named by its folder.

Prints one row per search: the command's wall time, the epochs its trials trained, the trials
that trained stacked and in how many groups, trials pruned and the best value; then per
variant the mean wall time and the mean and worst best value over the seeds, and one JSON line.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sqlite3
import statistics
import tempfile
from pathlib import Path

import _common
import optuna

ROOT = Path(__file__).resolve().parents[1]


def environment(variant: str) -> tuple[dict[str, str], list[str]]:
    """A variant's leading NAME=VALUE settings, and the options after them."""
    words = shlex.split(variant)
    settings = {}
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
        name, _, value = words.pop(0).partition("=")
        settings[name] = value
    return settings, words


def one_search(target: str, variant: str, seed: int, args, tmp: Path, root: Path) -> dict:
    folder = Path(tempfile.mkdtemp(dir=tmp))
    storage = f"sqlite:///{folder}/bench.db"
    settings, options = environment(variant)
    env = _common.hpo_env(folder / "cache", PYTHONPATH=str(root), **settings)
    command = ["optimize", target, "--trials", str(args.trials)]
    command += ["--seed", str(seed), "--storage", storage, *options]
    command += ["--artifacts", str(folder / "artifacts"), "--data-dir", args.data_dir]
    command += ["--study", "bench"]
    seconds = _common.run_hpo(command, env, root)
    study = optuna.load_study(study_name="bench", storage=storage)
    if args.keep:  # a copy through SQLite: the last commits may still be in the WAL file
        kept = Path(args.keep) / f"{seed}-{args.runs.index((variant, root))}.db"
        kept.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(folder / "bench.db") as source, sqlite3.connect(kept) as copy:
            source.backup(copy)
    stacked = [t.user_attrs.get("worker", {}).get("stacked", 1) for t in study.trials]
    return {
        "variant": f"{root} {variant}".strip() if args.trees else variant,
        "seed": seed,
        "seconds": round(seconds, 1),
        "epochs": sum(len(t.intermediate_values) for t in study.trials),
        "stacked trials": sum(n > 1 for n in stacked),
        "groups": round(sum(1 / n for n in stacked if n > 1)),
        "pruned": sum(t.state.name == "PRUNED" for t in study.trials),
        "best value": round(study.best_value, 4),
        "direction": study.direction.name.lower(),
    }


def parser() -> argparse.ArgumentParser:
    parser = _common.parser(__doc__)
    parser.add_argument("--target", default="boston_housing")
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", nargs="+", help="extra options of each variant")
    parser.add_argument("--data-dir", default=os.environ.get("HPO_DATA_DIR"))
    parser.add_argument("--keep", help="a folder to keep each search's SQLite storage in")
    parser.add_argument("--trees", nargs="+", help="checkouts of hpo to run the command from")
    return parser


def main() -> None:
    args = parser().parse_args()
    if args.variants is None:  # with --trees: the command as it stands, from each tree
        args.variants = [""] if args.trees else ["--batch-trials 1", "--batch-trials 8"]
    trees = [Path(tree).resolve() for tree in args.trees] if args.trees else [ROOT]
    args.runs = [(variant, root) for root in trees for variant in args.variants]
    if not args.data_dir:
        raise SystemExit("--data-dir (or HPO_DATA_DIR): the folder with keras' dataset files")
    args.data_dir = str(Path(args.data_dir).resolve())
    target = args.target
    if target.endswith(".toml"):
        target = str(Path(target).resolve())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for variant, root in args.runs:
                rows.append(one_search(target, variant, seed, args, Path(tmp), root))
                print("  ".join(f"{k} {v}" for k, v in rows[-1].items()), flush=True)
    for variant in dict.fromkeys(row["variant"] for row in rows):
        mine = [row for row in rows if row["variant"] == variant]
        best = [row["best value"] for row in mine]
        worst = min(best) if mine[0]["direction"] == "maximize" else max(best)
        print(
            f"{variant or '(as it stands)'}: {statistics.mean(r['seconds'] for r in mine):.1f} s "
            f"mean, {statistics.mean(r['epochs'] for r in mine):.0f} epochs, "
            f"best value mean {statistics.mean(best):.4f}, worst {worst:.4f}"
        )
    _common.emit({"target": args.target, "trials": args.trials, "rows": rows})


if __name__ == "__main__":
    main()
