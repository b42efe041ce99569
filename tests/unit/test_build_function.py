"""The objective's side of a build function (hpo/train/objective.py): the function is imported
once per Objective, from the study's folder or a --code-path folder, a missing one is one line;
its trials never stack (--batch-trials), nor do hpo's batch_norm models; a trial's maxlen cuts
the word-id sequences its model is built for and trains on."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna
import pytest
from conftest import tiny_study
from optuna.trial import TrialState

from hpo.backend import import_keras
from hpo.data import arrays, builtin
from hpo.errors import HpoError
from hpo.study import studyfile
from hpo.train import build_function
from hpo.train.objective import Objective
from hpo.train.reporting import TrialFailed

keras = import_keras()

# A small Dense model on whatever rows it is fed; it notes each input shape it was built for.
MODULE = """
import keras

SHAPES = []


def build(params, inputs):
    SHAPES.append(inputs.shape)
    x = inputs.input()
    h = inputs.as_float(x)
    if inputs.kind == "sequence":
        h = keras.layers.Embedding(inputs.num_words, 8)(x)
        h = keras.layers.GlobalAveragePooling1D()(h)
    h = keras.layers.Dense(params["width"], activation="relu")(h)
    return keras.Model(x, keras.layers.Dense(1, activation="sigmoid")(h))
"""

SPACE = """
width = { choices = [4, 8] }
batch_size = 64
learning_rate = 0.01
"""


def study_with_model(folder: Path, module: str, *, study: str = "", space: str = SPACE) -> Path:
    """A tiny IMDB study whose [model] is `module`:build, with `study` lines in [study]."""
    path = tiny_study(folder, "imdb", epochs=1, space=space)
    text = path.read_text().replace("[study]\n", f"[study]\n{study}", 1)
    path.write_text(text + f'\n[model]\nbuild = "{module}:build"\n')
    return path


def test_the_function_is_imported_once_from_the_study_folder_or_a_code_path(workdir, monkeypatch):
    (workdir / "beside_study.py").write_text(MODULE)
    spec = studyfile.load(str(study_with_model(workdir, "beside_study")))
    data = builtin.load("imdb", None, spec.num_words)
    loads = []
    load = build_function.load

    def counted(code, code_paths=()):
        loads.append(code.build)
        return load(code, code_paths)

    monkeypatch.setattr(build_function, "load", counted)
    monkeypatch.setenv("HPO_ENGINE", "fused")
    objective = Objective(spec, data)
    study = optuna.create_study(direction="maximize")
    study.optimize(objective, n_trials=2, catch=(TrialFailed,))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert loads == ["beside_study:build"]  # once, for both trials

    # A module elsewhere: found on a --code-path folder, one line without it.
    elsewhere = workdir / "code"
    elsewhere.mkdir()
    (elsewhere / "on_code_path.py").write_text(MODULE)
    spec = studyfile.load(str(study_with_model(workdir, "on_code_path")))
    with pytest.raises(HpoError) as error:
        Objective(spec, data)
    assert "on_code_path" in str(error.value) and "\n" not in str(error.value)
    assert Objective(spec, data, code_paths=[str(elsewhere)]).build_fn.__module__ == "on_code_path"


def test_a_build_functions_trials_and_batch_norm_models_never_stack(workdir, monkeypatch):
    """--batch-trials: a study of a build function's model says why none stacks; hpo's Dense
    model stacks unless stack_blocker says why not (batch_norm)."""
    monkeypatch.setenv("HPO_ENGINE", "fused")
    (workdir / "never_stacked.py").write_text(MODULE)
    spec = studyfile.load(str(study_with_model(workdir, "never_stacked")))
    data = builtin.load("imdb", None, spec.num_words)
    own = Objective(spec, data)
    assert own.unstackable() == "a build function's models train one trial at a time"
    params = {"width": 4, "optimizer": "adam", "learning_rate": 0.01, "loss": "mse"}
    assert not own.stackable(params)

    path = tiny_study(workdir, "boston_housing", validation="kfold:2", name="dense")
    dense = Objective(studyfile.load(str(path)), builtin.load("boston_housing", None))
    params = {"optimizer": "adam", "layers": 1, "units": 8, "dropout": 0.0}
    assert dense.unstackable() is None and dense.stackable(params)
    assert not dense.stackable({**params, "batch_norm": True})


def test_a_trials_maxlen_cuts_the_sequences_its_model_is_built_for(workdir, monkeypatch):
    """Word-id sequences (input = "sequence"), [space] maxlen: each trial's model is built
    for, and trains on, its maxlen's last ids."""
    monkeypatch.setenv("HPO_ENGINE", "fused")
    (workdir / "sequences.py").write_text(MODULE)
    space = SPACE + "maxlen = { choices = [10, 20] }\n"
    path = study_with_model(
        workdir, "sequences", study='input = "sequence"\nmaxlen = 30\n', space=space
    )
    spec = replace(studyfile.load(str(path)), seed=0)
    data = builtin.load("imdb", None, spec.num_words, spec.input, spec.maxlen)
    assert data.x_train.shape[1] == 30
    objective = Objective(spec, data)
    shapes = objective.build_fn.__globals__["SHAPES"]
    study = optuna.create_study(direction="maximize")
    for maxlen in (10, 20):
        study.enqueue_trial({"maxlen": maxlen, "width": 4})
    study.optimize(objective, n_trials=2)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert shapes == [(10,), (20,)]


def test_packed_text_vectors_reach_the_function_as_bytes_and_as_float_unpacks_them(workdir):
    """IMDB's default input is multi-hot rows, fed bit-packed: a build function's model reads
    the 0/1 words from inputs.as_float, as hpo's own model does (UnpackBits)."""
    data = builtin.load("imdb", None, 100)
    inputs = build_function.inputs_of(data)
    assert (inputs.kind, inputs.shape, inputs.dtype) == ("vectors", (13,), "uint8")
    assert inputs.packed_features == 100
    x = inputs.input()
    model = keras.Model(x, inputs.as_float(x))
    assert model.outputs[0].shape == (None, 100)
    rows = data.x_train[:5]
    np.testing.assert_array_equal(model.predict(rows, verbose=0), arrays.unpacked(data, rows))


def test_the_modules_folder_is_on_the_path_only_while_it_is_imported(workdir):
    """Left on sys.path, a later study's module of the same name in another folder would be
    found in the first one (a notebook trains several studies in one process)."""
    import sys

    for name, width in (("first", 4), ("second", 8)):
        folder = workdir / name
        folder.mkdir()
        (folder / "samename_model.py").write_text(
            f"WIDTH = {width}\ndef build(p, i):\n    return WIDTH\n"
        )
        code = build_function.ModelCode("samename_model:build", str(folder))
        assert build_function.load(code)({}, None) == width
        assert str(folder) not in sys.path
    gone = build_function.ModelCode("samename_model:build", str(workdir))
    with pytest.raises(HpoError, match="no module 'samename_model'"):
        build_function.load(gone)


def test_a_function_passed_from_python_needs_no_model_table(workdir):
    """hpo.optimize(build=fn): the study file may name the function's own parameters and feed
    word ids without a [model] table; without build= both stay one line."""
    path = tiny_study(workdir, "imdb", epochs=1, space=SPACE)
    path.write_text(path.read_text().replace("[study]\n", '[study]\ninput = "sequence"\n', 1))
    spec = studyfile.load(str(path), own_model=True)
    assert spec.model is None and spec.input == "sequence"
    assert "width" in spec.space.searched()
    with pytest.raises(HpoError, match="sequences need your own model"):
        studyfile.load(str(path))
