"""Replay finished searches' learning curves with each patience: epochs saved, values moved.

    python bench/archive/patience_replay.py STORAGE.db [STORAGE.db …] [--study bench]
        [--patience 3,4,5,10,20,40]

Each storage holds one finished study searched with every trial training all its epochs
(`--patience 0`; bench/whole_search.py --keep keeps them). For each patience P it cuts every
trial's recorded curve where `patience = P` would have stopped it (hpo's own rule:
EpochReporter, P epochs without a new best) and prints the share of the study's epochs that
would have been trained, how many completed trials' values would have changed, and how far
the study's best value would have moved. A replay keeps the trials the search ran; a search
run with the patience samples and prunes on the shorter curves, so confirm with whole
searches (bench/whole_search.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import optuna

from hpo.train.reporting import EpochReporter


class _Trial:
    """What EpochReporter asks of a trial; nothing is stored and nothing is pruned."""

    def report(self, value: float, step: int) -> None:
        pass

    def should_prune(self) -> bool:
        return False

    def set_user_attr(self, key: str, value: object) -> None:
        pass


def stopped_at(curve: list[float], metric: str, direction: str, patience: int, smooth: int) -> int:
    """The epoch at which `patience` stops a trial with this validation curve."""
    reporter = EpochReporter(_Trial(), metric, direction, smooth_epochs=smooth, patience=patience)
    for epoch, value in enumerate(curve, 1):
        if reporter.record(epoch, {metric: value}):
            return epoch
    return len(curve)


def replay(path: str, study_name: str, patiences: list[int]) -> None:
    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{Path(path).resolve()}")
    record = study.user_attrs["hpo"]
    metric, direction = record["metric"], record["direction"]
    smooth = 1  # the built-in studies rank on the raw curve
    trials = [t for t in study.trials if "history" in t.user_attrs]
    epochs = sum(len(t.user_attrs["history"][metric]) for t in trials)
    pick = max if direction == "maximize" else min
    print(f"{path}: {len(trials)} trials, {epochs} epochs, best {study.best_value:.4f}")
    for patience in patiences:
        trained, values, changed = 0, [], 0
        for trial in trials:
            curve = trial.user_attrs["history"][metric]
            stop = stopped_at(curve, metric, direction, patience, smooth)
            trained += stop
            if trial.state.name == "COMPLETE":
                values.append(pick(curve[:stop]))
                changed += values[-1] != trial.value
        print(
            f"  patience {patience:3d}: {trained / epochs:4.0%} of the epochs, "
            f"{changed} trial values changed, best {pick(values) - study.best_value:+.4f}"
        )


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("storages", nargs="+")
    parser.add_argument("--study", default="bench")
    parser.add_argument("--patience", default="3,4,5,10,20,40")
    return parser


def main() -> None:
    args = parser().parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for path in args.storages:
        replay(path, args.study, [int(p) for p in args.patience.split(",")])


if __name__ == "__main__":
    main()
