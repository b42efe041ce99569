"""The three handovers of `hpo analyze` over several search seeds: mean and worst test score.

    python bench/handover.py boston_housing|STUDY.toml --seeds 0,1,2,3,4 [--trials 50]
        [--analyze-seeds 3] [--data-dir ../shared/datasets] [--out results.jsonl]

Question: which handover of `hpo analyze` tests best, on average and at worst over search
seeds: the best trial retrained, the seeds' ensemble, or the ensemble of trials?
Goal: the default handover never tests worse than the best trial retrained, on average.
Machine: any; the built-in datasets need ../shared/datasets.

For each search seed, as a user runs it: `hpo optimize DATASET --trials N --seed S` in a fresh
SQLite storage, then `hpo analyze DATASET --seeds K` (the default handover, which also builds
the other two). Reads params.json: the best trial retrained (mean over the K seeds), the K
seeds' ensemble, and the ensemble of trials chosen from the kept validation predictions, with
its nested validation score beside the best single trial's. Prints one row per search seed,
then the mean and the worst of each handover over the seeds (worst: the highest MAE, the
lowest accuracy). Selection never sees the test set: the test column is read once, after.
Appends one JSON line per search to --out.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import _common

ROOT = Path(__file__).resolve().parents[1]


def one(dataset: str, seed: int, opts: argparse.Namespace) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"handover-{Path(dataset).stem}-{seed}-"))
    env = _common.hpo_env(opts.cache)
    data_dir = str(Path(opts.data_dir).resolve())  # hpo runs in the scratch folder
    common = ["--storage", f"sqlite:///{folder}/bench.db", "--data-dir", data_dir]
    if Path(dataset).is_file():  # a study file: hpo runs in the scratch folder
        dataset = str(Path(dataset).resolve())
    optimize = ["optimize", dataset, "--trials", str(opts.trials), "--seed", str(seed)]
    search = _common.run_hpo([*optimize, *common], env, folder)
    analyze = ["analyze", dataset, "--seeds", str(opts.analyze_seeds), *common]
    analysis = _common.run_hpo(analyze, env, folder)
    [report] = (folder / "storage" / "reports").iterdir()  # one study: the study's name
    saved = json.loads((report / "params.json").read_text())
    metric = "mae" if "mae" in saved["test"] else "accuracy"
    # params.json as hpo writes it; its keys before issue 36: "selected", "ensemble_test"
    selected = saved.get("trial_ensemble") or saved.get("selected") or {}
    seeds = saved.get("seed_ensemble_test") or saved.get("ensemble_test") or {}
    return {
        "dataset": dataset,
        "seed": seed,
        "metric": metric,
        "best": saved["test"][metric]["mean"],
        "best_std": saved["test"][metric]["std"],
        "seeds": seeds.get(metric),
        "trial_ensemble": (selected.get("test") or {}).get(metric),
        "members": [(m["trial"], round(m["weight"], 2)) for m in selected.get("members", [])],
        "nested": selected.get("nested"),
        "handover": saved["handover"],
        "search_s": round(search),
        "analyze_s": round(analysis),
        "folder": str(folder),
    }


def parser() -> argparse.ArgumentParser:
    parser = _common.parser(__doc__)
    parser.add_argument("dataset")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--analyze-seeds", type=int, default=3)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets"))
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "hpo-bench-cache"))
    parser.add_argument("--out", default=None)
    return parser


def main() -> None:
    opts = parser().parse_args()
    rows = []
    for seed in [int(s) for s in opts.seeds.split(",")]:
        row = one(opts.dataset, seed, opts)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if opts.out:
            with open(opts.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    metric = rows[0]["metric"]
    worst = max if metric == "mae" else min
    print(f"\n{opts.dataset}, test {metric}, {len(rows)} search seeds")
    summary = {}
    for key in ("best", "seeds", "trial_ensemble"):
        values = [r[key] for r in rows if r[key] is not None]
        if values:
            summary[key] = {"mean": sum(values) / len(values), "worst": worst(values)}
            print(
                f"{key:>9}: mean {summary[key]['mean']:.4f}  worst {worst(values):.4f}  "
                f"({', '.join(f'{v:.4f}' for v in values)})"
            )
    _common.emit({"dataset": opts.dataset, "metric": metric, "summary": summary, "rows": rows})


if __name__ == "__main__":
    main()
