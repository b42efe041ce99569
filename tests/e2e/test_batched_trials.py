"""Several trials trained side by side in one model (--batch-trials): each as it trains alone."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import replace

import numpy as np
import optuna
import pytest
from conftest import run_cli, tiny_study
from optuna.trial import TrialState
from test_engine import PARAMS, fused_trainer, regression_data

from hpo.backend import import_keras, set_random_seed
from hpo.data import builtin
from hpo.data.spec import Validation
from hpo.search import batched
from hpo.search.budget import Budget, over_budget
from hpo.study import studyfile
from hpo.train import engine
from hpo.train import model as model_lib
from hpo.train.objective import Objective

keras = import_keras()
RATES = [0.02, 0.005, 0.001]  # each stacked trial's learning rate


def _data(folds: int):
    prepared = regression_data()
    to_targets = lambda v: model_lib.targets(v, "regression", "mse", 1)  # noqa: E731
    if folds == 1:
        x, y = prepared.x_train, prepared.y_train
        return prepared, (x[:70], to_targets(y[:70])), (x[70:], to_targets(y[70:]))
    splits = list(Validation.parse(f"kfold:{folds}").splits(prepared.x_train, prepared.y_train))
    (x, y), (x_val, y_val) = model_lib.stack_folds(splits)
    return prepared, (x, to_targets(y)), (x_val, to_targets(y_val))


@pytest.mark.jax_too
@pytest.mark.parametrize(
    ("optimizer", "folds"),
    [(name, 1) for name in engine.STACKABLE_OPTIMIZERS] + [("adam", 3)],
)
def test_stacked_trials_train_exactly_as_each_trial_alone(optimizer, folds):
    """Three trials of one structure and three learning rates, trained as one model: each
    slot's weights, logs and validation predictions are those of its trial trained alone
    from the same weights on the same batches."""
    prepared, train, val = _data(folds)
    params = {**PARAMS, "optimizer": optimizer}
    set_random_seed(1)
    stacked = model_lib.build(params, prepared, folds=folds, trials=len(RATES))
    alone = []
    for t, rate in enumerate(RATES):
        model = model_lib.build({**params, "learning_rate": rate}, prepared, folds=folds)
        slots = slice(t * folds, (t + 1) * folds)
        model.set_weights([w[slots] if folds > 1 else w[t] for w in stacked.get_weights()])
        alone.append(model)
    rates = {"learning_rate": RATES, "dropout": [0.0] * len(RATES)}
    together = fused_trainer(stacked, train, val, trials=len(RATES), rates=rates)
    apart = [fused_trainer(model, train, val) for model in alone]
    for _ in range(3):
        logs = together.run_epoch_each()
        each = [t.run_epoch() for t in apart]
    for t, trainer in enumerate(apart):
        assert logs[t].keys() == each[t].keys()
        for key, value in each[t].items():
            assert logs[t][key] == pytest.approx(value, rel=1e-4), key
        np.testing.assert_allclose(
            together.trial_predictions[t], trainer.val_predictions, rtol=1e-4, atol=1e-5
        )
    together.write_back()
    for t, trainer in enumerate(apart):
        trainer.write_back()
        slots = slice(t * folds, (t + 1) * folds)
        for w_stacked, w_alone in zip(stacked.get_weights(), alone[t].get_weights(), strict=True):
            got = w_stacked[slots] if folds > 1 else w_stacked[t]
            np.testing.assert_allclose(got, w_alone, rtol=1e-4, atol=1e-5)
    # The learning rates differ enough for the trials to differ.
    assert logs[0]["loss"] != pytest.approx(logs[2]["loss"], rel=1e-3)


@pytest.mark.jax_too
def test_each_stacked_trial_drops_out_at_its_own_rate():
    """A trial stacked beside one with dropout trains exactly as it does alone without it;
    the one with dropout does not."""
    prepared, train, val = _data(1)
    params = {**PARAMS, "dropout": 0.5}
    set_random_seed(2)
    stacked = model_lib.build(params, prepared, trials=2)
    stacked.set_weights([np.stack([w[0], w[0]]) for w in stacked.get_weights()])  # alike
    plain = model_lib.build({**params, "dropout": 0.0}, prepared)
    plain.set_weights([w[0] for w in stacked.get_weights()])
    rates = {"learning_rate": [0.01, 0.01], "dropout": [0.0, 0.5]}
    together = fused_trainer(stacked, train, val, trials=2, rates=rates)
    alone = fused_trainer(plain, train, val)
    for _ in range(3):
        logs = together.run_epoch_each()
        solo = alone.run_epoch()
    assert logs[0]["loss"] == pytest.approx(solo["loss"], rel=1e-4)
    assert logs[0]["val_loss"] == pytest.approx(solo["val_loss"], rel=1e-4)
    # Both slots started from the same weights: the gap is slot 1's dropout.
    assert logs[1]["loss"] != pytest.approx(solo["loss"], rel=1e-3)


def test_stacked_trials_need_each_trials_rates():
    prepared, train, val = _data(1)
    stacked = model_lib.build(PARAMS, prepared, trials=2)
    with pytest.raises(ValueError, match="2 learning and dropout rates"):
        fused_trainer(stacked, train, val, trials=2)


# --- a batch of trials through the runner's ask-and-tell (hpo.search.batched) ----------------

SPACE = """
layers = 1
units = 16
loss = "mse"
optimizer = "sgd"
learning_rate = { float = [0.001, 10.0], log = true }
batch_size = 16
dropout = { float = [0.0, 0.3] }
"""

SAFE_SPACE = SPACE.replace("10.0", "0.01")  # no trial with a NaN loss


class PruneAt(optuna.pruners.BasePruner):
    """Prunes trial `number` at `epoch`; no other. Notes the threads that asked."""

    def __init__(self, number: int, epoch: int) -> None:
        self.number, self.epoch = number, epoch
        self.threads: set[str] = set()

    def prune(self, study, trial) -> bool:
        self.threads.add(threading.current_thread().name)
        return trial.number == self.number and trial.last_step == self.epoch


def _batch(workdir, study, enqueued, epochs=5, **objective_args):
    """Run the enqueued trials as one batch; (trials run, the trials told, in order)."""
    path = tiny_study(workdir, "boston_housing", epochs=epochs, validation="kfold:2", space=SPACE)
    spec = replace(studyfile.load(str(path)), seed=0)
    prepared = builtin.load("boston_housing", None, spec.num_words)
    for params in enqueued:
        study.enqueue_trial(params)
    objective = Objective(spec, prepared, **objective_args)
    told = []
    budget = Budget(len(enqueued))
    ran = batched.run_batch(study, objective, 8, budget, [lambda s, t: told.append(t.number)])
    return ran, told


@pytest.mark.jax_too
def test_a_batch_trains_each_trial_in_its_slot_and_tells_each_as_it_ends(workdir, monkeypatch):
    """Three trials of one structure: trained stacked, trial 1 pruned at epoch 2 on its own,
    trial 2 failed by its NaN loss (SGD at a learning rate of 10) while the others train on."""
    monkeypatch.setenv("HPO_ENGINE", "fused")
    enqueued = [
        {"learning_rate": 0.01, "dropout": 0.1},
        {"learning_rate": 0.002, "dropout": 0.2},
        {"learning_rate": 10.0, "dropout": 0.1},
    ]
    pruner = PruneAt(1, 2)
    study = optuna.create_study(pruner=pruner)
    ran, told = _batch(workdir, study, enqueued)
    assert ran == 3  # the budget's 3, not the 8 asked for
    first, pruned, failed = study.trials
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]
    # Told as each ended: the NaN at its first epoch, the pruned at its second, then the rest.
    assert told == [2, 1, 0]
    assert all(t.user_attrs["worker"]["stacked"] == 3 for t in study.trials)
    curve = first.user_attrs["history"]["val_mae"]
    assert len(curve) == 5 and first.value == min(curve)
    assert first.user_attrs["best_epoch"] == 1 + int(np.argmin(curve))
    assert list(pruned.intermediate_values) == [1, 2]
    assert pruner.threads == {"hpo-report"}  # told beside the next epoch (ReportAhead)
    assert "became" in failed.user_attrs["fail_reason"]
    # The NaN slot did not spoil the others: their curves are finite and learned.
    loss = first.user_attrs["history"]["loss"]
    assert all(np.isfinite(loss)) and loss[-1] < loss[0]


def test_trials_of_another_structure_train_alone(workdir, monkeypatch):
    monkeypatch.setenv("HPO_ENGINE", "fused")
    enqueued = [
        {"learning_rate": 0.01, "dropout": 0.0},
        {"learning_rate": 0.005, "dropout": 0.0},
        {"learning_rate": 0.005, "dropout": 0.1},  # dropout: another structure
    ]
    study = optuna.create_study()
    _batch(workdir, study, enqueued)
    assert [t.user_attrs["worker"].get("stacked") for t in study.trials] == [2, 2, None]
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    key = batched.stack_key
    assert key({"units": 8, "learning_rate": 0.1, "dropout": 0.2}) == key(
        {"units": 8, "learning_rate": 0.3, "dropout": 0.1}
    )
    assert key({"units": 8, "dropout": 0.0}) != key({"units": 16, "dropout": 0.0})


def test_a_trial_asked_after_another_worker_took_the_last_slot_never_runs(workdir, monkeypatch):
    """Between counting the free slots and asking, another worker may take one: the trial
    asked for it fails as "over budget" (it never ran, it does not count) and the batch is
    what the budget admits."""
    monkeypatch.setenv("HPO_ENGINE", "fused")
    monkeypatch.setattr(Budget, "free_slots", lambda self, study: 2)  # the race, staged
    study = optuna.create_study()
    path = tiny_study(workdir, "boston_housing", epochs=2, validation="kfold:2", space=SAFE_SPACE)
    spec = studyfile.load(str(path))
    objective = Objective(spec, builtin.load("boston_housing", None, spec.num_words))
    assert batched.run_batch(study, objective, 4, Budget(1), []) == 1
    ran, refused = study.trials
    assert ran.state == TrialState.COMPLETE
    assert refused.state == TrialState.FAIL and over_budget(refused)


def test_ctrl_c_fails_every_trial_of_the_batch_as_interrupted_keeping_its_epochs(
    workdir, monkeypatch
):
    monkeypatch.setenv("HPO_ENGINE", "fused")
    checks = []

    def check_interrupt():
        checks.append(1)
        if len(checks) == 2:  # during epoch 2
            raise KeyboardInterrupt

    study = optuna.create_study()
    enqueued = [{"learning_rate": 0.01, "dropout": 0.0}, {"learning_rate": 0.003, "dropout": 0.0}]
    with pytest.raises(KeyboardInterrupt):
        _batch(workdir, study, enqueued, check_interrupt=check_interrupt)
    for trial in study.trials:  # failed, not counted: a resumed study runs them again
        assert trial.state == TrialState.FAIL
        assert trial.user_attrs["fail_reason"] == "interrupted"
        assert len(trial.user_attrs["history"]["val_mae"]) == 2


def test_batch_trials_option_keeps_the_exact_budget_and_beats_each_trials_heartbeat(
    workdir, capsys
):
    """--trials 5 --batch-trials 4: a batch of 4, then one trial (the budget's last slot)."""
    path = tiny_study(workdir, "boston_housing", epochs=3, validation="kfold:2", space=SAFE_SPACE)
    args = ("optimize", str(path), "--trials", "5", "--batch-trials", "4")
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    study = optuna.load_study(study_name="tiny", storage="sqlite:///storage/hpo.db")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 5  # none over budget
    stacked = [t.user_attrs["worker"].get("stacked") for t in study.trials]
    assert stacked == [4, 4, 4, 4, None]
    with sqlite3.connect("storage/hpo.db") as db:  # each trial beat its own heartbeat
        beating = {row[0] for row in db.execute("SELECT trial_id FROM trial_heartbeats")}
    assert beating == {t._trial_id for t in study.trials}
    for bad in ("0", "two"):
        code, _, err = run_cli(capsys, "optimize", str(path), "--batch-trials", bad)
        assert code != 0
        assert "--batch-trials must be auto or a number of at least 1" in err + out
        assert "Traceback" not in err


def test_text_on_word_ids_runs_one_trial_at_a_time_and_says_so(workdir, capsys, monkeypatch):
    monkeypatch.setenv("HPO_FIRST_LAYER", "ids")
    path = tiny_study(workdir, "imdb", epochs=2)
    code, out, err = run_cli(capsys, "optimize", str(path), "--trials", "2", "--batch-trials", "3")
    assert code == 0, err
    assert "note: --batch-trials 3: text trains its first layer on word ids" in out
    study = optuna.load_study(study_name="tiny", storage="sqlite:///storage/hpo.db")
    assert len(study.trials) == 2  # asked one at a time: none beyond the budget
    assert all("stacked" not in t.user_attrs["worker"] for t in study.trials)
