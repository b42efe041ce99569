"""Model-ready arrays of a study's data, and how they are held in memory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


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

    @property
    def layout(self) -> str:
        """How x is held: "packed" bits, or its dtype ("uint8" multi-hot or pixels, "float32")."""
        return "packed" if self.packed else str(self.x_train.dtype)


def unpacked(prepared: Prepared, x: np.ndarray) -> np.ndarray:
    """The plain uint8 feature matrix of `x` (rows of `prepared`), for readers and tests."""
    if not prepared.packed:
        return np.asarray(x)
    return np.unpackbits(x, axis=1, count=prepared.n_features)
