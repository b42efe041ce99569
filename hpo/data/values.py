"""Checks and conversions of the values in a user's file: numbers, labels, NaN and infinities.

The lowest module of the own-data stage: each check raises one HpoError line that names the
file, the column and the count, so every problem with the data reads the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from hpo.errors import HpoError

if TYPE_CHECKING:
    import pandas as pd


def some(names: list, limit: int = 8) -> str:
    """The first few of `names`, comma-separated, with how many there are in all."""
    shown = ", ".join(str(n) for n in names[:limit])
    return shown if len(names) <= limit else f"{shown}, … ({len(names)} in all)"


def plain(value: Any) -> Any:
    """A numpy scalar or other value → a plain JSON type."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return str(value)


def sorted_values(values: list) -> list:
    values = [plain(v) for v in values]
    try:
        return sorted(values)
    except TypeError:  # mixed types: a deterministic order all the same
        return sorted(values, key=lambda v: (type(v).__name__, str(v)))


def distinct(arrays: list) -> list:
    """The distinct values of `arrays` (3 and 3.0 are one), as plain JSON values, sorted."""
    keys = np.concatenate([label_keys(a) for a in arrays])
    originals = np.concatenate([np.asarray(a, dtype=object) for a in arrays])
    _, first = np.unique(keys, return_index=True)
    return sorted_values(list(originals[first]))


def label_keys(values: Any) -> np.ndarray:
    """Values → strings that compare equal across files: 3, 3.0 and "3" all become "3"."""
    a = np.asarray(values)
    if a.dtype.kind == "f":
        out = a.astype(str).astype(object)
        integral = np.isfinite(a) & (a == np.round(a))
        out[integral] = a[integral].astype(np.int64).astype(str)
        return out.astype(str)
    return a.astype(str)


def is_integral(a: np.ndarray) -> bool:
    return bool(np.all(a == np.round(a)))


def format_labels(labels: list, limit: int = 5) -> str:
    return some([repr(v) for v in labels], limit)


def to_float(s: pd.Series, column: str, source: str) -> np.ndarray:
    """A numeric, bool or all-numbers text column → float64, with NaN, inf and text refused."""
    import pandas as pd

    dtype = s.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        s = s.astype(object)
        dtype = s.dtype
    if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_numeric_dtype(dtype):
        pass
    elif pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype):
        s, text = as_numbers(s)
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
    check_finite(a, column, source)
    return a


def as_numbers(s: Any) -> tuple[Any, Any]:
    """A pandas Series converted to numbers, and its first value that is not one (or None)."""
    import pandas as pd

    converted = pd.to_numeric(s, errors="coerce")
    bad = converted.isna() & s.notna()
    return converted, (s[bad].iloc[0] if bad.any() else None)


def check_finite(a: np.ndarray, column: str, source: str) -> None:
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


FLOAT32_MAX = float(np.finfo(np.float32).max)


def beyond_float32(a: np.ndarray) -> np.ndarray:
    """Per column (for a 1-D array, in all), how many values float32 cannot hold (of values
    checked finite: an infinity here is a float32 overflow). The model reads float32, where
    a finite float64 beyond ±3.4e38 would silently become an infinity."""
    if a.dtype.kind == "f" and a.dtype.itemsize <= 4:  # already float32: no float64 copy
        return (~np.isfinite(a)).sum(axis=0)
    return (~(np.abs(a) <= FLOAT32_MAX)).sum(axis=0)


def check_float32(a: np.ndarray, what: str, source: str) -> None:
    """One line when `what` (e.g. "column 'price'") has values beyond float32's range."""
    count = int(np.sum(beyond_float32(a)))
    if count:
        raise HpoError(
            f"{source}: {what} has {count} values beyond float32's range (±3.4e38) once "
            "prepared; scale them down or drop them"
        )


def check_present(s: pd.Series, column: str, source: str) -> None:
    missing = int(s.isna().sum())
    if missing:
        raise HpoError(
            f"{source}: column {column!r} has {missing} missing (NaN) values; fill or drop them"
        )


def numeric_array(a: np.ndarray, name: str, source: str) -> np.ndarray:
    if a.dtype.kind not in "biuf":
        raise HpoError(f"{source}: array {name} is not numeric (dtype {a.dtype})")
    if a.dtype.kind == "f":
        finite = np.isfinite(a)
        if not finite.all():
            nan = int(np.isnan(a).sum())
            what = f"{nan} missing (NaN)" if nan else f"{int((~finite).sum())} infinite"
            raise HpoError(f"{source}: array {name} has {what} values; fill or drop them")
    return a


def regression_target(values: pd.Series, target: str, source: str) -> np.ndarray:

    converted, text = as_numbers(values)
    if text is not None:
        raise HpoError(
            f"{source}: the target {target!r} is not numeric (e.g. {text!r}); "
            'a regression target must be numbers (or set task = "multiclass" in [study])'
        )
    a = converted.to_numpy(dtype=np.float64, na_value=np.nan)
    check_finite(a, target, source)
    check_float32(a, f"the target {target!r}", source)
    return a.astype(np.float32)
