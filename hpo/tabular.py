"""Users' own data, prepared the way chapter 3 prepares Boston housing: a study file's [data].

A table (.csv, .parquet) with a target column, or keras' own .npz layout (x_train, y_train and
optionally x_test, y_test). The rows are shuffled once with data.split_seed; the test set is a
separate file, the .npz's test arrays, or a seeded random data.test_fraction of the training
file. Everything learned (numeric features' mean and std, the categories one-hot encoded, the
class labels' order) is learned from the training rows only, kept in a Preparation that
applies it again to new rows, and round-trips through JSON.

Every problem with the data is one HpoError line naming the file, and the column and count
where relevant. Prepared arrays are cached in memory per process and on disk (hpo.cache), so
a second worker neither re-reads the file nor re-learns anything. Pure numpy and pandas
(imported only when data is read): no keras here.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hpo import cache
from hpo.errors import HpoError, first_line

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("hpo.tabular")
FORMAT = 1  # bump when the prepared layout changes, so old caches are not reused
TASKS = ("binary", "multiclass", "regression")
MAX_CLASSES_INFERRED = 20  # an integer-valued target with more distinct values is a regression
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
CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zip", ".csv.xz", ".csv.zst")
ARRAYS = ("x_train", "y_train", "x_test", "y_test")

# How often prepared data came from where: tests and logs read it, nothing depends on it.
stats = {"memory_hits": 0, "disk_hits": 0, "prepared": 0, "files_read": 0}


def file_kind(path: Path) -> str | None:
    """ "csv", "parquet" or "npz" by the file's name; None for anything else."""
    name = path.name.lower()
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith(".npz"):
        return "npz"
    return None


def _shape_of(kind: str | None) -> str:
    return "arrays" if kind == "npz" else "table"


def _unknown_type(path: Path) -> str:
    suffix = "".join(path.suffixes) or "(none)"
    return f"unknown file type {suffix} (hpo reads .csv, .parquet and .npz)"


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
        return _shape_of(file_kind(self.train))

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
        raise HpoError(f"{source}: data.{key}: {path.name}: {_unknown_type(path)}")
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
        if _shape_of(file_kind(test)) != _shape_of(file_kind(train)):
            raise HpoError(
                f"{source}: data.test: {test.name} is not the same kind of file as "
                f"{train.name} (a table with a table, .npz with .npz)"
            )
        if "test_fraction" in table:
            raise HpoError(
                f"{source}: data.test_fraction: not used with data.test (the test file is the "
                "test set); remove one of them"
            )
    arrays = _shape_of(file_kind(train)) == "arrays"
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


# --- values ------------------------------------------------------------------------------


def _some(names: list, limit: int = 8) -> str:
    """The first few of `names`, comma-separated, with how many there are in all."""
    shown = ", ".join(str(n) for n in names[:limit])
    return shown if len(names) <= limit else f"{shown}, … ({len(names)} in all)"


def _plain(value: Any) -> Any:
    """A numpy scalar or other value → a plain JSON type."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return str(value)


def _sorted(values: list) -> list:
    values = [_plain(v) for v in values]
    try:
        return sorted(values)
    except TypeError:  # mixed types: a deterministic order all the same
        return sorted(values, key=lambda v: (type(v).__name__, str(v)))


def _distinct(arrays: list) -> list:
    """The distinct values of `arrays` (3 and 3.0 are one), as plain JSON values, sorted."""
    keys = np.concatenate([_keys(a) for a in arrays])
    originals = np.concatenate([np.asarray(a, dtype=object) for a in arrays])
    _, first = np.unique(keys, return_index=True)
    return _sorted(list(originals[first]))


def _keys(values: Any) -> np.ndarray:
    """Values → strings that compare equal across files: 3, 3.0 and "3" all become "3"."""
    a = np.asarray(values)
    if a.dtype.kind == "f":
        out = a.astype(str).astype(object)
        integral = np.isfinite(a) & (a == np.round(a))
        out[integral] = a[integral].astype(np.int64).astype(str)
        return out.astype(str)
    return a.astype(str)


def _is_integral(a: np.ndarray) -> bool:
    return bool(np.all(a == np.round(a)))


def _format_labels(labels: list, limit: int = 5) -> str:
    return _some([repr(v) for v in labels], limit)


def _to_float(s: pd.Series, column: str, source: str) -> np.ndarray:
    """A numeric, bool or all-numbers text column → float64, with NaN, inf and text refused."""
    import pandas as pd

    dtype = s.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        s = s.astype(object)
        dtype = s.dtype
    if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_numeric_dtype(dtype):
        pass
    elif pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype):
        s, text = _as_numbers(s)
        if text is not None:
            raise HpoError(
                f"{source}: column {column!r} holds text (e.g. {text!r}); "
                "list it in data.categorical or data.drop"
            )
    else:
        raise HpoError(
            f"{source}: column {column!r} has type {dtype}, which hpo cannot use as a feature; "
            "list it in data.drop"
        )
    a = s.to_numpy(dtype=np.float64, na_value=np.nan)
    _check_finite(a, column, source)
    return a


def _as_numbers(s: Any) -> tuple[Any, Any]:
    """A pandas Series converted to numbers, and its first value that is not one (or None)."""
    import pandas as pd

    converted = pd.to_numeric(s, errors="coerce")
    bad = converted.isna() & s.notna()
    return converted, (s[bad].iloc[0] if bad.any() else None)


def _check_finite(a: np.ndarray, column: str, source: str) -> None:
    missing = int(np.isnan(a).sum())
    if missing:
        raise HpoError(
            f"{source}: column {column!r} has {missing} missing (NaN) values; fill or drop them"
        )
    infinite = int(np.isinf(a).sum())
    if infinite:
        raise HpoError(
            f"{source}: column {column!r} has {infinite} infinite values; fill or drop them"
        )


def _check_present(s: pd.Series, column: str, source: str) -> None:
    missing = int(s.isna().sum())
    if missing:
        raise HpoError(
            f"{source}: column {column!r} has {missing} missing (NaN) values; fill or drop them"
        )


def _one_hot(keys: np.ndarray, categories: list) -> tuple[np.ndarray, int]:
    """One-hot rows for `keys` over `categories`; an unseen value is an all-zero row."""
    import pandas as pd

    codes = pd.Index(_keys(np.asarray(categories))).get_indexer(keys)
    out = np.zeros((len(keys), len(categories)), dtype=np.float32)
    seen = codes >= 0
    out[np.flatnonzero(seen), codes[seen]] = 1.0
    return out, int((~seen).sum())


def _mean_std(x: np.ndarray, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std (ddof 0) in float64 without a float64 copy of all of x."""
    n = len(x)
    mean = x.sum(axis=0, dtype=np.float64) / n
    var = np.zeros_like(mean)
    for lo in range(0, n, chunk):
        d = x[lo : lo + chunk].astype(np.float64) - mean
        var += np.einsum("ij,ij->j", d, d)
    std = np.sqrt(var / n)
    std[std == 0] = 1.0  # a constant feature stays 0 instead of becoming NaN
    return mean, std


# --- the preparation -----------------------------------------------------------------------


@dataclass
class Preparation:
    """What was learned from the training rows; round-trips through to_dict()/from_dict()
    (plain JSON types only: a study user attr, a preparation.json beside a saved model)."""

    kind: str  # "table" or "arrays"
    task: str  # binary | multiclass | regression (stated or inferred)
    target: str
    columns: list[str]  # raw input columns expected (after drop, target excluded); table only
    numeric: list[str]  # numeric columns, in order
    means: list[float]  # per numeric column (table) or per flattened feature (arrays)
    stds: list[float]  # likewise; a constant feature's std is 1
    categories: dict[str, list]  # categorical column → its categories seen in training, sorted
    labels: list | None  # classification: class labels in index order (sorted); else None
    feature_shape: list[int]  # the prepared x's per-sample shape: [n_features]
    dtype: str  # dtype of the prepared x: "float32", or "uint8" (npz, standardize=false)
    standardize: bool
    input_shape: list[int] = dataclasses.field(default_factory=list)  # arrays: raw x per sample

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preparation:
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(d, dict):
            raise HpoError(f"not a saved data preparation (a {type(d).__name__}, not a mapping)")
        missing = [name for name in names if name not in d and name != "input_shape"]
        if missing:
            raise HpoError(f"not a saved data preparation (missing {_some(missing)})")
        return cls(**{name: d[name] for name in names if name in d})

    @property
    def n_features(self) -> int:
        return int(np.prod(self.feature_shape))

    @property
    def n_outputs(self) -> int:
        return len(self.labels) if self.task == "multiclass" else 1

    def transform(self, rows: Any, source: str | None = None) -> tuple[np.ndarray, dict[str, int]]:
        """New rows (a DataFrame for "table", an ndarray for "arrays") → (x prepared exactly
        as the training rows were, the count of unseen category values per column, only the
        columns that had some). Missing input columns → HpoError naming them; extra columns
        are ignored; NaN or inf → HpoError naming the column and the count. An unseen category
        becomes an all-zero one-hot row, counted, not an error. `source` names the rows' file
        in messages."""
        if self.kind == "arrays":
            return self._transform_arrays(rows, source or "rows"), {}
        import pandas as pd

        if not isinstance(rows, pd.DataFrame):
            raise HpoError(
                f"{source or 'rows'}: expected a table (DataFrame) of rows with columns "
                f"{_some(self.columns)}, got {type(rows).__name__}"
            )
        df = rows.rename(columns=str) if not all(isinstance(c, str) for c in rows.columns) else rows
        present = set(df.columns)
        missing = [c for c in self.columns if c not in present]
        if missing:
            which = f"{source} is" if source else "the rows are"
            raise HpoError(f"{which} missing columns: {_some(missing)}")
        source = source or "rows"
        n = len(df)
        parts = []
        if self.numeric:
            x = np.column_stack([_to_float(df[c], c, source) for c in self.numeric])
            if self.standardize:
                x = (x - np.asarray(self.means)) / np.asarray(self.stds)
            parts.append(x.astype(np.float32))
        unseen = {}
        for column, categories in self.categories.items():
            _check_present(df[column], column, source)
            block, count = _one_hot(_keys(df[column]), categories)
            parts.append(block)
            if count:
                unseen[column] = count
        x = np.concatenate(parts, axis=1) if parts else np.zeros((n, 0), np.float32)
        return np.ascontiguousarray(x, dtype=np.float32), unseen

    def _transform_arrays(self, x: Any, source: str) -> np.ndarray:
        x = np.asarray(x)
        shape = list(x.shape[1:])
        if x.ndim < 1 or shape not in (self.input_shape, self.feature_shape):
            raise HpoError(
                f"{source}: samples of shape {tuple(shape)}, the training samples had "
                f"{tuple(self.input_shape or self.feature_shape)}"
            )
        x = _numeric_array(x, "x", source).reshape(len(x), -1)
        if self.standardize:
            out = x.astype(np.float32)
            out -= np.asarray(self.means, dtype=np.float32)
            out /= np.asarray(self.stds, dtype=np.float32)
            return out
        if self.dtype == "uint8":
            if x.dtype.kind not in "bu" or x.dtype.itemsize != 1:
                raise HpoError(
                    f"{source}: x has dtype {x.dtype}, the training x was uint8; convert it"
                )
            return x.astype(np.uint8, copy=False)
        return x.astype(np.float32)

    def encode_labels(self, y: Any, source: str = "rows") -> np.ndarray:
        """Original labels → int64 0..K-1 (classification) or float32 (regression)."""
        import pandas as pd

        values = y if isinstance(y, pd.Series) else pd.Series(np.asarray(y).ravel())
        _check_present(values, self.target, source)
        if self.labels is None:
            return _regression_target(values, self.target, source)
        codes = pd.Index(_keys(np.asarray(self.labels))).get_indexer(_keys(values.to_numpy()))
        unknown = codes < 0
        if unknown.any():
            example = values.to_numpy()[unknown][0]
            raise HpoError(
                f"{source}: {int(unknown.sum())} rows have a class that is not one of the "
                f"training classes (e.g. {_plain(example)!r}; classes: "
                f"{_format_labels(self.labels)})"
            )
        return codes.astype(np.int64)

    def decode_labels(self, index: np.ndarray) -> np.ndarray:
        """Class indices 0..K-1 → original labels (regression values pass through)."""
        if self.labels is None:
            return np.asarray(index)
        return np.asarray(self.labels)[np.asarray(index, dtype=np.int64)]


def _numeric_array(a: np.ndarray, name: str, source: str) -> np.ndarray:
    if a.dtype.kind not in "biuf":
        raise HpoError(f"{source}: array {name} is not numeric (dtype {a.dtype})")
    if a.dtype.kind == "f":
        finite = np.isfinite(a)
        if not finite.all():
            nan = int(np.isnan(a).sum())
            what = f"{nan} missing (NaN)" if nan else f"{int((~finite).sum())} infinite"
            raise HpoError(f"{source}: array {name} has {what} values; fill or drop them")
    return a


def _regression_target(values: pd.Series, target: str, source: str) -> np.ndarray:

    converted, text = _as_numbers(values)
    if text is not None:
        raise HpoError(
            f"{source}: the target {target!r} is not numeric (e.g. {text!r}); "
            'a regression target must be numbers (or set task = "multiclass" in [study])'
        )
    a = converted.to_numpy(dtype=np.float64, na_value=np.nan)
    _check_finite(a, target, source)
    return a.astype(np.float32)


@dataclass(frozen=True)
class OwnData:
    preparation: Preparation
    x_train: np.ndarray  # shuffled with split_seed
    y_train: np.ndarray  # int64 class indices (classification) or float32 (regression)
    x_test: np.ndarray
    y_test: np.ndarray
    unseen: dict[str, int]  # unseen categorical values in the test rows, per column
    notes: tuple[str, ...]  # one-liners for the user; notes[0] is about the task


# --- reading -------------------------------------------------------------------------------


def _stamp(path: Path, key: str = "") -> tuple[int, int]:
    where = f"data.{key}: {path}" if key else str(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise HpoError(f"{where}: no such file") from None
    except OSError as exc:
        raise HpoError(f"{where}: cannot read ({exc.strerror or exc})") from exc
    if not path.is_file():
        raise HpoError(f"{where}: not a file")
    return st.st_size, st.st_mtime_ns


def _read_file(path: Path) -> Any:
    """A .csv or .parquet → DataFrame (string column names); an .npz → dict of arrays."""
    import pandas as pd

    kind = file_kind(path)
    name = path.name
    stats["files_read"] += 1
    if kind is None:
        raise HpoError(f"{name}: {_unknown_type(path)}")
    if kind == "npz":
        try:
            with path.open("rb") as f:
                if f.read(2) != b"PK":
                    raise HpoError(f"{name}: not a readable .npz file (not a zip archive)")
            with np.load(path, allow_pickle=False) as f:
                return {key: f[key] for key in f.files}
        except HpoError:
            raise
        except ValueError as exc:
            if "Object arrays" in str(exc):
                raise HpoError(
                    f"{name}: holds Python objects (pickled arrays); hpo reads only numeric or "
                    "text arrays"
                ) from exc
            raise HpoError(f"{name}: not a readable .npz file ({first_line(exc)})") from exc
        except Exception as exc:
            raise HpoError(f"{name}: not a readable .npz file ({first_line(exc)})") from exc
    try:
        df = pd.read_csv(path) if kind == "csv" else pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise HpoError(f"{name}: empty file (no columns, no rows)") from None
    except UnicodeDecodeError as exc:
        raise HpoError(f"{name}: not UTF-8 text ({first_line(exc)})") from exc
    except ImportError as exc:
        if kind == "parquet":
            raise HpoError("reading .parquet needs pyarrow: pip install pyarrow") from exc
        raise HpoError(f"{name}: cannot read ({first_line(exc)})") from exc
    except Exception as exc:
        what = "CSV" if kind == "csv" else "parquet"
        raise HpoError(f"{name}: not a readable {what} file ({first_line(exc)})") from exc
    if not all(isinstance(c, str) for c in df.columns):
        df = df.rename(columns=str)
    if len(df.columns) == 0:
        raise HpoError(f"{name}: empty file (no columns)")
    if len(df) == 0:
        raise HpoError(f"{name}: no rows (only the header)")
    return df


@functools.lru_cache(maxsize=4)
def _read_cached(path: Path, size: int, mtime_ns: int) -> Any:
    """The file's contents, read at most once per process while it is unchanged. Callers
    must not modify what it returns."""
    return _read_file(path)


def _read(path: Path, key: str) -> Any:
    return _read_cached(path, *_stamp(path, key))


# --- learning ------------------------------------------------------------------------------


def _split(n: int, spec: DataSpec, has_test: bool, source: str):
    """(training row indices, held-out test indices or None): one seeded shuffle."""
    perm = np.random.default_rng(spec.split_seed).permutation(n)
    if has_test:
        return perm, None
    n_test = max(1, int(n * spec.test_fraction + 0.5))
    if n - n_test < 1:
        raise HpoError(
            f"{source}: {n} rows are too few to hold out a test set "
            f"(data.test_fraction = {spec.test_fraction:g})"
        )
    return perm[: n - n_test], perm[n - n_test :]


def _infer_task(y: np.ndarray, y_dtype_kind: str) -> tuple[str, str]:
    """("classification" | "regression", why) from the training file's target values."""
    if y_dtype_kind not in "iuf":
        return "classification", "a target of text or true/false labels"
    a = y.astype(np.float64)
    distinct = len(np.unique(a))
    if not _is_integral(a):
        return "regression", "a numeric target with fractional values"
    if distinct <= MAX_CLASSES_INFERRED:
        return "classification", f"a whole-number target with {distinct} distinct values"
    return "regression", f"a whole-number target with {distinct} distinct values"


def _task_and_labels(
    spec: DataSpec,
    y_file: Any,
    y_train: Any,
    y_all: list,
    source: str,
    label: str,
) -> tuple[str, list | None, str]:
    """The task (stated, checked; or inferred), the sorted class labels, and the task note.
    y_file: the training file's target (inference), y_train: the training rows' target,
    y_all: every target array (train and test: the classes the model must output)."""
    import pandas as pd

    y_file = np.asarray(y_file)
    kind = y_file.dtype.kind
    if y_file.dtype == object:  # a column pandas kept as objects: numbers if it converts
        converted = pd.to_numeric(pd.Series(y_file), errors="coerce")
        if converted.notna().all():
            kind = converted.to_numpy().dtype.kind
            y_file = converted.to_numpy()
    inferred, why = _infer_task(y_file, kind)
    stated = spec.task
    if stated is not None and stated not in TASKS:
        raise HpoError(f"study.task: must be one of {', '.join(TASKS)}, got {stated!r}")
    if (stated or inferred) == "regression":
        labels = None
        task = "regression"
    elif inferred == "regression" and "fractional" in why:
        raise HpoError(
            f"{source}: task {stated} needs class labels, but the target {label!r} holds "
            'fractional numbers; use task = "regression"'
        )
    else:
        labels = _distinct(y_all)
        in_training = len(np.unique(_keys(y_train)))
        if len(labels) < 2 or in_training < 2:
            where = "" if len(labels) < 2 else " in the training rows"
            raise HpoError(
                f"{source}: the target {label!r} has one class{where} "
                f"({_format_labels(labels)}); there is nothing to learn"
            )
        task = stated or ("binary" if len(labels) == 2 else "multiclass")
        if task == "binary" and len(labels) != 2:
            raise HpoError(
                f"{source}: task binary needs 2 classes, the target {label!r} has "
                f'{len(labels)} ({_format_labels(labels)}); use task = "multiclass"'
            )
    return task, labels, _task_note(task, labels, None if stated else why)


def _task_note(task: str, labels: list | None, why: str | None) -> str:
    """The first note: the task, stated (why None) or inferred from `why`."""
    desc = (
        "regression"
        if labels is None
        else (f"{task} ({len(labels)} classes: {_format_labels(labels)})")
    )
    if why is None:
        return f"task: {desc} (stated in the study file)"
    if task == "regression" and "fractional" in why:
        return f"task inferred: {desc}, from {why}"
    if task == "regression":
        other = "multiclass"
    elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in labels):
        other = "regression"
    else:
        other = "multiclass" if task == "binary" else None
    hint = f'set task = "{other}" in [study]' if other else "set task in [study]"
    return f"task inferred: {desc}, from {why}; to override, {hint}"


def _learn_table(spec: DataSpec) -> tuple[Preparation, dict[str, np.ndarray], dict, list[str]]:
    import pandas as pd

    name = spec.train.name
    df = _read(spec.train, "train")
    columns = list(df.columns)
    if spec.target not in df.columns:
        raise HpoError(
            f"{name}: no target column {spec.target!r} (columns: {_some(columns)}); "
            "name it with data.target"
        )
    for key in ("drop", "categorical"):
        absent = [c for c in getattr(spec, key) if c not in df.columns]
        if absent:
            raise HpoError(
                f"{name}: data.{key} names {_some([repr(c) for c in absent])}, not a column of "
                f"the file (columns: {_some(columns)})"
            )
    test_df = None
    if spec.test is not None:
        test_df = _read(spec.test, "test")
        kept = [c for c in columns if c not in spec.drop]
        test_kept = [c for c in test_df.columns if c not in spec.drop]
        missing = [c for c in kept if c not in set(test_kept)]
        extra = [c for c in test_kept if c not in set(kept)]
        if missing or extra:
            parts = ([f"missing {_some(missing)}"] if missing else []) + (
                [f"extra {_some(extra)}"] if extra else []
            )
            raise HpoError(
                f"{spec.test.name}: its columns differ from {name}'s: {'; '.join(parts)}"
            )
    features = [c for c in columns if c != spec.target and c not in spec.drop]
    if not features:
        raise HpoError(f"{name}: no feature columns left besides the target {spec.target!r}")
    categorical = [
        c for c in features if c in spec.categorical or isinstance(df[c].dtype, pd.CategoricalDtype)
    ]
    numeric = [c for c in features if c not in categorical]

    # Every check on the whole file first, so counts are the file's, not a part's.
    named = [(df, name)] + ([(test_df, spec.test.name)] if test_df is not None else [])
    matrices = {}
    for frame, source in named:
        matrices[source] = (
            np.column_stack([_to_float(frame[c], c, source) for c in numeric])
            if numeric
            else np.zeros((len(frame), 0))
        )
        for c in [*categorical, spec.target]:
            _check_present(frame[c], c, source)

    train_idx, test_idx = _split(len(df), spec, test_df is not None, name)
    train_rows = df.iloc[train_idx]
    test_rows = test_df if test_df is not None else df.iloc[test_idx]
    test_source = spec.test.name if test_df is not None else name

    if spec.standardize and numeric:
        mean, std = _mean_std(matrices[name][train_idx])
    else:
        mean, std = np.zeros(len(numeric)), np.ones(len(numeric))
    categories = {c: _distinct([train_rows[c].to_numpy()]) for c in categorical}
    y_all = [df[spec.target].to_numpy()]
    if test_df is not None:
        y_all.append(test_df[spec.target].to_numpy())
    task, labels, task_note = _task_and_labels(
        spec,
        df[spec.target].to_numpy(),
        train_rows[spec.target].to_numpy(),
        y_all,
        name,
        spec.target,
    )
    n_features = len(numeric) + sum(len(v) for v in categories.values())
    prep = Preparation(
        kind="table",
        task=task,
        target=spec.target,
        columns=features,
        numeric=numeric,
        means=[float(v) for v in mean],
        stds=[float(v) for v in std],
        categories=categories,
        labels=labels,
        feature_shape=[n_features],
        dtype="float32",
        standardize=spec.standardize,
    )
    x_train, _ = prep.transform(train_rows, name)
    x_test, unseen = prep.transform(test_rows, test_source)
    arrays = {
        "x_train": x_train,
        "y_train": prep.encode_labels(train_rows[spec.target], name),
        "x_test": x_test,
        "y_test": prep.encode_labels(test_rows[spec.target], test_source),
    }
    notes = [task_note, _test_note(spec, len(test_rows), test_source, name)]
    notes.append(
        f"features: {len(numeric)} numeric"
        + (", standardized with the training rows' mean and std" if spec.standardize else "")
        + (f"; {len(categorical)} categorical, one-hot" if categorical else "")
        + f" → {n_features} inputs"
    )
    notes += [
        f"{c}: {count} test rows had a value not seen in training (all-zero one-hot)"
        for c, count in unseen.items()
    ]
    notes += _test_only_classes(prep, arrays)
    return prep, arrays, unseen, notes


def _test_note(spec: DataSpec, n_test: int, test_source: str, name: str) -> str:
    if test_source != name:
        return f"test: {test_source}, {n_test} rows"
    return (
        f"test: {spec.test_fraction * 100:g}% of {name} (split_seed {spec.split_seed}), "
        f"{n_test} rows"
    )


def _test_only_classes(prep: Preparation, arrays: dict) -> list[str]:
    if prep.labels is None:
        return []
    trained = np.bincount(arrays["y_train"], minlength=len(prep.labels))
    tested = np.bincount(arrays["y_test"], minlength=len(prep.labels))
    only = np.flatnonzero((trained == 0) & (tested > 0))
    if not len(only):
        return []
    classes = _format_labels([prep.labels[i] for i in only])
    return [
        f"{len(only)} class(es) occur only in the test rows ({classes}: "
        f"{int(tested[only].sum())} rows), never in training"
    ]


def _xy(arrays: dict, x_key: str, y_key: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = arrays[x_key], arrays[y_key]
    if x.ndim < 1 or len(x) == 0:
        raise HpoError(f"{source}: array {x_key} holds no samples")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise HpoError(
            f"{source}: array {y_key} must hold one target per sample, has shape {y.shape}"
        )
    if len(x) != len(y):
        raise HpoError(
            f"{source}: {x_key} has {len(x)} samples but {y_key} has {len(y)}; they must match"
        )
    _numeric_array(x, x_key, source)
    if y.dtype.kind == "f":
        _check_finite(y, y_key, source)
    elif y.dtype.kind not in "biuUS":
        raise HpoError(f"{source}: array {y_key} has dtype {y.dtype}, not numbers or text")
    return x, y


def _learn_arrays(spec: DataSpec) -> tuple[Preparation, dict[str, np.ndarray], dict, list[str]]:
    name = spec.train.name
    f = _read(spec.train, "train")
    absent = [k for k in ("x_train", "y_train") if k not in f]
    if absent:
        raise HpoError(
            f"{name}: missing array {' and '.join(absent)} (arrays: {_some(sorted(f)) or 'none'}; "
            "hpo reads keras' layout: x_train, y_train and optionally x_test, y_test)"
        )
    x_train, y_train = _xy(f, "x_train", "y_train", name)
    if spec.test is not None:
        test_name = spec.test.name
        g = _read(spec.test, "test")
        pair = next(
            (
                p
                for p in (("x_test", "y_test"), ("x", "y"), ("x_train", "y_train"))
                if set(p) <= set(g)
            ),
            None,
        )
        if pair is None:
            raise HpoError(
                f"{test_name}: missing arrays x_test and y_test (arrays: {_some(sorted(g))})"
            )
        x_test, y_test = _xy(g, *pair, test_name)
    elif "x_test" in f or "y_test" in f:
        if not ("x_test" in f and "y_test" in f):
            raise HpoError(f"{name}: has only one of x_test and y_test; give both or neither")
        test_name = f"x_test/y_test of {name}"
        x_test, y_test = _xy(f, "x_test", "y_test", name)
    else:
        test_name = name
        x_test = y_test = None
    if x_test is not None and x_test.shape[1:] != x_train.shape[1:]:
        raise HpoError(
            f"{test_name}: test samples have shape {x_test.shape[1:]}, training samples "
            f"{x_train.shape[1:]}"
        )
    train_idx, test_idx = _split(len(x_train), spec, x_test is not None, name)
    y_file = y_train
    if x_test is None:
        x_test, y_test = x_train[test_idx], y_train[test_idx]
    x_train, y_train = x_train[train_idx], y_train[train_idx]
    flat = x_train.reshape(len(x_train), -1)
    if spec.standardize:
        mean, std = _mean_std(flat)
        means, stds, dtype = [float(v) for v in mean], [float(v) for v in std], "float32"
    else:
        compact = x_train.dtype == np.bool_ or x_train.dtype == np.uint8
        means, stds, dtype = [], [], "uint8" if compact else "float32"
    task, labels, task_note = _task_and_labels(
        spec, y_file, y_train, [y_train, y_test], name, "y_train"
    )
    prep = Preparation(
        kind="arrays",
        task=task,
        target="y",
        columns=[],
        numeric=[],
        means=means,
        stds=stds,
        categories={},
        labels=labels,
        feature_shape=[flat.shape[1]],
        dtype=dtype,
        standardize=spec.standardize,
        input_shape=list(x_train.shape[1:]),
    )
    arrays = {
        "x_train": prep.transform(x_train, name)[0],
        "y_train": prep.encode_labels(y_train, name),
        "x_test": prep.transform(x_test, test_name)[0],
        "y_test": prep.encode_labels(y_test, test_name),
    }
    notes = [task_note, _test_note(spec, len(x_test), test_name, name)]
    if list(x_train.shape[1:]) != prep.feature_shape:
        notes.append(f"x: samples of shape {tuple(x_train.shape[1:])} flattened to {flat.shape[1]}")
    notes += _test_only_classes(prep, arrays)
    return prep, arrays, {}, notes


# --- caching and the public entry points --------------------------------------------------


def _fingerprint(spec: DataSpec, stamps: tuple) -> str:
    return cache.key(FORMAT, spec.record(), [list(s) for s in stamps])


def _read_disk(folder: Path) -> OwnData | None:
    arrays = cache.read_arrays(folder, ARRAYS)
    if arrays is None:
        return None
    try:
        prep = Preparation.from_dict(json.loads((folder / "preparation.json").read_text()))
        meta = json.loads((folder / "notes.json").read_text())
        return OwnData(prep, **arrays, unseen=dict(meta["unseen"]), notes=tuple(meta["notes"]))
    except (OSError, ValueError, KeyError, TypeError, HpoError):
        return None  # half written by another process, or damaged: prepare again


@functools.lru_cache(maxsize=8)
def _cached(spec: DataSpec, stamps: tuple, root: Path) -> OwnData:
    folder = root / f"own-{_fingerprint(spec, stamps)}"
    own = _read_disk(folder)
    if own is not None:
        stats["disk_hits"] += 1
        log.info("data %s: prepared arrays read from cache %s", spec.train.name, folder)
        return own
    stats["prepared"] += 1
    learn = _learn_arrays if spec.kind == "arrays" else _learn_table
    prep, arrays, unseen, notes = learn(spec)
    log.info("data %s: prepared, caching in %s", spec.train.name, folder)
    documents = {"preparation": prep.to_dict(), "notes": {"unseen": unseen, "notes": notes}}
    cache.write_arrays(folder, arrays, documents)
    return OwnData(prep, **arrays, unseen=unseen, notes=tuple(notes))


def _get(spec: DataSpec) -> OwnData:
    if file_kind(spec.train) is None:
        raise HpoError(f"data.train: {spec.train.name}: {_unknown_type(spec.train)}")
    if spec.test is not None and file_kind(spec.test) is None:
        raise HpoError(f"data.test: {spec.test.name}: {_unknown_type(spec.test)}")
    stamps = (_stamp(spec.train, "train"),)
    if spec.test is not None:
        stamps += (_stamp(spec.test, "test"),)
    before = _cached.cache_info().hits
    own = _cached(spec, stamps, cache.root())
    if _cached.cache_info().hits > before:
        stats["memory_hits"] += 1
    return own


def _own(spec: DataSpec) -> OwnData:
    """The prepared data. A stated task equal to the inferred one shares the inferred
    preparation (and its caches): only the note differs."""
    if spec.task is not None and spec.task not in TASKS:
        raise HpoError(f"study.task: must be one of {', '.join(TASKS)}, got {spec.task!r}")
    base = _get(dataclasses.replace(spec, task=None))
    if spec.task is None:
        return base
    if spec.task == base.preparation.task:
        prep = base.preparation
        note = _task_note(prep.task, prep.labels, None)
        return dataclasses.replace(base, notes=(note, *base.notes[1:]))
    return _get(spec)


def load(spec: DataSpec, min_train_rows: int = 2, why: str = "") -> OwnData:
    """Read, check, learn the preparation on the training rows, apply it to train and test.
    Cached in memory per process and on disk under cache.root() / "own-<fingerprint>".
    min_train_rows: what the validation scheme needs; `why` names it in the message, e.g.
    "validation kfold:4" or "validation kfold:4 needs at least 8"."""
    own = _own(spec)
    n = len(own.x_train)
    if n < min_train_rows:
        need = why or "hpo"
        if "at least" not in need:
            need += f" needs at least {min_train_rows}"
        raise HpoError(f"{spec.train.name}: {n} training rows, {need}")
    return own


def infer_task(spec: DataSpec) -> str:
    """The task stated in spec, checked against the target, or inferred from it (shares
    load's caches: the file is read and prepared once)."""
    return _own(spec).preparation.task


def clear_caches() -> None:
    """Forget everything read and prepared in this process (as a new process would)."""
    _cached.cache_clear()
    _read_cached.cache_clear()


def read_rows(
    path: Path, preparation: Preparation
) -> tuple[pd.DataFrame | None, np.ndarray, dict[str, int]]:
    """New rows to predict from a file (.csv/.parquet for a table preparation, .npz with array
    `x` (or `x_test`) for arrays) → (the raw DataFrame for tables, None for arrays; x prepared;
    unseen category counts). Same checks and messages as load."""
    path = Path(path).expanduser()
    kind = file_kind(path)
    if kind is None:
        raise HpoError(f"{path.name}: {_unknown_type(path)}")
    if _shape_of(kind) != preparation.kind:
        want = ".npz" if preparation.kind == "arrays" else ".csv or .parquet"
        raise HpoError(f"{path.name}: the model was trained on {want} data, not {kind}")
    _stamp(path)  # a clear message for a missing file
    raw = _read_file(path)
    if preparation.kind == "table":
        x, unseen = preparation.transform(raw, path.name)
        return raw, x, unseen
    key = next((k for k in ("x", "x_test") if k in raw), None)
    if key is None:
        raise HpoError(f"{path.name}: missing array x (or x_test) (arrays: {_some(sorted(raw))})")
    x, _ = preparation.transform(raw[key], path.name)
    return None, x, {}
