"""Every name of Optuna's that is not public API and that hpo uses, in one place.

hpo needs a few of them: a trial asked outside `study.optimize` beats its heartbeat as
`optimize` does; a dead worker's trial is found and buried in one query over the RDB schema;
the storage hpo wraps answers the private calls Optuna's own cache makes. Optuna may move any
of these in a minor release (the pin is `optuna>=5,<6`), so each is reached only through this
module, and tests/unit/test_optuna_private.py checks every name in ACCESSED on the installed Optuna:
an upgrade that moves one fails that test, naming it, not a worker in the middle of a study.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.storages._rdb import models

__all__ = ["get_heartbeat_thread", "models"]

# The private RDBStorage methods Optuna's _CachedStorage calls on the storage it wraps (the
# storage hpo opens): hpo's retrying storage must wrap these as well as the public ones.
CACHED_STORAGE_CALLS = (
    "_create_new_trial",
    "_get_best_trial_id",
    "_get_stale_trial_ids",
    "_get_trials",
    "_set_trial_param",
)
# The one an RDBStorage subclass answers for `optuna.storages.fail_stale_trials`: the trials
# it fails (hpo.search.storage buries them itself, and answers none).
STALE_TRIAL_IDS = "_get_stale_trial_ids"

# Each private name, as the test checks it: where it lives, and what is looked up there.
ACCESSED = {
    "optuna.storages._heartbeat.get_heartbeat_thread": "a function (trial_id, storage)",
    "optuna.storages._rdb.models": "the RDB schema: TrialModel, TrialHeartbeatModel, …",
    "optuna.Study._storage": "a study's storage",
    "optuna.Study._study_id": "a study's id in its storage",
    "optuna.Trial._trial_id": "a trial's id in its storage",
    "optuna.study._frozen.FrozenStudy._study_id": "a listed study's id",
    "optuna.study.StudySummary._study_id": "a summarized study's id",
    "optuna.storages._cached_storage._CachedStorage._backend": "the storage a cache wraps",
    "optuna.storages.RDBStorage._version_manager": "the schema version check",
    **{
        f"optuna.storages.RDBStorage.{name}": "_CachedStorage calls it"
        for name in CACHED_STORAGE_CALLS
    },
}


def rdb_storage_of(study: optuna.Study) -> Any:
    """The storage under Optuna's cache (an RDBStorage for a database), else the study's."""
    storage = study._storage
    return getattr(storage, "_backend", storage)


def study_id(study: Any) -> int:
    """The storage's id of a Study, FrozenStudy or StudySummary."""
    return study._study_id


def heartbeat(trial: optuna.Trial, study: optuna.Study) -> Any:
    """The heartbeat thread `study.optimize` runs around a trial: a context manager."""
    return get_heartbeat_thread(trial._trial_id, study._storage)


def check_schema_compatibility(storage: optuna.storages.RDBStorage) -> None:
    """Optuna's check that the database's schema is this Optuna's (RuntimeError if not)."""
    storage._version_manager.check_table_schema_compatibility()


def answer_stale_trial_ids(cls: type, method: Callable[[Any, int], list[int]]) -> None:
    """Make `method(storage, study_id)` what `fail_stale_trials` asks instances of `cls`."""
    setattr(cls, STALE_TRIAL_IDS, method)
