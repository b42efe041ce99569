"""The next trial asked for while one trains, its program compiled beside (hpo.search.ahead)."""

from __future__ import annotations

import sqlite3
import threading

import optuna
import pytest
from conftest import run_cli, tiny_study
from optuna.trial import TrialState

from hpo.data import builtin
from hpo.search.ahead import AskAhead
from hpo.search.budget import Budget, finished, over_budget
from hpo.search.local_workers import Recycler
from hpo.study import studyfile
from hpo.train import programs
from hpo.train.objective import Objective

# Structures that differ (layers, units, loss), so most trials need a program of their own.
SPACE = """
layers = { int = [1, 2] }
units = { choices = [8, 16] }
loss = { choices = ["mse", "mae"] }
learning_rate = { float = [0.003, 0.01], log = true }
batch_size = 16
"""


def _search(capsys, path, storage: str, monkeypatch, ahead: str) -> list[tuple]:
    monkeypatch.setenv("HPO_ASK_AHEAD", ahead)
    args = ("optimize", str(path), "--trials", "6", "--seed", "3", "--storage", storage)
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    study = optuna.load_study(study_name="tiny", storage=storage)
    return [(t.number, t.state, t.params, t.value, t.user_attrs["history"]) for t in study.trials]


def test_trials_asked_ahead_train_exactly_as_one_after_another(workdir, capsys, monkeypatch):
    """The same seeded search (random sampling: the same parameters either way) with and
    without asking ahead: the same curves and values to the last bit, the exact budget, every
    trial's heartbeat beaten; and the programs were compiled ahead, on their thread."""
    monkeypatch.setenv("HPO_ENGINE", "fused")
    compiled: list[str] = []  # the threads that compiled a program ahead
    compile_ahead = programs.compile_ahead

    def spy(model, *, cache, **options):
        if programs.program_key(model, **options) not in cache.programs:
            compiled.append(threading.current_thread().name)
        compile_ahead(model, cache=cache, **options)

    monkeypatch.setattr(programs, "compile_ahead", spy)
    path = tiny_study(workdir, "boston_housing", epochs=4, validation="kfold:2", space=SPACE)
    one_by_one = _search(capsys, path, "sqlite:///one.db", monkeypatch, "0")
    assert compiled == []
    asked_ahead = _search(capsys, path, "sqlite:///ahead.db", monkeypatch, "1")
    assert asked_ahead == one_by_one
    assert [t[1] for t in asked_ahead] == [TrialState.COMPLETE] * 6  # none over the budget
    assert compiled and set(compiled) == {"hpo-compile-ahead"}
    with sqlite3.connect("ahead.db") as db:
        beating = {row[0] for row in db.execute("SELECT trial_id FROM trial_heartbeats")}
    assert len(beating) == 6


def test_ctrl_c_fails_the_trial_asked_ahead_without_counting_it(workdir, monkeypatch):
    """Ctrl-C during trial 0: trial 1, asked for when trial 0's program was ready, never
    trained; close() fails it as interrupted, and neither counts towards the budget."""
    monkeypatch.setenv("HPO_ENGINE", "fused")
    path = tiny_study(workdir, "boston_housing", epochs=4, validation="kfold:2", space=SPACE)
    spec = studyfile.load(str(path))
    checks = []

    def check_interrupt():
        checks.append(1)
        if len(checks) == 2:  # after epoch 2 of trial 0
            raise KeyboardInterrupt

    objective = Objective(
        spec, builtin.load("boston_housing", None), check_interrupt=check_interrupt
    )
    study = optuna.create_study()
    ahead = AskAhead(study, objective, Budget(3), [])
    with pytest.raises(KeyboardInterrupt):
        ahead.run_one()
    assert ahead.pending is not None and ahead.pending.trial.number == 1
    ahead.close()
    running, waiting = study.trials
    assert running.state == waiting.state == TrialState.FAIL
    assert running.user_attrs["fail_reason"] == waiting.user_attrs["fail_reason"] == "interrupted"
    assert len(running.user_attrs["history"]["val_mae"]) == 2
    assert waiting.intermediate_values == {} and "history" not in waiting.user_attrs
    assert finished(study) == 0  # a resumed study runs both slots again


def test_no_trial_is_asked_ahead_past_the_budget_or_when_the_worker_stops(workdir, monkeypatch):
    monkeypatch.setenv("HPO_ENGINE", "fused")
    path = tiny_study(workdir, "boston_housing", epochs=2, validation="kfold:2", space=SPACE)
    spec = studyfile.load(str(path))
    objective = Objective(spec, builtin.load("boston_housing", None))
    study = optuna.create_study()
    ahead = AskAhead(study, objective, Budget(1), [])
    assert ahead.run_one() == 1  # the budget's last slot: nothing asked beside it
    assert ahead.pending is None and len(study.trials) == 1
    assert ahead.run_one() == 0  # the budget is taken: the trial asked fails as over budget
    assert over_budget(study.trials[1])
    stopping = AskAhead(study, objective, Budget(3), [], may_ask=lambda: False)
    assert stopping.run_one() == 1
    assert stopping.pending is None and len(study.trials) == 3


def test_a_worker_recycled_after_n_trials_asks_for_none_beyond_them():
    every_two = Recycler(2)
    every_two.add_trials(1)
    assert every_two.due() is None
    assert every_two.due(running=1) == "after 1 trial"  # the running trial is its last
