"""What the fused loop (hpo.train.engine) is compiled from, backend by backend: which loop
trains (`choose`), the per-sample loss and metrics, whether TensorFlow uses XLA, the backend's
compiler, dropout, JAX's random draws and gradients, and a model's variables read and written
as three lists.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

from hpo.backend import import_keras
from hpo.errors import HpoError

keras = import_keras()
ops = keras.ops

BACKENDS = ("jax", "tensorflow")  # torch has no compiled loop here: model.fit trains there
ENGINES = ("fused", "fit")


def choose() -> str:
    """Which loop trains a trial: "fused" (hpo.train.engine) or Keras' "fit".

    $HPO_ENGINE=fused|fit forces one. By default fused wherever it exists (JAX, TensorFlow):
    measured faster than fit for every built-in dataset on both (docs/benchmarks.md, "How fast
    is an epoch"; why: docs/engine.md).
    """
    backend = keras.backend.backend()
    forced = os.environ.get("HPO_ENGINE", "auto")
    if forced not in ("auto", *ENGINES):
        raise HpoError(f"HPO_ENGINE={forced}: expected auto, fused or fit")
    if forced == "fused" and backend not in BACKENDS:
        raise HpoError(f"HPO_ENGINE=fused: no fused loop for the {backend} backend (use fit)")
    if forced != "auto":
        return forced
    return "fused" if backend in BACKENDS else "fit"


XLA_STEPS = 2000  # optimizer steps from which a dense model compiles with XLA (use_xla)


def per_sample_loss(name: str) -> Callable:
    """The unreduced Keras loss function: one value per sample (and per fold)."""
    return keras.losses.get(name)


def task_metrics(task: str, loss: str) -> dict[str, Callable]:
    """Keras' per-sample metric functions, named as hpo.train.model names its metric objects."""
    metrics = keras.metrics
    if task == "regression":
        return {"mae": metrics.mean_absolute_error, "mse": metrics.mean_squared_error}
    if task == "binary":  # Keras keeps the last (size 1) axis here, unlike its other metrics
        return {"accuracy": lambda y, p: ops.mean(metrics.binary_accuracy(y, p), axis=-1)}
    if loss == "categorical_crossentropy":  # one-hot targets
        return {"accuracy": metrics.categorical_accuracy}
    return {"accuracy": metrics.sparse_categorical_accuracy}


def is_dropout(layer) -> bool:
    return isinstance(layer, keras.layers.Dropout) and layer.noise_shape is None


def variables_of(model: keras.Model) -> tuple[list, list, list]:
    return model.trainable_variables, model.non_trainable_variables, model.optimizer.variables


def assign(model: keras.Model, values) -> None:
    """Set `model`'s variables (variables_of's three lists) to `values`, three lists alike."""
    for variables, new in zip(variables_of(model), values, strict=True):
        for variable, value in zip(variables, new, strict=True):
            variable.assign(value)


def use_xla(first_layer: str, rows: int, batch_size: int, epochs: int | None) -> bool:
    """Whether TensorFlow compiles the epoch with XLA (JAX always does): for the ids form, which
    XLA runs 4x faster than TensorFlow's graph executor, and for a dense model that may train
    at least XLA_STEPS steps (a 200-epoch Boston trial: 2x faster, compilation included).
    XLA takes longer to compile, which a short trial does not repay (with XLA everywhere the
    test suite's tiny studies took 11.5 min instead of 7)."""
    if first_layer == "ids":
        return True
    return epochs is not None and epochs * math.ceil(rows / batch_size) >= XLA_STEPS


def on_cpu() -> bool:
    """Whether the backend computes on the CPU (no GPU or TPU in use)."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.default_backend() == "cpu"
    if backend == "tensorflow":
        import tensorflow as tf

        return not tf.config.list_logical_devices("GPU")
    return True


def compile_epoch(fn: Callable, xla: bool) -> Callable:
    """`fn` compiled: jax.jit, or tf.function, with XLA when `xla` (use_xla)."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(fn)
    if backend == "tensorflow":
        import tensorflow as tf

        # No autograph: the epoch's loops are explicit (fori_loop) and its Python branches on
        # static values, so converting every function it calls is tracing time for nothing
        # (measured within this machine's noise: docs/lab/performance.md).
        return tf.function(fn, reduce_retracing=True, jit_compile=xla, autograph=False)
    raise NotImplementedError(f"no fused training loop for the {backend} backend")


def uniform_rbg(shape: tuple, seed) -> Any:
    """JAX: uniform draws in [0, 1) from XLA's own bit generator ("rbg" keys), seeded by a
    Keras seed generator's draw (two uint32). JAX's default, ThreeFry, is written out as many
    XLA operations: on this project's CPU the dropout masks were half of a Boston program's
    compilation, and these compile faster (docs/lab/performance.md)."""
    import jax
    import jax.numpy as jnp

    key = jax.random.wrap_key_data(jnp.tile(jnp.asarray(seed, jnp.uint32), 2), impl="rbg")
    return jax.random.uniform(key, shape)


def value_and_grad(fn: Callable) -> Callable:
    """JAX's (value, aux), gradient with respect to the first argument."""
    import jax

    return jax.value_and_grad(fn, has_aux=True)


def dropout(x, rate, seed_generator, stateless: bool, xla: bool, trials: int):
    """Dropout at `rate` (a tensor: an argument of the compiled call), its mask drawn from
    the layer's `seed_generator`, scaled as Keras' Dropout scales it: under JAX
    (`stateless`) or TensorFlow (with XLA: `xla`), for one trial or stacked `trials`."""
    if trials > 1:  # one rate per slot: (batch, slots, units) against (1, slots, 1)
        rate = ops.reshape(rate, (1, -1, 1))
    if stateless:
        keep = 1.0 - rate
        kept = uniform_rbg(ops.shape(x), seed_generator.next()) < keep
        return ops.where(kept, x / keep, ops.zeros_like(x))
    import tensorflow as tf

    seed = seed_generator.next()  # as Keras draws it (an int64 pair), cast as Keras does
    seed = tf.cast(tf.math.floormod(seed, tf.int32.max - 1), "int32")
    # Under XLA on a CPU, TensorFlow's default generator takes about 30 ms for a 512 x 128
    # mask, most of an IMDB epoch; ThreeFry 0.2 ms. Without XLA TensorFlow's CPU kernel
    # has no ThreeFry, and its default is fast.
    algorithm = "threefry" if xla else None
    if trials == 1:
        return tf.nn.experimental.stateless_dropout(x, rate=rate, seed=seed, rng_alg=algorithm)
    # stateless_dropout takes one rate: the same mask rule, with a rate per slot.
    uniform = tf.random.stateless_uniform(
        tf.shape(x), seed, alg=algorithm or "auto_select", dtype=x.dtype
    )
    keep = 1.0 - rate
    return tf.where(uniform < keep, x / keep, tf.zeros_like(x))
