"""Fused training: one compiled call per epoch, holding all its steps and its validation pass.

`model.fit` pays a fixed cost per epoch (a new data iterator, an `evaluate` pass, callbacks)
and per step (Python dispatch: under JAX, `steps_per_execution` is a Python loop of separately
jitted steps). For the small networks of chapter 3 that cost is most of the time: a 4-fold
Boston epoch is microseconds of arithmetic. Here one compiled function (jax.jit or tf.function)
runs a whole epoch as a loop over batches (`keras.ops.fori_loop`) with Keras' stateless API
(`model.stateless_call`, `optimizer.stateless_apply`), then the validation pass, and returns
the epoch's logs, so the host wakes once per epoch: the pruner still sees every epoch.

The training arrays are converted to backend tensors once and stay where the step runs. Each
epoch's shuffle is drawn on the host from a seeded generator and sent as an index matrix; the
last, partial batch is padded with zero-weight rows, so every batch has one shape and the
losses are the same weighted means Keras computes.

Keras' logs are reproduced: `loss` (the loss over the epoch's samples), the task's metrics
(`accuracy`, or `mae` and `mse`) and their `val_` twins. The validation pass also returns its
predictions, so a trial can keep those of its best epoch (hpo.train.predictions) at no extra
cost. A model whose output has a fold axis (hpo.train.model's stacked k-fold models: one batch
row carries a sample of each fold) gets one loss per fold, summed so that each fold's weights
receive exactly the gradient they would get alone; its logs are the folds' mean.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from hpo.backend import import_keras
from hpo.errors import HpoError
from hpo.train import model as model_lib
from hpo.train import word_ids

keras = import_keras()
ops = keras.ops

BACKENDS = ("jax", "tensorflow")  # torch has no compiled loop here: model.fit trains there
ENGINES = ("fused", "fit")


def choose() -> str:
    """Which loop trains a trial: "fused" (this module) or Keras' "fit".

    $HPO_ENGINE=fused|fit forces one. By default fused wherever it exists (JAX, TensorFlow):
    measured faster than fit for every built-in dataset on both (docs/performance.md), by 1.1x
    (Reuters on JAX) to 1.8x (IMDB on TensorFlow) per epoch, and 16x for Boston's k-fold trials.
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


class FusedTrainer:
    """Trains a compiled Keras model (hpo.train.model.build) one compiled call per epoch."""

    def __init__(
        self,
        model: keras.Model,
        *,
        loss: str,
        task: str,
        train: tuple[np.ndarray, np.ndarray],
        validation: tuple[np.ndarray, np.ndarray] | None,
        batch_size: int,
        validation_batch_size: int = 0,
        seed: int | None = None,
        tensors: dict[Any, Any] | None = None,
        shuffle: bool = True,
        first_layer: str = "dense",
    ) -> None:
        self.model = model
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed) if shuffle else None
        self.loss_fn = per_sample_loss(loss)
        self.metrics = task_metrics(task, loss)
        # No validation (analyze's retrain on all rows): the epoch has no validation pass.
        self.validating = validation is not None
        if validation is None:
            validation = (train[0][:1], train[1][:1])  # shapes only: never computed on
        self.n_train, self.n_val = len(train[0]), len(validation[0])
        # The inputs are the big arrays: converted (on a GPU: copied to it) once per `tensors`
        # dict, which an Objective keeps across its trials, all on the same data; the targets
        # are small and depend on the loss (one-hot or not).
        self.first_layer = first_layer
        x, x_val, lengths = _inputs(tensors, first_layer, train[0], validation[0])
        # Arguments of the compiled call, never constants captured by it: jax.jit would copy
        # captured arrays into the compiled program (IMDB: seconds to compile, twice the memory).
        self.arrays = (
            x,
            ops.convert_to_tensor(train[1]),
            x_val,
            ops.convert_to_tensor(validation[1]),
        )
        # The last batch's padding rows: any row (their weight is 0), the one with the fewest
        # words for the ids form, which pays for their words.
        self.pad_rows = (0, 0) if lengths is None else tuple(int(np.argmin(n)) for n in lengths)
        val_batch = min(validation_batch_size or 1, self.n_val)
        val_plan = batch_plan(self.n_val, val_batch, None, self.pad_rows[1])
        self.val_plan = tuple(ops.convert_to_tensor(a) for a in val_plan)
        self.layers = model_lib.chain(model)
        if first_layer == "ids":
            # The first Dense layer is computed from word ids (hpo.train.word_ids), the rest of
            # the model as it is; a batch's words fill `capacity` positions.
            self.first = word_ids.first_dense(model)
            if self.first is None:
                raise ValueError("the ids form needs a bit-packed text model (UnpackBits, Dense)")
            self.tail = word_ids.tail(model)
            self.lengths = lengths
            self.capacity = (0, word_ids.capacity(self.lengths[1], val_plan[0]))
        # (validation batch, [folds,] outputs): one validation batch's predictions
        self.prediction_shape = (self.val_plan[0].shape[1], *model.output.shape[1:])
        self.val_predictions: np.ndarray | None = None  # the last epoch's, in validation order
        model.optimizer.build(model.trainable_variables)
        # JAX traces pure functions: the variables' values travel through the compiled call.
        # TensorFlow's graph updates the variables in place (Keras' optimizer has no stateless
        # apply under TensorFlow), as Keras' own train_function does.
        self.stateless = keras.backend.backend() == "jax"
        self.state = (
            (
                [v.value for v in model.trainable_variables],
                [v.value for v in model.non_trainable_variables],
                [v.value for v in model.optimizer.variables],
            )
            if self.stateless
            else ()
        )
        self._epoch = _compile(self._epoch_fn)

    def _call(self, trainable, non_trainable, x, training: bool):
        """The model on a batch: (predictions, non-trainable values after the call: JAX only)."""
        if not self.stateless:  # TensorFlow: the variables are updated in place
            return self._forward(x, training), non_trainable
        if self.first_layer == "dense":
            return self.model.stateless_call(trainable, non_trainable, x, training=training)
        model = self.model
        mapping = list(zip(model.trainable_variables, trainable, strict=True))
        mapping += zip(model.non_trainable_variables, non_trainable, strict=True)
        with keras.StatelessScope(state_mapping=mapping) as scope:  # as stateless_call does
            y_pred = self._forward(x, training)
        return y_pred, [scope.get_current_value(v) for v in model.non_trainable_variables]

    def _forward(self, x, training: bool):
        """The model's layers one after another (hpo.train.model.build makes a chain). In the
        ids form x is (batch rows, the rows' word ids as word_ids.WordIds tensors, capacity)
        and the first Dense layer is summed from them. Under TensorFlow, Dropout draws its mask
        with ThreeFry (_tf_dropout)."""
        layers = self.layers
        if self.first_layer == "ids":
            rows, ids, capacity = x
            first = self.first
            x = word_ids.bag_sum(first.kernel, ids.ids, ids.starts, ids.lengths, rows, capacity)
            x = first.activation(x + first.bias)
            layers = self.tail
        for layer in layers:
            dropout = isinstance(layer, keras.layers.Dropout) and layer.noise_shape is None
            if training and dropout and not self.stateless and layer.rate > 0:
                x = _tf_dropout(layer, x)
            else:
                x = layer(x, training=training)
        return x

    def _rows(self, x_all, batch_rows, validation: bool):
        """A batch's input: its rows of x, or (dense/ids) what the ids form reads them from."""
        if self.first_layer == "dense":
            return ops.take(x_all, batch_rows, axis=0)
        return batch_rows, x_all, self.capacity[validation]

    # --- what runs inside the compiled call ---------------------------------------------------

    def _weighted(self, values, weights):
        """Sum over the batch of per-sample values × weight; a fold axis is kept."""
        weights = ops.reshape(weights, (-1,) + (1,) * (values.ndim - 1))
        return ops.sum(values * weights, axis=0)

    def _loss(self, trainable, non_trainable, x, y, w):
        y_pred, non_trainable = self._call(trainable, non_trainable, x, training=True)
        losses = self.loss_fn(y, y_pred)
        per_fold = self._weighted(losses, w) / ops.sum(w)
        # Summed over folds: each fold's weights get the gradient of its own mean loss.
        return ops.sum(per_fold), (non_trainable, y_pred, losses)

    def _sums(self, y, y_pred, w, loss_values) -> dict[str, Any]:
        sums = {name: self._weighted(fn(y, y_pred), w) for name, fn in self.metrics.items()}
        sums["loss"] = self._weighted(loss_values, w)
        return sums

    def _train_step(self, state, x, y, w):
        """One optimizer step; (new state, the batch's per-sample predictions and losses)."""
        model = self.model
        if self.stateless:
            trainable, non_trainable, optimizer_vars = state
            (_, (non_trainable, y_pred, losses)), grads = _value_and_grad(self._loss)(
                trainable, non_trainable, x, y, w
            )
            trainable, optimizer_vars = model.optimizer.stateless_apply(
                optimizer_vars, grads, trainable
            )
            return (trainable, non_trainable, optimizer_vars), y_pred, losses
        import tensorflow as tf

        with tf.GradientTape() as tape:
            total, (_, y_pred, losses) = self._loss(None, None, x, y, w)
        # The ids form's kernel gradient arrives as IndexedSlices (rows of the words seen):
        # made dense, so the optimizer updates every row as it does for the dense layer.
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(total, model.trainable_variables)]
        model.optimizer.apply(grads, model.trainable_variables)
        return state, y_pred, losses

    def _predict(self, state, x):
        trainable, non_trainable, _ = state if self.stateless else (None, None, None)
        return self._call(trainable, non_trainable, x, training=False)[0]

    def _epoch_fn(self, state, arrays, indices, weights, val_indices, val_weights):
        x_train, y_train, x_val, y_val = arrays

        def step(i, carry):
            state, sums = carry
            x = self._rows(x_train, indices[i], validation=False)
            y = ops.take(y_train, indices[i], axis=0)
            state, y_pred, losses = self._train_step(state, x, y, weights[i])
            batch = self._sums(y, y_pred, weights[i], losses)
            return state, {k: sums[k] + batch[k] for k in sums}

        state, sums = ops.fori_loop(0, indices.shape[0], step, (state, self._zero_sums()))
        if not self.validating:
            return state, sums, None, None

        def val_step(i, carry):
            sums, predictions = carry
            x = self._rows(x_val, val_indices[i], validation=True)
            y = ops.take(y_val, val_indices[i], axis=0)
            y_pred = self._predict(state, x)
            batch = self._sums(y, y_pred, val_weights[i], self.loss_fn(y, y_pred))
            start = (i,) + (0,) * len(self.prediction_shape)
            predictions = ops.slice_update(
                predictions, start, ops.expand_dims(ops.cast(y_pred, predictions.dtype), 0)
            )
            return {k: sums[k] + batch[k] for k in sums}, predictions

        predictions = ops.zeros((val_indices.shape[0], *self.prediction_shape))
        val_sums, predictions = ops.fori_loop(
            0, val_indices.shape[0], val_step, (self._zero_sums(), predictions)
        )
        return state, sums, val_sums, predictions

    def _zero_sums(self) -> dict[str, Any]:
        folds = self.model.output.shape[1:-1]  # () for a plain model, (k,) for stacked folds
        return {name: ops.zeros(folds) for name in (*self.metrics, "loss")}

    # --- the host side --------------------------------------------------------------------------

    def run_epoch(self) -> dict[str, float]:
        """Train one epoch; its logs as Keras' fit would write them (fold means). Its validation
        predictions are left in `val_predictions`: (validation rows, [folds,] outputs)."""
        indices, weights = batch_plan(self.n_train, self.batch_size, self.rng, self.pad_rows[0])
        ids = self.first_layer == "ids"
        if ids and word_ids.capacity(self.lengths[0], indices) > self.capacity[0]:
            # More words in a batch than compiled for (or the first epoch): compile anew, a
            # fresh function, so that no cached trace of the old capacity is reused.
            needed = word_ids.capacity(self.lengths[0], indices, headroom=1.1)
            self.capacity = (needed, self.capacity[1])
            self._epoch = _compile(lambda *args: self._epoch_fn(*args))
        self.state, sums, val_sums, predictions = self._epoch(
            self.state, self.arrays, indices, weights, *self.val_plan
        )
        logs = {k: float(np.mean(ops.convert_to_numpy(v))) / self.n_train for k, v in sums.items()}
        if not self.validating:
            return logs
        flat = ops.convert_to_numpy(predictions).reshape(-1, *self.prediction_shape[1:])
        self.val_predictions = flat[: self.n_val]
        for k, v in val_sums.items():
            logs[f"val_{k}"] = float(np.mean(ops.convert_to_numpy(v))) / self.n_val
        return logs

    def fit(self, epochs: int) -> None:
        """Train `epochs` epochs and leave the result in the model's variables."""
        for _ in range(epochs):
            self.run_epoch()
        self.write_back()

    def write_back(self) -> None:
        """Copy the trained values into the model's variables (for saving or predicting)."""
        if not self.stateless:
            return  # TensorFlow trained the variables themselves
        trainable, non_trainable, optimizer_vars = self.state
        model = self.model
        for variables, values in (
            (model.trainable_variables, trainable),
            (model.non_trainable_variables, non_trainable),
            (model.optimizer.variables, optimizer_vars),
        ):
            for variable, value in zip(variables, values, strict=True):
                variable.assign(value)


def _inputs(tensors: dict | None, first_layer: str, x: np.ndarray, x_val: np.ndarray) -> tuple:
    """(x, x_val, their rows' word counts or None): the training and validation inputs as
    tensors in `first_layer`'s form, from `tensors` (reused while its arrays have these shapes)
    or converted now."""
    cache = {} if tensors is None else tensors
    shapes = (x.shape, x_val.shape)
    for key in [key for key in cache if key[1:] != shapes]:
        del cache[key]  # another dataset or split: drop it
    key = (first_layer, *shapes)
    if key not in cache:
        if first_layer == "ids":
            host = [word_ids.from_packed(a) for a in (x, x_val)]
            on_device = [word_ids.WordIds(*map(ops.convert_to_tensor, h)) for h in host]
            cache[key] = (*on_device, tuple(h.lengths for h in host))
        else:
            cache[key] = (ops.convert_to_tensor(x), ops.convert_to_tensor(x_val), None)
    return cache[key]


def _tf_dropout(layer, x):
    """Keras' Dropout on TensorFlow, its mask drawn by ThreeFry from the layer's seed generator.

    Keras leaves the generator to TensorFlow, and under XLA on a CPU TensorFlow's own choice
    costs about 30 ms for a 512 x 128 mask, ThreeFry 0.2 ms: with it, dropout took most of an
    IMDB or Boston epoch (docs/performance.md)."""
    import tensorflow as tf

    seed = layer.seed_generator.next()  # as Keras draws it (an int64 pair), cast as Keras does
    seed = tf.cast(tf.math.floormod(seed, tf.int32.max - 1), "int32")
    return tf.nn.experimental.stateless_dropout(x, rate=layer.rate, seed=seed, rng_alg="threefry")


def _compile(fn: Callable) -> Callable:
    """`fn` compiled by XLA: jax.jit, or tf.function with jit_compile (Keras' own default for
    fit on TensorFlow). XLA runs the ids form's gathers and scatters 5x faster than
    TensorFlow's graph executor and a Boston epoch's small steps 2x faster (a new worker's
    first compilation costs about 0.5 s more, and its memory about 300 MB)."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(fn)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, reduce_retracing=True, jit_compile=True)
    raise NotImplementedError(f"no fused training loop for the {backend} backend")


def _value_and_grad(fn: Callable) -> Callable:
    """JAX's (value, aux), gradient with respect to the first argument."""
    import jax

    return jax.value_and_grad(fn, has_aux=True)
