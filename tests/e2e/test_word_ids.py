"""Text's first layer trained on word ids (hpo/train/word_ids.py): the same function, gradient
and training as the Dense layer on multi-hot rows, and a plain Dense model handed over.

The suite runs Keras on TensorFlow; the tests marked jax_too run again in a process with
KERAS_BACKEND=jax (tests/e2e/test_backends.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest
from conftest import tiny_study

from hpo.backend import import_keras, set_random_seed
from hpo.data import builtin
from hpo.data.arrays import Prepared
from hpo.study import studyfile
from hpo.train import engine, programs, word_ids
from hpo.train import model as model_lib
from hpo.train.objective import Objective

keras = import_keras()
ops = keras.ops
VOCAB = 300
PARAMS = {
    "layers": 2,
    "units": 16,
    "activation": "relu",
    "loss": "binary_crossentropy",
    "optimizer": "adam",
    "learning_rate": 0.01,
    "batch_size": 32,
}


def text_data(rows: int = 150, seed: int = 0) -> Prepared:
    """Bit-packed multi-hot rows of Zipf-like words, a few rows with no word at all."""
    rng = np.random.default_rng(seed)
    frequency = 1.0 / np.arange(1, VOCAB + 1)
    multi_hot = rng.random((rows, VOCAB)) < 0.4 * frequency / frequency.mean() * 0.1
    multi_hot[[3, 40]] = False
    y = (multi_hot[:, :20].sum(axis=1) > multi_hot[:, 20:40].sum(axis=1)).astype(np.float32)
    x = np.packbits(multi_hot.astype(np.uint8), axis=1)
    return Prepared("words", "binary", 1, 1.0, VOCAB, True, x, y, x[:10], y[:10])


def kernel_gradient(loss_of_kernel, kernel):
    """d loss / d kernel under the running backend."""
    if keras.backend.backend() == "jax":
        import jax

        return np.asarray(jax.grad(loss_of_kernel)(kernel))
    import tensorflow as tf

    variable = tf.Variable(kernel)
    with tf.GradientTape() as tape:
        loss = loss_of_kernel(variable)
    return np.asarray(tf.convert_to_tensor(tape.gradient(loss, variable)))


@pytest.mark.jax_too
def test_exact_word_ids_of_packed_rows():
    data = text_data()
    ids = word_ids.from_packed(data.x_train, chunk=64)  # several chunks
    multi_hot = np.unpackbits(data.x_train, axis=1)
    assert ids.lengths.tolist() == multi_hot.sum(axis=1).tolist()
    row = 7
    words = ids.ids[ids.starts[row] : ids.starts[row] + ids.lengths[row]]
    assert words.tolist() == np.flatnonzero(multi_hot[row]).tolist()


@pytest.mark.jax_too
def test_exact_bag_sum_is_the_dense_layer_logits_and_kernel_gradient():
    """Forward and kernel gradient equal x @ W's within 1e-5 (rows with no words included)."""
    data = text_data()
    host = word_ids.from_packed(data.x_train)
    ids = word_ids.WordIds(*map(ops.convert_to_tensor, host))
    multi_hot = np.unpackbits(data.x_train, axis=1)[:, :VOCAB].astype(np.float32)
    rows_np = np.array([3, 0, 5, 40, 9, 100, 3], np.int32)  # a repeated row too
    rows = ops.convert_to_tensor(rows_np)
    capacity = word_ids.capacity(host.lengths, rows_np[None])
    kernel = np.random.default_rng(1).normal(size=(VOCAB, 8)).astype(np.float32)
    upstream = np.random.default_rng(2).normal(size=(len(rows_np), 8)).astype(np.float32)

    def bag(k):
        return word_ids.bag_sum(k, ids.ids, ids.starts, ids.lengths, rows, capacity)

    def dense(k):
        return ops.matmul(ops.convert_to_tensor(multi_hot[rows_np]), k)

    np.testing.assert_allclose(
        ops.convert_to_numpy(bag(kernel)), multi_hot[rows_np] @ kernel, rtol=1e-5, atol=1e-5
    )
    gradients = [
        kernel_gradient(lambda k, f=f: ops.sum(f(k) * upstream), kernel) for f in (bag, dense)
    ]
    np.testing.assert_allclose(gradients[0], gradients[1], rtol=1e-5, atol=1e-5)
    assert np.abs(gradients[0]).sum() > 0


def trained(
    first_layer: str,
    data: Prepared,
    epochs: int = 3,
    cache: programs.DeviceCache | None = None,
    dropout: float = 0.0,
):
    """A model trained `epochs` epochs by the fused loop with its first layer in that form,
    from the same initial weights and batches (seed 0) whatever the form; (model, last logs,
    trainer)."""
    set_random_seed(5)
    model = model_lib.build({**PARAMS, "dropout": dropout}, data)
    x, y = data.x_train, data.y_train[:, None]
    trainer = engine.FusedTrainer(
        model,
        loss=PARAMS["loss"],
        task="binary",
        train=(x[:110], y[:110]),  # 3 batches of 32 and one of 14
        validation=(x[110:], y[110:]),
        batch_size=32,
        validation_batch_size=256,
        seed=0,
        cache=cache,
        first_layer=first_layer,
    )
    for _ in range(epochs):
        logs = trainer.run_epoch()
    trainer.write_back()
    return model, logs, trainer


def assert_same_weights(a: keras.Model, b: keras.Model) -> None:
    for x, y in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


@pytest.mark.jax_too
def test_exact_three_epochs_leave_the_dense_loops_weights():
    """Same batches: the ids form trains exactly as the dense form."""
    data = text_data()
    cache = programs.DeviceCache()  # both forms' inputs in one cache, as an Objective keeps them
    by_ids, ids_logs, trainer = trained("ids", data, cache=cache)
    by_dense, dense_logs, _ = trained("dense", data, cache=cache)
    assert cache.forms() == {"ids", "dense"}
    assert_same_weights(by_dense, by_ids)
    assert ids_logs.keys() == dense_logs.keys() and "val_accuracy" in ids_logs
    for key in ids_logs:
        assert ids_logs[key] == pytest.approx(dense_logs[key], abs=1e-5)
    assert trainer.val_predictions.shape == (40, 1)


@pytest.mark.jax_too
def test_exact_dropout_after_an_ids_first_layer():
    """Dropout after the first layer is applied. Under JAX the masks are the dense form's, so
    the weights are too; TensorFlow compiles the ids form with XLA and draws its masks with
    another generator (as a fit and a fused trial differ in their random streams)."""
    data = text_data()
    by_ids, ids_logs, _ = trained("ids", data, dropout=0.25)
    _, no_dropout_logs, _ = trained("ids", data)
    assert ids_logs["loss"] != pytest.approx(no_dropout_logs["loss"], abs=1e-4)
    if keras.backend.backend() == "jax":
        assert_same_weights(trained("dense", data, dropout=0.25)[0], by_ids)


@pytest.mark.jax_too
def test_exact_a_batch_with_more_words_than_compiled_for_recompiles(monkeypatch):
    """The first epoch sizes the compiled batch; a later shuffle that puts more words in one
    batch compiles a larger one instead of dropping words."""
    monkeypatch.setattr(word_ids, "CAPACITY_STEP", 1)
    data = text_data()
    _, _, trainer = trained("ids", data, epochs=1)
    first = trainer.capacity[0]
    trainer.capacity = (first // 2, trainer.capacity[1])  # as if the first epoch had few words
    trainer.run_epoch()
    assert trainer.capacity[0] >= first // 2 * 1.5
    trainer.write_back()
    assert_same_weights(trained("dense", data, epochs=2)[0], trainer.model)


@pytest.mark.jax_too
@pytest.mark.parametrize("form", ["ids", "dense"])
def test_exact_a_program_is_reused_and_trains_as_a_new_one(form):
    """A second trial of the same structure (another learning rate, dropout rate and seed)
    trains in the first one's compiled program, to exactly the weights a new program gives
    it; the first trial's model keeps its own weights; another width gets its own program."""
    data = text_data()
    x, y = data.x_train, data.y_train[:, None]

    def trial(params, seed, cache):
        keras.backend.clear_session()  # as the objective does before each trial
        set_random_seed(seed)
        model = model_lib.build({**PARAMS, **params}, data)
        initial = model.get_weights()
        trainer = programs.trainer(
            model,
            cache=cache,
            loss=PARAMS["loss"],
            task="binary",
            train=(x[:110], y[:110]),
            validation=(x[110:], y[110:]),
            batch_size=32,
            validation_batch_size=256,
            seed=seed,
            first_layer=form,
        )
        for _ in range(3):
            logs = trainer.run_epoch()
        trainer.write_back()
        return model, trainer, logs, initial

    cache = programs.DeviceCache()
    first, first_program, _, _ = trial({"dropout": 0.2}, 1, cache)
    first_weights = first.get_weights()
    second_params = {"dropout": 0.4, "learning_rate": 0.003}
    second, program, logs, initial = trial(second_params, 2, cache)
    assert program is first_program and len(cache.programs) == 1
    alone, _, alone_logs, alone_initial = trial(second_params, 2, programs.DeviceCache())
    for a, b in zip(initial, alone_initial, strict=True):
        np.testing.assert_array_equal(a, b)  # the same start, so the same training
    assert_same_weights(alone, second)
    assert logs == pytest.approx(alone_logs, abs=1e-6)
    for a, b in zip(first_weights, first.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    _, other_program, _, _ = trial({"units": 8, "dropout": 0.2}, 3, cache)
    assert other_program is not program and len(cache.programs) == 2


@pytest.mark.jax_too
def test_exact_the_saved_model_is_a_plain_dense_model(tmp_path: Path):
    data = text_data()
    model, _, trainer = trained("ids", data, epochs=2)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    kinds = [type(layer).__name__ for layer in loaded.layers]
    assert kinds[:3] == ["InputLayer", "UnpackBits", "Dense"]
    assert kinds[3:] == ["Dense", "Dense"]
    np.testing.assert_allclose(
        loaded.predict(data.x_train[110:], verbose=0), trainer.val_predictions, atol=1e-5
    )


def test_choice(monkeypatch):
    monkeypatch.delenv(word_ids.ENV, raising=False)
    assert word_ids.choose(packed=True, rows=25000) == "ids"
    assert word_ids.choose(packed=True, rows=300) == "dense"  # too few rows to repay XLA
    assert word_ids.choose(packed=True, folds=3) == "dense"  # stacked k-fold models
    assert word_ids.choose(packed=False) == "dense"
    monkeypatch.setenv(word_ids.ENV, "ids")
    assert word_ids.choose(packed=True, rows=300) == "ids"
    assert word_ids.choose(packed=False) == "dense"
    monkeypatch.setenv(word_ids.ENV, "dense")
    assert word_ids.choose(packed=True) == "dense"
    monkeypatch.setenv(word_ids.ENV, "sparse")
    with pytest.raises(Exception, match="expected auto, dense or ids"):
        word_ids.choose(packed=True)


def test_jax_gpus_with_the_slow_scatter_keep_the_dense_form():
    assert word_ids.slow_gpu_scatter("0.10.2", {"gpu"})
    assert word_ids.slow_gpu_scatter("0.11.0", {"gpu", "cpu"})
    assert not word_ids.slow_gpu_scatter("0.11.1", {"gpu"})
    assert not word_ids.slow_gpu_scatter("0.10.1", {"gpu"})
    assert not word_ids.slow_gpu_scatter("0.10.2", {"cpu"})  # this machine


def test_a_trial_records_its_first_layer(workdir, monkeypatch):
    monkeypatch.setenv(word_ids.ENV, "ids")  # the tiny data alone would train dense
    spec = studyfile.load(str(tiny_study(workdir, "imdb", epochs=2)))
    study = optuna.create_study(direction=spec.direction)
    study.optimize(Objective(spec, builtin.load("imdb", None, spec.num_words)), n_trials=1)
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.user_attrs["worker"]["first_layer"] == "ids"
    assert len(trial.user_attrs["history"]["val_accuracy"]) == 2
