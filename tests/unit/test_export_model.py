"""hpo.results.export without training: the compact-input layers stripped (a model of an
earlier hpo, with UnpackBits, too) and a table's preparation rebuilt from Keras layers, each
checked against what hpo itself computes."""

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

from hpo.backend import import_keras
from hpo.data.arrays import Prepared
from hpo.data.preparation import Preparation
from hpo.errors import HpoError
from hpo.results import export
from hpo.train import model as model_lib

keras = import_keras()
PARAMS = {"layers": 1, "units": 4, "activation": "relu", "dropout": 0.0, "batch_size": 8}
PARAMS |= {"optimizer": "adam", "learning_rate": 0.01}


@pytest.mark.parametrize("name", ["model", "ensemble"])
def test_a_model_of_an_earlier_hpo_exports_to_float_vectors(name):
    """tests/fixtures' files were saved at cb3f5f3, UnpackBits inside: stripped, the model
    takes the multi-hot floats and predicts what it predicted on the packed bytes."""
    fixtures = REPO / "tests" / "fixtures"
    expected = np.load(fixtures / "packed_text_expected.npz")
    loaded = keras.saving.load_model(fixtures / f"packed_text_{name}.keras", compile=False)
    book, info = export.production_model(loaded, None, own_model=False)
    n = book.inputs[0].shape[1]
    assert book.inputs[0].dtype == "float32" and info.inputs == {"x": f"float32 ({n},)"}
    vectors = np.unpackbits(expected["x"], axis=1)[:, :n].astype(np.float32)
    np.testing.assert_allclose(book.predict(vectors, verbose=0), expected[name], atol=1e-6)
    assert not any(isinstance(layer, model_lib.UnpackBits) for layer in book._flatten_layers())


def test_uint8_pixels_export_as_floats_in_0_1():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (16, 12)).astype(np.uint8)
    y = rng.integers(0, 3, 16)
    data = Prepared("toy", "multiclass", 3, 1 / 255, 12, False, x, y, x, y)
    model = model_lib.build({**PARAMS, "loss": "sparse_categorical_crossentropy"}, data)
    handed = model_lib.portable(model)  # nothing of hpo's to rebuild: the model itself
    assert handed is model
    book, _ = export.production_model(model, None, own_model=False)
    assert book.inputs[0].dtype == "float32"
    np.testing.assert_allclose(
        book.predict(x / 255, verbose=0), model.predict(x, verbose=0), atol=1e-6
    )


def test_a_portable_ensemble_of_packed_text_is_standard_layers_and_predicts_the_same():
    rng = np.random.default_rng(1)
    x = np.packbits(rng.random((24, 21)) < 0.3, axis=1)
    y = rng.integers(0, 2, 24)
    data = Prepared("toy", "binary", 1, 1.0, 21, True, x, y, x, y)
    params = {**PARAMS, "loss": "binary_crossentropy"}
    members = [model_lib.build(params, data) for _ in range(2)]
    ensemble = model_lib.ensemble(members, [0.7, 0.3], params, data)
    handed = model_lib.portable(ensemble)
    layers = {type(layer).__name__ for layer in handed._flatten_layers()}
    assert "UnpackBits" not in layers and {"Embedding", "Cropping1D"} <= layers
    np.testing.assert_array_equal(np.asarray(handed(x)), np.asarray(ensemble(x)))
    assert handed.compiled  # compiled as the ensemble was: its saved file evaluates


def preparation(task: str, labels: list | None) -> Preparation:
    return Preparation(
        kind="table",
        task=task,
        target="y",
        columns=["area", "city", "rooms", "kind"],
        numeric=["area", "rooms"],
        means=[70.0, 3.0],
        stds=[20.0, 1.0],
        categories={"city": ["Lyon", "Nice", "Paris"], "kind": [1, 2]},
        labels=labels,
        feature_shape=[7],
        dtype="float32",
        standardize=True,
    )


ROWS = pd.DataFrame(
    {
        "area": [50.0, 120.5, 70.0],
        "city": ["Paris", "Lyon", "Brest"],  # Brest: never seen, an all-zero one-hot
        "rooms": [2, 5, 3],
        "kind": [2, 1, 2],
        "note": ["x", "y", "z"],  # not a feature: not an input
    }
)


@pytest.mark.parametrize(
    ("task", "labels", "outputs"),
    [("regression", None, 1), ("binary", ["no", "yes"], 1), ("multiclass", ["a", "b", "c"], 3)],
)
def test_a_tables_model_takes_the_raw_columns_as_predict_prepares_them(task, labels, outputs):
    prep = preparation(task, labels)
    inputs = keras.Input(shape=(7,))
    activation = {"regression": None, "binary": "sigmoid", "multiclass": "softmax"}[task]
    model = keras.Model(inputs, keras.layers.Dense(outputs, activation=activation)(inputs))
    exported, info = export.production_model(model, prep, own_model=False)
    assert info.inputs == {"area": "number", "city": "text", "rooms": "number", "kind": "text"}
    assert sorted(x.name for x in exported.inputs) == sorted(prep.columns)  # named, not ordered
    import tensorflow as tf

    fed = {}
    for column in prep.columns:
        values = ROWS[[column]].to_numpy()
        text = column in prep.categories
        fed[column] = tf.constant(values.astype(str) if text else values.astype("float32"))
    x, unseen = prep.transform(ROWS)
    assert unseen == {"city": 1}
    expected = model.predict(x, verbose=0)
    if task == "binary":  # hpo predict --probabilities: both classes
        expected = np.concatenate([1 - expected, expected], axis=1)
    np.testing.assert_allclose(np.asarray(exported(fed)), expected, atol=1e-5)


def test_bad_formats_and_outputs_are_one_line(tmp_path):
    with pytest.raises(HpoError, match="one of keras, saved_model, onnx"):
        export.check_format("tflite")
    inputs = keras.Input(shape=(2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    with pytest.raises(HpoError, match=r"a keras model is written to a \.keras file"):
        export.write(model, "keras", tmp_path / "m.h5")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(HpoError, match="exists and is not a SavedModel"):
        export.write(model, "saved_model", tmp_path / "taken")
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
