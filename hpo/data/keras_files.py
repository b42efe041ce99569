"""The four chapter-3 datasets in keras' own file format: find the file, read it as keras does.

Files are looked for in a local directory first (the --data-dir option, then $HPO_DATA_DIR,
then keras' own cache, $KERAS_HOME/datasets or ~/.keras/datasets) and read here with keras'
conventions (shuffle seed 113, start/OOV characters, 80/20 Boston split). Only when no local
copy exists does hpo call keras' normal download, for users who are online. Keras 3 accepts no
file path in load_data, and deletes cached files whose hash it dislikes, so local files are
read directly and never handed to keras.

imdb and reuters keep their ragged rows as numpy object arrays, which the .npy format stores as
a pickle. A shared data folder is writable by others, and unpickling a crafted file runs its
code, so those arrays are read by a restricted unpickler that can only rebuild numpy arrays
(the "restricting globals" recipe of Python's pickle docs); a file naming anything else is
refused in one line before anything in it runs. No file is ever read with allow_pickle=True.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpo.backend import import_keras
from hpo.errors import HpoError, first_line

BUILTIN = ("imdb", "reuters", "boston_housing", "mnist")
SEED = 113
START_CHAR, OOV_CHAR, INDEX_FROM = 1, 2, 3


@dataclass(frozen=True)
class Sequences:
    """Ragged integer sequences stored flat: row i is tokens[offsets[i]:offsets[i + 1]]."""

    tokens: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]


@dataclass(frozen=True)
class Raw:
    """A dataset's train and test splits as keras' load_data returns them."""

    x_train: np.ndarray | Sequences
    y_train: np.ndarray
    x_test: np.ndarray | Sequences
    y_test: np.ndarray
    source: str  # where the data came from, for messages and cache keys


def candidate_dirs(data_dir: str | Path | None) -> list[Path]:
    """The local directories searched, in order."""
    dirs: list[Path] = []
    if data_dir:
        dirs.append(Path(data_dir).expanduser())
    if os.environ.get("HPO_DATA_DIR"):
        dirs.append(Path(os.environ["HPO_DATA_DIR"]).expanduser())
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser()
    dirs.append(keras_home / "datasets")
    return dirs


def find_local(name: str, data_dir: str | Path | None) -> Path | None:
    if data_dir and not Path(data_dir).expanduser().is_dir():
        raise HpoError(f"--data-dir {data_dir}: no such directory")
    for folder in candidate_dirs(data_dir):
        path = folder / f"{name}.npz"
        if path.is_file():
            return path
    return None


# All that rebuilding a numpy array from its pickle takes (numpy 1's and 2's module names).
_ARRAY_GLOBALS = frozenset(
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
) | {("numpy", "ndarray"), ("numpy", "dtype")}


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays, lists and numbers and refuses any other
    global (os.system, builtins.eval, …) before calling it: a keras file never names one."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _ARRAY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"its object array calls {module}.{name}, which a keras dataset never does; "
            "refused without running it"
        )


def _read_npy(data: bytes) -> np.ndarray:
    """One .npy member: plain arrays with pickle off, object arrays through _ArraysOnly."""
    buffer = io.BytesIO(data)
    fmt = np.lib.format
    version = fmt.read_magic(buffer)
    # 3.0 differs from 2.0 only in the header's text encoding (UTF-8 for latin-1).
    read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    shape, _, dtype = read_header(buffer)
    if not dtype.hasobject:
        buffer.seek(0)
        return fmt.read_array(buffer, allow_pickle=False)
    array = _ArraysOnly(buffer).load()
    if not isinstance(array, np.ndarray) or array.shape != shape:
        raise ValueError(f"its object array holds a {type(array).__name__}, not an array")
    return array


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """Read an .npz as np.load would, except that object arrays are never freely unpickled."""
    with zipfile.ZipFile(path) as archive:
        return {
            member.removesuffix(".npy"): _read_npy(archive.read(member))
            for member in archive.namelist()
            if member.endswith(".npy")
        }


def _flatten(rows: Sequence) -> Sequences:
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = (
        np.concatenate([np.asarray(r, dtype=np.int64) for r in rows])
        if len(rows)
        else (np.zeros(0, dtype=np.int64))
    )
    return Sequences(tokens, offsets)


def _keras_words(seqs: Sequences, num_words: int) -> Sequences:
    """keras' start_char/index_from/oov_char rules, vectorized over all tokens at once."""
    shifted = seqs.tokens + INDEX_FROM
    shifted = np.where(shifted < num_words, shifted, OOV_CHAR)
    starts = seqs.offsets[:-1] + np.arange(len(seqs))  # where each row's start char lands
    tokens = np.empty(len(shifted) + len(seqs), dtype=np.int64)
    mask = np.ones(len(tokens), dtype=bool)
    mask[starts] = False
    tokens[starts] = START_CHAR
    tokens[mask] = shifted
    offsets = seqs.offsets + np.arange(len(seqs) + 1)
    return Sequences(tokens, offsets)


def _shuffled(rng: np.random.RandomState, x: np.ndarray, y: np.ndarray):
    idx = np.arange(len(x))
    rng.shuffle(idx)
    return x[idx], y[idx]


def read_local(name: str, path: Path, num_words: int) -> Raw:
    """Read `path` (keras' file for dataset `name`) exactly as keras.datasets.<name> would."""
    try:
        arrays = _load_npz(path)
    except Exception as exc:  # a truncated download, a wrong file renamed: one line, not a trace
        raise HpoError(f"{path}: not a readable keras {name} file ({first_line(exc)})") from exc
    try:
        return _read_arrays(name, arrays, num_words, str(path))
    except KeyError as exc:
        raise HpoError(f"{path}: missing array {exc} for dataset {name}") from exc
    except (TypeError, ValueError) as exc:  # rows that are not lists of word indices
        raise HpoError(f"{path}: not a keras {name} file ({first_line(exc)})") from exc


def _read_arrays(name: str, f: dict[str, np.ndarray], num_words: int, source: str) -> Raw:
    if name == "mnist":
        return Raw(f["x_train"], f["y_train"], f["x_test"], f["y_test"], source)
    if name == "boston_housing":
        x, y = f["x"], f["y"]
        rng = np.random.RandomState(SEED)
        x, y = _shuffled(rng, x, y)
        cut = int(len(x) * (1 - 0.2))
        return Raw(x[:cut], y[:cut], x[cut:], y[cut:], source)
    rng = np.random.RandomState(SEED)
    if name == "imdb":
        x_train, y_train = _shuffled(rng, f["x_train"], f["y_train"])
        x_test, y_test = _shuffled(rng, f["x_test"], f["y_test"])
    elif name == "reuters":
        x, y = _shuffled(rng, f["x"], f["y"])
        cut = int(len(x) * (1 - 0.2))
        x_train, y_train, x_test, y_test = x[:cut], y[:cut], x[cut:], y[cut:]
    else:
        raise HpoError(f"unknown dataset {name!r} (built in: {', '.join(BUILTIN)})")
    return Raw(
        _keras_words(_flatten(x_train), num_words),
        np.asarray(y_train),
        _keras_words(_flatten(x_test), num_words),
        np.asarray(y_test),
        source,
    )


def download(name: str, num_words: int) -> Raw:
    """keras' own download and loader, for users who are online."""
    keras = import_keras()

    loader = getattr(keras.datasets, name)
    kwargs = {"num_words": num_words} if name in ("imdb", "reuters") else {}
    try:
        (x_train, y_train), (x_test, y_test) = loader.load_data(**kwargs)
    except Exception as exc:
        raise HpoError(
            f"dataset {name}: no local {name}.npz and the keras download failed "
            f"({type(exc).__name__}); put keras' file in a folder and pass --data-dir DIR "
            "or set HPO_DATA_DIR"
        ) from exc
    if name in ("imdb", "reuters"):
        x_train, x_test = _flatten(x_train), _flatten(x_test)
    return Raw(x_train, y_train, x_test, y_test, f"keras download ({name})")


def read(name: str, path: Path | None, num_words: int = 10000) -> Raw:
    """The local file `path` (from find_local), or keras' download when there is none."""
    return read_local(name, path, num_words) if path else download(name, num_words)


def load_raw(name: str, data_dir: str | Path | None, num_words: int = 10000) -> Raw:
    if name not in BUILTIN:
        raise HpoError(f"unknown dataset {name!r} (built in: {', '.join(BUILTIN)})")
    return read(name, find_local(name, data_dir), num_words)
