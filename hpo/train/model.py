"""A trial's parameters → a compiled Keras model (Keras 3 API only, so any backend works)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hpo.backend import import_keras
from hpo.data.arrays import Prepared

keras = import_keras()  # through hpo.backend, which keeps the backend's start-up quiet

# Evaluation needs no small batches, but larger ones cost memory, not time: an IMDB validation
# batch is unpacked to 40 KB of float32 a row, and 1,024 rows lifted a worker's peak by ~60 MB.
VALIDATION_BATCH = 256
# Batches per compiled call: small models on small batches (Boston: 38 of 8 an epoch) spend
# more time in per-step dispatch than in arithmetic.
STEPS_PER_EXECUTION = 32


def validation_batch(batch_size: int) -> int:
    """A trial's validation batch: its training batch, or VALIDATION_BATCH rows if larger."""
    return max(batch_size, VALIDATION_BATCH)


BYTE_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1)  # row b: b's bits


@keras.saving.register_keras_serializable(package="hpo")
class UnpackBits(keras.layers.Layer):
    """uint8 rows of np.packbits output → float rows of `n_features` 0/1 values.

    Multi-hot text vectors travel bit-packed (8 words a byte) from disk to the device and are
    unpacked inside the compiled step, so a worker holds 1/32 of the float32 data.
    """

    def __init__(self, n_features: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_features = n_features

    def call(self, inputs):
        # One gather from a 256 x 8 table of each byte's bits: on CPU about 1.5x faster than
        # shifting and masking, and exact.
        bits = keras.ops.take(
            keras.ops.convert_to_tensor(BYTE_BITS, dtype=self.compute_dtype),
            keras.ops.cast(inputs, "int32"),
            axis=0,
        )
        # (batch, [folds,] bytes, 8) → (batch, [folds,] bits); a stacked k-fold model has a
        # fold axis before the features.
        shape = (-1, *inputs.shape[1:-1], inputs.shape[-1] * 8)
        return keras.ops.reshape(bits, shape)[..., : self.n_features]

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.n_features)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "n_features": self.n_features}


UNPACK = "unpack_bits"  # the name of the bit-unpacking step, hpo's layer or its standard form


def standard_unpack(packed_bytes: int, n_features: int) -> keras.Model:
    """UnpackBits in standard Keras layers, for a model handed over: a frozen Embedding whose
    256 x 8 table is BYTE_BITS (byte b → its 8 bits, the same gather, so exact), Reshape to one
    value a bit, Cropping1D of the pad bits past `n_features`, Reshape to (n_features,).
    The file then loads with plain Keras, with no hpo installed."""
    inputs = keras.Input(shape=(packed_bytes,), dtype="uint8", name="packed")
    table = keras.layers.Embedding(
        256, 8, trainable=False, weights=[BYTE_BITS.astype(np.float32)], name="byte_bits"
    )
    x = keras.layers.Reshape((packed_bytes * 8, 1), name="bits")(table(inputs))
    if packed_bytes * 8 != n_features:
        x = keras.layers.Cropping1D((0, packed_bytes * 8 - n_features), name="pad_bits")(x)
    x = keras.layers.Reshape((n_features,), name="features")(x)
    return keras.Model(inputs, x, name=UNPACK)


def swapped(
    model: keras.Model, wanted: Any, replace: Any, inputs: list | None = None
) -> keras.Model:
    """`model` with each layer that `wanted(layer)` picks replaced by `replace(layer)` (a
    callable on the layer's input), in nested functional models too (an ensemble's members);
    the other layers are shared, weights included. Only what holds a picked layer is rebuilt,
    on `inputs` (default: Inputs like the model's), each nested model on an Input of what it
    is now fed. A model holding none, or not functional (a subclassed one), is returned as is."""
    if not _holds(model, wanted):
        return model
    try:
        ins = model.inputs
    except (AttributeError, ValueError):  # a subclassed model: its graph cannot be walked
        return model
    if inputs is None:
        inputs = [keras.Input(shape=x.shape[1:], dtype=x.dtype, name=x.name) for x in ins]
    return _rewired(model, inputs, wanted, replace)


def _rewired(model: keras.Model, inputs: list, wanted: Any, replace: Any) -> keras.Model:
    """`model`'s graph run on new `inputs`, its picked layers replaced (see swapped)."""

    def operation(op: Any) -> Any:
        if wanted(op):
            return replace(op)
        if isinstance(op, keras.Model) and _holds(op, wanted):

            def nested(x: Any, *args: Any, **kwargs: Any) -> Any:
                fed = keras.Input(shape=x.shape[1:], dtype=x.dtype)
                return _rewired(op, [fed], wanted, replace)(x)

            return nested
        return op

    fed = inputs if len(inputs) > 1 else inputs[0]
    # Keras' own graph walk (as clone_model walks it), each node's layer as `operation` says
    outputs = model._run_through_graph(fed, operation)
    return keras.Model(fed, outputs, name=model.name)


def _holds(model: Any, wanted: Any) -> bool:
    """Whether `model` holds a layer `wanted` picks, at any depth."""
    return any(
        wanted(layer) or (isinstance(layer, keras.Model) and _holds(layer, wanted))
        for layer in getattr(model, "layers", [])
    )


def portable(model: keras.Model) -> keras.Model:
    """The model to hand over: hpo's training-time layers (UnpackBits) rebuilt from standard
    Keras layers (standard_unpack), the weights shared, so its .keras file loads with plain
    Keras and predicts exactly the same. A model without them is returned as is."""

    def replace(layer: UnpackBits) -> keras.Model:
        return standard_unpack(int(layer.input.shape[-1]), layer.n_features)

    handed = swapped(model, lambda layer: isinstance(layer, UnpackBits), replace)
    if handed is not model and model.compiled:  # compiled as the model was: its file evaluates
        handed.compile_from_config(model.get_compile_config())
        if model.optimizer.built:  # as `ensemble` does: the file then loads without warnings
            handed.optimizer.build(handed.trainable_variables)
    return handed


class FoldInitializer(keras.initializers.Initializer):
    """Glorot-uniform for each fold's (inputs, units) kernel slice of a (folds, inputs, units)
    kernel: Keras' own would count the fold axis as a receptive field and shrink the range."""

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def __call__(self, shape, dtype=None):
        limit = math.sqrt(6.0 / (shape[-2] + shape[-1]))
        return keras.random.uniform(shape, -limit, limit, dtype=dtype, seed=self.seed)

    def get_config(self) -> dict[str, Any]:
        return {"seed": self.seed}


@keras.saving.register_keras_serializable(package="hpo")
class FoldDense(keras.layers.Layer):
    """k independent Dense layers side by side: (batch, k, inputs) → (batch, k, units).

    The k-fold models of one trial, stacked into one graph: fold f's weights only ever see
    fold f's rows, so training them together is training them apart, in one step instead of k.
    """

    def __init__(
        self,
        units: int,
        activation: str | None = None,
        kernel_regularizer: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.units = units
        self.activation = keras.activations.get(activation)
        # An L2 penalty on the (folds, inputs, units) kernel is the sum of each fold's own:
        # fold f's slice gets the gradient of its own penalty, as a model alone would.
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def build(self, input_shape) -> None:
        folds, features = input_shape[-2], input_shape[-1]
        self.kernel = self.add_weight(
            name="kernel",
            shape=(folds, features, self.units),
            initializer=FoldInitializer(),
            regularizer=self.kernel_regularizer,
        )
        self.bias = self.add_weight(name="bias", shape=(folds, self.units), initializer="zeros")

    def call(self, inputs):
        return self.activation(keras.ops.einsum("bki,kio->bko", inputs, self.kernel) + self.bias)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "units": self.units,
            "activation": keras.activations.serialize(self.activation),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
        }


class StackTrials(keras.layers.Layer):
    """(batch, [folds,] features) → (batch, trials x folds, features): the same rows for each
    of `trials` stacked trials (hpo.search.batched), trial after trial. Never saved: a stacked
    model only trains trials, it is not handed over."""

    def __init__(self, trials: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.trials = trials

    def call(self, inputs):
        if len(inputs.shape) == 2:  # single models: a slot axis of one
            inputs = keras.ops.expand_dims(inputs, 1)
        return keras.ops.tile(inputs, (1, self.trials, 1))

    def compute_output_shape(self, input_shape):
        folds = input_shape[1] if len(input_shape) == 3 else 1
        return (input_shape[0], self.trials * folds, input_shape[-1])


def stack_blocker(params: Mapping[str, Any]) -> str | None:
    """Why the model of `params` cannot be built with folds or trials stacked side by side
    (FoldDense, StackTrials), in one line; None when it can. BatchNormalization normalizes by
    the statistics of its batch, which in a stacked model would be every fold's and every
    trial's rows together: such folds train one after another instead."""
    if params.get("batch_norm", False):
        return (
            "batch_norm: BatchNormalization's batch statistics would mix the stacked "
            "folds' or trials' rows"
        )
    return None


def layer_units(params: Mapping[str, Any], layer: int) -> int:
    """The width of hidden layer `layer` (from 1): units_<layer> where [space] searches units
    per layer (per_layer = true), else the one units of every layer."""
    key = f"units_{layer}"
    return int(params[key] if key in params else params["units"])


def build(
    params: Mapping[str, Any], data: Prepared, folds: int = 1, trials: int = 1
) -> keras.Model:
    """The book's stack of Dense layers, sized and trained as `params` says.

    Each hidden layer is `layer_units` wide; `l2` (optional, default 0) puts an L2 penalty on
    the hidden layers' kernels (not the output layer's, as the book's chapter 5 does), carried
    as the model's `losses`; `batch_norm` (optional, default false) makes each hidden layer
    Dense without activation → BatchNormalization → activation (the Dense bias is redundant
    there, but kept: the fused loop's word-ids form reads the first layer's kernel and bias).

    With `folds` > 1, the k-fold models of one trial as one model (FoldDense layers): its input
    is (batch, folds, features), one sample of each fold's training rows per batch row, and
    its output has the same fold axis (see stack_folds). With `trials` > 1, that many trials'
    models (k-fold or single) side by side, their slots along the fold axis (StackTrials); a
    Dropout layer is there if `params` has a dropout, each trial's rate given in training.
    Either is a ValueError where `stack_blocker` gives a reason."""
    blocker = stack_blocker(params)
    if blocker and (folds > 1 or trials > 1):
        raise ValueError(f"this model cannot be stacked: {blocker}")
    features = data.x_train.shape[1:]
    shape = features if folds == 1 else (folds, *features)
    inputs = keras.Input(shape=shape, dtype=str(data.x_train.dtype))
    x = inputs
    if len(features) > 1:  # images: the Dense stack reads each sample (of each fold) flat
        x = keras.layers.Reshape((*shape[: len(shape) - len(features)], -1), name="flatten")(x)
    if trials > 1:
        x = StackTrials(trials, name="stack_trials")(x)
    if data.packed:
        x = UnpackBits(data.n_features, name="unpack_bits")(x)
    elif data.x_train.dtype != np.float32 or data.input_scale != 1.0:
        # uint8 multi-hot or pixels go into the model as they are; this layer casts them to
        # float inside the compiled step (and divides MNIST pixels by 255), which is cheaper
        # than converting every batch on the host and keeps the data compact in memory.
        x = keras.layers.Rescaling(data.input_scale, name="to_float")(x)
    dense = keras.layers.Dense if folds == 1 and trials == 1 else FoldDense
    l2 = float(params.get("l2", 0.0))
    regularizer = keras.regularizers.L2(l2) if l2 > 0 else None
    for layer in range(1, params["layers"] + 1):
        units = layer_units(params, layer)
        if params.get("batch_norm", False):  # never stacked: dense is Dense here
            x = dense(units, kernel_regularizer=regularizer)(x)
            x = keras.layers.BatchNormalization()(x)
            x = keras.layers.Activation(params["activation"])(x)
        else:
            x = dense(units, activation=params["activation"], kernel_regularizer=regularizer)(x)
        if params["dropout"] > 0:
            x = keras.layers.Dropout(params["dropout"])(x)
    if data.task == "binary":
        outputs = dense(1, activation="sigmoid")(x)
    elif data.task == "multiclass":
        outputs = dense(data.n_outputs, activation="softmax")(x)
    else:
        outputs = dense(1)(x)
        if data.preparation is not None:
            # Your own targets may be prices in the hundreds: the network learns them
            # standardized and this fixed layer maps its output back, so losses, metrics and
            # predictions stay in the target's units. (The book's Boston prices are small.)
            mean, std = float(np.mean(data.y_train)), float(np.std(data.y_train))
            rescale = keras.layers.Rescaling(std or 1.0, offset=mean, name="to_target_units")
            outputs = rescale(outputs)
    model = keras.Model(inputs, outputs)
    compile_model(model, params, data.task)
    return model


def chain(model: keras.Model) -> list:
    """The layers of a model `build` made, input to output: each takes the previous one's
    output (the fused loop calls them one by one)."""
    return [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]


def average(
    members: Sequence[keras.Model], params: Mapping[str, Any], data: Prepared
) -> keras.Model:
    """One model whose output is the mean of the trained members' outputs (probabilities, or
    prices): the ensemble of a configuration retrained with several seeds."""
    return ensemble(members, [1.0] * len(members), params, data)


def ensemble(
    members: Sequence[keras.Model],
    weights: Sequence[float],
    params: Mapping[str, Any],
    data: Prepared,
) -> keras.Model:
    """One model whose output is the weighted mean of the trained members' outputs, the weights
    fixed (Rescaling layers, then Add): it saves, loads and predicts as any Keras model.
    Compiled with `params` (the loss its test loss is reported in)."""
    total = float(sum(weights))
    if not members or len(members) != len(weights) or not total > 0:
        raise ValueError("an ensemble needs members and as many positive weights")
    inputs = keras.Input(shape=data.x_train.shape[1:], dtype=str(data.x_train.dtype))
    outputs = []
    for number, (member, weight) in enumerate(zip(members, weights, strict=True)):
        copy = keras.models.clone_model(member)  # uncompiled: one optimizer for the whole
        copy.set_weights(member.get_weights())
        copy.name = f"member_{number}"  # each retrained member is named "functional"
        scale = keras.layers.Rescaling(float(weight) / total, name=f"weight_{number}")
        outputs.append(scale(copy(inputs)))
    combined = keras.layers.Add(name="weighted_mean")(outputs) if len(outputs) > 1 else outputs[0]
    model = keras.Model(inputs, combined, name="ensemble")
    compile_model(model, params, data.task)
    # Built now, so the saved file loads without Keras' optimizer-variables mismatch warning.
    model.optimizer.build(model.trainable_variables)
    return model


def compile_model(model: keras.Model, params: Mapping[str, Any], task: str) -> None:
    """Compile `model` as hpo trains it: the trial's optimizer, learning rate and loss, and
    the task's metrics under the names the logs use (accuracy, or mae and mse). Also for a
    build function's model that its function left uncompiled. A `momentum` in the trial's
    parameters (e.g. `when = { optimizer = "sgd" }`) goes to an optimizer that takes one."""
    config = {"learning_rate": params["learning_rate"]}
    if "momentum" in params and params["optimizer"] in ("sgd", "rmsprop"):
        config["momentum"] = params["momentum"]
    optimizer = keras.optimizers.get({"class_name": params["optimizer"], "config": config})
    loss = keras.losses.Huber() if params["loss"] == "huber" else params["loss"]
    model.compile(
        optimizer=optimizer,
        loss=loss,
        metrics=_metrics(task, params["loss"]),
        steps_per_execution=STEPS_PER_EXECUTION,
    )


def _metrics(task: str, loss: str) -> list[keras.metrics.Metric]:
    """Explicit metric objects, named so the logs always say accuracy / mae / mse."""
    if task == "binary":
        return [keras.metrics.BinaryAccuracy(name="accuracy")]
    if task == "multiclass":
        if loss == "categorical_crossentropy":
            return [keras.metrics.CategoricalAccuracy(name="accuracy")]
        return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    return [keras.metrics.MeanAbsoluteError(name="mae"), keras.metrics.MeanSquaredError(name="mse")]


def stack_folds(
    splits: Sequence[tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]],
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """k folds' ((x_train, y_train), (x_val, y_val)) → the same with a fold axis after the
    sample axis, for a model built with `folds=k`. Needs equal-sized folds, which
    hpo.data.spec.Validation's k-fold splits are."""
    train = tuple(np.stack([fold[0][i] for fold in splits], axis=1) for i in (0, 1))
    val = tuple(np.stack([fold[1][i] for fold in splits], axis=1) for i in (0, 1))
    return train, val


def targets(y: np.ndarray, task: str, loss: str, n_outputs: int) -> np.ndarray:
    """Labels in the form the loss expects (one-hot for categorical_crossentropy)."""
    if task == "multiclass":
        if loss == "categorical_crossentropy":
            return np.eye(n_outputs, dtype=np.float32)[np.asarray(y)]
        return np.asarray(y, dtype=np.int32)
    return np.asarray(y, dtype=np.float32)[..., None]
