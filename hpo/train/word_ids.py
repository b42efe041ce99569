"""The first layer of a text model, trained on each row's word ids instead of its multi-hot row.

A Dense layer on a 10,000-word multi-hot row does 10,000 x units multiply-adds per row, about
99% of them by zero: an IMDB review has ~130 distinct words. The same layer is the sum of the
kernel rows of the row's words plus the bias, exactly the same function with exactly the same
gradient (a scatter-add of each row's upstream gradient into its words' kernel rows), at the
cost of its words, not of the vocabulary. The model keeps an ordinary Dense kernel; only the
training computation changes (hpo.train.engine's "ids" form), so the model handed over,
saved, predicted with and shown on the dashboard is the plain Dense model.

Layout. All rows' word ids are one flat array, with each row's start and length. Inside the
compiled step a batch's words are laid out flat too, `capacity` positions long: each position
finds its batch row by counting the rows that end before it (a cumulative sum), so a batch
costs its real words, not its rows padded to the longest review. Positions past the batch's
words belong to an extra row that is dropped, so they add nothing and receive no gradient.
The batches are those of the dense loop (same plan, same order), so the two forms train alike.
"""

from __future__ import annotations

import math
import os
import re
from typing import NamedTuple

import numpy as np

from hpo.backend import import_keras
from hpo.errors import HpoError
from hpo.train.model import UnpackBits, chain

keras = import_keras()
ops = keras.ops

FORMS = ("dense", "ids")
ENV = "HPO_FIRST_LAYER"
CAPACITY_STEP = 4096  # a batch's words are padded to a multiple of this (fewer recompiles)
MIN_ROWS = 4096  # training rows from which the ids form repays its compilation (choose())


class WordIds(NamedTuple):
    """Every row's word ids, flat: row r's are ids[starts[r] : starts[r] + lengths[r]]. Arrays
    on the host, or tensors (a NamedTuple is an argument jax.jit and tf.function take)."""

    ids: np.ndarray  # int32 (total words,)
    starts: np.ndarray  # int32 (rows,)
    lengths: np.ndarray  # int32 (rows,)


def from_packed(packed: np.ndarray, chunk: int = 4096) -> WordIds:
    """The word ids of bit-packed multi-hot rows (np.packbits(multi_hot, axis=1)).

    Unpacked a chunk of rows at a time: 25,000 IMDB rows would be 250 MB unpacked at once."""
    ids, lengths = [], []
    for begin in range(0, len(packed), chunk):
        bits = np.unpackbits(packed[begin : begin + chunk], axis=1)
        rows, words = np.nonzero(bits)  # row-major: each row's words ascending
        ids.append(words.astype(np.int32))
        lengths.append(np.bincount(rows, minlength=len(bits)).astype(np.int32))
    lengths_all = np.concatenate(lengths) if lengths else np.zeros(0, np.int32)
    starts = np.zeros(len(lengths_all), np.int32)
    np.cumsum(lengths_all[:-1], out=starts[1:])
    flat = np.concatenate(ids) if ids else np.zeros(0, np.int32)
    if not len(flat):  # no words at all: one dummy id, so that gathers have a source
        flat = np.zeros(1, np.int32)
    return WordIds(flat, starts, lengths_all)


def capacity(lengths: np.ndarray, indices: np.ndarray, headroom: float = 1.0) -> int:
    """Positions a compiled step needs for the batches of `indices` (steps, batch): the most
    words in one batch, times `headroom` (room for later epochs' shuffles, which put other
    rows together), rounded up to CAPACITY_STEP."""
    most = int(lengths[indices].sum(axis=1).max()) if indices.size else 0
    return max(CAPACITY_STEP, math.ceil(most * headroom / CAPACITY_STEP) * CAPACITY_STEP)


def bag_sum(kernel, ids, starts, lengths, rows, capacity: int):
    """(batch, units): for each of `rows` (batch,), the sum of the kernel rows of its words.

    Runs inside the compiled step; `ids`, `starts`, `lengths` are a WordIds as tensors and
    `capacity` is at least the batch's word count (capacity())."""
    batch = rows.shape[0]
    row_lengths = ops.take(lengths, rows)
    ends = ops.cumsum(row_lengths)
    begins = ends - row_lengths
    positions = ops.arange(capacity, dtype="int32")
    # The batch row each position belongs to (`batch`, the dropped row, past the last word):
    # how many rows end at or before it. Counted by marking each row's end and summing the
    # marks, 8x faster than a binary search per position on JAX's CPU (a row with no words
    # marks the same end twice).
    marks = ops.scatter(ops.expand_dims(ends, -1), ops.ones_like(ends), (capacity + 1,))
    owner = ops.cumsum(marks[:capacity])
    row = ops.minimum(owner, batch - 1)
    source = ops.take(ops.take(starts, rows), row) + positions - ops.take(begins, row)
    source = ops.clip(source, 0, ids.shape[0] - 1)
    words = ops.where(owner < batch, ops.take(ids, source), 0)
    vectors = ops.take(kernel, words, axis=0)  # (capacity, units)
    # Sorted owners (JAX may use it; TensorFlow takes no num_segments with sorted=True).
    in_order = keras.backend.backend() == "jax"
    sums = ops.segment_sum(vectors, owner, num_segments=batch + 1, sorted=in_order)
    return sums[:batch]


def choose(packed: bool, folds: int = 1, rows: int = MIN_ROWS) -> str:
    """The form of a model's first layer in training: "ids" or "dense".

    ids needs bit-packed text (hpo.train.model.UnpackBits, then Dense) and one model, not
    stacked k-fold ones. It is the default for text of at least MIN_ROWS training rows:
    measured faster per epoch than dense on JAX and TensorFlow, IMDB and Reuters, for first
    layers of 16 to 128 units (docs/benchmarks.md, "How fast is an epoch"), once it is
    compiled (on TensorFlow, with XLA: longer per program). On fewer rows the
    epochs are too short to repay that. Except under JAX on a GPU whose jaxlib has the f32
    scatter-add regression (slow_gpu_scatter). $HPO_FIRST_LAYER=dense forces dense, ids asks
    for ids (still dense where ids cannot be used)."""
    forced = os.environ.get(ENV, "auto")
    if forced not in ("auto", *FORMS):
        raise HpoError(f"{ENV}={forced}: expected auto, dense or ids")
    if not packed or folds != 1 or forced == "dense":
        return "dense"
    if forced == "ids":
        return "ids"
    if rows < MIN_ROWS:
        return "dense"
    if keras.backend.backend() == "jax":
        import jax
        import jaxlib

        platforms = {device.platform for device in jax.devices()}
        if slow_gpu_scatter(jaxlib.__version__, platforms):
            return "dense"
    return "ids"


def slow_gpu_scatter(jaxlib_version: str, platforms: set[str]) -> bool:
    """Whether JAX's f32 scatter-add is slow here: jaxlib 0.10.2 to 0.11.0 on a GPU compiles it
    to a compare-and-swap loop, hundreds of times slower when many updates hit one row
    (openxla/xla#46225, fixed in 0.11.1), and the ids form's kernel gradient is such a scatter:
    IMDB's most frequent words are in 95% of the rows."""
    release = tuple(int(part) for part in re.findall(r"\d+", jaxlib_version)[:3])
    return "gpu" in platforms and (0, 10, 2) <= release <= (0, 11, 0)


def first_dense(model: keras.Model):
    """The Dense layer right after the model's UnpackBits layer, or None: a model whose input
    is not bit-packed text (or a stacked k-fold model, FoldDense) has no ids form."""
    layers = chain(model)
    if len(layers) < 2 or not isinstance(layers[0], UnpackBits):
        return None
    return layers[1] if type(layers[1]) is keras.layers.Dense else None


def tail(model: keras.Model) -> list:
    """The layers after the first Dense layer, in order."""
    return chain(model)[2:]
