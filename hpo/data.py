"""Datasets prepared as chapter 3 prepares them, cached on disk, kept compact in memory.

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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hpo import cache, datasets
from hpo.errors import HpoError

if TYPE_CHECKING:
    from hpo.studyfile import StudySpec

log = logging.getLogger("hpo.data")
FORMAT = 2  # bump when the prepared layout changes, so old caches are not reused
TASKS = {
    "imdb": "binary",
    "reuters": "multiclass",
    "boston_housing": "regression",
    "mnist": "multiclass",
}
CLASSES = {"imdb": 1, "reuters": 46, "boston_housing": 1, "mnist": 10}
ARRAYS = ("x_train", "y_train", "x_test", "y_test")

# How often a prepared dataset came from where: tests and logs read it, nothing depends on it.
stats = {"memory_hits": 0, "disk_hits": 0, "prepared": 0}


@dataclass(frozen=True)
class Prepared:
    """Model-ready arrays; x_train/y_train is the whole training set, validation included."""

    name: str
    task: str
    n_outputs: int
    input_scale: float  # the model's first layer multiplies inputs by this
    n_features: int  # features per sample; when x is bit-packed, the number of bits to unpack
    packed: bool  # x holds np.packbits(multi_hot, axis=1)
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    # Own data (hpo.tabular): what was learned from the training rows, to prepare new rows.
    preparation: Any = None
    notes: tuple[str, ...] = ()  # one-liners on how own data was read (task inferred, test split)

    @property
    def layout(self) -> str:
        """How x is held: "packed" bits, or its dtype ("uint8" multi-hot or pixels, "float32")."""
        return "packed" if self.packed else str(self.x_train.dtype)


@dataclass(frozen=True)
class Validation:
    """How trials validate: a holdout at the start or end of the training set, or k folds.

    A holdout is N samples ("first:10000") or a percentage of the training set ("first:20%")."""

    kind: str  # "first" | "last" | "kfold"
    n: int
    percent: bool = False  # n is a percentage of the training samples

    @classmethod
    def parse(cls, text: str) -> Validation:
        kind, _, number = str(text).partition(":")
        percent = kind != "kfold" and number.endswith("%")
        number = number.removesuffix("%") if percent else number
        if kind not in ("first", "last", "kfold") or not number.isdigit():
            raise ValueError(
                'expected "first:N", "last:N" (a holdout of N samples, or N% of them) or "kfold:K"'
            )
        n = int(number)
        if kind == "kfold" and n < 2:
            raise ValueError(f"kfold needs at least 2 folds, got {n}")
        if n < 1 or (percent and n >= 100):
            raise ValueError("the holdout needs at least 1 sample and must leave some to train on")
        return cls(kind, n, percent)

    def __str__(self) -> str:
        return f"{self.kind}:{self.n}{'%' if self.percent else ''}"

    @property
    def folds(self) -> int:
        return self.n if self.kind == "kfold" else 1

    def holdout(self, total: int) -> int:
        """Validation samples of a holdout out of `total` training samples."""
        return max(1, round(total * self.n / 100)) if self.percent else self.n

    def minimum_rows(self) -> int:
        """The fewest training samples this scheme can run on (one to train on, one to check)."""
        if self.kind == "kfold":
            return self.n
        return 2 if self.percent else self.n + 1

    def splits(self, x: np.ndarray, y: np.ndarray):
        """Yield ((x_train, y_train), (x_val, y_val)) for each fold; holdouts are views."""
        total = len(x)
        if self.kind == "kfold":
            size = total // self.n
            if size < 1:
                raise HpoError(f"validation {self}: only {total} training samples")
            for i in range(self.n):
                lo, hi = i * size, (i + 1) * size
                keep = np.r_[0:lo, hi:total]
                yield (x[keep], y[keep]), (x[lo:hi], y[lo:hi])
            return
        n = self.holdout(total)
        if n >= total:
            raise HpoError(f"validation {self} leaves no training data ({total} samples)")
        if self.kind == "first":
            yield (x[n:], y[n:]), (x[:n], y[:n])
        else:
            yield (x[:-n], y[:-n]), (x[-n:], y[-n:])


def load_spec(spec: StudySpec, data_dir: str | Path | None = None) -> Prepared:
    """The prepared data of a study: a built-in dataset, or the user's own file ([data])."""
    if spec.data is None:
        return load(spec.dataset, data_dir, spec.num_words)
    from hpo import tabular

    own = tabular.load(
        spec.data,
        min_train_rows=spec.validation.minimum_rows(),
        why=f"validation {spec.validation} needs at least {spec.validation.minimum_rows()}",
    )
    prep = own.preparation
    return Prepared(
        name=spec.dataset,
        task=prep.task,
        n_outputs=prep.n_outputs,
        input_scale=spec.data.scale,
        n_features=prep.n_features,
        packed=False,
        x_train=own.x_train,
        y_train=own.y_train,
        x_test=own.x_test,
        y_test=own.y_test,
        preparation=prep,
        notes=own.notes,
    )


def load(name: str, data_dir: str | Path | None = None, num_words: int = 10000) -> Prepared:
    """The prepared dataset, loaded and vectorized at most once per process.

    The path, top to bottom: find keras' file locally (hpo.datasets), then this process'
    memory, then hpo's disk cache (hpo.cache), and only then read the file (or download it)
    and prepare it as the book does, caching the result."""
    if name not in datasets.BUILTIN:
        raise HpoError(f"unknown dataset {name!r} (built in: {', '.join(datasets.BUILTIN)})")
    source = datasets.find_local(name, data_dir)
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
        raw = datasets.read(name, source, num_words)
        log.info("dataset %s: prepared from %s, caching in %s", name, raw.source, folder)
        arrays = prepare(raw, name, num_words)
        cache.write_arrays(folder, arrays)
    scale = 1 / 255 if name == "mnist" else 1.0
    packed = name in ("imdb", "reuters")
    n_features = num_words if packed else int(np.prod(arrays["x_train"].shape[1:]))
    return Prepared(name, TASKS[name], CLASSES[name], scale, n_features, packed, **arrays)


def multi_hot(seqs: datasets.Sequences, num_words: int) -> np.ndarray:
    """The book's vectorize_sequences, in uint8 and without a Python loop over samples."""
    out = np.zeros((len(seqs), num_words), dtype=np.uint8)
    rows = np.repeat(np.arange(len(seqs)), np.diff(seqs.offsets))
    keep = seqs.tokens < num_words
    out[rows[keep], seqs.tokens[keep]] = 1
    return out


def prepare(raw: datasets.Raw, name: str, num_words: int) -> dict[str, np.ndarray]:
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


def unpacked(prepared: Prepared, x: np.ndarray) -> np.ndarray:
    """The plain uint8 feature matrix of `x` (rows of `prepared`), for readers and tests."""
    if not prepared.packed:
        return np.asarray(x)
    return np.unpackbits(x, axis=1, count=prepared.n_features)
