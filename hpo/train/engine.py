"""Fused training: one compiled call per epoch, holding all its steps and its validation pass.

`model.fit` pays a fixed cost per epoch (a new data iterator, an `evaluate` pass, callbacks)
and per step (Python dispatch: under JAX, `steps_per_execution` is a Python loop of separately
jitted steps). For the small networks of chapter 3 that cost is most of the time: a 4-fold
Boston epoch is microseconds of arithmetic. Here one compiled function (jax.jit or tf.function)
runs a whole epoch as a loop over batches (`keras.ops.fori_loop`) with Keras' stateless API
under JAX (`StatelessScope`, `optimizer.stateless_apply`), then the validation pass, and returns
the epoch's logs, so the host wakes once per epoch: the pruner still sees every epoch.

The training arrays are converted to backend tensors once and stay where the step runs. Each
epoch's shuffle is drawn on the host from a seeded generator and sent as an index matrix; the
last, partial batch is padded with zero-weight rows, so every batch has one shape and the
losses are the same weighted means Keras computes (both in hpo.train.inputs). Where the rows of
a batch meet (BatchNormalization's batch statistics: `rows_meet`), the last batch trains
apart at its own size instead, as in Keras.

Keras' logs are reproduced: `loss` (the loss over the epoch's samples), the task's metrics
(`accuracy`, or `mae` and `mse`) and their `val_` twins. The validation pass also returns its
predictions, so a trial can keep those of its best epoch (hpo.train.predictions) at no extra
cost. A model whose output has a fold axis (hpo.train.model's stacked k-fold models: one batch
row carries a sample of each fold) gets one loss per fold, summed so that each fold's weights
receive exactly the gradient they would get alone; its logs are the folds' mean.

Regularization losses (an l2 kernel regularizer, a layer's add_loss) are added to the training
loss as Keras adds them (`model.losses`; under JAX collected by the StatelessScope), and to the
logged `loss` and `val_loss` as Keras logs them.

hpo's own models (hpo.train.model.build) are chains of layers, called one by one. Any other
model of one input and one output (a build function's: hpo.train.build_function) is called
whole (`whole`): its Dropout layers at their own rates, its BatchNormalization updating its
moving statistics (non-trainable values, which travel through the compiled call under JAX as
the optimizer's do).

A text model's first layer can train on word ids instead of multi-hot rows (hpo.train.word_ids,
the "ids" form). The learning rate and dropout rates are inputs of the compiled program, not
constants in it, so trials of one structure can share it (hpo.train.programs).

Several trials of one structure can also train side by side in one model (`trials` > 1,
hpo.train.model.build's stacked trials: their k-fold models, or their single models, along the
fold axis): each slot has its own learning rate and dropout rates, its own loss and metrics,
and gets exactly the updates it would get alone (hpo.search.batched).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from hpo.backend import import_keras
from hpo.train import model as model_lib
from hpo.train import word_ids
from hpo.train.compiled import (
    assign,
    choose,
    compile_epoch,
    dropout,
    is_dropout,
    on_cpu,
    per_sample_loss,
    task_metrics,
    use_xla,
    value_and_grad,
    variables_of,
)
from hpo.train.inputs import InputCache, batch_plan

__all__ = ["FusedTrainer", "choose", "use_xla"]  # choose: which loop trains (hpo.train.compiled)

keras = import_keras()
ops = keras.ops

# Optimizers whose update of a variable depends on that variable alone: stacked trials give
# each slot its own learning rate by updating variable by variable. Nadam is not one (a step
# also updates a product shared by all variables): its trials train one at a time.
STACKABLE_OPTIMIZERS = ("rmsprop", "adam", "adamw", "sgd")


class FusedTrainer:
    """Trains a compiled Keras model one compiled call per epoch: hpo's own (hpo.train.model.
    build), layer by layer, or with `whole` any model of one input and one output."""

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
        cache: InputCache | None = None,
        shuffle: bool = True,
        first_layer: str = "dense",
        epochs: int | None = None,
        trials: int = 1,
        rates: dict[str, list[float]] | None = None,
        whole: bool = False,
    ) -> None:
        # The program's own model: its layers and variables are what the compiled code calls
        # and (TensorFlow) updates. A later trial of the same structure trains in this same
        # program (load(), programs.trainer()), its weights copied in and out.
        self.model = model
        # Trials stacked in the model (its slots: trials x folds, trial after trial), and the
        # folds of each (1: single models, whose arrays have no fold axis).
        self.trials = trials
        self.trial_folds = model.outputs[0].shape[1] // trials if trials > 1 else None
        self.batch_size = batch_size
        self.validation_batch_size = validation_batch_size
        self.shuffle = shuffle
        self.loss_fn = per_sample_loss(loss)
        self.metrics = task_metrics(task, loss)
        # No validation (analyze's retrain on all rows): the epoch has no validation pass.
        self.validating = validation is not None
        self.first_layer = first_layer
        self.cache = InputCache() if cache is None else cache
        # Called whole (a model that is not hpo's chain), or layer by layer (hpo's own).
        self.whole = whole
        if whole and (first_layer != "dense" or trials > 1):
            raise ValueError("a model called whole trains alone, on its rows as they are")
        self.layers = [] if whole else model_lib.chain(model)
        # Slots along the fold axis ((batch, slots, outputs): stacked folds or trials), each
        # with its own regularization loss (_penalty; 1: a plain model).
        self.slots = int(np.prod(model.outputs[0].shape[1:-1]))
        # Whether the last, partial batch trains at its own size rather than padded with
        # zero-weight rows: where rows meet in training (BatchNormalization's batch statistics
        # would count the padding), or may (a layer that is not Keras' or hpo's own).
        self.exact_last = rows_meet(model)
        if first_layer == "ids":
            # The first Dense layer is computed from word ids (hpo.train.word_ids), the rest of
            # the model as it is; a batch's words fill `capacity` positions.
            self.first = word_ids.first_dense(model)
            if self.first is None:
                raise ValueError("the ids form needs a bit-packed text model (UnpackBits, Dense)")
            self.tail = word_ids.tail(model)
        self.capacity = (0, 0)  # (training, validation) positions compiled for: ids form
        # JAX traces pure functions: the variables' values travel through the compiled call.
        # TensorFlow's graph updates the variables in place (Keras' optimizer has no stateless
        # apply under TensorFlow), as Keras' own train_function does.
        self.stateless = keras.backend.backend() == "jax"
        self.xla = use_xla(first_layer, len(train[0]), batch_size, epochs)
        # A convolutional model on a CPU: XLA would compile the epoch's loop of convolutions
        # to slow code (_stepwise_epoch), so TensorFlow runs it in its graph executor, and
        # JAX (XLA always) with a compiled call per batch.
        slow_loop = whole and convolves(model) and on_cpu()
        self.xla = self.xla and not slow_loop
        self.stepwise = slow_loop and self.stateless
        if self.stepwise:
            self._step = compile_epoch(self._train_on, self.xla)
            self._val_step = compile_epoch(self._validate_on, self.xla)
        self._epoch = compile_epoch(self._epoch_fn, self.xla)
        self._traced: Callable | None = None  # _epoch's program for this load's arguments
        self.load(model, train, validation, seed, rates)

    def load(
        self,
        model: keras.Model,
        train: tuple[np.ndarray, np.ndarray],
        validation: tuple[np.ndarray, np.ndarray] | None,
        seed: int | None,
        rates: dict[str, list[float]] | None = None,
    ) -> None:
        """Start training `model` (this program's model, or one of the same structure: its
        initial weights, learning rate and dropout rates are copied in) on these arrays.
        Stacked trials take their rates from `rates`: each trial's "learning_rate" and
        "dropout" (one rate for all its Dropout layers)."""
        self.target = model  # where write_back() leaves the trained weights
        self._traced = None  # new arrays may have other shapes: the next call looks it up
        self.rng = np.random.default_rng(seed) if self.shuffle else None
        if validation is None:
            validation = (train[0][:1], train[1][:1])  # shapes only: never computed on
        self.n_train, self.n_val = len(train[0]), len(validation[0])
        # The inputs are the big arrays: converted (on a GPU: copied to it) once per cache,
        # which an Objective keeps across its trials, all on the same data; the targets are
        # small and depend on the loss (one-hot or not).
        x, x_val, lengths = self.cache.inputs(self.first_layer, train[0], validation[0])
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
        val_batch = min(self.validation_batch_size or 1, self.n_val)
        val_plan = batch_plan(self.n_val, val_batch, None, self.pad_rows[1])
        self.val_plan = tuple(ops.convert_to_tensor(a) for a in val_plan)
        if self.first_layer == "ids":
            self.lengths = lengths
            needed = word_ids.capacity(lengths[1], val_plan[0])
            if needed > self.capacity[1]:
                self._recompile((self.capacity[0], needed))
        # (validation batch, [folds,] outputs): one validation batch's predictions
        self.prediction_shape = (self.val_plan[0].shape[1], *model.outputs[0].shape[1:])
        self.val_predictions: np.ndarray | None = None  # the last epoch's, in validation order
        self.trial_predictions: list[np.ndarray] = []  # each stacked trial's val_predictions
        # Dropout rates are arguments of the compiled call, so trials differing only in them
        # (or in the learning rate, an optimizer variable) share one program.
        self.rates = self._rates(model, rates)
        model.optimizer.build(model.trainable_variables)
        values = [[v.value for v in variables] for variables in variables_of(model)]
        if self.stateless:
            self.state = tuple(values)
            return
        self.state = ()
        if model is not self.model:
            assign(self.model, values)

    def _rates(self, model: keras.Model, rates: dict[str, list[float]] | None) -> tuple:
        """(dropout rates, learning rates): the dropout layers' rates and an unused 0 for one
        trial (its learning rate is the optimizer's); for stacked trials, each per slot."""
        if self.whole:  # its Dropout layers draw at their own rates
            return (
                ops.convert_to_tensor(np.zeros(1, np.float32)),
                ops.convert_to_tensor(np.zeros(1, np.float32)),
            )
        layers = sum(is_dropout(layer) for layer in model_lib.chain(model))
        if self.trials == 1:
            dropout = [layer.rate for layer in model_lib.chain(model) if is_dropout(layer)]
            return (
                ops.convert_to_tensor(np.array(dropout or [0.0], np.float32)),
                ops.convert_to_tensor(np.zeros(1, np.float32)),
            )
        if rates is None or len(rates["learning_rate"]) != self.trials:
            raise ValueError(f"stacked trials need {self.trials} learning and dropout rates")
        per_slot = {
            k: np.repeat(np.asarray(v, np.float32), self.trial_folds) for k, v in rates.items()
        }
        dropout = np.tile(per_slot["dropout"], (max(layers, 1), 1))
        return ops.convert_to_tensor(dropout), ops.convert_to_tensor(per_slot["learning_rate"])

    def _recompile(self, capacity: tuple[int, int]) -> None:
        """Compile anew for a larger capacity: a fresh function, so that no cached trace of
        the old capacity is reused."""
        self.capacity = capacity
        self._epoch = compile_epoch(lambda *args: self._epoch_fn(*args), self.xla)
        self._traced = None

    def _call(self, trainable, non_trainable, x, rates, training: bool):
        """The model on a batch: (predictions, non-trainable values after the call: JAX only,
        the sum of its regularization losses or None)."""
        model = self.model
        if not self.stateless:  # TensorFlow: the variables are updated in place
            y_pred = self._forward(x, rates, training)
            return y_pred, non_trainable, self._penalty()
        mapping = list(zip(model.trainable_variables, trainable, strict=True))
        mapping += zip(model.non_trainable_variables, non_trainable, strict=True)
        # As stateless_call(return_losses=True) does: add_loss values are collected by the
        # scope, and regularizers read the scope's values of the weights (so they have a
        # gradient).
        with keras.StatelessScope(state_mapping=mapping, collect_losses=True) as scope:
            y_pred = self._forward(x, rates, training)
            penalty = self._penalty()
        non_trainable = [scope.get_current_value(v) for v in model.non_trainable_variables]
        return y_pred, non_trainable, penalty

    def _penalty(self):
        """The model's regularization losses (after a call: add_loss values are the call's),
        None if it has none; with stacked slots, each slot's own, a (slots,) vector, so that
        each trial's or fold's logged loss holds its own penalty (every trainable variable of
        a stacked model has the slot axis first, hpo.train.model.FoldDense)."""
        losses = self.model.losses
        if self.slots == 1 or not losses:
            return _total(losses)
        regularized = [v for v in self.model.trainable_variables if v.regularizer is not None]
        if len(regularized) != len(losses):
            raise ValueError("a stacked model's only losses are its weights' regularizers")
        return sum(
            ops.stack([ops.cast(v.regularizer(v.value[s]), "float32") for s in range(self.slots)])
            for v in regularized
        )

    def _forward(self, x, rates, training: bool):
        """The model's layers one after another (hpo.train.model.build makes a chain), its
        Dropout layers at `rates`; or, `whole`, the model itself. In the ids form x is (batch
        rows, the rows' word ids as word_ids.WordIds tensors, capacity) and the first Dense
        layer is summed from them."""
        if self.whole:
            return self.model(x, training=training)
        layers = self.layers
        if self.first_layer == "ids":
            rows, ids, capacity = x
            first = self.first
            x = word_ids.bag_sum(first.kernel, ids.ids, ids.starts, ids.lengths, rows, capacity)
            x = first.activation(x + first.bias)
            layers = self.tail
        dropouts = [layer for layer in self.layers if is_dropout(layer)]
        for layer in layers:
            if not is_dropout(layer):
                x = layer(x, training=training)
            elif training:
                rate = rates[0][dropouts.index(layer)]
                x = dropout(x, rate, layer.seed_generator, self.stateless, self.xla, self.trials)
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

    def _loss(self, trainable, non_trainable, x, y, w, rates):
        call = self._call(trainable, non_trainable, x, rates, training=True)
        y_pred, non_trainable, penalty = call
        losses = self.loss_fn(y, y_pred)
        per_fold = self._weighted(losses, w) / ops.sum(w)
        # Summed over folds: each fold's weights get the gradient of its own mean loss.
        total = ops.sum(per_fold)
        if penalty is not None:  # as Keras' compute_loss adds model.losses
            total = total + ops.sum(penalty)
        return total, (non_trainable, y_pred, losses, penalty)

    def _sums(self, y, y_pred, w, loss_values, penalty=None) -> dict[str, Any]:
        sums = {name: self._weighted(fn(y, y_pred), w) for name, fn in self.metrics.items()}
        sums["loss"] = self._weighted(loss_values, w)
        if penalty is not None:
            # Keras logs each batch's total loss, penalty included, weighted by its rows (a
            # stacked slot: its own penalty).
            sums["loss"] = sums["loss"] + penalty * ops.sum(w)
        return sums

    def _train_step(self, state, x, y, w, rates):
        """One optimizer step; (new state, the batch's per-sample predictions and losses, its
        regularization loss or None)."""
        model = self.model
        if self.stateless:
            trainable, non_trainable, optimizer_vars = state
            (_, (non_trainable, y_pred, losses, penalty)), grads = value_and_grad(self._loss)(
                trainable, non_trainable, x, y, w, rates
            )
            if self.trials > 1:
                trainable, optimizer_vars = self._stateless_slot_apply(
                    optimizer_vars, grads, trainable, rates[1]
                )
            else:
                trainable, optimizer_vars = model.optimizer.stateless_apply(
                    optimizer_vars, grads, trainable
                )
            return (trainable, non_trainable, optimizer_vars), y_pred, losses, penalty
        import tensorflow as tf

        with tf.GradientTape() as tape:
            total, (_, y_pred, losses, penalty) = self._loss(None, None, x, y, w, rates)
        # The ids form's kernel gradient arrives as IndexedSlices (rows of the words seen):
        # made dense, so the optimizer updates every row as it does for the dense layer.
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(total, model.trainable_variables)]
        if self.trials > 1:
            self._slot_apply(grads, rates[1])
        else:
            model.optimizer.apply(grads, model.trainable_variables)
        return state, y_pred, losses, penalty

    def _slot_apply(self, grads, learning_rates) -> None:
        """The optimizer's step, each slot of each variable at its own learning rate: what
        Keras' apply does for these optimizers (STACKABLE_OPTIMIZERS; no clipping, EMA or
        gradient accumulation), one variable at a time. Every trainable variable of stacked
        trials has the slot axis first (hpo.train.model.FoldDense)."""
        optimizer = self.model.optimizer
        for grad, variable in zip(grads, self.model.trainable_variables, strict=True):
            shape = (-1,) + (1,) * (len(variable.shape) - 1)
            rate = ops.cast(ops.reshape(learning_rates, shape), variable.dtype)
            if optimizer.weight_decay is not None:  # AdamW, as Keras' _apply_weight_decay
                decay = ops.cast(optimizer.weight_decay, variable.dtype)
                variable.assign(variable - variable * decay * rate)
            optimizer.update_step(grad, variable, rate)
        optimizer.iterations.assign_add(1)

    def _stateless_slot_apply(self, optimizer_vars, grads, trainable, learning_rates):
        """_slot_apply on values, not variables, as Keras' stateless_apply runs apply."""
        model = self.model
        mapping = list(zip(model.trainable_variables, trainable, strict=True))
        mapping += zip(model.optimizer.variables, optimizer_vars, strict=True)
        with keras.StatelessScope(state_mapping=mapping) as scope:
            self._slot_apply(grads, learning_rates)
        return (
            [scope.get_current_value(v) for v in model.trainable_variables],
            [scope.get_current_value(v) for v in model.optimizer.variables],
        )

    def _predict(self, state, x, rates):
        """(predictions, regularization loss or None) of a validation batch."""
        trainable, non_trainable, _ = state if self.stateless else (None, None, None)
        y_pred, _, penalty = self._call(trainable, non_trainable, x, rates, training=False)
        return y_pred, penalty

    def _targets(self, y_all, rows):
        """A batch's targets; for stacked trials, repeated for each trial's slots."""
        y = ops.take(y_all, rows, axis=0)
        if self.trials == 1:
            return y
        if self.trial_folds == 1:  # single models: no fold axis in y
            y = ops.expand_dims(y, 1)
        return ops.tile(y, (1, self.trials) + (1,) * (y.ndim - 2))

    def _train_on(self, state, sums, arrays, rates, rows, w):
        """One optimizer step on the training rows `rows` (weights `w`); (state, sums)."""
        x = self._rows(arrays[0], rows, validation=False)
        y = self._targets(arrays[1], rows)
        state, y_pred, losses, penalty = self._train_step(state, x, y, w, rates)
        batch = self._sums(y, y_pred, w, losses, penalty)
        return state, {k: sums[k] + batch[k] for k in sums}

    def _validate_on(self, state, sums, arrays, rates, rows, w):
        """The validation rows `rows` predicted; (sums, their predictions)."""
        x = self._rows(arrays[2], rows, validation=True)
        y = self._targets(arrays[3], rows)
        y_pred, penalty = self._predict(state, x, rates)
        batch = self._sums(y, y_pred, w, self.loss_fn(y, y_pred), penalty)
        return {k: sums[k] + batch[k] for k in sums}, y_pred

    def _epoch_fn(self, state, arrays, rates, indices, weights, rest, val_indices, val_weights):
        def step(i, carry):
            return self._train_on(*carry, arrays, rates, indices[i], weights[i])

        state, sums = ops.fori_loop(0, indices.shape[0], step, (state, self._zero_sums()))
        if rest.shape[0]:  # the last, partial batch at its own size (exact_last)
            state, sums = self._train_on(
                state, sums, arrays, rates, rest, ops.ones(rest.shape, "float32")
            )
        if not self.validating:
            return state, sums, None, None

        def val_step(i, carry):
            sums, predictions = carry
            sums, y_pred = self._validate_on(
                state, sums, arrays, rates, val_indices[i], val_weights[i]
            )
            start = (i,) + (0,) * len(self.prediction_shape)
            predictions = ops.slice_update(
                predictions, start, ops.expand_dims(ops.cast(y_pred, predictions.dtype), 0)
            )
            return sums, predictions

        predictions = ops.zeros((val_indices.shape[0], *self.prediction_shape))
        val_sums, predictions = ops.fori_loop(
            0, val_indices.shape[0], val_step, (self._zero_sums(), predictions)
        )
        return state, sums, val_sums, predictions

    def _stepwise_epoch(
        self, state, arrays, rates, indices, weights, rest, val_indices, val_weights
    ):
        """What _epoch_fn returns, from a compiled call per batch (`stepwise`): XLA on a CPU
        compiles a convolution inside a loop (the epoch's fori_loop) to code far slower than
        the same convolution alone (a Conv2D's step: about 60x, jaxlib 0.10.2), so a
        convolutional model steps as model.fit steps, without fit's per-epoch costs."""
        sums = self._zero_sums()
        for i in range(len(indices)):
            state, sums = self._step(state, sums, arrays, rates, indices[i], weights[i])
        if len(rest):
            ones = np.ones(len(rest), np.float32)
            state, sums = self._step(state, sums, arrays, rates, rest, ones)
        if not self.validating:
            return state, sums, None, None
        val_sums, predictions = self._zero_sums(), []
        for i in range(val_indices.shape[0]):
            val_sums, y_pred = self._val_step(
                state, val_sums, arrays, rates, val_indices[i], val_weights[i]
            )
            predictions.append(y_pred)
        return state, sums, val_sums, ops.stack(predictions)

    def _zero_sums(self) -> dict[str, Any]:
        folds = self.model.outputs[0].shape[1:-1]  # () for a plain model, (k,) for stacked folds
        return {name: ops.zeros(folds) for name in (*self.metrics, "loss")}

    # --- the host side --------------------------------------------------------------------------

    def run_epoch(self) -> dict[str, float]:
        """Train one epoch; its logs as Keras' fit would write them (fold means). Its validation
        predictions are left in `val_predictions`: (validation rows, [folds,] outputs)."""
        (logs,) = self.run_epoch_each()
        return logs

    def run_epoch_each(self) -> list[dict[str, float]]:
        """Train one epoch; each stacked trial's logs (one list item per trial) and, in
        `trial_predictions`, its validation predictions as run_epoch gives a trial's."""
        indices, weights = batch_plan(self.n_train, self.batch_size, self.rng, self.pad_rows[0])
        ids = self.first_layer == "ids"
        if ids and word_ids.capacity(self.lengths[0], indices) > self.capacity[0]:
            # More words in a batch than compiled for, or the first epoch.
            needed = word_ids.capacity(self.lengths[0], indices, headroom=1.1)
            self._recompile((needed, self.capacity[1]))
        rest = np.zeros(0, np.int32)  # no batch apart: the last one padded
        partial = self.n_train % self.batch_size
        if self.exact_last and partial:
            rest = indices[-1, :partial]
            indices, weights = indices[:-1], weights[:-1]
        args = (self.state, self.arrays, self.rates, indices, weights, rest, *self.val_plan)
        if self.stepwise:
            self.state, sums, val_sums, predictions = self._stepwise_epoch(*args)
        elif self._traced is None:  # the first epoch of this load: trace or find the program
            self.state, sums, val_sums, predictions = self._epoch(*args)
            # tf.function looks up its trace on every call by canonicalizing each argument
            # (much of a small Boston epoch: docs/lab/performance.md); its concrete function
            # runs the same program and XLA executable without that. jax.jit's lookup is cheap.
            self._traced = (
                self._epoch if self.stateless else self._epoch.get_concrete_function(*args)
            )
        else:  # the same shapes every epoch of a load: no lookup
            self.state, sums, val_sums, predictions = self._traced(*args)
        logs = self._per_trial(sums, self.n_train, "")
        if not self.validating:
            return logs
        for trial_logs, val_logs in zip(
            logs, self._per_trial(val_sums, self.n_val, "val_"), strict=True
        ):
            trial_logs.update(val_logs)
        flat = ops.convert_to_numpy(predictions).reshape(-1, *self.prediction_shape[1:])
        flat = flat[: self.n_val]
        if self.trials == 1:
            self.trial_predictions = [flat]
        else:  # (rows, trials x folds, outputs) → each trial's (rows, [folds,] outputs)
            per_trial = flat.reshape(len(flat), self.trials, -1, flat.shape[-1])
            single = self.trial_folds == 1  # no fold axis: drop it
            self.trial_predictions = [
                per_trial[:, t, 0] if single else per_trial[:, t] for t in range(self.trials)
            ]
        self.val_predictions = self.trial_predictions[0]
        return logs

    def _per_trial(self, sums: dict[str, Any], rows: int, prefix: str) -> list[dict[str, float]]:
        """Each trial's logs from the epoch's sums (per slot): the mean over its folds."""
        means = {
            key: ops.convert_to_numpy(value).reshape(self.trials, -1).mean(axis=1) / rows
            for key, value in sums.items()
        }
        return [
            {prefix + key: float(value[t]) for key, value in means.items()}
            for t in range(self.trials)
        ]

    def fit(self, epochs: int) -> None:
        """Train `epochs` epochs and leave the result in the model's variables."""
        for _ in range(epochs):
            self.run_epoch()
        self.write_back()

    def write_back(self) -> None:
        """Copy the trained values into the trial's model (for saving or predicting)."""
        if self.stateless:
            values = self.state
        elif self.target is not self.model:  # TensorFlow trained this program's own model
            values = [[v.value for v in variables] for variables in variables_of(self.model)]
        else:
            return  # TensorFlow trained the trial's model itself
        assign(self.target, values)


def convolves(model: keras.Model) -> bool:
    """Whether the model may compute a convolution: a Keras convolution layer (Conv1D …
    SeparableConv2D, ConvLSTM), or a layer of neither Keras nor hpo, whose call is unknown."""
    for layer in model._flatten_layers(include_self=False):
        if "Conv" in type(layer).__name__:
            return True
        if not type(layer).__module__.startswith(("keras.", "hpo.")):
            return True
    return False


def rows_meet(model: keras.Model) -> bool:
    """Whether a row's output in training may depend on the other rows of its batch: the
    model has a BatchNormalization layer, or a layer of neither Keras nor hpo, whose call
    nothing here can vouch for."""
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            return True
        if not type(layer).__module__.startswith(("keras.", "hpo.")):
            return True
    return False


def _total(losses: list) -> Any:
    """The sum of a model's losses (model.losses) as one float32 scalar; None when it has none."""
    if not losses:
        return None
    return sum(ops.sum(ops.cast(loss, "float32")) for loss in losses)
