"""hpo: hyperparameter optimization of Keras networks with Optuna."""

import os

# TensorFlow prints start-up chatter (oneDNN notices, a failed cuInit on machines without a GPU)
# at C++ log levels; hpo reports errors itself, so keep the terminal for the progress bar.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"
