"""hpo.optuna_private: every private Optuna name hpo uses is still where hpo reaches it.

An Optuna upgrade that moves one fails here, naming it, rather than in a worker's trial."""

from __future__ import annotations

import importlib
import inspect

import optuna
import pytest

from hpo import optuna_private
from hpo.search.storage import ReconnectingRDBStorage, open_storage


def _found(dotted: str, study: optuna.Study, trial: optuna.Trial) -> bool:
    """Whether `dotted` (module path, then attributes) is there on the installed Optuna: on the
    class, or on a live instance for attributes set in __init__."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        rest = parts[cut:]
        break
    if not rest:
        return True  # a module
    *path, name = rest
    for part in path:
        found = getattr(found, part, None)
        if found is None:
            return False
    if hasattr(found, name):
        return True
    instances = {
        optuna.Study: study,
        optuna.Trial: trial,
        optuna.study._frozen.FrozenStudy: study._storage.get_all_studies()[0],
        optuna.study.StudySummary: optuna.get_all_study_summaries(study._storage)[0],
        optuna.storages._cached_storage._CachedStorage: study._storage,
        optuna.storages.RDBStorage: study._storage._backend,
    }
    return found in instances and hasattr(instances[found], name)


@pytest.fixture
def live(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/x.db")
    trial = study.ask()
    yield study, trial
    study.tell(trial, 0.0)


@pytest.mark.parametrize("name", sorted(optuna_private.ACCESSED))
def test_each_private_name_is_where_hpo_reaches_it(name, live):
    assert _found(name, *live), (
        f"optuna {optuna.__version__} has no {name} ({optuna_private.ACCESSED[name]}): "
        "hpo/optuna_private.py must follow where it moved"
    )


def test_the_names_checked_are_found_only_when_there(live):
    assert not _found("optuna.Study._no_such_attr", *live)
    assert not _found("optuna.storages._no_such_module.thing", *live)


def test_the_private_calls_of_optunas_cache_are_those_hpo_wraps():
    """_CachedStorage calls these on hpo's storage; one it calls that hpo does not retry would
    fail at the first lost connection instead of waiting it out."""
    source = inspect.getsource(optuna.storages._cached_storage)
    called = {
        word.split("(")[0]
        for word in source.replace("self._backend.", " @").split()
        if word.startswith("@_")
    }
    called = {name.removeprefix("@") for name in called}
    assert called == set(optuna_private.CACHED_STORAGE_CALLS), (
        f"optuna {optuna.__version__}'s _CachedStorage calls the private {sorted(called)}, "
        f"hpo wraps {sorted(optuna_private.CACHED_STORAGE_CALLS)}"
    )


def test_fail_stale_trials_asks_the_method_hpo_answers(tmp_path):
    source = inspect.getsource(optuna.storages._heartbeat.fail_stale_trials)
    assert optuna_private.STALE_TRIAL_IDS in source
    storage = open_storage(f"sqlite:///{tmp_path}/y.db")
    answer = getattr(type(storage), optuna_private.STALE_TRIAL_IDS)
    assert answer.__wrapped__ is ReconnectingRDBStorage.bury_dead_trials
