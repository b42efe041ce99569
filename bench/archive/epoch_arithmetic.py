"""The arithmetic under a Boston epoch: a bare XLA loop of a stacked 4-fold network's steps.

    python bench/archive/epoch_arithmetic.py [--units 128] [--layers 3] [--batch 8] [--steps 38]

No Keras and no hpo: TensorFlow with XLA runs one epoch of plain SGD steps (forward, gradient,
update) of `--layers` Dense layers of `--units` relu units and one output, for 4 folds side by
side as hpo's FoldDense stacks them (einsum "bki,kio->bko": the fold axis after the batch
axis), and again with the fold axis first ("kbi,kio->kbo"), on random data with Boston's 13
features. Prints milliseconds an epoch (100 epochs after one that compiles) and the
multiply-adds' rate. What hpo's epoch adds to this (the optimizer's state, dropout, metrics,
the validation pass) is in bench/archive/compile_time.py's later epochs.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf

FOLDS, FEATURES = 4, 13


def epoch_function(layers: int, units: int, batch: int, steps: int, folds_first: bool):
    rng = np.random.default_rng(0)
    sizes = [FEATURES] + [units] * layers + [1]
    kernels = [
        tf.Variable(rng.normal(size=(FOLDS, a, b)).astype("float32") * 0.1)
        for a, b in itertools.pairwise(sizes)
    ]
    biases = [tf.Variable(np.zeros((FOLDS, b), "float32")) for b in sizes[1:]]
    shape = (steps, FOLDS, batch) if folds_first else (steps, batch, FOLDS)
    x = tf.constant(rng.normal(size=(*shape, FEATURES)).astype("float32"))
    y = tf.constant(rng.normal(size=(*shape, 1)).astype("float32"))
    equation = "kbi,kio->kbo" if folds_first else "bki,kio->bko"

    def forward(h):
        for i, (kernel, bias) in enumerate(zip(kernels, biases, strict=True)):
            h = tf.einsum(equation, h, kernel) + (bias[:, None] if folds_first else bias[None])
            h = tf.nn.relu(h) if i < layers else h
        return h

    @tf.function(jit_compile=True, autograph=False)
    def epoch():
        def step(i, total):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((forward(x[i]) - y[i]) ** 2)
            for variable, grad in zip(
                kernels + biases, tape.gradient(loss, kernels + biases), strict=True
            ):
                variable.assign_sub(1e-3 * grad)
            return i + 1, total + loss

        return tf.while_loop(lambda i, _: i < steps, step, (0, 0.0))[1]

    macs = 3 * steps * batch * FOLDS * sum(a * b for a, b in itertools.pairwise(sizes))
    return epoch, macs  # forward, and the gradients of inputs and kernels: 3 products each


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=128)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=38, help="Boston's 303 rows a fold at 8")
    args = parser.parse_args()
    for folds_first in (False, True, False, True):
        epoch, macs = epoch_function(args.layers, args.units, args.batch, args.steps, folds_first)
        epoch()
        start = time.perf_counter()
        for _ in range(100):
            epoch()
        seconds = (time.perf_counter() - start) / 100
        layout = "folds first (kbi)" if folds_first else "hpo's (bki)      "
        rate = macs / seconds / 1e9
        print(f"{layout} {1000 * seconds:6.2f} ms an epoch, {rate:5.1f} G multiply-adds/s")


if __name__ == "__main__":
    main()
