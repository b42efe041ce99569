"""A build function's model in the training loops (hpo/train/objective.py, engine.py): the fused
loop calls it whole (Dropout, BatchNormalization, l2) as model.fit trains it; a function that
fails fails its trial only; model.fit trains what the fused loop cannot, and says why once;
k-fold trains the folds of such a model one after another.

The exactness tests are marked jax_too: tests/e2e/test_backends.py runs them again in its
process running Keras on JAX.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

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
from hpo.train import engine, objective, predictions
from hpo.train import model as model_lib
from hpo.train.build_function import Inputs
from hpo.train.objective import Objective
from hpo.train.reporting import TrialFailed

keras = import_keras()

# The tiny MNIST's flat pixels (784 uint8 a row) as 28x28x1 images, a small convnet on them;
# `kind` picks what the function does, so that one study file makes every case.
MODULE = '''
import keras


class Scaled(keras.Model):
    """A subclassed model: no functional graph for the fused loop to call whole."""

    def __init__(self, classes):
        super().__init__()
        self.dense = keras.layers.Dense(classes, activation="softmax")

    def call(self, x):
        return self.dense(keras.ops.cast(x, "float32") / 255.0)


def convnet(inputs, dropout=0.2, l2=1e-3):
    """Conv2D (l2), BatchNormalization, Dropout, Dense."""
    pixels = inputs.input()
    x = keras.layers.Reshape((28, 28, 1))(inputs.as_float(pixels))
    regularizer = keras.regularizers.l2(l2)
    x = keras.layers.Conv2D(4, 3, strides=2, use_bias=False, kernel_regularizer=regularizer)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(inputs.classes, activation="softmax")(x)
    return keras.Model(pixels, outputs)


def build(params, inputs):
    kind = params["kind"]
    if kind == "raise":
        raise ValueError("no model for these parameters\\nsecond line of the message")
    if kind == "none":
        return {"not": "a model"}
    if kind == "subclassed":
        return Scaled(inputs.classes)
    model = convnet(inputs)
    if kind == "compiled":
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["acc"])
    if kind == "compiled_accuracy":
        model.compile(
            optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"]
        )
    if kind == "two_outputs":
        return keras.Model(model.inputs, [model.outputs[0], model.outputs[0]])
    return model
'''

KINDS = ["conv", "raise", "none", "subclassed", "compiled", "compiled_accuracy", "two_outputs"]
SPACE = f"""
kind = {{ choices = {KINDS!r} }}
batch_size = 32
learning_rate = 0.01
optimizer = "adam"
"""


@pytest.fixture
def own_study(workdir):
    """(spec, data) of a tiny MNIST study whose [model] is convnets.py beside it."""
    (workdir / "convnets.py").write_text(MODULE)

    def make(validation: str = "first:100", epochs: int = 2):
        path = tiny_study(workdir, "mnist", epochs=epochs, validation=validation, space=SPACE)
        path.write_text(path.read_text() + '\n[model]\nbuild = "convnets:build"\n')
        spec = replace(studyfile.load(str(path)), seed=0)
        return spec, builtin.load("mnist", None, spec.num_words)

    return make


def run_trials(spec, data, kinds, monkeypatch, engine_name="fused", **objective_args):
    """Each of `kinds` as one trial of a study; the study's trials (it goes on after a failed
    one, as hpo's study loop does: TrialFailed is a trial's own end)."""
    monkeypatch.setenv("HPO_ENGINE", engine_name)
    study = optuna.create_study(direction="maximize")
    for kind in kinds:
        study.enqueue_trial({"kind": kind})
    objective = Objective(spec, data, **objective_args)
    study.optimize(objective, n_trials=len(kinds), catch=(TrialFailed,))
    return study.trials


@pytest.mark.jax_too
@pytest.mark.parametrize("on_cpu", [True, False])
def test_a_convnet_trains_in_the_fused_loop_as_model_fit_trains_it(monkeypatch, on_cpu):
    """Conv2D with l2, BatchNormalization, Dropout: given the same batches (the last one
    partial) and the same seeds, fused epochs leave the weights, the moving statistics and
    the logs (the l2 penalty in the loss and val_loss) where model.fit leaves them. On a CPU
    (JAX: a compiled call per batch, engine.convolves) and as on a GPU (one per epoch)."""
    monkeypatch.setattr(engine, "on_cpu", lambda: on_cpu)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (90, 784)).astype(np.uint8)
    y = rng.integers(0, 10, 90).astype(np.int32)
    (x_train, y_train), validation = (x[:70], y[:70]), (x[70:], y[70:])
    namespace: dict = {}
    exec(MODULE, namespace)  # the build function's convnet, from the same source
    inputs = Inputs("mnist", "vectors", (784,), "uint8", "multiclass", 10, scale=1 / 255)
    params = {"optimizer": "adam", "learning_rate": 0.01, "loss": "sparse_categorical_crossentropy"}
    models = []
    for _ in range(2):
        set_random_seed(4)
        model = namespace["convnet"](inputs)
        model_lib.compile_model(model, params, "multiclass")
        models.append(model)
    by_fit, fused = models
    history = by_fit.fit(
        x_train,
        y_train,
        batch_size=16,  # 4 batches of 16 and one of 6
        shuffle=False,
        epochs=3,
        validation_data=validation,
        validation_batch_size=256,
        verbose=0,
    ).history
    trainer = engine.FusedTrainer(
        fused,
        loss="sparse_categorical_crossentropy",
        task="multiclass",
        train=(x_train, y_train),
        validation=validation,
        batch_size=16,
        validation_batch_size=256,
        shuffle=False,
        whole=True,
    )
    assert trainer.whole and trainer.exact_last  # BatchNormalization: the last batch apart
    assert trainer.stepwise == (on_cpu and keras.backend.backend() == "jax")
    logs = [trainer.run_epoch() for _ in range(3)]
    trainer.write_back()
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert [epoch[key] for epoch in logs] == pytest.approx(history[key], rel=1e-4, abs=1e-5)
    penalty = float(sum(keras.ops.convert_to_numpy(v) for v in fused.losses))
    assert penalty > 1e-4  # the l2 term is there, and in the logged loss as fit logs it
    batch_norm = next(la for la in fused.layers if isinstance(la, keras.layers.BatchNormalization))
    assert not np.allclose(keras.ops.convert_to_numpy(batch_norm.moving_mean), 0.0)
    for a, b in zip(by_fit.get_weights(), fused.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.jax_too
def test_stacked_trials_with_l2_each_log_their_own_penalty():
    """hpo's Dense model with l2, two trials (learning rates) of two stacked folds each: each
    slot trains as its model alone, penalty included, and each trial's logged loss and
    val_loss hold its own folds' penalties, not the stacked model's mean."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 5)).astype(np.float32)
    y = (x @ rng.normal(size=5)).astype(np.float32)
    data = Prepared("synthetic", "regression", 1, 1.0, 5, False, x, y, x[:5], y[:5])
    params = {
        "layers": 2,
        "units": 8,
        "activation": "relu",
        "loss": "mse",
        "optimizer": "adam",
        "learning_rate": 0.01,
        "batch_size": 16,
        "dropout": 0.0,
        "l2": 0.05,
    }
    rates = [0.001, 0.05]
    to_targets = lambda v: model_lib.targets(v, "regression", "mse", 1)  # noqa: E731
    (train, val) = model_lib.stack_folds(list(Validation.parse("kfold:2").splits(x, y)))
    train, val = (train[0], to_targets(train[1])), (val[0], to_targets(val[1]))
    set_random_seed(1)
    stacked = model_lib.build(params, data, folds=2, trials=2)
    alone = []
    for t, rate in enumerate(rates):
        model = model_lib.build({**params, "learning_rate": rate}, data, folds=2)
        model.set_weights([w[2 * t : 2 * t + 2] for w in stacked.get_weights()])
        alone.append(model)

    def trainer(model, **options):
        return engine.FusedTrainer(
            model,
            loss="mse",
            task="regression",
            train=train,
            validation=val,
            batch_size=16,
            validation_batch_size=256,
            seed=5,
            **options,
        )

    together = trainer(stacked, trials=2, rates={"learning_rate": rates, "dropout": [0.0, 0.0]})
    apart = [trainer(model) for model in alone]
    for _ in range(3):
        logs = together.run_epoch_each()
        each = [t.run_epoch() for t in apart]
    for t in range(2):
        for key in ("loss", "val_loss", "val_mae"):
            assert logs[t][key] == pytest.approx(each[t][key], rel=1e-4), key
    assert abs(each[0]["loss"] - each[1]["loss"]) > 0.01  # the trials' losses differ
    together.write_back()
    for t, model in enumerate(alone):
        apart[t].write_back()
        for w_stacked, w_alone in zip(stacked.get_weights(), model.get_weights(), strict=True):
            np.testing.assert_allclose(w_stacked[2 * t : 2 * t + 2], w_alone, rtol=1e-4, atol=1e-5)


@pytest.mark.jax_too
def test_hpos_dense_model_with_batch_norm_and_l2_trains_as_model_fit_trains_it():
    """hpo's own chain, called layer by layer: BatchNormalization's statistics updated (the
    last, partial batch at its own size) and the l2 penalty in the loss and the logs. (SGD:
    Adam would magnify the float noise of the Dense bias before BatchNormalization, which
    gets no gradient but that noise.)"""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(90, 5)).astype(np.float32)
    y = (x @ rng.normal(size=5))[:, None].astype(np.float32)
    data = Prepared("synthetic", "regression", 1, 1.0, 5, False, x, y[:, 0], x[:5], y[:5, 0])
    params = {
        **{"layers": 2, "units": 8, "activation": "relu", "dropout": 0.0, "batch_size": 16},
        **{"loss": "mse", "optimizer": "sgd", "learning_rate": 0.05},
        **{"batch_norm": True, "l2": 0.01},
    }
    set_random_seed(2)
    by_fit, fused = model_lib.build(params, data), model_lib.build(params, data)
    fused.set_weights(by_fit.get_weights())
    history = by_fit.fit(
        x[:70], y[:70], batch_size=16, shuffle=False, epochs=3, verbose=0,
        validation_data=(x[70:], y[70:]), validation_batch_size=256,
    ).history  # fmt: skip
    trainer = engine.FusedTrainer(
        fused,
        loss="mse",
        task="regression",
        train=(x[:70], y[:70]),
        validation=(x[70:], y[70:]),
        batch_size=16,
        validation_batch_size=256,
        shuffle=False,
    )
    assert not trainer.whole and trainer.exact_last
    logs = [trainer.run_epoch() for _ in range(3)]
    trainer.write_back()
    for key in ("loss", "mae", "val_loss", "val_mae"):
        assert [epoch[key] for epoch in logs] == pytest.approx(history[key], rel=1e-4, abs=1e-5)
    for a, b in zip(by_fit.get_weights(), fused.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_a_study_trains_the_build_functions_model_in_the_fused_loop(own_study, monkeypatch):
    """Its trials train in the fused loop, called whole, and keep their best epoch's
    validation predictions as hpo's models do."""
    spec, data = own_study(epochs=3)
    store = artifact_store()
    (trial,) = run_trials(spec, data, ["conv"], monkeypatch, artifact_store=store)
    assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("fail_reason")
    worker = trial.user_attrs["worker"]
    assert worker["engine"] == "fused" and "fit_reason" not in worker
    assert len(trial.user_attrs["history"]["val_accuracy"]) == 3
    kept = predictions.fetch(trial, store)
    assert kept.shape == (100, 10)
    accuracy = (kept.argmax(axis=1) == data.y_train[:100]).mean()
    best = trial.user_attrs["history"]["val_accuracy"][trial.user_attrs["best_epoch"] - 1]
    assert accuracy == pytest.approx(best, abs=0.011)


def artifact_store() -> optuna.artifacts.FileSystemArtifactStore:
    """A store for kept predictions in the working directory (the workdir fixture's)."""
    folder = Path.cwd() / "artifacts"
    folder.mkdir()
    return optuna.artifacts.FileSystemArtifactStore(str(folder))


def test_a_function_that_fails_fails_its_trial_with_one_line(own_study, monkeypatch):
    """A function that raises, or returns no model: that trial FAILS with the first line of
    why, and the next trial trains."""
    spec, data = own_study()
    raised, none, trained = run_trials(spec, data, ["raise", "none", "conv"], monkeypatch)
    assert raised.state == none.state == TrialState.FAIL
    assert raised.user_attrs["fail_reason"] == (
        "the build function raised ValueError: no model for these parameters"
    )
    assert none.user_attrs["fail_reason"] == "the build function returned dict, not a keras.Model"
    assert trained.state == TrialState.COMPLETE


def test_a_model_the_function_compiled_trains_with_fit_and_says_so_once(
    own_study, monkeypatch, caplog
):
    """hpo keeps the function's optimizer, loss and metrics and trains with model.fit, saying
    so once; a compiled model whose logs lack the study's metric fails with one line."""
    spec, data = own_study()
    objective._said.clear()
    with caplog.at_level(logging.WARNING, logger="hpo.objective"):
        first, second, lacking = run_trials(
            spec, data, ["compiled_accuracy", "compiled_accuracy", "compiled"], monkeypatch
        )
    assert first.state == second.state == TrialState.COMPLETE
    for trial in (first, second):
        worker = trial.user_attrs["worker"]
        assert worker["engine"] == "fit" and worker["fit_reason"] == objective.COMPILED_BY_USER
    assert caplog.text.count(objective.COMPILED_BY_USER) == 1
    assert lacking.state == TrialState.FAIL
    reason = lacking.user_attrs["fail_reason"]
    assert "logs no val_accuracy" in reason and "val_acc" in reason and "\n" not in reason


def test_what_the_fused_loop_cannot_run_model_fit_trains_with_one_line(
    own_study, monkeypatch, caplog
):
    """A subclassed model trains with model.fit; so does a model whose first fused epoch fails
    to trace (made to fail here), built afresh; a two-output model too, whose fit then fails
    on hpo's one target array: its trial fails with one line. Each reason said once."""
    spec, data = own_study()
    objective._said.clear()
    run_epoch = engine.FusedTrainer.run_epoch

    def fails_to_trace(self):
        if self.model.name.startswith("untraceable"):
            raise ValueError("Cannot convert a symbolic tf.Tensor\nwith details")
        return run_epoch(self)

    monkeypatch.setattr(engine.FusedTrainer, "run_epoch", fails_to_trace)
    with caplog.at_level(logging.WARNING, logger="hpo.objective"):
        subclassed, two = run_trials(spec, data, ["subclassed", "two_outputs"], monkeypatch)
    assert subclassed.state == TrialState.COMPLETE
    assert subclassed.user_attrs["worker"]["engine"] == "fit"
    assert "subclassed" in subclassed.user_attrs["worker"]["fit_reason"]
    assert two.user_attrs["worker"]["fit_reason"].endswith("has 1 inputs and 2 outputs")
    assert two.state == TrialState.FAIL and two.user_attrs["fail_reason"].startswith(
        "model.fit failed: "
    )
    lines = [r.getMessage() for r in caplog.records]
    assert sum("subclassed: trained with model.fit" in line for line in lines) == 1
    assert all("\n" not in line and "Traceback" not in line for line in lines)

    # A first epoch that fails to trace: the trial's model rebuilt and fitted.
    build = Objective(spec, data).build_fn

    def untraceable(params, inputs):
        model = build(params, inputs)
        model.name = "untraceable"
        return model

    monkeypatch.setenv("HPO_ENGINE", "fused")
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"kind": "conv"})
    with caplog.at_level(logging.WARNING, logger="hpo.objective"):
        study.optimize(Objective(spec, data, build=untraceable), n_trials=1)
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE
    reason = trial.user_attrs["worker"]["fit_reason"]
    assert reason == (
        "the fused loop could not trace this model (ValueError: Cannot convert a symbolic "
        "tf.Tensor)"
    )
    assert f"{reason}: trained with model.fit" in caplog.text


@pytest.mark.parametrize("engine_name", ["fused", "fit"])
def test_kfold_trains_a_user_models_folds_one_after_another(
    own_study, monkeypatch, caplog, engine_name
):
    """k-fold with a build function's model: k models, an epoch of each in turn, their mean
    logs reported every epoch, said once; on the fused loop its out-of-fold predictions of
    every row are kept in the order of the training rows."""
    spec, data = own_study(validation="kfold:2", epochs=2)
    objective._said.clear()
    store = artifact_store()
    built = []
    build = Objective(spec, data).build_fn

    def counted(params, inputs):
        built.append(params["kind"])
        return build(params, inputs)

    fit = keras.Model.fit
    calls = []

    def counted_fit(self, *args, **kwargs):
        calls.append((kwargs.get("initial_epoch", 0), kwargs["epochs"]))
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", counted_fit)
    with caplog.at_level(logging.WARNING, logger="hpo.objective"):
        (trial,) = run_trials(
            spec, data, ["conv"], monkeypatch, engine_name, build=counted, artifact_store=store
        )
    assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("fail_reason")
    assert built == ["conv", "conv"]  # a model per fold
    assert trial.user_attrs["worker"]["engine"] == engine_name
    assert list(trial.intermediate_values) == [1, 2]
    assert "k-fold: the folds of this model train one after another" in caplog.text
    if engine_name == "fit":  # one epoch of each fold in turn
        assert calls == [(0, 1), (0, 1), (1, 2), (1, 2)]
        return
    assert calls == []
    kept = predictions.fetch(trial, store)
    assert kept.shape == (len(data.y_train), 10)  # every row, predicted by the fold holding it out


def test_kfold_trains_the_folds_of_a_batch_norm_dense_model_one_after_another(
    workdir, monkeypatch, caplog
):
    """hpo's Dense model with batch_norm cannot stack its folds (model.stack_blocker): they
    train one after another in the fused loop, said once, and each row's out-of-fold
    prediction is kept as a stacked model's would be."""
    space = 'layers = 1\nunits = 8\nbatch_norm = true\nloss = "mse"\nbatch_size = 16\n'
    path = tiny_study(workdir, "boston_housing", epochs=3, validation="kfold:2", space=space)
    spec = replace(studyfile.load(str(path)), seed=0)
    data = builtin.load("boston_housing", None, spec.num_words)
    objective._said.clear()
    monkeypatch.setenv("HPO_ENGINE", "fused")
    study = optuna.create_study()
    store = artifact_store()
    with caplog.at_level(logging.WARNING, logger="hpo.objective"):
        study.optimize(Objective(spec, data, artifact_store=store), n_trials=2)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert (
        caplog.text.count("k-fold: the folds of this model train one after another: batch_norm")
        == 1
    )
    (trial, _) = study.trials
    assert trial.user_attrs["worker"]["engine"] == "fused"
    assert len(trial.user_attrs["history"]["val_mae"]) == 3
    assert predictions.fetch(trial, store).shape == (len(data.y_train), 1)
