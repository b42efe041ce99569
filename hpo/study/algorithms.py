"""Optuna samplers and pruners by name, with the options a study file's [sampler]/[pruner] give.

Defaults are chosen for a budget of tens of trials of ~20 epochs: TPE with 10 random start-up
trials, and a median pruner that waits for 5 complete trials and 2 epochs. Hyperband is offered
but not the default: with TPE it needs ~10 start-up trials per bracket (3 brackets for 20
epochs), most of a 50-trial budget.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import HpoError


class MedianPruner(optuna.pruners.MedianPruner):
    """Optuna's median pruner, reading the study's completed trials once per trial, not once
    per epoch.

    Optuna's asks the database for every completed trial, with all its epochs' values, at
    every epoch of every trial: 7 ms an epoch on SQLite and growing with the study, as much
    time as a Boston epoch's training. Here each trial reads that list at its first check, and
    again when it is more than MAX_AGE_S old (another worker may have completed one), and not
    at all before the warm-up epochs, where the answer is no (stacked trials: one list each).
    With one worker its decisions are exactly Optuna's; with several, a trial completed
    elsewhere in the last MAX_AGE_S is not yet counted, as one still running there is not."""

    MAX_AGE_S = 2.0
    KEEP = 64  # trials whose list is kept: more than are ever stacked in one batch

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reads: dict[int, tuple[float, list[FrozenTrial], Any]] = {}  # by trial number

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self._n_warmup_steps:
            return False
        read = self._reads.get(trial.number)
        if read is None or time.monotonic() - read[0] > self.MAX_AGE_S:
            completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            read = self._reads[trial.number] = (time.monotonic(), completed, study.direction)
            for number in sorted(self._reads)[: -self.KEEP]:  # trials long ended
                del self._reads[number]
        return super().prune(_Completed(read[1], read[2]), trial)


class _Completed:
    """What the percentile pruner reads of a study: its completed trials and its direction."""

    def __init__(self, trials: list[FrozenTrial], direction: Any) -> None:
        self._trials = trials
        self.direction = direction

    def get_trials(self, deepcopy: bool = False, states: Any = None) -> list[FrozenTrial]:
        return self._trials


SAMPLERS = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "qmc": optuna.samplers.QMCSampler,
}
SAMPLER_DEFAULTS: dict[str, dict[str, Any]] = {"tpe": {"n_startup_trials": 10}}
PRUNERS = {
    "median": MedianPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "successive-halving": optuna.pruners.SuccessiveHalvingPruner,
    "none": optuna.pruners.NopPruner,
}
PRUNER_DEFAULTS: dict[str, dict[str, Any]] = {
    "median": {"n_startup_trials": 5, "n_warmup_steps": 2},
    "successive-halving": {"min_resource": 2},
}


def make_sampler(config: dict[str, Any], seed: int | None = None) -> optuna.samplers.BaseSampler:
    options = {key: value for key, value in config.items() if key != "name"}
    cls = SAMPLERS[config["name"]]
    kwargs = {**SAMPLER_DEFAULTS.get(config["name"], {}), **options}
    if seed is not None:
        kwargs["seed"] = seed
    if config["name"] == "tpe" and kwargs.get("multivariate") and "group" not in kwargs:
        # A space with `when` or per-layer parameters changes from trial to trial: multivariate
        # TPE then models each set of parameters that occur together (group) jointly, where
        # without it any parameter not in every trial is sampled independently.
        with warnings.catch_warnings():  # hpo's choice, not the user's experimental option
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return cls(**kwargs, group=True)
    if config["name"] == "cmaes":  # CMA-ES cannot sample categoricals; let it say so once, quietly
        kwargs.setdefault("warn_independent_sampling", False)
    return cls(**kwargs)


def make_pruner(config: dict[str, Any], max_epochs: int) -> optuna.pruners.BasePruner:
    options = {key: value for key, value in config.items() if key != "name"}
    kwargs = {**PRUNER_DEFAULTS.get(config["name"], {}), **options}
    if config["name"] == "hyperband":
        kwargs.setdefault("min_resource", 1)
        kwargs.setdefault("max_resource", max_epochs)
    return PRUNERS[config["name"]](**kwargs)


def check(sampler: dict, pruner: dict, max_epochs: int, source: str) -> None:
    """Build both once so that a bad name or option fails before any trial runs."""
    for part, table, registry in (("sampler", sampler, SAMPLERS), ("pruner", pruner, PRUNERS)):
        if table.get("name") not in registry:
            raise HpoError(
                f"{source}: {part}.name: must be one of {', '.join(registry)}, "
                f"got {table.get('name')!r}"
            )
    try:
        make_sampler(sampler)
    except (TypeError, ValueError) as exc:
        raise HpoError(f"{source}: [sampler] {sampler['name']}: {_short(exc)}") from exc
    try:
        make_pruner(pruner, max_epochs)
    except (TypeError, ValueError) as exc:
        raise HpoError(f"{source}: [pruner] {pruner['name']}: {_short(exc)}") from exc


def _short(exc: Exception) -> str:
    return str(exc).split("\n")[0].replace("__init__() ", "")
