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
