"""What data a study trains on, as the data stage needs to know it: no study file here.

- `Source`: a built-in dataset (its name and vocabulary) or the user's own file, and the
  validation scheme the rows must fit. The study stage (hpo.study) builds one from a study
  file; the data stage never sees the rest of the study.
- `Validation`: a holdout ("first:10000", "last:20%") or k folds ("kfold:4").
- `DataSpec`: a study file's [data] table, parsed and checked (`parse_table`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpo.data.files import file_kind, shape_of, unknown_type
from hpo.errors import HpoError

TASKS = ("binary", "multiclass", "regression")


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

    def kept_rows(self, total: int) -> slice:
        """The training rows a trial predicts while it validates, in the order it predicts
        them: the holdout, or the k folds' held-out rows one after another (the last
        `total % k` rows are in no fold's holdout)."""
        if self.kind == "kfold":
            return slice(0, (total // self.n) * self.n)
        n = self.holdout(total)
        return slice(0, n) if self.kind == "first" else slice(total - n, total)

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


KEYS = (
    "train",
    "test",
    "target",
    "drop",
    "categorical",
    "test_fraction",
    "split_seed",
    "standardize",
    "scale",
)


@dataclass(frozen=True)
class DataSpec:
    """A study file's [data] table: where the user's data is and how to prepare it."""

    train: Path  # absolute path of the training file (.csv, .parquet, .npz)
    test: Path | None = None  # optional separate test file (same kind as train)
    target: str = "target"  # target column (csv/parquet); ignored for .npz
    drop: tuple[str, ...] = ()  # columns to drop before anything else
    categorical: tuple[str, ...] = ()  # columns to one-hot encode (strings or ints)
    test_fraction: float = 0.2  # held out when there is no test file/arrays; 0 < f < 1
    split_seed: int = 0  # seeds the shuffle of rows (always done) and the test split
    standardize: bool = True  # numeric features → (x - train mean) / train std
    # With standardize = false: the model's first layer multiplies x by this (1/255 for
    # 0-255 pixels), so uint8 data stays uint8 in memory, as the built-in MNIST does.
    scale: float = 1.0
    task: str | None = None  # stated task, or None to infer

    @property
    def kind(self) -> str:
        """ "table" (.csv, .parquet) or "arrays" (.npz)."""
        return shape_of(file_kind(self.train))

    def record(self) -> dict:
        """JSON-ready, for the study's user attrs."""
        return {
            "train": str(self.train),
            "test": None if self.test is None else str(self.test),
            "target": self.target,
            "drop": list(self.drop),
            "categorical": list(self.categorical),
            "test_fraction": self.test_fraction,
            "split_seed": self.split_seed,
            "standardize": self.standardize,
            "scale": self.scale,
            "task": self.task,
        }


def _path(value: Any, key: str, source: str, base_dir: Path) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise HpoError(f"{source}: data.{key}: must be a file path, got {value!r}")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path(base_dir).expanduser() / path
    path = Path(os.path.abspath(path))
    if file_kind(path) is None:
        raise HpoError(f"{source}: data.{key}: {path.name}: {unknown_type(path)}")
    return path


def _names(value: Any, key: str, source: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise HpoError(f"{source}: data.{key}: must be a list of column names, got {value!r}")
    for name in value:
        if value.count(name) > 1:
            raise HpoError(f"{source}: data.{key}: names {name!r} twice")
    return tuple(value)


def parse_table(table: dict, source: str, base_dir: Path) -> DataSpec:
    """The study file's [data] table → DataSpec. Paths are relative to base_dir (the study
    file's folder) unless absolute, ~ expanded. Every problem is one line
    f"{source}: data.{key}: ...". Does not check that files exist (load() does)."""
    if not isinstance(table, dict):
        raise HpoError(f"{source}: [data] must be a table")
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise HpoError(
            f"{source}: data.{unknown[0]}: unknown key (allowed: {', '.join(sorted(KEYS))})"
        )
    if "train" not in table:
        raise HpoError(f"{source}: data.train: missing (the training file: .csv, .parquet or .npz)")
    train = _path(table["train"], "train", source, base_dir)
    test = None
    if "test" in table:
        test = _path(table["test"], "test", source, base_dir)
        if shape_of(file_kind(test)) != shape_of(file_kind(train)):
            raise HpoError(
                f"{source}: data.test: {test.name} is not the same kind of file as "
                f"{train.name} (a table with a table, .npz with .npz)"
            )
        if "test_fraction" in table:
            raise HpoError(
                f"{source}: data.test_fraction: not used with data.test (the test file is the "
                "test set); remove one of them"
            )
    arrays = shape_of(file_kind(train)) == "arrays"
    for key in ("drop", "categorical"):
        if key in table and arrays:
            raise HpoError(f"{source}: data.{key}: only for tables (.csv, .parquet), not .npz")
    target = table.get("target", "target")
    if not isinstance(target, str) or not target:
        raise HpoError(f"{source}: data.target: must be a column name, got {target!r}")
    drop = _names(table.get("drop", []), "drop", source)
    categorical = _names(table.get("categorical", []), "categorical", source)
    for key, names in (("drop", drop), ("categorical", categorical)):
        if target in names and not arrays:
            raise HpoError(f"{source}: data.{key}: names the target column {target!r}")
    both = [name for name in categorical if name in drop]
    if both:
        raise HpoError(f"{source}: data.categorical: {both[0]!r} is also in data.drop")
    fraction = table.get("test_fraction", 0.2)
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction < 1:
        raise HpoError(
            f"{source}: data.test_fraction: must be a number between 0 and 1 (exclusive), "
            f"got {fraction!r}"
        )
    seed = table.get("split_seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise HpoError(f"{source}: data.split_seed: must be an integer ≥ 0, got {seed!r}")
    standardize = table.get("standardize", True)
    if not isinstance(standardize, bool):
        raise HpoError(f"{source}: data.standardize: must be true or false, got {standardize!r}")
    scale = table.get("scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 < scale < math.inf:
        raise HpoError(f"{source}: data.scale: must be a positive number, got {scale!r}")
    if scale != 1.0 and standardize:
        raise HpoError(
            f"{source}: data.scale: only with standardize = false (standardized features "
            "need no scale)"
        )
    return DataSpec(
        train=train,
        test=test,
        target=target,
        drop=drop,
        categorical=categorical,
        test_fraction=float(fraction),
        split_seed=seed,
        standardize=standardize,
        scale=float(scale),
    )


@dataclass(frozen=True)
class Source:
    """A study's data: a built-in dataset, or the user's own file when `table` is given."""

    dataset: str  # a built-in dataset's name, or the own file's name
    validation: Validation
    num_words: int = 10000  # imdb, reuters: the vocabulary kept
    table: DataSpec | None = None  # the [data] table of a study on the user's own file
    input: str = "vectors"  # a built-in dataset: "vectors" (chapter 3), "sequence" or "image"
    maxlen: int | None = None  # "sequence": word ids per sample, padded or cut
