"""Optuna samplers and pruners by name, with the options a study file's [sampler]/[pruner] give.

Defaults are chosen for a budget of tens of trials of ~20 epochs: TPE with 10 random start-up
trials, and a median pruner that waits for 5 complete trials and 2 epochs. Hyperband is offered
but not the default: with TPE it needs ~10 start-up trials per bracket (3 brackets for 20
epochs), most of a 50-trial budget.
"""

from __future__ import annotations

from typing import Any

import optuna

from hpo.errors import HpoError

SAMPLERS = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "qmc": optuna.samplers.QMCSampler,
}
SAMPLER_DEFAULTS: dict[str, dict[str, Any]] = {"tpe": {"n_startup_trials": 10}}
PRUNERS = {
    "median": optuna.pruners.MedianPruner,
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
