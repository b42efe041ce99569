"""The book's later inputs for the built-in datasets: word-id sequences (chapter 11) padded as
keras.utils.pad_sequences pads them, 28x28x1 images (chapter 8), cached like the vectors, and
trained on by the fused loop and by model.fit."""

from __future__ import annotations

import numpy as np
import pytest

from hpo import cache
from hpo.backend import import_keras
from hpo.data import builtin
from hpo.data.arrays import cut_to
from hpo.data.load import load_source
from hpo.data.spec import DataSpec, Source, Validation
from hpo.errors import HpoError
from hpo.train import build_function, engine
from hpo.train import model as model_lib

keras = import_keras()


def keras_words(path, name: str, num_words: int):
    """keras.datasets.<name>.load_data(num_words) written the slow way: shuffle with seed 113,
    a start char 1, ids + 3, ids at or above num_words → 2 (list of lists per split)."""
    f = np.load(path, allow_pickle=True)  # the tests' own tiny file
    rng = np.random.RandomState(113)

    def shuffled(x, y):
        idx = np.arange(len(x))
        rng.shuffle(idx)
        return x[idx], y[idx]

    if name == "imdb":
        (x_train, y_train), (x_test, y_test) = (
            shuffled(f["x_train"], f["y_train"]),
            shuffled(f["x_test"], f["y_test"]),
        )
    else:
        x, y = shuffled(f["x"], f["y"])
        cut = int(len(x) * 0.8)
        x_train, y_train, x_test, y_test = x[:cut], y[:cut], x[cut:], y[cut:]

    def words(seq):
        return [w if w < num_words else 2 for w in [1] + [w + 3 for w in seq]]

    return [words(s) for s in x_train], y_train, [words(s) for s in x_test], y_test


@pytest.mark.parametrize("name", ["imdb", "reuters"])
@pytest.mark.parametrize("maxlen", [12, 40])  # the tiny texts are 6 to 30 ids: cut, and padded
def test_sequences_are_keras_word_ids_through_pad_sequences(workdir, name, maxlen):
    prepared = builtin.load(name, num_words=100, input="sequence", maxlen=maxlen)
    x_train, y_train, x_test, y_test = keras_words(workdir / "datasets" / f"{name}.npz", name, 100)
    assert prepared.x_train.dtype == np.uint16 and prepared.x_train.shape[1] == maxlen
    np.testing.assert_array_equal(prepared.x_train, keras.utils.pad_sequences(x_train, maxlen))
    np.testing.assert_array_equal(prepared.x_test, keras.utils.pad_sequences(x_test, maxlen))
    np.testing.assert_array_equal(prepared.y_train, y_train)
    np.testing.assert_array_equal(prepared.y_test, y_test)
    assert (prepared.input_kind, prepared.num_words, prepared.packed) == ("sequence", 100, False)
    assert (prepared.n_features, prepared.input_scale, prepared.layout) == (maxlen, 1.0, "uint16")
    inputs = build_function.inputs_of(prepared)
    assert (inputs.kind, inputs.shape, inputs.dtype, inputs.num_words) == (
        "sequence",
        (maxlen,),
        "uint16",
        100,
    )


def test_a_vocabulary_above_uint16_is_held_in_int32(workdir):
    assert builtin.id_dtype(65_536) == np.uint16 and builtin.id_dtype(65_537) == np.int32
    prepared = builtin.load("imdb", num_words=70_000, input="sequence", maxlen=8)
    assert prepared.x_train.dtype == np.int32


def test_sequences_are_cached_by_kind_and_maxlen_and_memory_mapped(workdir):
    before = dict(builtin.stats)
    vectors = builtin.load("imdb", num_words=100)
    first = builtin.load("imdb", num_words=100, input="sequence", maxlen=20)
    builtin.load("imdb", num_words=100, input="sequence", maxlen=30)
    assert builtin.stats["prepared"] == before["prepared"] + 3  # three forms, three caches
    assert builtin.load("imdb", num_words=100, input="sequence", maxlen=20) is first
    assert builtin.stats["memory_hits"] == before["memory_hits"] + 1
    builtin._load_cached.cache_clear()  # as a new process would
    again = builtin.load("imdb", num_words=100, input="sequence", maxlen=20)
    assert builtin.stats["disk_hits"] == before["disk_hits"] + 1
    assert isinstance(again.x_train, np.memmap) and again.x_train.dtype == np.uint16
    np.testing.assert_array_equal(again.x_train, first.x_train)
    # The vectors' cache folder is the one written before other inputs existed: not rebuilt.
    source = (workdir / "datasets" / "imdb.npz").resolve()
    stat = source.stat()
    key = cache.key(builtin.FORMAT, "imdb", 100, str(source), stat.st_size, stat.st_mtime_ns)
    folders = sorted(p.name for p in (workdir / "cache").iterdir())
    assert f"imdb-100-{key}" in folders and len(folders) == 3
    assert (vectors.input_kind, vectors.num_words, vectors.layout) == ("vectors", 100, "packed")


def test_cut_to_is_pad_sequences_at_the_shorter_maxlen(workdir):
    prepared = builtin.load("reuters", num_words=100, input="sequence", maxlen=25)
    x_train, _, x_test, _ = keras_words(workdir / "datasets" / "reuters.npz", "reuters", 100)
    for maxlen in (1, 7, 16, 25):
        cut = cut_to(prepared, maxlen)
        np.testing.assert_array_equal(cut.x_train, keras.utils.pad_sequences(x_train, maxlen))
        np.testing.assert_array_equal(cut.x_test, keras.utils.pad_sequences(x_test, maxlen))
        assert cut.n_features == maxlen and cut.input_kind == "sequence"
        assert np.shares_memory(cut.x_train, prepared.x_train)  # a view, not a copy
    with pytest.raises(HpoError, match=r"^maxlen: 26 is above the study's maxlen 25") as error:
        cut_to(prepared, 26)
    assert "\n" not in str(error.value)
    with pytest.raises(HpoError, match="must be a positive integer"):
        cut_to(prepared, 0)
    with pytest.raises(HpoError, match='only for input = "sequence"'):
        cut_to(builtin.load("reuters", num_words=100), 10)


def test_mnist_images_are_28_by_28_by_1_pixels(workdir):
    image = builtin.load("mnist", input="image")
    flat = builtin.load("mnist")
    assert image.x_train.shape == (300, 28, 28, 1) and image.x_train.dtype == np.uint8
    assert (image.input_kind, image.n_features, image.num_words) == ("image", 784, None)
    assert image.input_scale == pytest.approx(1 / 255)
    np.testing.assert_array_equal(image.x_train.reshape(300, -1), flat.x_train)
    np.testing.assert_array_equal(image.x_test.reshape(100, -1), flat.x_test)
    builtin._load_cached.cache_clear()
    assert isinstance(builtin.load("mnist", input="image").x_train, np.memmap)
    inputs = build_function.inputs_of(image)
    assert (inputs.kind, inputs.shape, inputs.dtype) == ("image", (28, 28, 1), "uint8")


def test_an_input_the_dataset_does_not_have_is_one_line(workdir):
    with pytest.raises(HpoError, match=r"^dataset boston_housing: fed as vectors, not 'image'$"):
        builtin.load("boston_housing", input="image")
    with pytest.raises(HpoError, match="fed as vectors or sequence, not 'image'"):
        builtin.load("imdb", input="image")
    with pytest.raises(HpoError, match="maxlen must be a positive integer"):
        builtin.load("imdb", input="sequence", maxlen=0)


def test_load_source_passes_the_input_and_maxlen(workdir):
    validation = Validation.parse("first:50")
    source = Source("imdb", validation, num_words=100, input="sequence", maxlen=16)
    assert load_source(source).x_train.shape == (400, 16)
    assert load_source(Source("mnist", validation, input="image")).x_train.ndim == 4
    assert load_source(Source("mnist", validation)).input_kind == "vectors"
    csv = workdir / "own.csv"
    csv.write_text("a,b,target\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(40)))
    own = load_source(Source("own.csv", Validation.parse("first:5"), table=DataSpec(csv)))
    assert own.input_kind == "table" and build_function.inputs_of(own).kind == "table"


PARAMS = {
    "layers": 1,
    "units": 16,
    "activation": "relu",
    "loss": "sparse_categorical_crossentropy",
    "optimizer": "rmsprop",
    "learning_rate": 0.001,
    "batch_size": 64,
    "dropout": 0.0,
}


def test_the_dense_model_on_images_trains_in_the_fused_loop_and_in_fit(workdir):
    data = builtin.load("mnist", input="image")
    model = model_lib.build(PARAMS, data)
    assert model.layers[1].name == "flatten" and model.layers[1].output.shape == (None, 784)
    x, y = data.x_train, model_lib.targets(data.y_train, data.task, PARAMS["loss"], 10)
    model.fit(x[:200], y[:200], batch_size=64, epochs=1, verbose=0)
    fused = model_lib.build(PARAMS, data)
    trainer = engine.FusedTrainer(
        fused,
        loss=PARAMS["loss"],
        task=data.task,
        train=(x[:200], y[:200]),
        validation=(x[200:], y[200:]),
        batch_size=64,
        validation_batch_size=256,
        seed=0,
    )
    before = [w.copy() for w in fused.get_weights()]
    logs = trainer.run_epoch()
    trainer.write_back()
    assert np.isfinite(logs["loss"]) and 0 <= logs["val_accuracy"] <= 1
    assert any(not np.array_equal(a, b) for a, b in zip(before, fused.get_weights(), strict=True))
    # Stacked k-fold models flatten each fold's image apart: (batch, folds, 784).
    stacked = model_lib.build(PARAMS, data, folds=3)
    assert stacked.layers[1].output.shape == (None, 3, 784)


def test_an_embedding_model_trains_on_uint16_ids_in_the_fused_loop(workdir):
    data = builtin.load("imdb", num_words=100, input="sequence", maxlen=32)
    inputs = build_function.inputs_of(data)
    ids = inputs.input()
    x = keras.layers.Embedding(inputs.num_words, 8)(ids)
    x = keras.layers.GlobalAveragePooling1D()(x)
    model = keras.Model(ids, keras.layers.Dense(1, activation="sigmoid")(x))
    model.compile(
        "rmsprop", "binary_crossentropy", metrics=[keras.metrics.BinaryAccuracy(name="accuracy")]
    )
    y = data.y_train.astype("float32")[:, None]
    trainer = engine.FusedTrainer(
        model,
        loss="binary_crossentropy",
        task="binary",
        train=(data.x_train[100:], y[100:]),
        validation=(data.x_train[:100], y[:100]),
        batch_size=32,
        validation_batch_size=256,
        seed=0,
    )
    assert (
        trainer.cache.inputs("dense", data.x_train[100:], data.x_train[:100])[0].dtype == "uint16"
    )
    before = model.get_weights()[0].copy()
    logs = trainer.run_epoch()
    trainer.write_back()
    assert np.isfinite(logs["loss"]) and not np.array_equal(before, model.get_weights()[0])
