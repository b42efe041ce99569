"""Parameters → Keras model: the layers asked for, and inputs decoded inside the model."""

import numpy as np
import pytest
from conftest import REPO

from hpo.backend import import_keras
from hpo.data import builtin
from hpo.data.arrays import Prepared

keras = import_keras()
from hpo.train import model as model_lib  # noqa: E402


def test_unpack_bits_matches_numpy():
    rng = np.random.default_rng(0)
    dense = rng.integers(0, 2, size=(5, 21)).astype(np.uint8)
    layer = model_lib.UnpackBits(21)
    out = keras.ops.convert_to_numpy(layer(np.packbits(dense, axis=1)))
    np.testing.assert_array_equal(out, dense.astype(np.float32))
    assert layer.compute_output_shape((None, 3)) == (None, 21)


@pytest.mark.parametrize(
    ("dataset", "loss", "output"),
    [
        ("imdb", "binary_crossentropy", 1),
        ("reuters", "categorical_crossentropy", 46),
        ("boston_housing", "huber", 1),
        ("mnist", "sparse_categorical_crossentropy", 10),
    ],
)
def test_build_from_params(workdir, tmp_path, dataset, loss, output):
    prepared = builtin.load(dataset, num_words=100)
    params = {
        "layers": 3,
        "units": 8,
        "activation": "tanh",
        "loss": loss,
        "optimizer": "adam",
        "learning_rate": 0.01,
        "batch_size": 32,
        "dropout": 0.2,
    }
    model = model_lib.build(params, prepared)
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [layer.units for layer in dense] == [8, 8, 8, output]
    assert sum(isinstance(layer, keras.layers.Dropout) for layer in model.layers) == 3
    y = model_lib.targets(prepared.y_train[:4], prepared.task, loss, prepared.n_outputs)
    history = model.fit(
        prepared.x_train[:32],
        model_lib.targets(prepared.y_train[:32], prepared.task, loss, prepared.n_outputs),
        verbose=0,
    )
    assert np.isfinite(history.history["loss"][0])
    assert model.predict(prepared.x_train[:4], verbose=0).shape == (4, output)
    if loss == "categorical_crossentropy":
        assert y.shape == (4, 46) and y.sum() == 4
    # A saved model reloads with its custom layer and gives the same predictions.
    path = tmp_path / "m.keras"
    model.save(path)
    again = keras.saving.load_model(path)
    np.testing.assert_allclose(
        again.predict(prepared.x_test[:4], verbose=0),
        model.predict(prepared.x_test[:4], verbose=0),
        rtol=1e-5,
    )


@pytest.mark.parametrize("name", ["model", "ensemble"])
def test_a_model_saved_by_an_earlier_hpo_loads_and_predicts_the_same(name):
    """The .keras files in tests/fixtures were saved by hpo at cb3f5f3, when UnpackBits lived in
    hpo/model.py: Keras finds hpo's layers by their registered name, not their module."""
    fixtures = REPO / "tests" / "fixtures"
    expected = np.load(fixtures / "packed_text_expected.npz")
    loaded = keras.saving.load_model(fixtures / f"packed_text_{name}.keras")
    np.testing.assert_allclose(loaded.predict(expected["x"], verbose=0), expected[name], atol=1e-6)


def test_a_weighted_ensemble_saves_loads_and_predicts_its_members_weighted_mean(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 4)).astype(np.float32)
    y = rng.integers(0, 3, 20)
    prepared = Prepared("toy", "multiclass", 3, 1.0, 4, False, x, y, x, y)
    params = {"layers": 1, "units": 5, "activation": "relu", "dropout": 0.0, "batch_size": 8}
    params |= {"loss": "sparse_categorical_crossentropy", "optimizer": "adam"}
    members = [model_lib.build({**params, "learning_rate": 0.01}, prepared) for _ in range(3)]
    weights = [0.5, 0.3, 0.2]
    ensemble = model_lib.ensemble(members, weights, {**params, "learning_rate": 0.01}, prepared)
    ensemble.save(tmp_path / "e.keras")
    loaded = keras.saving.load_model(tmp_path / "e.keras")
    expected = sum(w * m.predict(x, verbose=0) for w, m in zip(weights, members, strict=True))
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, atol=1e-6)
    assert loaded.predict(x, verbose=0).sum(axis=1) == pytest.approx(np.ones(20), abs=1e-5)


def toy_binary(rows: int = 32, features: int = 6) -> Prepared:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(rows, features)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    return Prepared("toy", "binary", 1, 1.0, features, False, x, y, x[:4], y[:4])


TOY = {
    "layers": 3,
    "units": 5,
    "activation": "relu",
    "loss": "binary_crossentropy",
    "optimizer": "adam",
    "learning_rate": 0.01,
    "batch_size": 8,
    "dropout": 0.0,
}


def penalty(model: keras.Model) -> float:
    return float(sum(keras.ops.convert_to_numpy(loss) for loss in model.losses))


def test_per_layer_units_l2_and_batch_norm_build_the_layers_asked(tmp_path):
    data = toy_binary()
    params = {**TOY, "units_1": 8, "units_2": 4, "units_3": 2, "l2": 1e-2, "batch_norm": True}
    del params["units"]  # a per-layer space gives units_1 … units_L, no units
    model = model_lib.build(params, data)
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [layer.units for layer in dense] == [8, 4, 2, 1]
    # Hidden layers: Dense without activation → BatchNormalization → activation.
    assert [layer.activation.__name__ for layer in dense] == ["linear"] * 3 + ["sigmoid"]
    kinds = [type(layer).__name__ for layer in model_lib.chain(model)]
    assert kinds == ["Dense", "BatchNormalization", "Activation"] * 3 + ["Dense"]
    # The L2 penalty is on the hidden kernels only, carried as the model's losses.
    assert [layer.kernel_regularizer is not None for layer in dense] == [True] * 3 + [False]
    kernels = sum(float(np.sum(layer.get_weights()[0] ** 2)) for layer in dense[:3])
    assert len(model.losses) == 3
    assert penalty(model) == pytest.approx(1e-2 * kernels, rel=1e-5)
    history = model.fit(data.x_train, model_lib.targets(data.y_train, "binary", "", 1), verbose=0)
    assert np.isfinite(history.history["loss"][0])
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(
        again.predict(data.x_test, verbose=0), model.predict(data.x_test, verbose=0), rtol=1e-5
    )


def test_a_trial_without_the_new_parameters_builds_the_model_it_always_did():
    model = model_lib.build(TOY, toy_binary())
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [layer.units for layer in dense] == [5, 5, 5, 1]
    assert not model.losses
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    assert model_lib.stack_blocker(TOY) is None


def test_l2_on_stacked_folds_is_each_folds_own_penalty():
    """FoldDense's (folds, inputs, units) kernel carries the L2 penalty: the sum of each fold's
    own, so fold f's slice gets the gradient a model of its own would get from its penalty."""
    params = {**TOY, "layers": 2, "l2": 1e-3}
    model = model_lib.build(params, toy_binary(), folds=3)
    folded = [layer for layer in model.layers if isinstance(layer, model_lib.FoldDense)]
    assert len(model.losses) == 2  # the hidden layers, not the output
    kernels = [layer.kernel for layer in folded[:2]]
    per_fold = [
        1e-3 * sum(float(np.sum(keras.ops.convert_to_numpy(k)[fold] ** 2)) for k in kernels)
        for fold in range(3)
    ]
    assert penalty(model) == pytest.approx(sum(per_fold), rel=1e-5)
    # The regularizer travels in the layer's config (saved models, clones).
    clone = model_lib.FoldDense.from_config(folded[0].get_config())
    assert clone.kernel_regularizer.get_config() == {"l2": pytest.approx(1e-3)}


@pytest.mark.parametrize(("folds", "trials"), [(3, 1), (1, 2)])
def test_batch_norm_is_never_stacked(folds, trials):
    params = {**TOY, "batch_norm": True}
    reason = model_lib.stack_blocker(params)
    assert reason and "batch_norm" in reason and "\n" not in reason
    assert model_lib.stack_blocker({**params, "batch_norm": False}) is None
    with pytest.raises(ValueError, match="batch_norm"):
        model_lib.build(params, toy_binary(), folds=folds, trials=trials)
