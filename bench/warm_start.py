"""A study warm-started from an earlier one against a cold study of as many trials in all.

    python bench/warm_start.py [--target imdb] [--trials 50] [--seeds 0,1]
        [--max-epochs E] [--data-dir ../shared/datasets] [--no-analyze]

Question: does an N-trial study warm-started (`--warm-start`) from an N-trial study of
another seed find as good a model as a cold 2N-trial study, in half the search time?
Goal: the warm start's best validation value and handed-over test score within the cold
study's seed-to-seed noise, for half its search time.
Machine: any, the same for all three searches; the built-in datasets need
../shared/datasets.

As a user runs it, in one fresh SQLite storage: `hpo optimize TARGET --trials N --seed S1
--study first`; then `--trials N --seed S2 --study warm --warm-start first` (the first
study's complete trials copied in; N new ones run); then `--trials 2N --seed S2 --study cold`.
Each study runs the book's configuration as its trial 0 (the warm one has it copied). Then
`hpo analyze TARGET --study warm` and `--study cold` (the default handover), reading
params.json. Prints, per study: its search seconds, its trials (copied and run), its best
validation value, the book's configuration's, and the handed-over model's test score.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
from pathlib import Path

import _common

ROOT = Path(__file__).resolve().parents[1]


def study_figures(db: Path, name: str) -> dict:
    """Its trials (copied and run), best value and the book's configuration's value, read
    from the SQLite storage without hpo (its tables as Optuna writes them)."""
    with sqlite3.connect(db) as con:
        [(direction,)] = con.execute(
            "SELECT d.direction FROM study_directions d JOIN studies s USING (study_id) "
            "WHERE s.study_name = ?",
            (name,),
        ).fetchall()
        rows = con.execute(
            "SELECT t.trial_id, t.state, v.value FROM trials t JOIN studies s USING (study_id) "
            "LEFT JOIN trial_values v ON v.trial_id = t.trial_id WHERE s.study_name = ?",
            (name,),
        ).fetchall()
        attrs = con.execute(
            "SELECT a.trial_id, a.key, a.value_json FROM trial_user_attributes a JOIN trials t "
            "USING (trial_id) JOIN studies s USING (study_id) WHERE s.study_name = ? AND "
            "a.key IN ('warm_start_from', 'enqueued')",
            (name,),
        ).fetchall()
    copied = {tid for tid, key, _ in attrs if key == "warm_start_from"}
    book = [tid for tid, key, value in attrs if key == "enqueued" and json.loads(value) == "book"]
    values = {tid: value for tid, state, value in rows if state == "COMPLETE"}
    pick = max if direction == "MAXIMIZE" else min
    ran = [tid for tid, _, _ in rows if tid not in copied]
    book = sorted(book, key=lambda t: t in copied)  # this study's run of it first
    book_value = next((values[t] for t in book if t in values), None)
    return {
        "copied": len(copied),
        "ran": len(ran),
        "best_val": pick(values.values()) if values else None,
        "best_val_new": pick(v for t, v in values.items() if t not in copied) if ran else None,
        "book_val": book_value,
    }


def handed_test(report: Path) -> dict:
    """The handed-over model's test figures from params.json."""
    saved = json.loads((report / "params.json").read_text())
    metric = "mae" if "mae" in saved["test"] else "accuracy"
    name = saved["handover"]
    if name == "trial-ensemble":
        value = ((saved.get("trial_ensemble") or {}).get("test") or {}).get(metric)
    elif name == "seeds":
        value = (saved.get("seed_ensemble_test") or {}).get(metric)
    else:
        value = saved["test"][metric]["mean"]
    return {"handover": name, "metric": metric, "test": value, "best_test": saved["test"][metric]}


def main() -> None:
    opts = parser().parse_args()
    first, second = (int(s) for s in opts.seeds.split(","))
    folder = Path(tempfile.mkdtemp(prefix="warm-start-"))
    db = folder / "bench.db"
    env = _common.hpo_env(opts.cache)
    data_dir = str(Path(opts.data_dir).resolve())  # hpo runs in the scratch folder
    common = ["--storage", f"sqlite:///{db}", "--data-dir", data_dir]
    extra = ["--max-epochs", str(opts.max_epochs)] if opts.max_epochs else []
    target, n = opts.target, opts.trials
    if Path(target).is_file():  # a study file: hpo runs in the scratch folder
        target = str(Path(target).resolve())
    searches = {
        "first": ["--trials", str(n), "--seed", str(first)],
        "warm": ["--trials", str(n), "--seed", str(second), "--warm-start", "first"],
        "cold": ["--trials", str(2 * n), "--seed", str(second)],
    }
    rows = {}
    for name, args in searches.items():
        seconds = _common.run_hpo(
            ["optimize", target, "--study", name, *args, *extra, *common], env, folder
        )
        rows[name] = {"search_s": round(seconds, 1), **study_figures(db, name)}
        if opts.analyze and name != "first":
            seconds = _common.run_hpo(["analyze", target, "--study", name, *common], env, folder)
            report = folder / "storage" / "reports" / name
            rows[name] |= {"analyze_s": round(seconds, 1), **handed_test(report)}
        print(f"{name:>5}: {json.dumps(rows[name])}", flush=True)
    _common.emit(
        {
            "target": target,
            "trials": n,
            "seeds": [first, second],
            "max_epochs": opts.max_epochs,
            "rows": rows,
            "folder": str(folder),
        }
    )


def parser() -> argparse.ArgumentParser:
    parser = _common.parser(__doc__)
    parser.add_argument("--target", default="imdb", help="a built-in dataset or a STUDY.toml")
    parser.add_argument("--trials", type=int, default=50, help="N: each of the first two")
    parser.add_argument("--seeds", default="0,1", help="S1,S2: the first study's, the others'")
    parser.add_argument("--max-epochs", type=int, default=None, help="[the study file's]")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets"))
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "hpo-bench-cache"))
    parser.add_argument("--no-analyze", dest="analyze", action="store_false")
    return parser


if __name__ == "__main__":
    main()
