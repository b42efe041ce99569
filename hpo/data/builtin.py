"""The four built-in datasets prepared as the book prepares them, cached, kept compact.

The default input ("vectors") is chapter 3's:
- imdb, reuters: multi-hot vectors of the 10,000 most frequent words, bit-packed (np.packbits:
  1,250 bytes a review, 1/32 of float32 and 1/64 of the book's float64); the model's first
  layer unpacks each batch inside the compiled step.
- mnist: 784 raw uint8 pixels; the model's first layer divides by 255.
- boston_housing: 13 features standardized with the training set's mean and std only.

The later chapters' inputs, asked for by [study] input:
- "sequence" (imdb, reuters; chapter 11): each text's word ids as keras' load_data gives them,
  padded or cut to `maxlen` as keras.utils.pad_sequences does by default (zeros before, the
  last `maxlen` ids kept), in uint16 (int32 for a vocabulary above 65,536): 1,000 bytes an
  IMDB review at maxlen 500.
- "image" (mnist; chapter 8): (28, 28, 1) uint8 pixels; the model divides by 255.

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
DEFAULT_MAXLEN = 500  # "sequence" input: word ids per sample when the caller gives none
DATASET_TASKS = {
    "imdb": "binary",
    "reuters": "multiclass",
    "boston_housing": "regression",
    "mnist": "multiclass",
}
CLASSES = {"imdb": 1, "reuters": 46, "boston_housing": 1, "mnist": 10}
# The inputs each dataset can be fed as, its chapter-3 "vectors" first.
INPUTS = {
    "imdb": ("vectors", "sequence"),
    "reuters": ("vectors", "sequence"),
    "mnist": ("vectors", "image"),
    "boston_housing": ("vectors",),
}
TEXTS = ("imdb", "reuters")
ARRAYS = ("x_train", "y_train", "x_test", "y_test")

# How often a prepared dataset came from where: tests and logs read it, nothing depends on it.
stats = {"memory_hits": 0, "disk_hits": 0, "prepared": 0}


def load(
    name: str,
    data_dir: str | Path | None = None,
    num_words: int = 10000,
    input: str = "vectors",
    maxlen: int | None = None,
) -> Prepared:
    """The prepared dataset, loaded and vectorized at most once per process.

    The path, top to bottom: find keras' file locally (hpo.data.keras_files), then this process'
    memory, then hpo's disk cache (hpo.cache), and only then read the file (or download it)
    and prepare it as the book does, caching the result. `input` picks the form (INPUTS);
    `maxlen` is the length of a "sequence" (DEFAULT_MAXLEN when None), ignored otherwise."""
    if name not in keras_files.BUILTIN:
        raise HpoError(f"unknown dataset {name!r} (built in: {', '.join(keras_files.BUILTIN)})")
    if input not in INPUTS[name]:
        raise HpoError(f"dataset {name}: fed as {' or '.join(INPUTS[name])}, not {input!r}")
    if input == "sequence":
        maxlen = DEFAULT_MAXLEN if maxlen is None else maxlen
        if isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 1:
            raise HpoError(f"dataset {name}: maxlen must be a positive integer, got {maxlen!r}")
    else:
        maxlen = None
    source = keras_files.find_local(name, data_dir)
    before = _load_cached.cache_info().hits
    prepared = _load_cached(
        name, num_words, source and source.resolve(), cache.root(), input, maxlen
    )
    if _load_cached.cache_info().hits > before:
        stats["memory_hits"] += 1
    return prepared


@functools.lru_cache(maxsize=8)
def _load_cached(
    name: str, num_words: int, source: Path | None, root: Path, input: str, maxlen: int | None
) -> Prepared:
    # The vectors keep the folder names of the caches written before other inputs existed.
    kind = "" if input == "vectors" else f"{input}{maxlen or ''}-"
    folder = (
        root / f"{name}-{kind}{num_words}-{_fingerprint(name, num_words, source, input, maxlen)}"
    )
    arrays = cache.read_arrays(folder, ARRAYS)
    if arrays is not None:
        stats["disk_hits"] += 1
        log.info("dataset %s: prepared arrays read from cache %s", name, folder)
    else:
        stats["prepared"] += 1
        raw = keras_files.read(name, source, num_words)
        log.info("dataset %s: prepared from %s, caching in %s", name, raw.source, folder)
        arrays = prepare(raw, name, num_words, input, maxlen)
        cache.write_arrays(folder, arrays)
    scale = 1 / 255 if name == "mnist" else 1.0
    packed = name in TEXTS and input == "vectors"
    n_features = num_words if packed else int(np.prod(arrays["x_train"].shape[1:]))
    return Prepared(
        name,
        DATASET_TASKS[name],
        CLASSES[name],
        scale,
        n_features,
        packed,
        **arrays,
        input_kind=input,
        num_words=num_words if name in TEXTS else None,
    )


def multi_hot(seqs: keras_files.Sequences, num_words: int) -> np.ndarray:
    """The book's vectorize_sequences, in uint8 and without a Python loop over samples."""
    out = np.zeros((len(seqs), num_words), dtype=np.uint8)
    rows = np.repeat(np.arange(len(seqs)), np.diff(seqs.offsets))
    keep = seqs.tokens < num_words
    out[rows[keep], seqs.tokens[keep]] = 1
    return out


def id_dtype(num_words: int) -> np.dtype:
    """The smallest dtype that holds word ids below `num_words` (0 pads)."""
    return np.dtype(np.uint16 if num_words <= 2**16 else np.int32)


def padded(seqs: keras_files.Sequences, maxlen: int, dtype: np.dtype) -> np.ndarray:
    """keras.utils.pad_sequences(rows, maxlen) with its defaults ("pre" padding with 0, "pre"
    truncation: a row's last `maxlen` ids kept), without a Python loop over rows."""
    out = np.zeros((len(seqs), maxlen), dtype=dtype)
    ends, starts = seqs.offsets[1:], seqs.offsets[:-1]
    columns = np.arange(maxlen) - maxlen
    for lo in range(0, len(seqs), 4096):  # a block of rows' token positions at a time
        hi = min(lo + 4096, len(seqs))
        where = ends[lo:hi, None] + columns  # column j of row i: token ends[i] - maxlen + j
        inside = where >= starts[lo:hi, None]
        out[lo:hi][inside] = seqs.tokens[where[inside]]
    return out


def prepare(
    raw: keras_files.Raw,
    name: str,
    num_words: int,
    input: str = "vectors",
    maxlen: int | None = None,
) -> dict[str, np.ndarray]:
    """The model-ready arrays of `raw` in the form `input` (see the module's docstring)."""
    if input == "sequence":
        dtype = id_dtype(num_words)
        return {
            "x_train": padded(raw.x_train, maxlen or DEFAULT_MAXLEN, dtype),
            "y_train": np.asarray(raw.y_train, dtype=np.int64),
            "x_test": padded(raw.x_test, maxlen or DEFAULT_MAXLEN, dtype),
            "y_test": np.asarray(raw.y_test, dtype=np.int64),
        }
    if name in TEXTS:
        return {
            "x_train": np.packbits(multi_hot(raw.x_train, num_words), axis=1),
            "y_train": np.asarray(raw.y_train, dtype=np.int64),
            "x_test": np.packbits(multi_hot(raw.x_test, num_words), axis=1),
            "y_test": np.asarray(raw.y_test, dtype=np.int64),
        }
    if name == "mnist":

        def pixels(x: np.ndarray) -> np.ndarray:
            x = np.asarray(x, dtype=np.uint8)  # chapter 8's (28, 28, 1) images, or 784 values
            return x.reshape(*x.shape, 1) if input == "image" else x.reshape(len(x), -1)

        return {
            "x_train": pixels(raw.x_train),
            "y_train": np.asarray(raw.y_train, dtype=np.int64),
            "x_test": pixels(raw.x_test),
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


def _fingerprint(
    name: str,
    num_words: int,
    source: Path | None,
    input: str = "vectors",
    maxlen: int | None = None,
) -> str:
    stat = source.stat() if source else None
    size, mtime = (stat.st_size, stat.st_mtime_ns) if stat else (None, None)
    parts = [FORMAT, name, num_words, str(source), size, mtime]
    if input != "vectors":  # the vectors' key is the one they had before other inputs existed
        parts += [input, maxlen]
    return cache.key(*parts)
