"""The [space] table: valid forms, the book's defaults, and one-line errors for bad entries."""

import optuna
import pytest

from hpo.errors import HpoError
from hpo.study import algorithms, studyfile
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


LAMBDA_MISSING = "space.l2: when.momentum: momentum is not a parameter of this space"
NEVER_SGD = 'space.l2: when.optimizer: optimizer never takes "sgd" in this space'
CYCLE = "space.a: when: the conditions form a cycle (a → b → a)"


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
        ({"momentum": 0.9}, "binary", "space.momentum: unknown parameter"),
        ({"l2": -1e-4}, "binary", "space.l2: must be at least 0, got -0.0001"),
        ({"l2": {"float": [0, 1e-3], "log": True}}, "binary", "a log range needs low > 0"),
        ({"batch_norm": "yes"}, "binary", "space.batch_norm: must be true or false"),
        ({"batch_norm": {"int": [0, 1]}}, "binary", "space.batch_norm: takes true or false"),
        # Conditions and per-layer values.
        ({"l2": {"float": [0, 1e-3], "when": {"momentum": 0.9}}}, "binary", LAMBDA_MISSING),
        ({"l2": {"choices": [1e-4], "when": {"optimizer": "sgd"}}}, "binary", NEVER_SGD),
        (
            {
                "optimizer": {"choices": ["sgd", "adam"]},
                "l2": {"float": [0, 1], "when": {"optimizer": "sgdd"}},
            },
            "binary",
            'space.l2: when.optimizer: optimizer never takes "sgdd" in this space '
            '(its choices: "sgd", "adam")',
        ),
        ({"l2": {"float": [0, 1e-3], "when": 3}}, "binary", "space.l2: when must be a table"),
        ({"l2": {"float": [0, 1e-3], "whenever": {}}}, "binary", "unknown option 'whenever'"),
        ({"units": {"choices": [8], "per_layer": 1}}, "binary", "per_layer must be true or false"),
        (
            {"layers": 2, "dropout": {"choices": [0.1], "when": {"layers": 2}}},
            "binary",
            "space.dropout: when: hpo's Dense stack needs dropout in every trial",
        ),
        (
            {"layers": 2, "activation": {"choices": ["relu"], "per_layer": True}},
            "binary",
            "space.activation: per_layer: hpo's Dense stack takes per-layer units only",
        ),
    ],
)
def test_bad_entries_name_the_key(table, task, message):
    with pytest.raises(HpoError) as info:
        parse_space(table, task, "s.toml")
    text = str(info.value)
    assert text.startswith("s.toml: ")
    assert message in text
    assert "\n" not in text


CONDITIONAL = {
    "layers": {"int": [1, 3]},
    "units": {"choices": [16, 32, 64, 128], "per_layer": True},
    "optimizer": {"choices": ["sgd", "adam"]},
    "l2": {"float": [1e-5, 1e-2], "log": True, "when": {"optimizer": "sgd"}},
    "batch_norm": {"choices": [False, True]},
}


def run_tpe(space, sampler, trials: int = 15) -> list[optuna.trial.FrozenTrial]:
    """`trials` trials of a toy objective (smaller is better: fewer layers, a small l2)."""
    study = optuna.create_study(sampler=sampler)
    for _ in range(trials):
        trial = study.ask()
        params = space.suggest(trial)
        assert trial.params == params
        study.tell(trial, params["layers"] + 100 * params.get("l2", 0.0))
    return study.trials


@pytest.mark.parametrize("config", [{"name": "tpe"}, {"name": "tpe", "multivariate": True}])
def test_conditional_and_per_layer_parameters_through_tpe(config):
    space = parse_space(CONDITIONAL, "binary", "s.toml")
    sampler = algorithms.make_sampler({**config, "n_startup_trials": 5}, seed=0)
    trials = run_tpe(space, sampler)
    for trial in trials:
        params = trial.params
        # An absent parameter stays absent: in params and in what TPE models (distributions).
        assert ("l2" in params) == (params["optimizer"] == "sgd")
        layered = {name for name in params if name.startswith("units_")}
        assert layered == {f"units_{i}" for i in range(1, params["layers"] + 1)}
        assert "units" not in params
        assert set(trial.distributions) == set(params)
        assert space.admits(params) is None
    drawn = {(t.params["optimizer"], t.params["layers"]) for t in trials}
    assert {o for o, _ in drawn} == {"sgd", "adam"}  # both branches were taken
    assert {n for _, n in drawn} >= {1, 3}  # units_3 appears only with 3 layers


def test_multivariate_tpe_models_conditional_groups_jointly(monkeypatch):
    """Multivariate TPE is built with group=True (each set of parameters that occur together
    modelled jointly); independent TPE stays as it was."""
    made = []
    monkeypatch.setitem(algorithms.SAMPLERS, "tpe", lambda **kwargs: made.append(kwargs))
    algorithms.make_sampler({"name": "tpe", "multivariate": True})
    algorithms.make_sampler({"name": "tpe"})
    algorithms.make_sampler({"name": "tpe", "multivariate": True, "group": False})
    assert made[0]["group"] is True
    assert "group" not in made[1] and "multivariate" not in made[1]
    assert made[2]["group"] is False  # what the study file says wins


def test_searched_names_the_entries_the_search_varies():
    space = parse_space(CONDITIONAL, "binary", "s.toml")
    assert space.searched() == ["layers", "units", "optimizer", "l2", "batch_norm"]
    fixed = parse_space({"layers": 2, "units": {"choices": [8], "per_layer": True}}, "binary", "s")
    assert fixed.searched() == []


def test_admits_conditional_and_per_layer_parameters():
    space = parse_space(CONDITIONAL, "binary", "s.toml")
    base = {**book_config(None, "binary"), "optimizer": "adam", "batch_norm": False}
    del base["units"]
    two = {**base, "layers": 2, "units_1": 16, "units_2": 128}
    assert space.admits(two) is None
    assert space.admits({**two, "optimizer": "sgd"}) == "parameter l2 is missing"
    assert space.admits({**two, "optimizer": "sgd", "l2": 1e-3}) is None
    assert space.admits({**two, "optimizer": "sgd", "l2": 1.0}) == (
        "l2=1.0 lies outside the study file's space"
    )
    assert space.admits({**two, "layers": 3}) == "parameter units_3 is missing"
    assert "units_2=100 lies outside" in space.admits({**two, "units_2": 100})
    # Stored values are data: a string where a number belongs is outside, not a TypeError.
    assert "layers='2' lies outside" in space.admits({**two, "layers": "2"})
    assert "batch_norm=1 lies outside" in space.admits({**two, "batch_norm": 1})


def test_a_space_written_before_admits_its_trials():
    """The optional parameters (l2, batch_norm) are absent unless listed, so trials stored by a
    study file of before still fit it, and draw what they drew."""
    table = {"layers": {"int": [1, 3]}, "units": {"choices": [16, 32]}, "dropout": 0.25}
    space = parse_space(table, "binary", "s.toml")
    old = {**book_config(None, "binary"), "layers": 2, "units": 32, "dropout": 0.25}
    assert space.admits(old) is None
    assert set(space.dims) == set(old)  # the same eight parameters, nothing new
    assert not space.when and not space.per_layer


def test_a_build_functions_space_takes_any_name_and_kind():
    table = {
        "filters": {"choices": [16, 32], "per_layer": True},
        "layers": {"int": [1, 3]},
        "kernel": 3,
        "pooling": {"choices": ["max", "average"]},
        "residual": {"choices": [True, False]},
        "optimizer": {"choices": ["sgd", "adam"]},
        "momentum": {"float": [0.5, 0.99], "when": {"optimizer": "sgd"}},
        "nesterov": {"choices": [True, False], "when": {"optimizer": "sgd", "momentum": 0.9}},
        "width": {"int": [-4, 4], "step": 2},
    }
    space = parse_space(table, "multiclass", "s.toml", custom=True)
    # hpo's training parameters are always there; the Dense stack's only where listed.
    assert set(space.dims) == {
        *table,
        "learning_rate",
        "loss",
        "batch_size",
    }
    # Parents come before their children, whatever the file's order.
    order = list(space.dims)
    assert order.index("layers") < order.index("filters")
    assert order.index("optimizer") < order.index("momentum") < order.index("nesterov")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        params = space.suggest(study.ask())
        assert params["kernel"] == 3 and params["width"] in (-4, -2, 0, 2, 4)
        assert ("momentum" in params) == (params["optimizer"] == "sgd")
        assert "nesterov" not in params  # a float range never draws exactly 0.9
        assert sum(name.startswith("filters_") for name in params) == params["layers"]
        assert space.admits(params) is None


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"2x": 1}, "space.2x: a parameter's name must be a Python identifier"),
        ({"mode": [1, 2]}, "space.mode: must be a number, a string or true/false"),
        ({"mode": {"int": [1.5, 3]}}, "space.mode: must be an integer, got 1.5"),
        ({"filters": {"choices": [8], "per_layer": True}}, "space.filters: per_layer needs layers"),
        ({"a": {"choices": [1], "when": {"b": 1}}, "b": {"choices": [1], "when": {"a": 1}}}, CYCLE),
        ({"a": {"choices": [1], "when": {"a": 1}}}, "space.a: when: the conditions form a cycle"),
        ({"learning_rate": {"float": [0.1, 1], "when": {"x": 1}}, "x": 1}, "learning_rate: when:"),
        ({"layers": {"choices": [1], "per_layer": True}}, "space.layers: per_layer: layers is one"),
        (
            {"layers": 2, "f": {"choices": [1], "per_layer": True}, "f_2": 3},
            "space.f_2: clashes with per-layer f",
        ),
        ({"layers": 2, "f": {"choices": [1], "per_layer": True, "when": {"f": 1}}}, "f is per"),
        (
            {"flag": {"choices": [True]}, "x": {"choices": [1], "when": {"flag": 1}}},
            "never takes 1",
        ),
        ({"n": {"int": [0, 9], "step": 3}, "x": {"choices": [1], "when": {"n": 4}}}, "step 3"),
        ({"x": {"choices": [1], "when": {"loss": []}}}, "when.loss: give a value or a non-empty"),
    ],
)
def test_bad_build_function_spaces_are_one_line(table, message):
    with pytest.raises(HpoError) as info:
        parse_space(table, "multiclass", "s.toml", custom=True)
    text = str(info.value)
    assert text.startswith("s.toml: ") and "\n" not in text
    assert message in text


def test_a_study_with_a_build_function_takes_its_own_parameters():
    doc = {
        "study": {"dataset": "mnist", "input": "image"},
        "model": {"build": "convnet:build"},
        "space": {"filters": {"choices": [16, 32]}, "dropout": 0.5},
    }
    spec = studyfile.parse(doc, "s.toml")
    training = {"optimizer", "learning_rate", "loss", "batch_size"}
    assert set(spec.space.dims) == {"filters", "dropout", *training}
    del doc["model"]  # hpo's Dense stack knows no filters
    with pytest.raises(HpoError, match=r"space\.filters: unknown parameter"):
        studyfile.parse(doc, "s.toml")


def test_a_shared_pool_bounds_per_layer_widths_as_units():
    from hpo.search import queue

    def spec(space: dict):
        doc = {"study": {"dataset": "mnist", "input": "image"}, "space": space}
        return studyfile.parse({**doc, "model": {"build": "convnet:build"}}, "s.toml")

    queue.check_shared(spec({"layers": 2, "units": {"choices": [64], "per_layer": True}}))
    too_wide = [
        {"layers": 2, "units": {"choices": [64, 8192], "per_layer": True}},
        {"units_1": 64, "units_2": {"int": [64, 5000]}},  # a build function's own names
    ]
    for space in too_wide:
        with pytest.raises(HpoError, match=r"space\.units(_2)?: .* is more than a shared pool"):
            queue.check_shared(spec(space))
