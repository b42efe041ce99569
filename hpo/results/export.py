"""The handed-over model, ready for production: a .keras file, a TensorFlow SavedModel or ONNX.

What analyze hands over takes what hpo feeds in training: compact inputs (bit-packed or uint8
text vectors, uint8 pixels) for the built-in datasets, prepared rows (standardized numbers,
one-hot categories) for your own table. The exported model takes what a user has instead:

- built-in datasets: the book's vectorized input (multi-hot floats of num_words for imdb and
  reuters, pixels / 255 for mnist, the standardized columns for boston), its compact-input
  layers stripped; its output is the model's (sigmoid, softmax or the value);
- your own table: the raw columns, one named input per column, prepared inside by Keras
  preprocessing layers built from the stored preparation (Normalization with its means and
  variances, StringLookup one-hot with its categories, an unseen category all zeros as
  `hpo predict` does); its output is what `hpo predict --probabilities` gives: each class'
  probability in the order of the study's labels, or the predicted value;
- a study of your own model ([model]) of a built-in dataset: the model as it is.

SavedModel and ONNX go through Keras' own `Model.export` (TensorFlow must be installed; ONNX
also needs tf2onnx and onnx: `pip install "hpo[export]"`). Keras' ONNX export converts a
function, which loses the tables of StringLookup; a model with text-category inputs is
therefore exported as a SavedModel by Keras and converted from it by tf2onnx, which carries
the tables over (as ONNX-ML CategoryMapper nodes, which onnxruntime runs).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpo.backend import import_keras, silenced_stderr
from hpo.data.preparation import Preparation
from hpo.data.values import label_keys
from hpo.errors import HpoError, first_line
from hpo.train import model as model_lib

FORMATS = ("keras", "saved_model", "onnx")
TO_FLOAT = "to_float"  # hpo's Rescaling of compact inputs (uint8 multi-hot, pixels) to floats
BOOK_INPUT = "x"  # the one input of a built-in dataset's exported model
# What TensorFlow accepts as an input's name in a SavedModel signature (and ONNX keeps).
INPUT_NAME = re.compile(r"[A-Za-z0-9.][A-Za-z0-9_.\-/]*")


@dataclass
class Exported:
    """What was exported: where, in which format, what it takes and what it returns."""

    path: Path
    format: str
    inputs: dict[str, str] = field(default_factory=dict)  # name → "number", "text", a dtype
    output: str = ""  # what its output holds, in words
    study: str = ""
    source: str = ""  # the handed-over file it was made from: trial-ensemble.keras, ...

    def describe(self) -> str:
        """What the command line says: what was written, what it takes and returns."""
        ins = ", ".join(f"{name} ({kind})" for name, kind in self.inputs.items())
        return (
            f"study {self.study}'s {self.source} exported as {self.format} to {self.path}\n"
            f"inputs: {ins}\noutput: {self.output}"
        )


def check_format(name: str) -> str:
    """--format, checked before anything is loaded."""
    if name not in FORMATS:
        raise HpoError(f"--format {name!r}: one of {', '.join(FORMATS)}")
    return name


def production_model(
    model: Any, preparation: Preparation | None, own_model: bool
) -> tuple[Any, Exported]:
    """(the model to export, what it takes and returns) for the handed-over `model`: behind
    the preparation's layers (own data), stripped of its compact-input layers (a built-in
    dataset, hpo's model), or as it is (a built-in dataset, your own model)."""
    _tensorflow_again()
    if preparation is not None:
        return with_preparation(model, preparation)
    info = Exported(Path(), "", output=_output_words(model))
    if own_model:
        info.inputs = {x.name: str(x.dtype) for x in _inputs(model)}
        return model, info
    book = book_input(model)
    info.inputs = {x.name: f"{x.dtype} {tuple(x.shape[1:])}" for x in _inputs(book)}
    return book, info


def _tensorflow_again() -> None:
    """Let Keras use TensorFlow again where hpo's commands hid it under JAX (hpo.backend.
    without_tensorflow: trials never need it): StringLookup and the exports do."""
    from keras.src.utils import module_utils

    lazy = getattr(module_utils, "tensorflow", None)
    if isinstance(lazy, module_utils.LazyModule) and lazy._available is False:
        lazy._available = None  # asked again: True where TensorFlow is installed
    if "tensorflow" not in sys.modules and importlib.util.find_spec("tensorflow") is not None:
        with silenced_stderr():  # its native start-up notices
            import tensorflow  # noqa: F401


def _inputs(model: Any) -> list:
    try:
        return list(model.inputs)
    except (AttributeError, ValueError):  # a subclassed model: no symbolic inputs
        return []


def _output_words(model: Any) -> str:
    try:
        shape = tuple(model.outputs[0].shape[1:])
    except (AttributeError, ValueError, IndexError):
        return "the model's output"
    if shape == (1,):
        return "one value a row: the probability of class 1 (sigmoid), or the predicted value"
    return f"the model's output, {shape} a row (a softmax: each class' probability)"


def _compact(layer: Any) -> bool:
    """Whether `layer` is one of hpo's compact-input layers: UnpackBits, its standard form
    (model_lib.standard_unpack), or the Rescaling of uint8 values to floats."""
    keras = import_keras()
    if isinstance(layer, model_lib.UnpackBits):
        return True
    if isinstance(layer, keras.Model):
        return layer.name == model_lib.UNPACK
    return isinstance(layer, keras.layers.Rescaling) and layer.name == TO_FLOAT


def _first_compact(model: Any) -> Any:
    for layer in getattr(model, "layers", []):
        if _compact(layer):
            return layer
        if isinstance(layer, import_keras().Model):
            found = _first_compact(layer)
            if found is not None:
                return found
    return None


def book_input(model: Any) -> Any:
    """`model` taking the book's float vectors: hpo's compact-input layers (bit unpacking, the
    uint8 → float Rescaling) removed, in each member of an ensemble too, the weights shared.
    A model without them (boston's floats) is returned as is."""
    keras = import_keras()
    first = _first_compact(model)
    if first is None:
        return model
    if isinstance(first, model_lib.UnpackBits):
        shape: tuple = (first.n_features,)
    elif isinstance(first, keras.Model):
        shape = tuple(first.outputs[0].shape[1:])
    else:  # the Rescaling keeps the shape; the book divides the pixels by 255 itself
        shape = tuple(first.output.shape[1:])
    inputs = keras.Input(shape=shape, dtype="float32", name=BOOK_INPUT)
    return model_lib.swapped(model, _compact, lambda layer: _unchanged, inputs=[inputs])


def _unchanged(x: Any, *args: Any, **kwargs: Any) -> Any:
    return x


def with_preparation(model: Any, prep: Preparation) -> tuple[Any, Exported]:
    """`model` behind Keras preprocessing layers that prepare raw rows as `prep` does: one
    input per raw column, named as the column (numbers float32, text categories strings),
    numbers standardized (Normalization with the stored means and variances), categories
    one-hot (StringLookup with the stored categories; an unseen value is an all-zero row).
    Its output is `hpo predict --probabilities`': a binary model's one sigmoid becomes the two
    classes' probabilities."""
    keras = import_keras()
    layers = keras.layers
    if prep.kind == "arrays":
        return _arrays_model(model, prep)
    bad = next((c for c in prep.columns if not INPUT_NAME.fullmatch(str(c))), None)
    if bad is not None:
        raise HpoError(
            f"column {bad!r}: not a name a model's input can have (letters, digits, _ . - /); "
            "rename it in the training file"
        )
    inputs: dict[str, Any] = {}
    for column in prep.columns:
        text = column in prep.categories
        inputs[column] = keras.Input(
            shape=(1,), dtype="string" if text else "float32", name=str(column)
        )
    parts = []
    if prep.numeric:
        numbers = [inputs[c] for c in prep.numeric]
        x = layers.Concatenate(name="numbers")(numbers) if len(numbers) > 1 else numbers[0]
        if prep.standardize:
            variance = np.square(np.asarray(prep.stds, dtype=np.float64))
            x = layers.Normalization(
                mean=np.asarray(prep.means, dtype=np.float64),
                variance=variance,
                name="standardized",
            )(x)
        parts.append(x)
    for number, (column, categories) in enumerate(prep.categories.items()):
        vocabulary = [str(v) for v in label_keys(np.asarray(categories))]
        k = len(vocabulary)
        # one-hot with a first column for the unseen, cropped off: an unseen value is zeros
        x = layers.StringLookup(
            vocabulary=vocabulary, num_oov_indices=1, output_mode="one_hot", name=f"lookup_{number}"
        )(inputs[column])
        x = layers.Reshape((k + 1, 1), name=f"lookup_{number}_columns")(x)
        x = layers.Cropping1D((1, 0), name=f"lookup_{number}_seen")(x)
        parts.append(layers.Reshape((k,), name=f"one_hot_{number}")(x))
    x = layers.Concatenate(name="prepared")(parts) if len(parts) > 1 else parts[0]
    out = model(x)
    info = Exported(Path(), "")
    info.inputs = {c: "text" if c in prep.categories else "number" for c in prep.columns}
    if prep.task == "binary":
        # predict's probability_<label 0> is 1 - the sigmoid, probability_<label 1> the sigmoid
        other = layers.Rescaling(-1.0, offset=1.0, name="probability_first")(out)
        out = layers.Concatenate(name="probabilities")([other, out])
    if prep.task == "regression":
        info.output = f"the predicted {prep.target}"
    else:
        labels = ", ".join(str(v) for v in prep.labels or [])
        info.output = f"the probabilities of {prep.target} {labels}, in that order"
    return keras.Model(inputs, out, name="prepared_model"), info


def _arrays_model(model: Any, prep: Preparation) -> tuple[Any, Exported]:
    """Own data of arrays (.npz): x as the file holds it, standardized inside where the
    preparation standardized it; uint8 x kept (the model takes it)."""
    keras = import_keras()
    shape = tuple(prep.input_shape or prep.feature_shape)
    if not prep.standardize:
        inputs = _inputs(model)
        info = Exported(Path(), "", {x.name: str(x.dtype) for x in inputs}, _output_words(model))
        return model, info
    inputs = keras.Input(shape=shape, dtype="float32", name=BOOK_INPUT)
    x = keras.layers.Reshape((prep.n_features,), name="flat")(inputs)
    variance = np.square(np.asarray(prep.stds, dtype=np.float64))
    x = keras.layers.Normalization(mean=prep.means, variance=variance, name="standardized")(x)
    out = model(x)
    info = Exported(Path(), "", {BOOK_INPUT: f"float32 {shape}"}, _output_words(model))
    return keras.Model(inputs, out, name="prepared_model"), info


def write(model: Any, fmt: str, out: Path) -> None:
    """`model` written to `out` in `fmt`, whole or not at all: into a new folder beside `out`,
    moved onto it once complete."""
    check_format(fmt)
    suffix = {"keras": ".keras", "onnx": ".onnx"}.get(fmt)
    if suffix and out.suffix != suffix:
        raise HpoError(f"--out {out}: a {fmt} model is written to a {suffix} file")
    if fmt == "saved_model" and out.exists() and not (out / "saved_model.pb").is_file():
        raise HpoError(f"--out {out}: exists and is not a SavedModel; choose another")
    if fmt == "keras" and out.is_dir():
        raise HpoError(f"--out {out}: is a folder")
    if fmt != "keras":
        _needs_tensorflow(fmt)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        part = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise HpoError(f"--out {out}: cannot write there ({exc.strerror or exc})") from exc
    try:
        written = part / ("model" if fmt == "saved_model" else f"model{suffix}")
        try:
            with _quiet():
                if fmt == "keras":
                    model.save(written)
                elif fmt == "saved_model":
                    model.export(str(written), format="tf_saved_model", verbose=False)
                else:
                    _onnx(model, written, part)
        except HpoError:
            raise
        except Exception as exc:  # Keras', TensorFlow's or tf2onnx's errors: any type
            raise HpoError(
                f"exporting as {fmt} failed: {type(exc).__name__}: {first_line(exc)}"
            ) from exc
        if fmt == "saved_model" and out.exists():
            shutil.rmtree(out)  # a SavedModel (checked above): the export replaces it
        os.replace(written, out)
    except OSError as exc:
        raise HpoError(f"--out {out}: cannot write there ({exc.strerror or exc})") from exc
    finally:
        shutil.rmtree(part, ignore_errors=True)


def write_through_tensorflow(
    model: Any, fmt: str, out: Path, target: str, code_paths: Sequence[str | Path] = ()
) -> None:
    """`write`, for a model loaded under another backend (JAX): SavedModel and ONNX go through
    TensorFlow's graph, which JAX's cannot feed strings into. The model is saved as .keras
    (backend-free) and exported by a child process under the TensorFlow backend, which imports
    the study's model code first as this process did (`target`, `code_paths`)."""
    check_format(fmt)
    _needs_tensorflow(fmt)
    with tempfile.TemporaryDirectory(prefix="hpo-export-") as scratch:
        saved = Path(scratch) / "model.keras"
        try:
            model.save(saved)
        except Exception as exc:  # Keras' serialization errors: any type
            why = f"{type(exc).__name__}: {first_line(exc)}"
            raise HpoError(f"exporting as {fmt} failed: {why}") from exc
        child = [sys.executable, "-m", "hpo.results.export", str(saved), fmt, str(out), target]
        done = subprocess.run(
            [*child, *map(str, code_paths)],
            env={**os.environ, "KERAS_BACKEND": "tensorflow"},
            capture_output=True,
            text=True,
        )
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise HpoError(lines[-1].removeprefix("error: ") if lines else f"exporting as {fmt} failed")


def _child(argv: list[str]) -> int:
    """`python -m hpo.results.export MODEL.keras FORMAT OUT TARGET [CODE_PATH...]`: the
    TensorFlow side of write_through_tensorflow."""
    from hpo.results import prediction

    source, fmt, out, target, *code_paths = argv
    try:
        prediction.import_model_code(prediction.model_code(target), code_paths)
        write(prediction.load_keras(Path(source)), fmt, Path(out))
    except HpoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _needs_tensorflow(fmt: str) -> None:
    missing = [m for m in ("tensorflow",) if importlib.util.find_spec(m) is None]
    if fmt == "onnx":
        missing += [m for m in ("tf2onnx", "onnx") if importlib.util.find_spec(m) is None]
    if missing:
        raise HpoError(
            f"--format {fmt} needs {' and '.join(missing)} (Keras exports through TensorFlow): "
            'pip install "hpo[export]"'
        )


def _onnx(model: Any, path: Path, scratch: Path) -> None:
    """ONNX through Keras' own export; a model with text inputs (StringLookup's tables, which
    Keras' conversion of a function loses) through Keras' SavedModel, converted by tf2onnx."""
    inputs = _inputs(model)
    if not any(str(x.dtype) == "string" for x in inputs):
        if not getattr(model, "_called", True):  # Keras' ONNX export asks a model called once
            ops = import_keras().ops
            fed = [ops.zeros((1, *x.shape[1:]), dtype=x.dtype) for x in inputs]
            model(fed if len(fed) > 1 else fed[0])
        model.export(str(path), format="onnx", verbose=False)
        return
    import tensorflow as tf
    from keras.src.export.tf2onnx_lib import patch_tf2onnx  # as Keras' own ONNX export does

    patch_tf2onnx()  # tf2onnx still reaches for numpy names that numpy 2 removed
    from tf2onnx import tf_loader
    from tf2onnx.convert import _convert_common

    saved = scratch / "saved_model"
    model.export(str(saved), format="tf_saved_model", verbose=False)
    graph, inputs, outputs, tables, renames = tf_loader.from_saved_model(
        str(saved),
        None,
        None,
        tag="serve",
        signatures=["serving_default"],
        return_initialized_tables=True,
        return_tensors_to_rename=True,
    )
    with tf.device("/cpu:0"):
        _convert_common(
            graph,
            name=model.name,
            continue_on_error=False,
            input_names=inputs,
            output_names=outputs,
            tensors_to_rename=renames,
            initialized_tables=tables,
            output_path=str(path),
        )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """TensorFlow's and tf2onnx's notices while exporting (tables it cannot serialize, shapes
    it cannot infer) kept off the terminal; the native ones replayed only on failure."""
    loggers = [logging.getLogger(n) for n in ("tensorflow", "tf2onnx", "absl")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with silenced_stderr(), warnings.catch_warnings():
            # Keras' tf2onnx patch asks numpy for np.object, which numpy 2 warns of
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
