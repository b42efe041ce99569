"""Reading a user's file: .csv and .parquet into a DataFrame, .npz into arrays.

Each file is read at most once per process while it is unchanged (its size and modification
time are the key), and every problem reading it is one HpoError line naming the file. A
header that names a column twice is refused: pandas would rename the copy `name.1` and train
on it; so are rows with more fields than the header, which pandas would shift.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hpo.errors import HpoError, first_line

if TYPE_CHECKING:
    import pandas as pd

# How often a file was read: tests read it, nothing depends on it.
stats = {"files_read": 0}
CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zip", ".csv.xz", ".csv.zst")


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


def shape_of(kind: str | None) -> str:
    return "arrays" if kind == "npz" else "table"


def unknown_type(path: Path) -> str:
    suffix = "".join(path.suffixes) or "(none)"
    return f"unknown file type {suffix} (hpo reads .csv, .parquet and .npz)"


def stamp(path: Path, key: str = "") -> tuple[int, int]:
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


def read_file(path: Path) -> Any:
    """A .csv or .parquet → DataFrame (string column names); an .npz → dict of arrays."""
    kind = file_kind(path)
    stats["files_read"] += 1
    if kind is None:
        raise HpoError(f"{path.name}: {unknown_type(path)}")
    return _read_npz(path) if kind == "npz" else _read_table(path, kind)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    name = path.name
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


def _read_table(path: Path, kind: str) -> pd.DataFrame:
    import pandas as pd

    name = path.name
    try:
        if kind == "csv":
            # The header as written: pandas renames a second `price` to `price.1` and reads on.
            header = [str(c) for c in pd.read_csv(path, header=None, nrows=1).iloc[0]]
            df = _read_csv(path, len(header))
        else:
            df = pd.read_parquet(path)
            header = [str(c) for c in df.columns]
    except HpoError:
        raise
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
    twice = next((c for i, c in enumerate(header) if c in header[:i]), None)
    if twice is not None:
        raise HpoError(f"{name}: the header names column {twice!r} twice; rename or remove one")
    if not all(isinstance(c, str) for c in df.columns):
        df = df.rename(columns=str)
    if len(df.columns) == 0:
        raise HpoError(f"{name}: empty file (no columns)")
    if len(df) == 0:
        raise HpoError(f"{name}: no rows (only the header)")
    return df


def _read_csv(path: Path, columns: int) -> pd.DataFrame:
    """The rows under the header. Rows with more fields than the header are refused: pandas
    would take the first column as the index and shift every column's values one to the left
    (index_col=False), or drop the last field (its ParserWarning)."""
    import warnings

    import pandas as pd

    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.ParserWarning)
        try:
            return pd.read_csv(path, index_col=False)
        except pd.errors.ParserWarning:
            raise HpoError(
                f"{path.name}: some rows have more fields than the header's {columns} columns "
                "(a stray comma, or a column without a name?)"
            ) from None


@functools.lru_cache(maxsize=4)
def _read_cached(path: Path, size: int, mtime_ns: int) -> Any:
    """The file's contents, read at most once per process while it is unchanged. Callers
    must not modify what it returns."""
    return read_file(path)


def read(path: Path, key: str) -> Any:
    """The file of data.`key` ("train", "test"), read at most once per process while unchanged."""
    return _read_cached(path, *stamp(path, key))


def forget() -> None:
    """Forget the files read in this process."""
    _read_cached.cache_clear()
