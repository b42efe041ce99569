"""hpo's median pruner (hpo/study/algorithms.py): Optuna's decisions, one read of the completed
trials per trial instead of one per epoch."""

from __future__ import annotations

import numpy as np
import optuna

from hpo.study import algorithms


def finished_study(rng: np.random.Generator, trials: int = 8, epochs: int = 12) -> optuna.Study:
    study = optuna.create_study(direction="minimize")
    for _ in range(trials):
        trial = study.ask()
        curve = rng.random() + np.linspace(1.0, 0.2, epochs) + rng.normal(0, 0.05, epochs)
        for step, value in enumerate(curve):
            trial.report(float(value), step)
        study.tell(trial, float(curve.min()))
    return study


def test_the_median_pruner_decides_as_optunas_and_reads_once_per_trial(monkeypatch):
    rng = np.random.default_rng(0)
    study = finished_study(rng)
    ours = algorithms.make_pruner({"name": "median", "n_warmup_steps": 3}, 12)
    optunas = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=3)
    reads = []
    real_get_trials = optuna.Study.get_trials

    def counted(self, *args, **kwargs):
        reads.append(1)
        return real_get_trials(self, *args, **kwargs)

    monkeypatch.setattr(optuna.Study, "get_trials", counted)
    decisions = {"ours": [], "optuna": []}
    for _ in range(6):  # running trials, some above the median, some below
        trial = study.ask()
        offset = rng.random() * 1.5
        for step in range(12):
            trial.report(float(offset + 1.0 - step * 0.05), step)
            frozen = study._storage.get_trial(trial._trial_id)
            decisions["ours"].append(ours.prune(study, frozen))
            before = len(reads)
            decisions["optuna"].append(optunas.prune(study, frozen))
            del reads[before:]  # count ours only
        study.tell(trial, float(offset))
    assert decisions["ours"] == decisions["optuna"]
    assert True in decisions["ours"] and False in decisions["ours"]
    assert len(reads) == 6  # once per trial (Optuna's: 72, once per epoch)


def test_a_trial_completed_elsewhere_counts_after_max_age(monkeypatch):
    """Within MAX_AGE_S a running trial keeps its read; after it, a newly completed trial
    (another worker's) moves the median."""
    study = optuna.create_study(direction="minimize")
    pruner = algorithms.make_pruner({"name": "median", "n_startup_trials": 1}, 10)
    done = study.ask()
    done.report(1.0, 5)
    study.tell(done, 1.0)
    running = study.ask()
    running.report(2.0, 5)

    def decide():
        return pruner.prune(study, study._storage.get_trial(running._trial_id))

    assert decide()  # 2.0 is worse than the only completed trial's 1.0
    for value in (3.0, 4.0):  # completed meanwhile: the median becomes 3.0
        other = study.ask()
        other.report(value, 5)
        study.tell(other, value)
    assert decide()  # still the old read
    monkeypatch.setattr(algorithms.MedianPruner, "MAX_AGE_S", 0.0)
    assert not decide()  # 2.0 is better than the median of 1, 3 and 4
