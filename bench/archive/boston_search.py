"""A Boston housing search, old engine vs this tree, in one run: wall time and test MAE.

    python bench/archive/boston_search.py [--trials 50] [--old-trials N] [--seeds 0]
        [--backends tensorflow,jax] [--old-rev 5c9f029] [--new-rev REV] [--analyze-seeds 3]
        [--dataset boston_housing]

--dataset times another built-in study's search the same way (imdb: issue #22's 50-trial
IMDB search, cold caches).

For each backend and seed, `hpo optimize boston_housing --trials N --seed S` as a user runs it
(the built-in study file, a fresh SQLite storage, a fresh cache folder: no dataset cache, no
JAX compilation cache), once with the code of --old-rev (checked out into a temporary git
worktree: the landed main before the fused engine, whose k-fold trials were 4 models trained
in chunks of 20 epochs by model.fit) and once with this tree (or --new-rev, checked out the
same way, so a long run measures one fixed commit). Then, with --analyze-seeds K,
`hpo analyze boston_housing --seeds K` on each study (each with its own code): the best
trial's test MAE, mean and std over the K retrained seeds, and their ensemble's.

Prints one row per run (the command's wall time, and the seconds its trials took without
process start-up) and the speed-up per backend and seed: over the first --compare-first
trials, which both sides sample alike (TPE's random start-up trials, never pruned), and over
the whole search when both ran as many trials. --old-trials lets the old side stop early:
on TensorFlow its 200-epoch trials take minutes each. Then one JSON line. Needs the
real boston_housing.npz: --data-dir or HPO_DATA_DIR (e.g. ../shared/datasets).
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
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[2]
OLD_REV = "5c9f029"  # main as landed on 2026-11-28, before hpo/train/engine.py


def hpo(code: Path, args: list[str], env: dict[str, str]) -> float:
    """Run `hpo ARGS` with the package at `code`; its wall time in seconds."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "hpo", *args],
        cwd=code,
        env={**env, "PYTHONPATH": str(code)},
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def one_search(code: Path, side: str, backend: str, seed: int, args, tmp: Path) -> dict:
    folder = Path(tempfile.mkdtemp(dir=tmp))
    storage = f"sqlite:///{folder}/bench.db"
    env = {**os.environ, "KERAS_BACKEND": backend, "HPO_CACHE_DIR": str(folder / "cache")}
    for key in ("HPO_ENGINE", "JAX_COMPILATION_CACHE_DIR", "HPO_STORAGE"):
        env.pop(key, None)
    common = ["--storage", storage, "--data-dir", args.data_dir]
    trials = args.old_trials if side == "old" and args.old_trials else args.trials
    name = args.dataset
    search = ["optimize", name, "--trials", str(trials), "--seed", str(seed)]
    row = {"trials": trials, "seconds": hpo(code, search + common, env)}
    study = optuna.load_study(study_name=name, storage=storage)
    row["best value"] = study.best_value
    row["pruned"] = sum(t.state.name == "PRUNED" for t in study.trials)
    # Seconds the trials themselves took (process start-up and imports left out), in all and
    # for the first --compare-first trials, which both sides sample alike (TPE's random start).
    durations = [t.duration.total_seconds() for t in study.trials if t.duration]
    row["trial seconds"] = sum(durations)
    row["first trials seconds"] = sum(durations[: args.compare_first])
    if args.analyze_seeds:
        analyze = ["analyze", name, "--seeds", str(args.analyze_seeds)]
        row["analyze seconds"] = hpo(code, analyze + common + ["--out", str(folder / "r")], env)
        best = optuna.load_study(study_name=name, storage=storage).user_attrs
        best = best["analysis"]["best"]
        row["test mae"] = best["test"]["mae"]["mean"]
        row["test mae std"] = best["test"]["mae"]["std"]
        if "ensemble_test" in best:
            row["ensemble mae"] = best["ensemble_test"]["mae"]
    return row


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="boston_housing", help="a built-in study")
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--seeds", default="0", help="comma-separated study seeds")
    parser.add_argument("--backends", default="tensorflow,jax")
    parser.add_argument("--old-rev", default=OLD_REV)
    parser.add_argument("--new-rev", help="a commit for the new side (default: this tree)")
    parser.add_argument("--only", choices=("old", "new"), help="run one side only")
    parser.add_argument(
        "--old-trials", type=int, help="fewer trials for the old side (TensorFlow: ~2 min each)"
    )
    parser.add_argument(
        "--compare-first",
        type=int,
        default=5,
        help="compare the first N trials' seconds (the start-up trials, never pruned)",
    )
    parser.add_argument("--analyze-seeds", type=int, default=0)
    parser.add_argument("--data-dir", default=os.environ.get("HPO_DATA_DIR"))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser


def main() -> None:
    args = parser().parse_args()
    if not args.data_dir:
        raise SystemExit("give --data-dir or set HPO_DATA_DIR (keras' dataset files)")
    args.data_dir = str(Path(args.data_dir).resolve())
    sides = [args.only] if args.only else ["old", "new"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        code = {"old": tmp / "old", "new": tmp / "new" if args.new_rev else ROOT}
        worktrees = {"old": args.old_rev, "new": args.new_rev}
        worktrees = {side: rev for side, rev in worktrees.items() if side in sides and rev}
        for side, rev in worktrees.items():
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(code[side]), rev],
                check=True,
                capture_output=True,
            )
        try:
            for backend in args.backends.split(","):
                for seed in map(int, args.seeds.split(",")):
                    for side in sides:
                        row = {"backend": backend, "seed": seed, "code": side}
                        row.update(one_search(code[side], side, backend, seed, args, tmp))
                        rows.append(row)
                        print(json.dumps(row), flush=True)
        finally:
            for side in worktrees:
                remove = ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(code[side])]
                subprocess.run(remove, check=False)
                shutil.rmtree(code[side], ignore_errors=True)
    first = args.compare_first
    print(f"\n{args.dataset}, {os.cpu_count()} cores; seconds: the whole command, the trials alone")
    print(
        f"{'backend':<11} {'seed':>4} {'code':<4} {'trials':>6} {'seconds':>8} {'trials s':>8} "
        f"{f'first {first} s':>10} {'best val':>9} {'test MAE':>14}"
    )
    for r in rows:
        test = f"{r['test mae']:.2f} ± {r['test mae std']:.2f}" if "test mae" in r else ""
        print(
            f"{r['backend']:<11} {r['seed']:>4} {r['code']:<4} {r['trials']:>6} "
            f"{r['seconds']:8.1f} {r['trial seconds']:8.1f} {r['first trials seconds']:10.1f} "
            f"{r['best value']:9.4f} {test:>14}"
        )
    for r in rows:
        twin = [o for o in rows if o["code"] == "old" and o["backend"] == r["backend"]]
        twin = [o for o in twin if o["seed"] == r["seed"]]
        if r["code"] == "new" and twin:
            old = twin[0]
            line = f"speed-up {r['backend']} seed {r['seed']}: first {first} trials "
            line += f"{old['first trials seconds'] / r['first trials seconds']:.1f}x"
            if old["trials"] == r["trials"]:
                line += f", whole {r['trials']}-trial search {old['seconds'] / r['seconds']:.1f}x"
            print(line)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
