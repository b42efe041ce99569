"""An Embedding model for IMDB's reviews as word ids (Deep Learning with Python, 2nd ed.,
chapter 11), as a build function: pooled (a bag of embeddings) or a Conv1D over them, with
the review length, the embedding size and the width searched by examples/imdb_sequence.toml.

    hpo optimize examples/imdb_sequence.toml --trials 30
    hpo analyze examples/imdb_sequence.toml --seeds 3

hpo feeds each review as the trial's `maxlen` word ids (the last ones, zeros before a short
review, as keras.utils.pad_sequences does; at most [study] maxlen), uint16, and
`inputs.num_words` is the vocabulary: `inputs.shape` is `(maxlen,)`.
"""

from __future__ import annotations

import keras


def build(params: dict, inputs) -> keras.Model:
    """Embedding → (GlobalAveragePooling1D | Conv1D + GlobalMaxPooling1D) → Dense → sigmoid."""
    ids = inputs.input()  # (maxlen,) word ids; Embedding takes them as they are fed
    x = keras.layers.Embedding(inputs.num_words, int(params.get("embedding", 64)))(ids)
    width = int(params.get("width", 32))
    if params.get("kind", "pooled") == "conv":
        x = keras.layers.Conv1D(width, int(params["kernel_size"]), activation="relu")(x)
        x = keras.layers.GlobalMaxPooling1D()(x)
    else:
        x = keras.layers.GlobalAveragePooling1D()(x)
        x = keras.layers.Dense(width, activation="relu")(x)
    if params.get("dropout", 0.0) > 0:
        x = keras.layers.Dropout(params["dropout"])(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    return keras.Model(ids, outputs, name="imdb_sequence")
