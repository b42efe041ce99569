"""The fused training loop (hpo/train/engine.py) and the stacked k-fold model: same training as
Keras' fit and as k separate models, with pruning, NaN, Ctrl-C and seeds as on the fit path."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace

import numpy as np
import optuna
import pytest
from conftest import tiny_study
from optuna.trial import TrialState

from hpo.backend import import_keras, set_random_seed
from hpo.data import builtin
from hpo.data.arrays import Prepared
from hpo.data.spec import Validation
from hpo.study import studyfile
from hpo.train import compiled, engine, predictions
from hpo.train import model as model_lib
from hpo.train.objective import Objective
from hpo.train.reporting import EpochReporter

keras = import_keras()
PARAMS = {
    "layers": 2,
    "units": 16,
    "activation": "relu",
    "loss": "mse",
    "optimizer": "adam",
    "learning_rate": 0.01,
    "batch_size": 16,
    "dropout": 0.0,
}


def regression_data(rows: int = 90, features: int = 5) -> Prepared:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, features)).astype(np.float32)
    y = (x @ rng.normal(size=features) + rng.normal(0, 0.1, rows)).astype(np.float32)
    return Prepared("synthetic", "regression", 1, 1.0, features, False, x, y, x[:5], y[:5])


def fused_trainer(model, train, val, **options) -> engine.FusedTrainer:
    """A regression trainer, seeded: models of as many training rows get the same shuffles."""
    return engine.FusedTrainer(
        model,
        loss="mse",
        task="regression",
        train=train,
        validation=val,
        batch_size=16,
        validation_batch_size=1024,
        seed=5,
        **options,
    )


def test_stacked_folds_train_exactly_as_separate_models():
    """Fold f's weights of the stacked model get the gradient fold f's model gets alone."""
    prepared = regression_data()
    folds = list(Validation.parse("kfold:3").splits(prepared.x_train, prepared.y_train))
    (x, y), (x_val, y_val) = model_lib.stack_folds(folds)
    to_targets = lambda v: model_lib.targets(v, "regression", "mse", 1)  # noqa: E731
    set_random_seed(1)
    stacked = model_lib.build(PARAMS, prepared, folds=3)
    alone = [model_lib.build(PARAMS, prepared) for _ in folds]
    for f, model in enumerate(alone):  # start from the same weights
        model.set_weights([w[f] for w in stacked.get_weights()])

    together = fused_trainer(stacked, (x, to_targets(y)), (x_val, to_targets(y_val)))
    apart = [
        fused_trainer(model, (fx, to_targets(fy)), (vx, to_targets(vy)))
        for model, ((fx, fy), (vx, vy)) in zip(alone, folds, strict=True)
    ]
    for _ in range(4):
        logs = together.run_epoch()
        fold_logs = [t.run_epoch() for t in apart]
    # The stacked model's logs are the folds' means …
    for key in ("loss", "mae", "val_mae", "val_mse"):
        assert logs[key] == pytest.approx(np.mean([f[key] for f in fold_logs]), rel=1e-4)
    # … and its weights are the separate models' weights.
    together.write_back()
    for t in apart:
        t.write_back()
    for f, model in enumerate(alone):
        for w_stacked, w_alone in zip(stacked.get_weights(), model.get_weights(), strict=True):
            np.testing.assert_allclose(w_stacked[f], w_alone, rtol=1e-4, atol=1e-5)

    # The kept validation predictions are out of fold: row r is predicted by the model of the
    # fold that held r out (and never trained on it), in the order of the training rows.
    kept = predictions.rows_in_order(together.val_predictions)
    rows = Validation.parse("kfold:3").kept_rows(len(prepared.y_train))
    assert kept.shape == (90, 1) and rows == slice(0, 90)
    held_out = np.concatenate([t.val_predictions for t in apart])
    np.testing.assert_allclose(kept, held_out, rtol=1e-4, atol=1e-5)
    pairs = zip(alone, folds, strict=True)
    by_fold = np.concatenate([m.predict(vx, verbose=0) for m, (_, (vx, _)) in pairs])
    np.testing.assert_allclose(kept, by_fold, rtol=1e-4, atol=1e-5)
    targets = np.concatenate([vy for _, (_, vy) in folds])
    np.testing.assert_array_equal(prepared.y_train[rows], targets)
    for f, ((fx, _), _) in enumerate(folds):  # fold f's model never saw fold f's rows
        held = prepared.x_train[f * 30 : (f + 1) * 30]
        assert not (fx[:, None, :] == held[None]).all(axis=-1).any()


@pytest.mark.parametrize(
    ("optimizer", "loss", "validating"),
    [("adam", "mae", True), ("rmsprop", "mse", True), ("adam", "mse", False)],
)
def test_fused_steps_are_keras_fit_steps(optimizer, loss, validating):
    """Given the same batches, one fused epoch updates the weights exactly as model.fit does
    (the last, partial batch included): the loops differ only in their random streams.
    Without validation rows (analyze's retrain) the same, with no validation logs."""
    prepared = regression_data(rows=90)
    params = {**PARAMS, "optimizer": optimizer, "loss": loss}
    x, y = prepared.x_train[:70], model_lib.targets(prepared.y_train[:70], "regression", loss, 1)
    x_val, y_val = prepared.x_train[70:], prepared.y_train[70:, None]
    set_random_seed(2)
    by_fit = model_lib.build(params, prepared)
    fused = model_lib.build(params, prepared)
    fused.set_weights(by_fit.get_weights())
    by_fit.fit(x, y, batch_size=16, shuffle=False, epochs=3, verbose=0)  # 4 batches of 16 + 6
    trainer = engine.FusedTrainer(
        fused,
        loss=loss,
        task="regression",
        train=(x, y),
        validation=(x_val, y_val) if validating else None,
        batch_size=16,
        validation_batch_size=256,
        shuffle=False,
    )
    logs = trainer.run_epoch()
    assert ("val_loss" in logs) == validating
    trainer.fit(2)
    for a, b in zip(by_fit.get_weights(), fused.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_long_trial_compiles_with_xla_and_trains_the_same_weights():
    """TensorFlow compiles a trial of many steps with XLA (engine.use_xla): the same steps."""
    prepared = regression_data(rows=90)
    y = model_lib.targets(prepared.y_train, "regression", "mse", 1)
    models = []
    for epochs in (None, 10**6):  # no hint: the graph executor; a long trial: XLA
        set_random_seed(3)
        model = model_lib.build(PARAMS, prepared)
        trainer = engine.FusedTrainer(
            model,
            loss="mse",
            task="regression",
            train=(prepared.x_train[:70], y[:70]),
            validation=(prepared.x_train[70:], y[70:]),
            batch_size=16,
            validation_batch_size=256,
            seed=0,
            epochs=epochs,
        )
        assert trainer.xla == (epochs is not None)
        trainer.fit(3)
        models.append(model)
    for a, b in zip(models[0].get_weights(), models[1].get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert engine.use_xla("dense", 303, 16, 200)  # a Boston trial
    assert not engine.use_xla("dense", 303, 64, 20)
    assert engine.use_xla("ids", 100, 32, 2)


def test_later_epochs_call_the_traced_program_and_train_the_same(monkeypatch):
    """After a load's first epoch TensorFlow calls the program that epoch traced, without
    tf.function's lookup: the same logs and weights as looking it up every epoch. A new load
    (a later trial in the same program) looks it up again."""
    prepared = regression_data(rows=90)
    x, y = prepared.x_train, model_lib.targets(prepared.y_train, "regression", "mse", 1)
    runs = []
    for look_up_each_epoch in (False, True):
        set_random_seed(3)
        model = model_lib.build({**PARAMS, "dropout": 0.2}, prepared)
        trainer = fused_trainer(model, (x[:70], y[:70]), (x[70:], y[70:]), epochs=10**6)
        logs = [trainer.run_epoch()]
        with monkeypatch.context() as patch:
            if not look_up_each_epoch and keras.backend.backend() == "tensorflow":

                def looked_up(*args, **kwargs):
                    raise AssertionError("a later epoch went through tf.function's lookup")

                patch.setattr(type(trainer._epoch), "__call__", looked_up)
            for _ in range(3):
                if look_up_each_epoch:
                    trainer._traced = None
                logs.append(trainer.run_epoch())
        runs.append((logs, model.get_weights()))
    (fast_logs, fast_weights), (slow_logs, slow_weights) = runs
    assert fast_logs == slow_logs
    for a, b in zip(fast_weights, slow_weights, strict=True):
        np.testing.assert_array_equal(a, b)
    trainer.load(model, (x[:70], y[:70]), (x[70:], y[70:]), seed=1)
    assert trainer._traced is None


def run_trial(spec, prepared, params, monkeypatch, engine_name, **objective_args):
    monkeypatch.setenv("HPO_ENGINE", engine_name)
    study = optuna.create_study(direction=spec.direction)
    study.enqueue_trial(params)
    objective = Objective(spec, prepared, **objective_args)
    assert objective.engine == engine_name
    study.optimize(objective, n_trials=1, catch=())
    return study.trials[0]


FIXED_SPACES = {
    "imdb": """
layers = 2
units = 16
loss = "binary_crossentropy"
learning_rate = 0.005
batch_size = 32
""",
    "boston_housing": """
layers = 2
units = 32
loss = "mse"
optimizer = "adam"
learning_rate = 0.02
batch_size = 16
""",
}


@pytest.mark.parametrize(
    ("dataset", "validation", "epochs"),
    [("imdb", "first:100", 10), ("boston_housing", "kfold:3", 20)],
)
def test_fused_and_fit_learn_the_same_curves(workdir, monkeypatch, dataset, validation, epochs):
    """One configuration, one seed, both loops: what a study records must not depend on which
    loop ran the trial (holdout: one model; k-fold: fit's k models vs the fused stacked one).
    Their initial draws, shuffles and dropout streams differ, so the curves agree within a
    tolerance, not bit for bit."""
    path = tiny_study(
        workdir, dataset, epochs=epochs, validation=validation, space=FIXED_SPACES[dataset]
    )
    spec = replace(studyfile.load(str(path)), seed=3)
    prepared = builtin.load(dataset, None, spec.num_words)
    fit = run_trial(spec, prepared, {}, monkeypatch, "fit")
    fused = run_trial(spec, prepared, {}, monkeypatch, "fused")
    assert fit.user_attrs["worker"]["engine"] == "fit"
    assert fused.user_attrs["worker"]["engine"] == "fused"
    a, b = fit.user_attrs["history"], fused.user_attrs["history"]
    assert set(a) == set(b) and len(a["loss"]) == len(b["loss"]) == epochs
    if dataset == "boston_housing":  # the final loss and MAE within 10 %, and both learned
        assert b["loss"][-1] == pytest.approx(a["loss"][-1], rel=0.1)
        assert b["val_mae"][-1] == pytest.approx(a["val_mae"][-1], rel=0.1)
        assert min(b["val_mae"]) == pytest.approx(min(a["val_mae"]), rel=0.1)
        assert max(a["loss"][-1], b["loss"][-1]) < min(a["loss"][0], b["loss"][0]) / 10
    else:  # the same accuracy within 3 of the 100 validation reviews, the same final loss
        assert abs(b["val_accuracy"][-1] - a["val_accuracy"][-1]) <= 0.03
        assert abs(b["loss"][-1] - a["loss"][-1]) <= 0.02
        assert min(a["val_accuracy"][-1], b["val_accuracy"][-1]) > 0.9


def test_fused_trial_is_pruned_per_epoch(workdir, monkeypatch):
    path = tiny_study(workdir, epochs=8)
    spec = studyfile.load(str(path))
    prepared = builtin.load("imdb", None, spec.num_words)
    monkeypatch.setenv("HPO_ENGINE", "fused")
    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.ThresholdPruner(upper=-1.0)
    )
    study.optimize(Objective(spec, prepared), n_trials=1)
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED
    # Any accuracy is above -1: pruned at its first epoch, one value reported, the curve kept.
    assert list(trial.intermediate_values) == [1]
    assert len(trial.user_attrs["history"]["val_accuracy"]) == 1


class _PruneAt(optuna.pruners.BasePruner):
    """Prunes from epoch `step` on, slowly, noting the threads that asked."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.threads: set[tuple[str, bool]] = set()

    def prune(self, study, trial) -> bool:
        thread = threading.current_thread()
        self.threads.add((thread.name, thread.daemon))
        time.sleep(0.2)  # slower than an epoch: the next epoch trains before the answer
        return trial.last_step >= self.step


def test_fused_epochs_are_told_on_a_thread_and_pruned_where_the_pruner_said(workdir, monkeypatch):
    """ReportAhead: epoch e's storage calls run on a thread while epoch e+1 trains; a trial
    pruned at epoch 3 still ends at epoch 3, its curve and reported values alike."""
    path = tiny_study(workdir, epochs=8)
    spec = studyfile.load(str(path))
    prepared = builtin.load("imdb", None, spec.num_words)
    monkeypatch.setenv("HPO_ENGINE", "fused")
    pruner = _PruneAt(3)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    study.optimize(Objective(spec, prepared), n_trials=1)
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED
    assert list(trial.intermediate_values) == [1, 2, 3]
    assert {len(curve) for curve in trial.user_attrs["history"].values()} == {3}
    # One daemon thread: a process never waits for it at exit.
    assert pruner.threads == {("hpo-report", True)}


def test_fused_trial_interrupted_mid_epoch_keeps_every_epoch_told(workdir, monkeypatch):
    """Ctrl-C while epoch 4 trains: epoch 3, still being told on the thread, is stored before
    the trial ends (a slow storage makes it the last to land)."""
    path = tiny_study(workdir, epochs=8)
    spec = studyfile.load(str(path))
    prepared = builtin.load("imdb", None, spec.num_words)
    monkeypatch.setenv("HPO_ENGINE", "fused")
    run_epoch = engine.FusedTrainer.run_epoch
    calls = []

    def interrupted_at_4(self):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return run_epoch(self)

    monkeypatch.setattr(engine.FusedTrainer, "run_epoch", interrupted_at_4)
    tell = EpochReporter.tell

    def slow_tell(self, epoch, value):
        time.sleep(0.3)
        return tell(self, epoch, value)

    monkeypatch.setattr(EpochReporter, "tell", slow_tell)
    study = optuna.create_study(direction="maximize", pruner=_PruneAt(100))
    with pytest.raises(KeyboardInterrupt):
        study.optimize(Objective(spec, prepared), n_trials=1)
    (trial,) = study.trials
    assert trial.state == TrialState.FAIL
    assert list(trial.intermediate_values) == [1, 2, 3]
    assert len(trial.user_attrs["history"]["val_accuracy"]) == 3


def test_fused_nan_fails_the_trial_with_its_reason(workdir, monkeypatch):
    space = FIXED_SPACES["boston_housing"].replace("0.02", "{ choices = [10.0, 0.01] }")
    space = space.replace('"adam"', '"sgd"')
    path = tiny_study(workdir, "boston_housing", epochs=5, validation="kfold:2", space=space)
    spec = studyfile.load(str(path))
    prepared = builtin.load("boston_housing", None, spec.num_words)
    monkeypatch.setenv("HPO_ENGINE", "fused")
    from hpo.train.reporting import TrialFailed

    study = optuna.create_study()
    study.enqueue_trial({"learning_rate": 10.0})
    study.optimize(Objective(spec, prepared), n_trials=1, catch=(TrialFailed,))
    (trial,) = study.trials
    assert trial.state == TrialState.FAIL
    assert "became" in trial.user_attrs["fail_reason"]


def test_fused_ctrl_c_stops_at_the_end_of_an_epoch(workdir, monkeypatch):
    path = tiny_study(workdir, "boston_housing", epochs=10, validation="kfold:2")
    spec = studyfile.load(str(path))
    prepared = builtin.load("boston_housing", None, spec.num_words)
    monkeypatch.setenv("HPO_ENGINE", "fused")
    epochs_seen = []

    def check_interrupt():
        epochs_seen.append(1)
        if len(epochs_seen) == 3:  # Ctrl-C arrived during epoch 3
            raise KeyboardInterrupt

    study = optuna.create_study()
    with pytest.raises(KeyboardInterrupt):
        study.optimize(Objective(spec, prepared, check_interrupt=check_interrupt), n_trials=1)
    (trial,) = study.trials
    assert trial.user_attrs["fail_reason"] == "interrupted"
    assert len(trial.user_attrs["history"]["val_mae"]) == 3  # whole epochs, none lost


def test_fused_trials_reproduce_with_a_seed(workdir, monkeypatch):
    space = FIXED_SPACES["boston_housing"] + "dropout = 0.2\n"  # dropout draws are seeded too
    path = tiny_study(workdir, "boston_housing", epochs=4, validation="kfold:2", space=space)
    spec = replace(studyfile.load(str(path)), seed=11)
    prepared = builtin.load("boston_housing", None, spec.num_words)
    first = run_trial(spec, prepared, {}, monkeypatch, "fused")
    again = run_trial(spec, prepared, {}, monkeypatch, "fused")
    assert first.user_attrs["history"] == again.user_attrs["history"]


@pytest.mark.parametrize("dataset", ["imdb", "mnist"])
def test_kfold_on_packed_text_and_pixels(workdir, monkeypatch, dataset):
    """The stacked k-fold model takes what the first layer prepares (bits, pixels /255)."""
    space = "layers = 1\nunits = 16\nbatch_size = 32\nlearning_rate = 0.01\n"
    path = tiny_study(workdir, dataset, epochs=3, validation="kfold:2", space=space)
    spec = studyfile.load(str(path))
    trial = run_trial(spec, builtin.load(dataset, None, spec.num_words), {}, monkeypatch, "fused")
    assert trial.state == TrialState.COMPLETE
    assert len(trial.user_attrs["history"]["val_accuracy"]) == 3
    assert trial.value > 0.5  # the tiny data is learnable in 3 epochs


def test_engine_choice(monkeypatch):
    monkeypatch.delenv("HPO_ENGINE", raising=False)
    assert keras.backend.backend() in ("tensorflow", "jax")  # what the suite runs under
    assert engine.choose() == "fused"
    monkeypatch.setenv("HPO_ENGINE", "fit")
    assert engine.choose() == "fit"
    monkeypatch.setenv("HPO_ENGINE", "fast")
    with pytest.raises(Exception, match="expected auto, fused or fit"):
        engine.choose()


def test_kept_predictions_are_the_smoothed_best_epochs_and_a_failing_store_costs_only_them(
    workdir, monkeypatch, caplog
):
    """A multiclass holdout trial ranked on a 3-epoch mean keeps the predictions of the epoch
    its best window centres on (K outputs a row); a store that cannot write is a warning."""
    space = "layers = 1\nunits = 16\nbatch_size = 32\nlearning_rate = 0.01\n"
    path = tiny_study(workdir, "mnist", epochs=6, space=space)
    spec = replace(studyfile.load(str(path)), smooth_epochs=3, seed=0)
    prepared = builtin.load("mnist", None, spec.num_words)
    store = optuna.artifacts.FileSystemArtifactStore(str(workdir / "artifacts"))
    (workdir / "artifacts").mkdir()
    trial = run_trial(spec, prepared, {}, monkeypatch, "fused", artifact_store=store)
    meta = trial.user_attrs[predictions.ATTR]
    assert meta["epoch"] == trial.user_attrs["best_epoch"] and meta["validation"] == "first:100"
    kept = predictions.fetch(trial, store)
    assert kept.shape == (100, 10)
    accuracy = (kept.argmax(axis=1) == prepared.y_train[:100]).mean()
    raw = trial.user_attrs["history"]["val_accuracy"][meta["epoch"] - 1]
    assert accuracy == pytest.approx(raw, abs=0.011)  # float16 may move one row

    class FullDisk:
        def write(self, artifact_id, content):
            raise OSError(28, "No space left on device")

    with caplog.at_level(logging.WARNING, logger="hpo.objective"):
        failed = run_trial(spec, prepared, {}, monkeypatch, "fused", artifact_store=FullDisk())
    assert failed.state == TrialState.COMPLETE and predictions.ATTR not in failed.user_attrs
    assert "could not be kept (OSError" in caplog.text


def test_best_epochs_keeps_only_what_can_still_be_best():
    kept = predictions.BestEpochs(window=3)
    for epoch, best in [(1, None), (2, 1), (3, 1), (4, 1), (5, 4), (6, 4), (7, 4), (8, 4)]:
        kept.add(epoch, np.full(2, epoch), best)
    assert sorted(kept.by_epoch) == [4, 6, 7, 8]  # the best so far, and the last three


def test_jax_dropout_masks_are_uniform_draws_fixed_by_their_seed():
    """Under JAX the fused loop's dropout masks come from XLA's bit generator (rbg keys),
    seeded by the layer's seed generator: uniform in [0, 1), the same for the same seed."""
    pytest.importorskip("jax")
    seed, other = np.array([7, 11], np.uint32), np.array([7, 12], np.uint32)
    draws = np.asarray(compiled.uniform_rbg((4096, 16), seed))
    assert draws.min() >= 0.0 and draws.max() < 1.0
    assert abs(draws.mean() - 0.5) < 0.01 and abs((draws < 0.2).mean() - 0.2) < 0.01
    np.testing.assert_array_equal(draws, np.asarray(compiled.uniform_rbg((4096, 16), seed)))
    assert not np.array_equal(draws, np.asarray(compiled.uniform_rbg((4096, 16), other)))
