"""The convnet of Deep Learning with Python (2nd ed., §8.1) for MNIST, as a build function:
its filters, kernel size, depth, dropout and batch normalization searched by
examples/mnist_convnet.toml.

    hpo optimize examples/mnist_convnet.toml --trials 20
    hpo analyze examples/mnist_convnet.toml --seeds 3

hpo calls `build(params, inputs)` once a trial: `params` holds the trial's parameters (every
[space] name whose condition holds), `inputs` describes what hpo feeds (28×28×1 uint8 pixels
here). hpo compiles the model with the trial's optimizer, learning rate and loss, and trains
it. The book's own model is layers 3, filters 32, kernel size 3, no dropout, no batch norm.
"""

from __future__ import annotations

import keras


def build(params: dict, inputs) -> keras.Model:
    """Conv2D blocks (filters doubled per block, max-pooling between them), Flatten, dropout
    and a softmax over the classes."""
    x = image = inputs.input()
    x = inputs.as_float(x)  # uint8 pixels / 255, inside the compiled step
    size = min(inputs.shape[:2])
    layers = int(params.get("layers", 3))
    for i in range(1, layers + 1):
        filters = int(params.get("filters", 32)) * 2 ** (i - 1)
        # kernel_size_1 … kernel_size_L with `per_layer = true`, one kernel_size without
        kernel = int(params.get(f"kernel_size_{i}", params.get("kernel_size", 3)))
        padding = "valid" if size - kernel + 1 >= 2 else "same"  # a deep net keeps a pixel
        size = size - kernel + 1 if padding == "valid" else size
        if params.get("batch_norm", False):
            x = keras.layers.Conv2D(filters, kernel, padding=padding, use_bias=False)(x)
            x = keras.layers.BatchNormalization()(x)
            x = keras.layers.Activation("relu")(x)
        else:
            x = keras.layers.Conv2D(filters, kernel, padding=padding, activation="relu")(x)
        if i < layers and size >= 2:  # the book pools between blocks, not after the last
            x = keras.layers.MaxPooling2D(pool_size=2)(x)
            size //= 2
    x = keras.layers.Flatten()(x)
    if params.get("dropout", 0.0) > 0:
        x = keras.layers.Dropout(params["dropout"])(x)
    outputs = keras.layers.Dense(inputs.classes, activation="softmax")(x)
    return keras.Model(image, outputs, name="mnist_convnet")
