"""The three handovers of `hpo analyze` over several search seeds: mean and worst test score.

    python bench/handover.py boston_housing|STUDY.toml --seeds 0,1,2,3,4 [--trials 50]
        [--analyze-seeds 3] [--data-dir ../shared/datasets] [--out results.jsonl]

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
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "hpo", *args],
        cwd=cwd,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def one(dataset: str, seed: int, opts: argparse.Namespace) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"handover-{Path(dataset).stem}-{seed}-"))
    env = {**os.environ, "HPO_CACHE_DIR": opts.cache, "PYTHONPATH": str(ROOT)}
    env.pop("HPO_STORAGE", None)
    common = ["--storage", f"sqlite:///{folder}/bench.db", "--data-dir", opts.data_dir]
    search = run(
        ["optimize", dataset, "--trials", str(opts.trials), "--seed", str(seed), *common],
        folder,
        env,
    )
    analyze = run(["analyze", dataset, "--seeds", str(opts.analyze_seeds), *common], folder, env)
    [report] = (folder / "storage" / "reports").iterdir()  # one study: the study's name
    saved = json.loads((report / "params.json").read_text())
    metric = "mae" if "mae" in saved["test"] else "accuracy"
    selected = saved.get("selected") or {}
    return {
        "dataset": dataset,
        "seed": seed,
        "metric": metric,
        "best": saved["test"][metric]["mean"],
        "best_std": saved["test"][metric]["std"],
        "seeds": (saved.get("ensemble_test") or {}).get(metric),
        "selected": (selected.get("test") or {}).get(metric),
        "members": [(m["trial"], round(m["weight"], 2)) for m in selected.get("members", [])],
        "nested": selected.get("nested"),
        "handover": saved["handover"],
        "search_s": round(search),
        "analyze_s": round(analyze),
        "folder": str(folder),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--analyze-seeds", type=int, default=3)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets"))
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "hpo-bench-cache"))
    parser.add_argument("--out", default=None)
    opts = parser.parse_args()
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
    for key in ("best", "seeds", "selected"):
        values = [r[key] for r in rows if r[key] is not None]
        if values:
            print(
                f"{key:>9}: mean {sum(values) / len(values):.4f}  worst {worst(values):.4f}  "
                f"({', '.join(f'{v:.4f}' for v in values)})"
            )


if __name__ == "__main__":
    main()
