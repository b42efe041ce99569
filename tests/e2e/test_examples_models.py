"""The examples of your own model (examples/mnist_convnet.*, examples/imdb_sequence.*) run as a
user runs them, on a tiny budget: each study file and its build function copied as they are
(only the holdout shrunk to the tests' tiny datasets), searched for 2 trials of 1 epoch, and
the convnet analyzed and its handed-over model loaded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import optuna
from conftest import REPO, run_cli

import hpo

EXAMPLES = REPO / "examples"
HOLDOUT = 'validation = "first:10000"'
# A search seed whose two trials take both sides of each example's conditions (Optuna 5's
# seeded random start-up): sgd and not, 2 and 3 conv blocks; pooled and Conv1D.
SEED = "5"


def example(workdir: Path, name: str) -> Path:
    """examples/NAME.toml and NAME.py in `workdir`, the study's holdout cut to 100 rows (the
    tiny datasets hold 300 to 500): the build function is found beside the study file."""
    shutil.copy(EXAMPLES / f"{name}.py", workdir / f"{name}.py")
    text = (EXAMPLES / f"{name}.toml").read_text()
    assert HOLDOUT in text, f"{name}.toml: its holdout changed; update this test"
    path = workdir / f"{name}.toml"
    path.write_text(text.replace(HOLDOUT, 'validation = "first:100"'))
    return path


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2, [
        (t.state, t.user_attrs.get("fail_reason")) for t in trials
    ]
    return trials


def test_mnist_convnet_searched_analyzed_and_handed_over(workdir, capsys):
    path = example(workdir, "mnist_convnet")
    code, _, err = run_cli(
        capsys, "optimize", str(path), "--trials", "2", "--max-epochs", "1", "--seed", SEED
    )
    assert code == 0, err
    study = optuna.load_study(study_name="mnist_convnet", storage="sqlite:///storage/hpo.db")
    trials = finished(study)
    assert {t.params["layers"] for t in trials} == {2, 3}, "another SEED: both depths wanted"
    assert {t.params["optimizer"] == "sgd" for t in trials} == {True, False}, "another SEED"
    for trial in trials:
        params = trial.params
        assert {"layers", "filters", "batch_norm", "dropout", "optimizer"} <= params.keys()
        assert {"learning_rate", "batch_size", "loss"} <= params.keys()
        layers = params["layers"]
        # per_layer: one kernel size a conv block, as many as the trial's layers
        assert [k for k in params if k.startswith("kernel_size")] == [
            f"kernel_size_{i}" for i in range(1, layers + 1)
        ]
        # when = { optimizer = "sgd" }: momentum only where the optimizer is sgd
        assert ("momentum" in params) == (params["optimizer"] == "sgd"), params
        assert trial.user_attrs["best_epoch"] == 1

    code, _, err = run_cli(capsys, "analyze", str(path), "--seeds", "1")
    assert code == 0, err
    folder = workdir / "storage" / "reports" / "mnist_convnet"
    import keras

    best = keras.saving.load_model(folder / "model.keras")  # the best trial, retrained
    convs = [layer for layer in best.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == study.best_trial.params["layers"]
    assert convs[0].filters == study.best_trial.params["filters"]
    assert json.loads((folder / "handover.json").read_text())["model"] == "trial-ensemble.keras"
    handed = keras.saving.load_model(folder / "trial-ensemble.keras")  # the default handover
    pixels = np.full((3, 28, 28, 1), 200, dtype=np.uint8)
    probabilities = np.asarray(handed.predict(pixels, verbose=0))
    assert probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)


def test_imdb_sequence_from_python(workdir):
    path = example(workdir, "imdb_sequence")
    study = hpo.optimize(path, trials=2, max_epochs=1, seed=int(SEED), progress=False)
    trials = finished(study)
    assert {t.params["kind"] for t in trials} == {"pooled", "conv"}, "another SEED: both kinds"
    for trial in trials:
        params = trial.params
        assert {"kind", "maxlen", "embedding", "width", "dropout"} <= params.keys()
        assert params["maxlen"] <= 400  # within the study's maxlen
        # when = { kind = "conv" }: a kernel size only for the Conv1D model
        assert ("kernel_size" in params) == (params["kind"] == "conv"), params


def test_a_searched_momentum_reaches_the_optimizer():
    """mnist_convnet.toml's momentum (when optimizer = "sgd") is the compiled SGD's."""
    from hpo.train.model import compile_model, keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    params = {"optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.9, "loss": "mse"}
    compile_model(model, params, "regression")
    assert model.optimizer.momentum == 0.9
