"""What the fused loop's compiled epoch reads from the host: the inputs as backend tensors,
converted once for all the trials on the same data, and each epoch's batches as an index
matrix (hpo.train.engine)."""

from __future__ import annotations

import math

import numpy as np

from hpo.backend import import_keras
from hpo.train import word_ids

keras = import_keras()
ops = keras.ops


def batch_plan(n: int, batch_size: int, rng: np.random.Generator | None, pad_row: int = 0) -> tuple:
    """(indices, weights), each (steps, batch_size): rows of each batch, in shuffled order when
    `rng` is given; the last batch is padded with `pad_row` at weight 0."""
    order = rng.permutation(n) if rng is not None else np.arange(n)
    steps = math.ceil(n / batch_size)
    padded = np.full(steps * batch_size, pad_row, dtype=np.int32)
    padded[:n] = order
    weights = np.zeros(steps * batch_size, dtype=np.float32)
    weights[:n] = 1.0
    return padded.reshape(steps, batch_size), weights.reshape(steps, batch_size)


class InputCache:
    """The training and validation inputs as backend tensors (on a GPU: copied to it), kept
    while the arrays keep their shapes: an Objective's trials all train on the same data."""

    def __init__(self) -> None:
        self._inputs: dict[tuple, tuple] = {}

    def inputs(self, first_layer: str, x: np.ndarray, x_val: np.ndarray) -> tuple:
        """(x, x_val, their rows' word counts or None): the training and validation inputs as
        tensors in `first_layer`'s form, converted once while the arrays keep these shapes."""
        shapes = (x.shape, x_val.shape)
        for key in [key for key in self._inputs if key[1:] != shapes]:
            del self._inputs[key]  # another dataset or split: drop it
        key = (first_layer, *shapes)
        if key not in self._inputs:
            if first_layer == "ids":
                host = [word_ids.from_packed(a) for a in (x, x_val)]
                on_device = [word_ids.WordIds(*map(ops.convert_to_tensor, h)) for h in host]
                self._inputs[key] = (*on_device, tuple(h.lengths for h in host))
            else:
                self._inputs[key] = (ops.convert_to_tensor(x), ops.convert_to_tensor(x_val), None)
        return self._inputs[key]

    def forms(self) -> set[str]:
        """The first-layer forms whose inputs are held."""
        return {key[0] for key in self._inputs}
