"""Dataset preparation: keras' loading conventions, the book's vectorization, the on-disk cache."""

import numpy as np
import pytest
from conftest import write_tiny_datasets

from hpo.data import builtin, keras_files
from hpo.data.arrays import unpacked
from hpo.data.spec import Validation
from hpo.errors import HpoError


def book_imdb(path, num_words):
    """keras.datasets.imdb.load_data + the book's vectorize_sequences, written the slow way."""
    f = np.load(path, allow_pickle=True)
    rng = np.random.RandomState(113)
    idx = np.arange(len(f["x_train"]))
    rng.shuffle(idx)
    x_train, y_train = f["x_train"][idx], f["y_train"][idx]
    idx = np.arange(len(f["x_test"]))
    rng.shuffle(idx)
    x_test = f["x_test"][idx]

    def words(seq):
        return [w if w < num_words else 2 for w in [1] + [w + 3 for w in seq]]

    def vectorize(seqs):
        out = np.zeros((len(seqs), num_words))
        for i, seq in enumerate(seqs):
            out[i, words(seq)] = 1.0
        return out

    return vectorize(x_train), y_train, vectorize(x_test)


def test_imdb_matches_keras_and_the_book(workdir):
    prepared = builtin.load("imdb", num_words=100)
    x_train, y_train, x_test = book_imdb(workdir / "datasets" / "imdb.npz", 100)
    assert prepared.packed and prepared.n_features == 100
    assert prepared.x_train.shape == (400, 13)  # 100 bits in 13 bytes: 1/64 of float64
    np.testing.assert_array_equal(unpacked(prepared, prepared.x_train), x_train)
    np.testing.assert_array_equal(prepared.y_train, y_train)
    np.testing.assert_array_equal(unpacked(prepared, prepared.x_test), x_test)
    assert prepared.task == "binary" and prepared.input_scale == 1.0


def test_reuters_split_and_classes(workdir):
    prepared = builtin.load("reuters", num_words=100)
    x_train = unpacked(prepared, prepared.x_train)
    assert x_train.shape == (400, 100) and prepared.x_test.shape == (100, 13)
    assert prepared.n_outputs == 46
    assert set(x_train[:, 1]) == {1}  # every wire starts with the start character


def test_boston_standardized_with_training_statistics_only(workdir):
    prepared = builtin.load("boston_housing")
    f = np.load(workdir / "datasets" / "boston_housing.npz")
    idx = np.arange(120)
    np.random.RandomState(113).shuffle(idx)
    train, test = f["x"][idx[:96]], f["x"][idx[96:]]
    assert prepared.x_train.shape == (96, 13) and prepared.x_test.shape == (24, 13)
    np.testing.assert_allclose(prepared.x_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(prepared.x_train.std(axis=0), 1, atol=1e-5)
    expected = (test - train.mean(axis=0)) / train.std(axis=0)
    np.testing.assert_allclose(prepared.x_test, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(prepared.y_train, f["y"][idx[:96]], rtol=1e-6)


def test_mnist_flat_pixels_scaled_by_the_model(workdir):
    prepared = builtin.load("mnist")
    assert prepared.x_train.shape == (300, 784) and prepared.x_train.dtype == np.uint8
    assert prepared.input_scale == pytest.approx(1 / 255)


def test_cache_is_written_once_and_reused(workdir):
    before = dict(builtin.stats)
    first = builtin.load("imdb", num_words=100)
    assert builtin.stats["prepared"] == before["prepared"] + 1
    assert builtin.load("imdb", num_words=100) is first  # same process: no work at all
    assert builtin.stats["memory_hits"] == before["memory_hits"] + 1
    builtin._load_cached.cache_clear()  # as a new process would
    again = builtin.load("imdb", num_words=100)
    assert builtin.stats["disk_hits"] == before["disk_hits"] + 1
    assert builtin.stats["prepared"] == before["prepared"] + 1
    assert isinstance(again.x_train, np.memmap)  # workers share pages instead of copying
    np.testing.assert_array_equal(again.x_train, first.x_train)


def test_changed_source_file_invalidates_the_cache(workdir):
    builtin.load("mnist")
    write_tiny_datasets(workdir / "datasets", seed=1)
    builtin._load_cached.cache_clear()
    before = builtin.stats["prepared"]
    builtin.load("mnist")
    assert builtin.stats["prepared"] == before + 1


def test_validation_splits():
    x, y = np.arange(10)[:, None], np.arange(10)
    (((xt, _), (xv, _)),) = Validation.parse("first:3").splits(x, y)
    assert xv[:, 0].tolist() == [0, 1, 2] and xt[:, 0].tolist() == list(range(3, 10))
    (((xt, _), (xv, _)),) = Validation.parse("last:3").splits(x, y)
    assert xv[:, 0].tolist() == [7, 8, 9]
    folds = list(Validation.parse("kfold:4").splits(x, y))
    assert [len(v[0]) for _, v in folds] == [2, 2, 2, 2]
    assert sorted(int(i) for _, v in folds for i in v[0][:, 0]) == list(range(8))
    with pytest.raises(HpoError, match="leaves no training data"):
        list(Validation.parse("first:10").splits(x, y))
    # A holdout may be a share of the training samples: 20% of 10 is 2.
    (((xt, _), (xv, _)),) = Validation.parse("last:20%").splits(x, y)
    assert xv[:, 0].tolist() == [8, 9] and len(xt) == 8
    assert str(Validation.parse("first:20%")) == "first:20%"
    assert Validation.parse("kfold:4").minimum_rows() == 4
    for bad in ("first:100%", "first:0%", "kfold:20%", "first:x%"):
        with pytest.raises(ValueError):
            Validation.parse(bad)


def test_missing_data_is_one_clear_line(workdir, monkeypatch):
    with pytest.raises(HpoError, match="unknown dataset 'cifar'"):
        builtin.load("cifar")
    with pytest.raises(HpoError, match="--data-dir /nowhere: no such directory"):
        builtin.load("imdb", data_dir="/nowhere")
    (workdir / "datasets" / "imdb.npz").write_bytes(b"not a zip file")
    with pytest.raises(HpoError, match="not a readable keras imdb file"):
        builtin.load("imdb", num_words=100)


def test_download_failure_says_how_to_fix(workdir, monkeypatch):
    import keras

    monkeypatch.setattr(keras_files, "find_local", lambda name, data_dir: None)

    def offline(**kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(keras.datasets.imdb, "load_data", offline)
    with pytest.raises(HpoError, match=r"keras download failed.*HPO_DATA_DIR"):
        builtin.load("imdb", num_words=100)


def test_damaged_cache_is_rebuilt(workdir):
    builtin.load("mnist")
    (cached,) = [p for p in (workdir / "cache").iterdir() if p.name.startswith("mnist-")]
    (cached / "x_train.npy").write_bytes((cached / "x_train.npy").read_bytes()[:1000])
    builtin._load_cached.cache_clear()
    before = builtin.stats["prepared"]
    assert builtin.load("mnist").x_train.shape == (300, 784)
    assert builtin.stats["prepared"] == before + 1


def test_kept_rows_are_the_rows_a_trial_predicts_in_its_order():
    x, y = np.arange(11)[:, None], np.arange(11)
    for text in ("first:3", "last:3", "last:20%", "kfold:3", "kfold:4"):
        validation = Validation.parse(text)
        held = np.concatenate([vy for _, (_, vy) in validation.splits(x, y)])
        np.testing.assert_array_equal(y[validation.kept_rows(len(y))], held)
    assert Validation.parse("kfold:4").kept_rows(11) == slice(0, 8)  # 3 rows in no holdout
    assert Validation.parse("last:3").kept_rows(11) == slice(8, 11)
