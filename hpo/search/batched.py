"""--batch-trials: ask the sampler for several trials at once and train those of one structure
side by side, as one model (hpo.train.objective.Objective.run_stacked).

Optuna's ask-and-tell: up to N trials are asked for (TPE's constant liar keeps them apart),
each admitted by the study's budget as study.optimize's trials are, and grouped by what one
compiled program cannot vary: every parameter but the learning rate and the dropout rate.
A group of two or more trains stacked; a trial alone, or one that cannot stack (word ids,
Nadam, model.fit), trains as usual. Every trial beats its own heartbeat, reports and is pruned
every epoch, and is told as soon as it ends; on Ctrl-C the trials not yet told fail as
"interrupted", so a resumed study runs them again.
"""

from __future__ import annotations

import contextlib
import gc
import json
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo import optuna_private
from hpo.errors import HpoError
from hpo.search.budget import Budget, OverBudget

if TYPE_CHECKING:  # the objective imports Keras: only once a worker trains
    from hpo.train.objective import Objective

AUTO = "auto"
GPU_BATCH = 8  # --batch-trials auto on a GPU: not yet measured (bench/gpu_check.sh)


def parse(setting: int | str) -> int | str:
    """--batch-trials: a number of trials (1: one at a time) or auto."""
    if str(setting) == AUTO:
        return AUTO
    try:
        n = int(setting)
    except ValueError:
        n = 0
    if n < 1:
        raise HpoError(f"--batch-trials must be auto or a number of at least 1, got {setting}")
    return n


def resolve(setting: int | str) -> int:
    """The number of trials to ask for at once. auto: 1 on a CPU, where stacking measured no
    faster (docs/lab/performance.md), GPU_BATCH on a GPU, which one small trial leaves idle."""
    if setting != AUTO:
        return int(setting)
    from hpo import resources

    return GPU_BATCH if resources.gpu_count() else 1


def stack_key(params: dict[str, Any]) -> str:
    """What trials trained side by side must share: every parameter but the learning rate
    and the dropout rate (whether there is dropout at all is part of the structure)."""
    shared = {k: v for k, v in params.items() if k not in ("learning_rate", "dropout")}
    return json.dumps([shared, params.get("dropout", 0) > 0], sort_keys=True, default=str)


def run_trials(
    study: optuna.Study,
    objective: Objective,
    size: int,
    budget: Budget,
    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]],
    catch: tuple[type[Exception], ...],
    asked: list[optuna.Trial] | None = None,
) -> int:
    """Run the next trial (study.optimize, its own failures in `catch` recorded, not raised),
    or with `size` > 1 where trials can stack the next batch (run_batch); how many were run."""
    if size > 1 and objective.unstackable() is None:
        return run_batch(study, objective, size, budget, callbacks, asked)
    study.optimize(objective, n_trials=1, catch=catch, callbacks=callbacks, gc_after_trial=True)
    return 1


def run_batch(
    study: optuna.Study,
    objective: Objective,
    size: int,
    budget: Budget,
    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]],
    asked: list[optuna.Trial] | None = None,
) -> int:
    """Ask for up to `size` trials the budget admits and run them; how many were run. The
    trials are also added to `asked` as they are asked (so a caller interrupted knows them)."""
    trials: list[optuna.Trial] = [] if asked is None else asked
    for _ in range(min(size, budget.free_slots(study))):
        with warnings.catch_warnings():  # "heartbeat … supposed to be used with optimize":
            warnings.simplefilter("ignore", UserWarning)  # this module beats it as optimize does
            trial = study.ask()
        try:
            budget.admit(trial)
        except OverBudget:  # another worker took the slot meanwhile
            study.tell(trial, state=TrialState.FAIL)
            break
        trials.append(trial)
    told: set[int] = set()

    def tell(trial: optuna.Trial, state: TrialState, value: float | None) -> None:
        frozen = study.tell(trial, value, state=state, skip_if_finished=True)
        told.add(trial.number)
        for callback in callbacks:
            callback(study, frozen)

    with contextlib.ExitStack() as beating:
        for trial in trials:
            beating.enter_context(optuna_private.heartbeat(trial, study))  # as optimize beats
        try:
            groups: dict[str, list[tuple[optuna.Trial, dict[str, Any]]]] = {}
            for trial in trials:
                params = objective.begin(trial)
                key = stack_key(params) if objective.stackable(params) else f"alone {trial.number}"
                groups.setdefault(key, []).append((trial, params))
            for group in groups.values():
                if len(group) == 1:
                    trial, params = group[0]
                    tell(trial, *alone(objective, trial, params))
                else:
                    objective.run_stacked([t for t, _ in group], [p for _, p in group], tell)
                gc.collect()  # as study.optimize(gc_after_trial=True)
        finally:
            for trial in trials:  # Ctrl-C, or an error that stops the study
                if trial.number not in told:  # as study.optimize: failed, no callbacks
                    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
    return len(trials)


def alone(
    objective: Objective,
    trial: optuna.Trial,
    params: dict[str, Any],
    beside: Callable[[], None] | None = None,
) -> tuple:
    """(state, value) of a begun trial trained alone (Objective.run, `beside` with it)."""
    from hpo.train.reporting import TrialFailed

    try:
        return TrialState.COMPLETE, objective.run(trial, params, beside)
    except optuna.TrialPruned:
        return TrialState.PRUNED, None
    except TrialFailed:
        return TrialState.FAIL, None
