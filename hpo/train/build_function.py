"""Your own model: a study's build function imported, called with a trial's parameters and a
description of the inputs, and its model checked and compiled.

The contract (docs/build-function.md): `build(params, inputs) -> keras.Model`, where `params`
holds every parameter of the trial's [space] (a condition that is false leaves its parameter
out) and `inputs` is an `Inputs`. hpo compiles the model with the trial's optimizer, learning
rate and loss, unless the function compiled it itself; then hpo keeps that, and says so once.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpo.backend import import_keras
from hpo.data.arrays import Prepared
from hpo.errors import HpoError, first_line
from hpo.study.model_code import ModelCode, locate
from hpo.train.model import UnpackBits

keras = import_keras()
log = logging.getLogger("hpo.model")
BuildFn = Callable[[dict[str, Any], "Inputs"], Any]


class BuildFailed(Exception):
    """The build function raised or returned no Keras model: this trial fails with the first
    line of why, and the study goes on."""


@dataclass(frozen=True)
class Inputs:
    """What a build function is told of the data: one sample's shape and dtype as hpo feeds it
    (compact: uint8 pixels and multi-hot, uint16 word ids), the task, the number of classes
    (1 for binary and regression), the dataset's name, the input kind ("vectors", "sequence",
    "image" or "table"), the vocabulary for word ids, the scale that turns the fed values
    into the book's floats (1/255 for pixels), and for multi-hot text vectors, which hpo feeds
    bit-packed (8 words a byte: `shape` is the bytes'), the number of 0/1 features they hold
    (`packed_features`; `as_float` unpacks them)."""

    dataset: str
    kind: str
    shape: tuple[int, ...]
    dtype: str
    task: str
    classes: int
    num_words: int | None = None
    scale: float = 1.0
    packed_features: int | None = None

    def input(self, name: str = "inputs"):
        """A `keras.Input` of this shape and dtype: where a build function's model starts."""
        return keras.Input(shape=self.shape, dtype=self.dtype, name=name)

    def as_float(self, x):
        """`x` (an `input()`) as float32, scaled as the book scales it (pixels / 255), or
        multi-hot rows unpacked from their bits: hpo feeds compact integers and they become
        floats inside the compiled step."""
        if self.packed_features is not None:  # saved and loaded with the model, as hpo's own
            return UnpackBits(self.packed_features, name="unpack_bits")(x)
        if self.dtype == "float32" and self.scale == 1.0:
            return x
        return keras.layers.Rescaling(self.scale, name="to_float")(x)


def load(code: ModelCode, code_paths: Sequence[str | Path] = ()) -> BuildFn:
    """Import the study's build function: from the module file `locate` finds (a `--code-path`
    folder, the study file's folder, or installed). Every failure is one line."""
    path = locate(code, code_paths)
    top = code.module.partition(".")[0]
    root = path.parent if "." not in code.module else _package_root(path, code.module)
    # The module's folder is on the path for the import only (its own imports of the modules
    # beside it included): left there, a later study's module of the same name in another
    # folder would be found here first, in a notebook or a test process.
    added = str(root) not in sys.path
    if added:
        sys.path.insert(0, str(root))
    try:
        loaded = sys.modules.get(code.module)
        if loaded is not None and Path(getattr(loaded, "__file__", "") or "") != path:
            for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
                del sys.modules[name]  # another copy of the module: the located one wins
        module = importlib.import_module(code.module)
    except Exception as exc:  # the user's module: any error at import is one line
        raise HpoError(
            f"model.build: importing {code.module} failed: {type(exc).__name__}: {first_line(exc)}"
        ) from exc
    finally:
        if added and str(root) in sys.path:
            sys.path.remove(str(root))
    function = getattr(module, code.function, None)
    if not callable(function):
        raise HpoError(f"model.build: {code.module} has no function {code.function!r}")
    return function


def _package_root(path: Path, module: str) -> Path:
    """The folder a dotted module's top package lies in (path: the module's own file)."""
    depth = module.count(".") + (1 if path.name == "__init__.py" else 0)
    return path.parents[depth]


def inputs_of(data: Prepared) -> Inputs:
    """The Inputs of prepared data, as a build function sees them."""
    kind = getattr(data, "input_kind", None) or ("table" if data.preparation else "vectors")
    return Inputs(
        dataset=data.name,
        kind=kind,
        shape=tuple(int(n) for n in data.x_train.shape[1:]),
        dtype="uint8" if data.packed else str(data.x_train.dtype),
        task=data.task,
        classes=data.n_outputs,
        num_words=getattr(data, "num_words", None),
        scale=data.input_scale,
        packed_features=data.n_features if data.packed else None,
    )


def call(function: BuildFn, params: Mapping[str, Any], inputs: Inputs) -> tuple[Any, bool]:
    """(the model `function` builds for `params`, whether the function compiled it). A
    function that raises or returns no Keras model raises BuildFailed with one line."""
    try:
        model = function(dict(params), inputs)
    except Exception as exc:  # the user's code: its error fails this trial only
        raise BuildFailed(
            f"the build function raised {type(exc).__name__}: {first_line(exc)}"
        ) from exc
    if not isinstance(model, keras.Model):
        raise BuildFailed(f"the build function returned {type(model).__name__}, not a keras.Model")
    return model, model.compiled


def fit_reason(model: Any) -> str | None:
    """Why the fused loop cannot run a model that hpo compiled, or None: it calls functional
    and Sequential models of one input and one output of shape (batch, values)."""
    try:
        ins, outs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        return "the fused loop runs functional and Sequential models; this one is subclassed"
    if len(ins) != 1 or len(outs) != 1:
        return (
            "the fused loop runs models of one input and one output; this one has "
            f"{len(ins)} inputs and {len(outs)} outputs"
        )
    if len(outs[0].shape) != 2:
        return f"the fused loop runs models whose output is (batch, values), not {outs[0].shape}"
    return None


def loss_name(loss: Any, default: str) -> str:
    """The name of a compiled model's loss (a string, a Loss object, a function), which says
    which form its targets take (hpo.train.model.targets: one-hot or not)."""
    if isinstance(loss, str):
        return loss
    fn = getattr(loss, "fn", None)  # Keras' LossFunctionWrapper: CategoricalCrossentropy()
    name = getattr(fn or loss, "__name__", None)
    return name if isinstance(name, str) else default
