"""Does the order of a batch's words change what the ids form's kernel gradient costs?

    python bench/archive/kernel_gradient_order.py [--data-dir DIR] [--units 128] [--batch 512]

The ids form (hpo/train/word_ids.py) lays a batch's words out row after row. Its kernel
gradient gathers each position's row gradient and scatter-adds it into the 10,000 x units
kernel rows of the words: at IMDB's ~130 words a row and 128 units, about 9 million floats a
batch. XLA's CPU scatter adds them one position after another, so positions sorted by word
would add into one kernel row after another instead of all over the kernel. This times, with
TensorFlow under XLA on random batches of the real IMDB rows, the gradient's gather and
scatter-add and the forward's gather and segment sum, for positions row after row and sorted
by word, and the host's sort that the second needs for every batch. Prints milliseconds a
batch (the best of 3 passes over 20 batches). Needs the real imdb.npz: --data-dir or
HPO_DATA_DIR.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

BATCHES = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("HPO_DATA_DIR"))
    parser.add_argument("--units", type=int, default=128)
    parser.add_argument("--batch", type=int, default=512)
    args = parser.parse_args()
    if not args.data_dir:
        raise SystemExit("--data-dir (or HPO_DATA_DIR): the folder with keras' dataset files")
    os.environ["KERAS_BACKEND"] = "tensorflow"

    from hpo.backend import import_keras
    from hpo.data import builtin
    from hpo.train import word_ids

    import_keras()
    import tensorflow as tf

    data = builtin.load("imdb", args.data_dir)
    ids = word_ids.from_packed(data.x_train)
    rng = np.random.default_rng(0)
    batch, units, vocab = args.batch, args.units, data.n_features
    batches = []
    for _ in range(BATCHES):
        rows = rng.choice(len(ids.lengths), batch, replace=False)
        words = np.concatenate(
            [ids.ids[ids.starts[r] : ids.starts[r] + ids.lengths[r]] for r in rows]
        )
        owner = np.repeat(np.arange(batch, dtype=np.int32), ids.lengths[rows])
        batches.append((words, owner))
    capacity = word_ids.capacity(
        np.array([len(w) for w, _ in batches]), np.arange(BATCHES)[:, None]
    )

    def padded(array: np.ndarray, fill: int) -> tf.Tensor:
        return tf.constant(np.concatenate([array, np.full(capacity - len(array), fill, np.int32)]))

    @tf.function(jit_compile=True)
    def gradient(row_gradients, words, owner):  # the backward of the forward below
        return tf.math.unsorted_segment_sum(tf.gather(row_gradients, owner), words, vocab)

    @tf.function(jit_compile=True)
    def forward(kernel, words, owner):  # word_ids.bag_sum's gather and segment sum
        return tf.math.unsorted_segment_sum(tf.gather(kernel, words), owner, batch + 1)

    row_gradients = tf.constant(rng.normal(size=(batch + 1, units)).astype(np.float32))
    kernel = tf.constant(rng.normal(size=(vocab, units)).astype(np.float32))
    print(f"IMDB, {units} units, batch {batch}, {capacity} positions: ms a batch")
    print("| positions | kernel gradient | forward |")
    print("|---|---|---|")
    for order in ("row after row", "sorted by word"):
        tensors = []
        for words, owner in batches:
            if order == "sorted by word":
                by_word = np.argsort(words, kind="stable")
                words, owner = words[by_word], owner[by_word]
            tensors.append((padded(words, 0), padded(owner, batch)))
        times = [
            best_ms(fn, first, tensors)
            for fn, first in ((gradient, row_gradients), (forward, kernel))
        ]
        print(f"| {order} | {times[0]:.2f} | {times[1]:.2f} |", flush=True)
    start = time.perf_counter()
    for words, _ in batches:
        np.argsort(words, kind="stable")
    print(f"host sort by word: {(time.perf_counter() - start) / BATCHES * 1e3:.2f} ms a batch")


def best_ms(fn, first, tensors) -> float:
    """The best of 3 passes over the batches, in milliseconds a batch (compiled beforehand)."""
    fn(first, *tensors[0]).numpy()
    passes = []
    for _ in range(3):
        start = time.perf_counter()
        for words, owner in tensors:
            result = fn(first, words, owner)
        result.numpy()
        passes.append((time.perf_counter() - start) / len(tensors) * 1e3)
    return min(passes)


if __name__ == "__main__":
    main()
