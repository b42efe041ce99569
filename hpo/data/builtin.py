"""The four built-in datasets prepared as chapter 3 prepares them, cached, kept compact.

- imdb, reuters: multi-hot vectors of the 10,000 most frequent words, bit-packed (np.packbits:
  1,250 bytes a review, 1/32 of float32 and 1/64 of the book's float64); the model's first
  layer unpacks each batch inside the compiled step.
- mnist: 784 raw uint8 pixels; the model's first layer divides by 255.
- boston_housing: 13 features standardized with the training set's mean and std only.

The prepared arrays are written once to hpo's cache folder (hpo.cache: $HPO_CACHE_DIR, default
~/.cache/hpo) as .npy files and memory-mapped on later loads, so a second process or a second
trial neither re-reads keras' files nor re-vectorizes, and workers on one machine share pages.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np

from hpo import cache
from hpo.data import keras_files
from hpo.data.arrays import Prepared
from hpo.errors import HpoError

log = logging.getLogger("hpo.data")
FORMAT = 2  # bump when the prepared layout changes, so old caches are not reused
DATASET_TASKS = {
    "imdb": "binary",
    "reuters": "multiclass",
    "boston_housing": "regression",
    "mnist": "multiclass",
}
CLASSES = {"imdb": 1, "reuters": 46, "boston_housing": 1, "mnist": 10}
ARRAYS = ("x_train", "y_train", "x_test", "y_test")

# How often a prepared dataset came from where: tests and logs read it, nothing depends on it.
stats = {"memory_hits": 0, "disk_hits": 0, "prepared": 0}


def load(name: str, data_dir: str | Path | None = None, num_words: int = 10000) -> Prepared:
    """The prepared dataset, loaded and vectorized at most once per process.

    The path, top to bottom: find keras' file locally (hpo.data.keras_files), then this process'
    memory, then hpo's disk cache (hpo.cache), and only then read the file (or download it)
    and prepare it as the book does, caching the result."""
    if name not in keras_files.BUILTIN:
        raise HpoError(f"unknown dataset {name!r} (built in: {', '.join(keras_files.BUILTIN)})")
    source = keras_files.find_local(name, data_dir)
    before = _load_cached.cache_info().hits
    prepared = _load_cached(name, num_words, source and source.resolve(), cache.root())
    if _load_cached.cache_info().hits > before:
        stats["memory_hits"] += 1
    return prepared


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, num_words: int, source: Path | None, root: Path) -> Prepared:
    folder = root / f"{name}-{num_words}-{_fingerprint(name, num_words, source)}"
    arrays = cache.read_arrays(folder, ARRAYS)
    if arrays is not None:
        stats["disk_hits"] += 1
        log.info("dataset %s: prepared arrays read from cache %s", name, folder)
    else:
        stats["prepared"] += 1
        raw = keras_files.read(name, source, num_words)
        log.info("dataset %s: prepared from %s, caching in %s", name, raw.source, folder)
        arrays = prepare(raw, name, num_words)
        cache.write_arrays(folder, arrays)
    scale = 1 / 255 if name == "mnist" else 1.0
    packed = name in ("imdb", "reuters")
    n_features = num_words if packed else int(np.prod(arrays["x_train"].shape[1:]))
    return Prepared(name, DATASET_TASKS[name], CLASSES[name], scale, n_features, packed, **arrays)


def multi_hot(seqs: keras_files.Sequences, num_words: int) -> np.ndarray:
    """The book's vectorize_sequences, in uint8 and without a Python loop over samples."""
    out = np.zeros((len(seqs), num_words), dtype=np.uint8)
    rows = np.repeat(np.arange(len(seqs)), np.diff(seqs.offsets))
    keep = seqs.tokens < num_words
    out[rows[keep], seqs.tokens[keep]] = 1
    return out


def prepare(raw: keras_files.Raw, name: str, num_words: int) -> dict[str, np.ndarray]:
    if name in ("imdb", "reuters"):
        return {
            "x_train": np.packbits(multi_hot(raw.x_train, num_words), axis=1),
            "y_train": np.asarray(raw.y_train, dtype=np.int64),
            "x_test": np.packbits(multi_hot(raw.x_test, num_words), axis=1),
            "y_test": np.asarray(raw.y_test, dtype=np.int64),
        }
    if name == "mnist":
        return {
            "x_train": np.asarray(raw.x_train, dtype=np.uint8).reshape(len(raw.x_train), -1),
            "y_train": np.asarray(raw.y_train, dtype=np.int64),
            "x_test": np.asarray(raw.x_test, dtype=np.uint8).reshape(len(raw.x_test), -1),
            "y_test": np.asarray(raw.y_test, dtype=np.int64),
        }
    x_train = np.asarray(raw.x_train, dtype=np.float64)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std[std == 0] = 1.0  # a constant column stays 0 instead of becoming NaN
    return {
        "x_train": ((x_train - mean) / std).astype(np.float32),
        "y_train": np.asarray(raw.y_train, dtype=np.float32),
        "x_test": ((np.asarray(raw.x_test, dtype=np.float64) - mean) / std).astype(np.float32),
        "y_test": np.asarray(raw.y_test, dtype=np.float32),
    }


def _fingerprint(name: str, num_words: int, source: Path | None) -> str:
    stat = source.stat() if source else None
    size, mtime = (stat.st_size, stat.st_mtime_ns) if stat else (None, None)
    return cache.key(FORMAT, name, num_words, str(source), size, mtime)
