"""What is learned from the training rows of a user's file, and applied again to new rows.

A Preparation holds the numeric features' mean and std, the categories one-hot encoded and the
class labels' order, all learned from the training rows only. It round-trips through plain
JSON (a study user attr, a preparation.json beside a saved model), so `hpo predict` prepares
new rows exactly as the training rows were, on any machine.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from hpo.data.values import (
    beyond_float32,
    check_float32,
    check_present,
    format_labels,
    label_keys,
    numeric_array,
    plain,
    regression_target,
    some,
    to_float,
)
from hpo.errors import HpoError


def _one_hot(keys: np.ndarray, categories: list) -> tuple[np.ndarray, int]:
    """One-hot rows for `keys` over `categories`; an unseen value is an all-zero row."""
    import pandas as pd

    codes = pd.Index(label_keys(np.asarray(categories))).get_indexer(keys)
    out = np.zeros((len(keys), len(categories)), dtype=np.float32)
    seen = codes >= 0
    out[np.flatnonzero(seen), codes[seen]] = 1.0
    return out, int((~seen).sum())


def mean_std(x: np.ndarray, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
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
            raise HpoError(f"not a saved data preparation (missing {some(missing)})")
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
                f"{some(self.columns)}, got {type(rows).__name__}"
            )
        df = rows.rename(columns=str) if not all(isinstance(c, str) for c in rows.columns) else rows
        present = set(df.columns)
        missing = [c for c in self.columns if c not in present]
        if missing:
            which = f"{source} is" if source else "the rows are"
            raise HpoError(f"{which} missing columns: {some(missing)}")
        source = source or "rows"
        n = len(df)
        parts = []
        if self.numeric:
            x = np.column_stack([to_float(df[c], c, source) for c in self.numeric])
            if self.standardize:
                x = (x - np.asarray(self.means)) / np.asarray(self.stds)
            beyond = beyond_float32(x)
            if beyond.any():
                i = int(np.flatnonzero(beyond)[0])
                check_float32(x[:, i], f"column {self.numeric[i]!r}", source)
            parts.append(x.astype(np.float32))
        unseen = {}
        for column, categories in self.categories.items():
            check_present(df[column], column, source)
            block, count = _one_hot(label_keys(df[column]), categories)
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
        x = numeric_array(x, "x", source).reshape(len(x), -1)
        if self.standardize:
            with np.errstate(over="ignore"):  # x was finite: an infinity now is an overflow
                out = x.astype(np.float32)
                out -= np.asarray(self.means, dtype=np.float32)
                out /= np.asarray(self.stds, dtype=np.float32)
            check_float32(out, "array x", source)
            return out
        if self.dtype == "uint8":
            if x.dtype.kind not in "bu" or x.dtype.itemsize != 1:
                raise HpoError(
                    f"{source}: x has dtype {x.dtype}, the training x was uint8; convert it"
                )
            return x.astype(np.uint8, copy=False)
        with np.errstate(over="ignore"):
            out = x.astype(np.float32)
        check_float32(out, "array x", source)
        return out

    def encode_labels(self, y: Any, source: str = "rows") -> np.ndarray:
        """Original labels → int64 0..K-1 (classification) or float32 (regression)."""
        import pandas as pd

        values = y if isinstance(y, pd.Series) else pd.Series(np.asarray(y).ravel())
        check_present(values, self.target, source)
        if self.labels is None:
            return regression_target(values, self.target, source)
        codes = pd.Index(label_keys(np.asarray(self.labels))).get_indexer(
            label_keys(values.to_numpy())
        )
        unknown = codes < 0
        if unknown.any():
            example = values.to_numpy()[unknown][0]
            raise HpoError(
                f"{source}: {int(unknown.sum())} rows have a class that is not one of the "
                f"training classes (e.g. {plain(example)!r}; classes: "
                f"{format_labels(self.labels)})"
            )
        return codes.astype(np.int64)

    def decode_labels(self, index: np.ndarray) -> np.ndarray:
        """Class indices 0..K-1 → original labels (regression values pass through)."""
        if self.labels is None:
            return np.asarray(index)
        return np.asarray(self.labels)[np.asarray(index, dtype=np.int64)]
