"""The [space] table: valid forms, the book's defaults, and one-line errors for bad entries."""

import optuna
import pytest

from hpo.errors import HpoError
from hpo.study.space import Choice, FloatRange, IntRange, book_config, parse_space


def test_forms_and_defaults():
    space = parse_space(
        {
            "layers": {"int": [1, 3]},
            "units": {"choices": [16, 32]},
            "learning_rate": {"float": [1e-4, 1e-2], "log": True},
            "dropout": 0.25,
        },
        "binary",
        "s.toml",
    )
    assert space.dims["layers"] == IntRange(1, 3)
    assert space.dims["units"] == Choice((16, 32))
    assert space.dims["learning_rate"] == FloatRange(1e-4, 1e-2, None, True)
    assert space.dims["dropout"] == Choice((0.25,))
    # Left out: the book's configuration, loss chosen by the task.
    assert space.dims["optimizer"] == Choice((book_config(None, "binary")["optimizer"],))
    assert space.dims["loss"] == Choice(("binary_crossentropy",))
    assert space.searched() == ["layers", "units", "learning_rate"]


def test_suggest_records_every_parameter():
    space = parse_space({"layers": {"int": [1, 3]}, "units": 64}, "multiclass", "s.toml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    params = space.suggest(trial)
    assert set(params) == set(space.dims)
    assert 1 <= params["layers"] <= 3
    assert params["units"] == 64
    assert params["loss"] == "sparse_categorical_crossentropy"
    assert trial.params == params  # fixed values too, so a trial alone rebuilds its model
    assert space.admits(params) is None
    assert "outside" in space.admits({**params, "layers": 7})


@pytest.mark.parametrize(
    ("table", "task", "message"),
    [
        ({"neurons": 3}, "binary", "space.neurons: unknown parameter"),
        ({"layers": {"int": [3, 1]}}, "binary", "space.layers: empty range: low 3 is greater"),
        ({"layers": 0}, "binary", "space.layers: must be at least 1"),
        ({"layers": {"float": [1, 2]}}, "binary", "space.layers: is an integer parameter"),
        ({"learning_rate": {"float": [0, 1], "log": True}}, "binary", "must lie in (0, 10]"),
        ({"dropout": {"float": [0.0, 1.0]}}, "binary", "space.dropout: must lie in [0, 1)"),
        ({"loss": "mse"}, "multiclass", "'mse' is not a loss for a multiclass task"),
        ({"loss": {"choices": ["mae", "binary_crossentropy"]}}, "regression", "space.loss"),
        ({"activation": {"int": [1, 2]}}, "binary", "space.activation: takes names"),
        ({"activation": "relux"}, "binary", "space.activation: must be one of"),
        ({"units": {"choices": []}}, "binary", "choices must be a non-empty list"),
        ({"units": {"choices": [16, 16]}}, "binary", "choices repeat a value"),
        ({"units": {"int": [8, 64], "log": True, "step": 2}}, "binary", "step and log"),
        ({"units": {"int": [8, 64], "spacing": 2}}, "binary", "unknown option 'spacing'"),
        ({"units": {"int": [8, 64], "choices": [1]}}, "binary", "give exactly one of"),
        ({"batch_size": "big"}, "binary", "space.batch_size: must be an integer"),
        ("layers", "binary", "[space] must be a table"),
    ],
)
def test_bad_entries_name_the_key(table, task, message):
    with pytest.raises(HpoError) as info:
        parse_space(table, task, "s.toml")
    text = str(info.value)
    assert text.startswith("s.toml: ")
    assert message in text
    assert "\n" not in text
