"""After the search, for a study of your own model ([model] build = "module:function"): analyze
retrains it from the build function with seeds, builds the ensembles of its models, hands one
over with its custom layers, and hpo loads it again through the study's module (predict);
the report and tables show conditional and per-layer parameters.

The trials are written here as the objective records them (their parameters drawn by the
study's own space, define-by-run; a history, a best epoch, kept validation predictions), so
these tests train only analyze's retrains: tiny data, 2 epochs, seconds."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from conftest import run_cli

import hpo
from hpo.errors import HpoError

MODULE = '''
import keras


@keras.saving.register_keras_serializable(package="tinymodels")
class Gain(keras.layers.Layer):
    """A custom layer: its input times a learned scalar, which starts at `start`."""

    def __init__(self, start=1.0, **kwargs):
        super().__init__(**kwargs)
        self.start = start

    def build(self, input_shape):
        self.gain = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(self.start), name="gain"
        )

    def call(self, x):
        return x * self.gain

    def get_config(self):
        return {**super().get_config(), "start": self.start}


def build(params, inputs):
    x = inputs.input()
    if inputs.kind == "sequence":
        h = keras.layers.Embedding(inputs.num_words, 8)(x)
        h = keras.layers.GlobalAveragePooling1D()(h)
    else:
        h = inputs.as_float(x)
    for layer in range(1, params["layers"] + 1):
        h = keras.layers.Dense(params[f"units_{layer}"], activation="relu")(h)
    if params["gain"]:
        h = Gain(params["gain_start"])(h)
    return keras.Model(x, keras.layers.Dense(1, activation="sigmoid")(h))


def compiled(params, inputs):
    model = build(params, inputs)
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="mse", metrics=["acc"])
    return model
'''

SPACE = """
[sampler]
name = "random"

[pruner]
name = "none"

[space]
layers = { int = [1, 2] }
units = { choices = [4, 8], per_layer = true }
gain = { choices = [true, false] }
gain_start = { float = [0.5, 1.5], when = { gain = true } }
learning_rate = 0.01
batch_size = 32
"""

# Four trials, best first: the best has the custom layer, two lack gain_start (gain false).
TRIALS = [
    ({"layers": 1, "units_1": 8, "gain": True, "gain_start": 1.2}, 0.9),
    ({"layers": 2, "units_1": 4, "units_2": 8, "gain": False}, 0.85),
    ({"layers": 1, "units_1": 4, "gain": False}, 0.8),
    ({"layers": 2, "units_1": 8, "units_2": 4, "gain": True, "gain_start": 0.8}, 0.75),
]


pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")


@pytest.fixture
def own_study(workdir, monkeypatch):
    """A study of a table of one's own, its model from tinymodels.py beside the study file."""
    (workdir / "tinymodels.py").write_text(MODULE)
    monkeypatch.setattr(sys, "path", list(sys.path))  # load() puts the module's folder there
    for name in [n for n in sys.modules if n == "tinymodels"]:
        monkeypatch.delitem(sys.modules, name)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    label = np.where(x[:, 0] + 0.5 * x[:, 1] > 0, "yes", "no")
    pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "label": label}).to_csv(
        workdir / "train.csv", index=False
    )
    path = workdir / "own.toml"
    path.write_text(
        textwrap.dedent(
            """
            [study]
            name = "own"
            max_epochs = 2
            validation = "first:40"

            [data]
            train = "train.csv"
            target = "label"

            [model]
            build = "tinymodels:build"
            """
        )
        + SPACE
    )
    return path


def record_trials(path: Path, trials, predict) -> optuna.Study:
    """The study of `path` with `trials` ((params, value), drawn through the study's space) as
    the objective records them; `predict(number, y_val)`: the validation predictions each
    kept at its best epoch, in the artifact store analyze reads."""
    from rich.console import Console

    from hpo import artifacts
    from hpo.search import study_loop
    from hpo.search.storage import DEFAULT_URL
    from hpo.study import studyfile
    from hpo.train import predictions

    spec = studyfile.load(str(path))
    study = study_loop.open_study(spec, DEFAULT_URL, spec.name)
    data = study_loop.load_data(spec, None, study, Console(quiet=True))
    rows = spec.validation.kept_rows(len(data.y_train))
    y_val = np.asarray(data.y_train[rows])
    kept = {"validation": str(spec.validation), "targets": predictions.rows_digest(y_val)}
    store = artifacts.open_store(artifacts.DEFAULT, create=True)
    for number, (params, value) in enumerate(trials):
        study.enqueue_trial(params)
        trial = study.ask()
        drawn = spec.space.suggest(trial)
        assert {k: drawn[k] for k in params} == params and set(drawn) >= set(params)
        curve = [value - 0.1, value]
        trial.set_user_attr(
            "history",
            {"loss": [0.7, 0.6], "val_loss": [0.7, 0.6], "accuracy": curve, "val_accuracy": curve},
        )
        trial.set_user_attr("best_epoch", 2)
        predictions.keep(trial, store, predict(number, y_val), 2, kept)
        study.tell(trial, value)
    return study


def complementary(number: int, y: np.ndarray) -> np.ndarray:
    """Predictions each right on half the rows, so that the trial ensemble takes several."""
    half = (np.arange(len(y)) % 4 < 2) == (number % 2 == 0)
    right = np.where(y == 1, 0.9, 0.1)
    return np.where(half, right, 1 - 0.6 * right - 0.2 * (1 - right))[:, None].astype("float32")


def test_analyze_hands_over_the_build_functions_models_and_hpo_loads_them(own_study, capsys):
    from hpo.results import prediction

    record_trials(own_study, TRIALS, complementary)
    result = hpo.analyze(own_study, seeds=2, progress=False)

    # Each retrained model is the build function's, with the layers its trial asked for.
    best = result.best
    assert best.trial == 0 and best.params["gain_start"] == pytest.approx(1.2)
    assert len(best.models) == 2 and len(best.runs) == 2
    assert [type(layer).__name__ for layer in best.model.layers].count("Gain") == 1
    assert best.ensemble is not None  # the seeds' ensemble of a functional model

    # The trial ensemble of several trials (some with the custom layer) is handed over ...
    handed = result.handed
    assert handed.name == "trial-ensemble" and len(handed.selection.members()) >= 2
    assert result.model_path.name == "trial-ensemble.keras"

    # ... and hpo loads it through the study's module, in safe mode, and predicts with it.
    predictor = hpo.load_model(own_study)
    assert predictor.path == result.model_path.resolve() or predictor.path.samefile(
        result.model_path
    )
    rows = pd.DataFrame({"a": [2.0, -2.0], "b": [1.0, -1.0], "c": [0.0, 0.0]})
    predicted = hpo.predict(own_study, rows)
    assert list(predicted["prediction"]) == ["yes", "no"]
    assert ((predicted["probability"] > 0.5) & (predicted["probability"] <= 1)).all()

    # The best trial's model, with its custom layer, round-trips: same layers, same outputs.
    loaded = prediction.load_keras(result.folder / "model.keras")
    assert any(type(layer).__name__ == "Gain" for layer in loaded.layers)
    x = np.random.default_rng(1).normal(size=(5, 3)).astype("float32")
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), best.model.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )

    # The report: every parameter by its name, gain_start "—" where a trial has none.
    report = result.report.read_text()
    top = report[report.index("## Top trials") :]
    header = next(line for line in top.splitlines() if line.startswith("| trial"))
    for name in ("layers", "units_1", "units_2", "gain", "gain_start"):
        assert f" {name} " in header
    assert top.count("—") >= 3  # trials 2 and 3 lack gain_start, trial 2 units_2
    assert "| gain_start | — |" in report  # the factor's row of the trials without it
    best_params = report[report.index("Parameters of the best trial") :].split("##")[0]
    assert "| units_2 | — |" in best_params  # the best trial has one layer


def test_a_missing_module_at_load_is_one_line(own_study, monkeypatch, capsys):
    from hpo.results import prediction

    record_trials(own_study, TRIALS[:2], complementary)
    result = hpo.analyze(own_study, progress=False, handover="best")
    assert result.model_path.name == "model.keras"

    # A Keras that does not know the custom layer: one line, which says what to do.
    import keras

    monkeypatch.delitem(keras.saving.get_custom_objects(), "tinymodels>Gain")
    with pytest.raises(HpoError) as info:
        prediction.load_keras(result.model_path)
    assert "\n" not in str(info.value) and "register it" in str(info.value)

    # The study's module gone: one line, before any model is read.
    code = own_study.parent / "code"
    code.mkdir()
    (own_study.parent / "tinymodels.py").rename(code / "tinymodels.py")
    with pytest.raises(HpoError) as info:
        hpo.load_model(own_study)
    message = str(info.value)
    assert "\n" not in message and "no module 'tinymodels'" in message
    rows = own_study.parent / "rows.csv"
    pd.DataFrame({"a": [1.0], "b": [0.0], "c": [0.0]}).to_csv(rows, index=False)
    status, _, err = run_cli(capsys, "predict", str(own_study), str(rows))
    assert status == 2 and len(err.strip().splitlines()) == 1 and "tinymodels" in err
    # Found on --code-path, it loads and predicts.
    status, out, err = run_cli(
        capsys, "predict", str(own_study), str(rows), "--code-path", str(code)
    )
    assert status == 0, err
    assert "prediction" in out


def test_trials_of_another_maxlen_retrain_on_their_ids_and_join_the_ensemble(workdir, monkeypatch):
    """A searched maxlen: each trial retrains on its last `maxlen` word ids (cut_to), and the
    trial ensemble of trials of different maxlen takes the study's sequences."""
    from hpo.data import builtin
    from hpo.data.arrays import cut_to
    from hpo.train import model as model_lib

    (workdir / "tinymodels.py").write_text(MODULE)
    monkeypatch.setattr(sys, "path", list(sys.path))
    path = workdir / "seq.toml"
    path.write_text(
        textwrap.dedent(
            """
            [study]
            name = "seq"
            dataset = "imdb"
            input = "sequence"
            maxlen = 20
            num_words = 100
            max_epochs = 2
            validation = "first:100"

            [model]
            build = "tinymodels:build"

            [space]
            maxlen = { choices = [10, 20] }
            layers = 1
            units = { choices = [4, 8], per_layer = true }
            gain = false
            learning_rate = 0.01
            batch_size = 32
            """
        )
    )
    trials = [({"maxlen": 10, "units_1": 8}, 0.9), ({"maxlen": 20, "units_1": 4}, 0.85)]
    record_trials(path, trials, complementary)
    result = hpo.analyze(path, progress=False)

    assert result.best.model.input.shape[1:] == (10,)  # trained on its own maxlen
    chosen = {t.params["maxlen"] for t, _ in result.handed.selection.members()}
    assert chosen == {10, 20} and result.handed.name == "trial-ensemble"
    ensemble = model_lib.keras.saving.load_model(result.model_path, safe_mode=True)
    data = builtin.load("imdb", num_words=100, input="sequence", maxlen=20)
    assert ensemble.input.shape[1:] == (20,)
    y = model_lib.targets(data.y_test, "binary", "binary_crossentropy", 1)
    scores = ensemble.evaluate(data.x_test, y, verbose=0, return_dict=True)
    assert scores["accuracy"] == pytest.approx(result.handed.trial_ensemble_test["accuracy"])
    # The best trial's test figure is of its own ids: its model reads 10.
    best = result.best.model.evaluate(
        cut_to(data, 10).x_test, y, verbose=0, return_dict=True, batch_size=256
    )
    assert best["accuracy"] == pytest.approx(result.best.runs[0]["accuracy"], abs=1e-6)


def test_a_model_its_function_compiled_keeps_its_compile(own_study):
    """A function that compiles its model: retrained with model.fit under its own compile,
    tested with the trial's loss and the task's accuracy, like every other trial."""
    text = own_study.read_text().replace("tinymodels:build", "tinymodels:compiled")
    own_study.write_text(text)
    record_trials(own_study, TRIALS[:2], complementary)
    result = hpo.analyze(own_study, progress=False, handover="best")
    model = result.best.model
    assert type(model.optimizer).__name__ == "Adam" and model.loss == "mse"
    run = result.best.runs[0]
    assert set(run) == {"accuracy", "loss"} and 0 <= run["accuracy"] <= 1


def test_tables_show_conditional_and_per_layer_parameters():
    from hpo.results import summary

    trials = [params for params, _ in TRIALS]
    searched = ["layers", "units_1", "units_2", "units_3", "gain", "gain_start"]
    # units_3 is searched (3 layers at most) but no trial has it: no empty column.
    assert summary.param_columns(searched, trials) == searched[:3] + searched[4:]
    # A [space] name searched per layer lists its layers' values, in layer order.
    layered = [{"layers": 2, "units_2": 8, "units_10": 4, "units_1": 4}]
    assert summary.param_columns(["layers", "units"], layered) == [
        "layers",
        "units_1",
        "units_2",
        "units_10",
    ]
    assert summary._cell("gain_start", float("nan")) == summary.ABSENT
    assert summary._cell("units_2", 8.0) == "8"  # an int column pandas made float by a gap
    assert summary._cell("value", None) == ""


def fitted_models(lengths, vocab=30):
    """Word-id models reading the last `length` ids each, trained one step."""
    import keras

    models = []
    for length in lengths:
        inputs = keras.Input((length,), dtype="uint16")
        h = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(vocab, 4)(inputs))
        models.append(keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(h)))
    return models


def test_trial_ensemble_of_members_of_different_maxlen(tmp_path):
    """Trials that searched maxlen: the ensemble takes the study's (longest) sequences and
    gives each member its last `maxlen` ids, as hpo.data.arrays.cut_to gave it in training;
    its file holds standard Keras layers only (it loads in safe mode without hpo's)."""
    import keras

    from hpo.data.arrays import Prepared, cut_to
    from hpo.results import analysis

    rng = np.random.default_rng(0)
    x = rng.integers(0, 30, size=(40, 20)).astype("uint16")
    y = rng.integers(0, 2, 40)
    data = Prepared("imdb", "binary", 1, 1.0, 20, False, x, y, x, y, input_kind="sequence")
    short, full = fitted_models([10, 20])
    params = {"optimizer": "rmsprop", "learning_rate": 1e-3, "loss": "binary_crossentropy"}
    model = analysis.combine([short, full], [1.0, 3.0], params, data)
    expected = 0.25 * short.predict(cut_to(data, 10).x_test, verbose=0) + 0.75 * full.predict(
        x, verbose=0
    )
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
    model.save(tmp_path / "ensemble.keras")
    loaded = keras.saving.load_model(tmp_path / "ensemble.keras", safe_mode=True, compile=False)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
    # A member reading more ids than the data holds cannot be fed: refused, one line.
    with pytest.raises(analysis.EnsembleFailed):
        analysis.combine(fitted_models([30]), [1.0], params, data)


def test_a_model_keras_cannot_copy_gets_no_ensemble():
    """A subclassed model whose __init__ takes objects cannot be cloned (no get_config): no
    ensemble, one line why, and analyze hands over the single best trial instead."""
    import keras

    from hpo.data.arrays import Prepared
    from hpo.results import analysis

    class Opaque(keras.Model):
        def __init__(self, head, **kwargs):
            super().__init__(**kwargs)
            self.head = head

        def call(self, x):
            return self.head(x)

    x = np.zeros((4, 3), dtype="float32")
    data = Prepared("t", "binary", 1, 1.0, 3, False, x, np.zeros(4), x, np.zeros(4))
    member = Opaque(keras.layers.Dense(1, activation="sigmoid"))
    member(x)
    params = {"optimizer": "rmsprop", "learning_rate": 1e-3, "loss": "binary_crossentropy"}
    with pytest.raises(analysis.EnsembleFailed) as info:
        analysis.combine([member, member], [1.0, 1.0], params, data)
    assert "\n" not in str(info.value) and "cannot copy" in str(info.value)
    assert analysis._handed_over("trial-ensemble", False, False)[0] == "best"


def test_experiment_refuses_a_study_of_your_own_model(own_study, capsys):
    """hpo experiment varies the book's Dense stack one factor at a time: not a build
    function's model, whose parameters it does not know. One line, exit 2."""
    code, _, err = run_cli(capsys, "experiment", str(own_study), "--vary", "units=8,16")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "[model]" in err
