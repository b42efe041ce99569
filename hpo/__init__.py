"""hpo: hyperparameter optimization of Keras networks with Optuna."""

import os
from importlib.metadata import PackageNotFoundError, version

# TensorFlow prints start-up chatter (oneDNN notices, a failed cuInit on machines without a GPU)
# at C++ log levels; hpo reports errors itself, so keep the terminal for the progress bar.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

try:  # the installed distribution's version, so it is stated in one place: pyproject.toml
    __version__ = version("hpo")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "HpoError",
    "Inputs",
    "analyze",
    "experiment",
    "load_model",
    "optimize",
    "predict",
    "submit",
]


def __getattr__(name: str):
    """hpo.optimize, hpo.analyze, … (hpo.api), imported on first use: `import hpo` stays light
    for the worker processes and the CLI, which import only the modules they need."""
    if name == "HpoError":
        from hpo.errors import HpoError

        return HpoError
    if name == "Inputs":  # what a build function is told of the data (docs/build-function.md)
        from hpo.train.build_function import Inputs

        return Inputs
    if name in __all__:
        from hpo import api

        return getattr(api, name)
    raise AttributeError(f"module 'hpo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
