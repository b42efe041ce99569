"""The real keras files in ../shared/datasets (or $HPO_SHARED_DATASETS): their shapes and
figures as keras' own loaders give them, prepared as the chapter-3 vectors, the word-id
sequences and the images, and read back from the cache. They read hundreds of MB, so they are
kept out of the unit loop; they skip when the files are absent (a failure under CI=true)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import SHARED_DATASETS

from hpo.data import builtin, keras_files
from hpo.data.arrays import unpacked

pytestmark = [
    pytest.mark.real_data,
    pytest.mark.skipif(
        not (SHARED_DATASETS / "imdb.npz").is_file(),
        reason=f"real datasets not found in {SHARED_DATASETS}",
    ),
]


def test_real_datasets_known_shapes_and_statistics(tmp_path, monkeypatch):
    """Figures from ../shared/datasets/README.md, computed there with keras' own loaders."""
    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("HPO_DATA_DIR", str(SHARED_DATASETS))
    raw = keras_files.load_raw("imdb", None, 10000)
    raw_imdb_first = raw.x_train.row(0).tolist()
    assert raw.x_train.row(0)[:12].tolist() == [
        1,
        14,
        22,
        16,
        43,
        530,
        973,
        1622,
        1385,
        65,
        458,
        4468,
    ]
    assert len(raw.x_train.row(0)) == 218
    assert raw.y_train[:10].tolist() == [1, 0, 0, 1, 0, 0, 1, 0, 1, 0]
    raw = keras_files.load_raw("reuters", None, 10000)
    assert (len(raw.x_train), len(raw.x_test)) == (8982, 2246)
    assert raw.x_train.row(0)[:13].tolist() == [1, 2, 2, 8, 43, 10, 447, 5, 25, 207, 270, 5, 3095]
    assert raw.y_train[:12].tolist() == [3, 4, 3, 4, 4, 4, 4, 3, 3, 16, 3, 3]
    raw = keras_files.load_raw("boston_housing", None)
    assert raw.x_train.shape == (404, 13) and raw.x_test.shape == (102, 13)
    assert raw.y_train[:5].tolist() == [15.2, 42.3, 50.0, 21.1, 17.7]
    assert raw.y_train.mean() == pytest.approx(22.3950, abs=1e-4)
    mnist = builtin.load("mnist")
    assert mnist.x_train.shape == (60000, 784)
    assert np.bincount(mnist.y_test).tolist() == [
        980,
        1135,
        1032,
        1010,
        982,
        892,
        958,
        1028,
        974,
        1009,
    ]
    imdb = builtin.load("imdb")
    assert imdb.x_train.shape == (25000, 1250) and imdb.x_train.dtype == np.uint8
    assert imdb.x_train.nbytes == 31_250_000  # the book's float64 copy is 2 GB
    first = unpacked(imdb, imdb.x_train[:1])[0]
    assert first.sum() == len(set(raw_imdb_first))
    assert imdb.y_train.sum() == 12500


def test_real_imdb_sequences_and_mnist_images(tmp_path, monkeypatch):
    """The real files: IMDB word ids at maxlen 500 in uint16 (25 MB a split) and MNIST images,
    prepared once, then read back from the cache."""
    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("HPO_DATA_DIR", str(SHARED_DATASETS))
    builtin._load_cached.cache_clear()
    start = time.perf_counter()
    imdb = builtin.load("imdb", input="sequence", maxlen=500)
    prepared_in = time.perf_counter() - start
    assert imdb.x_train.shape == (25000, 500) and imdb.x_train.dtype == np.uint16
    assert imdb.x_train.nbytes == 25_000_000 and imdb.y_train.sum() == 12500
    # x_train[0]: 218 ids (README), padded before; keras' first ids start it.
    first = np.asarray(imdb.x_train[0])
    assert (first[:282] == 0).all() and first[282:294].tolist() == [
        1, 14, 22, 16, 43, 530, 973, 1622, 1385, 65, 458, 4468,
    ]  # fmt: skip
    assert int(imdb.x_train.max()) == 9999
    mnist = builtin.load("mnist", input="image")
    assert mnist.x_train.shape == (60000, 28, 28, 1) and mnist.x_test.shape == (10000, 28, 28, 1)
    assert float(np.asarray(mnist.x_train).mean()) == pytest.approx(33.3184, abs=1e-4)
    builtin._load_cached.cache_clear()
    start = time.perf_counter()
    again = builtin.load("imdb", input="sequence", maxlen=500)
    assert isinstance(again.x_train, np.memmap)
    sizes = {p.name: sum(f.stat().st_size for f in p.iterdir()) for p in tmp_path.iterdir()}
    print(f"imdb sequence: prepared in {prepared_in:.1f}s, from cache in "
          f"{time.perf_counter() - start:.2f}s; cache sizes {sizes}")  # fmt: skip
