"""Replay finished searches' reported curves under other pruners: epochs saved, best moved.

    python bench/archive/pruner_replay.py STORAGE.db [STORAGE.db …] [--study NAME]
        [--pruners "median n_warmup_steps=40" "median n_warmup_steps=20" …]

Each storage holds one finished study (bench/whole_search.py --keep keeps them). For each
pruner (Optuna's, by hpo's name or "percentile", with its options as NAME=VALUE) the trials
are replayed in the order they ran: each trial's reported values are shown to the pruner
epoch by epoch, as the trial reported them, against the trials the replay completed before
it, and the trial stops where the pruner says. A trial the search itself pruned cannot go on
past its last reported epoch: a replay can only prune more than the search did, so compare
pruners at least as eager as the study's own. Prints the share of the study's epochs the
pruner would have trained, the trials it prunes, and the best value among the trials it lets
complete (each trial's value as the search recorded it). A replay keeps the trials the search
sampled; a search run with the pruner gives its sampler other values to learn from, so
confirm with whole searches (bench/whole_search.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from hpo.study.algorithms import PRUNERS, make_pruner


def parse_pruner(text: str) -> tuple[str, dict[str, Any]]:
    """ "median n_warmup_steps=20" → ("median", {"n_warmup_steps": 20})."""
    name, *options = text.split()
    values: dict[str, Any] = {}
    for option in options:
        key, value = option.split("=", 1)
        values[key] = float(value) if "." in value else int(value)
    return name, values


def build(name: str, options: dict[str, Any], max_epochs: int) -> optuna.pruners.BasePruner:
    if name == "percentile":
        return optuna.pruners.PercentilePruner(**options)
    if name not in PRUNERS:
        raise SystemExit(f"unknown pruner {name!r}: percentile or one of {', '.join(PRUNERS)}")
    return make_pruner({"name": name, **options}, max_epochs)


def replay(study: optuna.Study, pruner: optuna.pruners.BasePruner) -> tuple[int, int, list]:
    """(epochs trained, trials pruned, values of the trials completed) under `pruner`."""
    done = optuna.create_study(direction=study.direction)
    epochs = pruned = 0
    for trial in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)):
        curve = sorted(trial.intermediate_values.items())
        reported: dict[int, float] = {}
        stopped = False
        for step, value in curve:
            reported[step] = value
            epochs += 1
            frozen = optuna.trial.create_trial(
                state=TrialState.RUNNING,
                params=trial.params,
                distributions=trial.distributions,
                intermediate_values=dict(reported),
            )
            frozen.number = trial.number
            if pruner.prune(done, frozen):
                stopped = True
                break
        if stopped or trial.state == TrialState.PRUNED:
            pruned += 1
            continue
        done.add_trial(
            optuna.trial.create_trial(
                state=TrialState.COMPLETE,
                value=trial.value,
                params=trial.params,
                distributions=trial.distributions,
                intermediate_values=dict(reported),
            )
        )
    values = [t.value for t in done.get_trials(states=(TrialState.COMPLETE,))]
    return epochs, pruned, values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("storages", nargs="+")
    parser.add_argument("--study", default=None, help="the study's name (default: the only one)")
    parser.add_argument("--pruners", nargs="+", default=["median n_warmup_steps=40"])
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print("| study | pruner | epochs trained | trials pruned | best value (moved) |")
    print("|---|---|---|---|---|")
    for path in args.storages:
        url = f"sqlite:///{Path(path).resolve()}"
        name = args.study or optuna.get_all_study_names(url)[0]
        study = optuna.load_study(study_name=name, storage=url)
        max_epochs = study.user_attrs["hpo"].get("max_epochs", 0)
        total = sum(len(t.intermediate_values) for t in study.trials)
        pick = min if study.direction == optuna.study.StudyDirection.MINIMIZE else max
        for text in args.pruners:
            epochs, pruned, values = replay(study, build(*parse_pruner(text), max_epochs))
            best = pick(values) if values else float("nan")
            print(
                f"| {Path(path).name} | {text} | {epochs} ({epochs / total:.0%}) | {pruned} "
                f"| {best:.4f} ({best - study.best_value:+.4f}) |",
                flush=True,
            )


if __name__ == "__main__":
    main()
