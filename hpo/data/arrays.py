"""Model-ready arrays of a study's data, and how they are held in memory."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from hpo.errors import HpoError


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
    # Own data (hpo.data.own): what was learned from the training rows, to prepare new rows.
    preparation: Any = None
    notes: tuple[str, ...] = ()  # one-liners on how own data was read (task inferred, test split)
    # How a sample is fed: "vectors" (the book's chapter 3), "sequence" (word ids, zeros before
    # them, as keras.utils.pad_sequences pads), "image" (height, width, channels) or "table"
    # (own data); and the vocabulary of a text dataset (ids are below it; 0 pads).
    input_kind: str = "vectors"
    num_words: int | None = None

    @property
    def layout(self) -> str:
        """How x is held: "packed" bits, or its dtype ("uint8" multi-hot or pixels, "float32")."""
        return "packed" if self.packed else str(self.x_train.dtype)


def unpacked(prepared: Prepared, x: np.ndarray) -> np.ndarray:
    """The plain uint8 feature matrix of `x` (rows of `prepared`), for readers and tests."""
    if not prepared.packed:
        return np.asarray(x)
    return np.unpackbits(x, axis=1, count=prepared.n_features)


def cut_to(prepared: Prepared, maxlen: int) -> Prepared:
    """`prepared`'s word-id sequences cut to `maxlen`: the last `maxlen` columns of x, as
    views. For sequences padded and cut at the front (hpo.data.builtin, pad_sequences' default)
    this is exactly pad_sequences(rows, maxlen), so a trial may search `maxlen` below the
    study's without preparing the data again."""
    longest = prepared.x_train.shape[-1] if prepared.x_train.ndim == 2 else None
    if prepared.input_kind != "sequence" or longest is None:
        raise HpoError(f'maxlen: only for input = "sequence", not {prepared.input_kind!r}')
    if isinstance(maxlen, bool) or not isinstance(maxlen, int | np.integer) or maxlen < 1:
        raise HpoError(f"maxlen: must be a positive integer, got {maxlen!r}")
    if maxlen > longest:
        raise HpoError(
            f"maxlen: {maxlen} is above the study's maxlen {longest}, which the data was "
            "padded to; raise [study] maxlen to search longer sequences"
        )
    if maxlen == longest:
        return prepared
    return dataclasses.replace(
        prepared,
        n_features=int(maxlen),
        x_train=prepared.x_train[:, -maxlen:],
        x_test=prepared.x_test[:, -maxlen:],
    )
