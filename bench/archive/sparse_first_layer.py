"""The first layer of a text model on word ids instead of multi-hot rows: one training step's
forward and kernel gradient, dense against bag-of-ids, on this machine's CPU (issue #22).

    python bench/archive/sparse_first_layer.py [--batch 512] [--vocab 10000] [--repeat 20]

For each backend (JAX, TensorFlow), first-layer width (16, 128) and ids per row (130, about an
IMDB review's distinct words after length buckets; 586, the longest review), times one step of
`loss = sum(relu(first_layer(x)) @ v)` and its kernel gradient:

- dense: `x @ W` on the multi-hot float32 rows (what hpo trains today);
- bag, autodiff: `sum(W[ids])` with the padding id pointing at a zero row, its gradient the
  framework's own (a scatter-add into the kernel: XLA's CPU scatter has been a serial loop,
  tensorflow#56511, jax#695);
- bag, segment sum (JAX): the same forward, the kernel gradient computed without a scatter, as
  a sorted segment sum of each id's upstream gradient (the ids sorted on the host).

All three are checked to give the same kernel gradient (to 1e-4) before they are timed. Prints
the median milliseconds a step over --repeat steps after one warm-up (compilation) step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np


def data(batch: int, vocab: int, ids_per_row: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    # Zipf-like word frequencies, as in text: the frequent words are in most rows.
    p = 1.0 / np.arange(1, vocab + 1)
    p /= p.sum()
    ids = np.stack([rng.choice(vocab, ids_per_row, replace=False, p=p) for _ in range(batch)])
    multi_hot = np.zeros((batch, vocab), np.float32)
    np.put_along_axis(multi_hot, ids, 1.0, axis=1)
    return ids.astype(np.int32), multi_hot


def timed(step, repeat: int) -> float:
    step()  # compile
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def jax_steps(ids, multi_hot, units: int, vocab: int) -> dict:
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(1)
    w = jnp.asarray(rng.normal(size=(vocab, units)).astype(np.float32))
    v = jnp.asarray(rng.normal(size=(units,)).astype(np.float32))
    x = jnp.asarray(multi_hot)
    ids_j = jnp.asarray(ids)

    def dense_loss(w):
        return jnp.sum(jax.nn.relu(x @ w) @ v)

    def bag_loss(w):
        padded = jnp.concatenate([w, jnp.zeros((1, w.shape[1]), w.dtype)])
        return jnp.sum(jax.nn.relu(jnp.take(padded, ids_j, axis=0).sum(1)) @ v)

    order = np.argsort(ids.ravel(), kind="stable")
    sorted_ids = jnp.asarray(ids.ravel()[order])
    order_j = jnp.asarray(order)

    @jax.jit
    def segment_grad(w):
        hidden = jnp.take(w, ids_j, axis=0).sum(1)
        upstream = (hidden > 0) * v  # d loss / d hidden, one row per example
        per_id = jnp.repeat(upstream, ids.shape[1], axis=0)[order_j]
        return jax.ops.segment_sum(per_id, sorted_ids, vocab, indices_are_sorted=True)

    dense = jax.jit(jax.grad(dense_loss))
    bag = jax.jit(jax.grad(bag_loss))
    reference = np.asarray(dense(w))
    for other in (bag, segment_grad):
        np.testing.assert_allclose(np.asarray(other(w)), reference, rtol=1e-4, atol=1e-4)
    return {
        "dense": lambda: dense(w).block_until_ready(),
        "bag, autodiff": lambda: bag(w).block_until_ready(),
        "bag, segment sum": lambda: segment_grad(w).block_until_ready(),
    }


def tf_steps(ids, multi_hot, units: int, vocab: int) -> dict:
    import tensorflow as tf

    rng = np.random.default_rng(1)
    w = tf.Variable(rng.normal(size=(vocab, units)).astype(np.float32))
    v = tf.constant(rng.normal(size=(units,)).astype(np.float32))
    x = tf.constant(multi_hot)
    ids_t = tf.constant(ids)

    @tf.function(jit_compile=False)
    def dense():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.linalg.matvec(tf.nn.relu(x @ w), v))
        return tf.convert_to_tensor(tape.gradient(loss, w))

    @tf.function(jit_compile=False)
    def bag():
        with tf.GradientTape() as tape:
            hidden = tf.reduce_sum(tf.gather(w, ids_t), axis=1)
            loss = tf.reduce_sum(tf.linalg.matvec(tf.nn.relu(hidden), v))
        return tf.convert_to_tensor(tape.gradient(loss, w))  # IndexedSlices, made dense

    np.testing.assert_allclose(bag().numpy(), dense().numpy(), rtol=1e-4, atol=1e-4)
    return {"dense": lambda: dense().numpy(), "bag, autodiff": lambda: bag().numpy()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--backends", default="jax,tensorflow")
    opts = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import jax

    print(f"{os.cpu_count()} cores; jax {jax.__version__}", end="")
    if "tensorflow" in opts.backends:
        import tensorflow as tf

        print(f", tensorflow {tf.__version__}", end="")
    print(f"; batch {opts.batch}, vocabulary {opts.vocab}; ms a step (median)")
    print("| backend | ids a row | units | dense | bag, autodiff | bag, segment sum |")
    print("|---|---|---|---|---|---|")
    for backend in opts.backends.split(","):
        for ids_per_row in (130, 586):
            ids, multi_hot = data(opts.batch, opts.vocab, ids_per_row)
            for units in (16, 128):
                make = jax_steps if backend == "jax" else tf_steps
                steps = make(ids, multi_hot, units, opts.vocab)
                ms = {name: timed(step, opts.repeat) for name, step in steps.items()}
                cells = [f"{ms[k]:.1f}" if k in ms else "" for k in
                         ("dense", "bag, autodiff", "bag, segment sum")]  # fmt: skip
                print(f"| {backend} | {ids_per_row} | {units} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
