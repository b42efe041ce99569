"""`hpo analyze` and `hpo experiment` on tiny data: retrain, test, save, report, bad input."""

import json

import numpy as np
import optuna
import pytest
from conftest import ANALYSIS_ARTIFACTS, run_cli, tiny_study

from hpo.data import builtin
from hpo.search.storage import DEFAULT_URL
from hpo.study.space import BOOK_CONFIGS


@pytest.fixture
def searched(workdir, capsys):
    path = tiny_study(workdir, epochs=3)
    code, _, err = run_cli(capsys, "optimize", str(path), "--trials", "3", "--seed", "1")
    assert code == 0, err
    return path


def test_analyze_retrains_tests_and_saves(searched, workdir, capsys):
    code, out, err = run_cli(capsys, "analyze", str(searched), "--seeds", "3")
    assert code == 0, err
    folder = workdir / "storage" / "reports" / "tiny"
    saved = json.loads((folder / "params.json").read_text())
    study = optuna.load_study(study_name="tiny", storage=DEFAULT_URL)
    best = study.best_trial
    assert saved["trial"] == best.number
    assert saved["epochs"] == best.user_attrs["best_epoch"]
    assert saved["params"] == best.params
    accuracy = saved["test"]["accuracy"]
    assert len(accuracy["runs"]) == 3 and saved["seeds"] == [0, 1, 2]
    assert accuracy["mean"] == pytest.approx(np.mean(accuracy["runs"]))
    assert accuracy["std"] == pytest.approx(np.std(accuracy["runs"], ddof=1))
    assert f"{accuracy['mean']:.4f} ± {accuracy['std']:.4f}" in out

    # The saved model is the first seed's and reproduces its test accuracy.
    from hpo.train import model as model_lib

    model = model_lib.keras.saving.load_model(folder / "model.keras")
    prepared = builtin.load("imdb", num_words=100)
    y = model_lib.targets(prepared.y_test, "binary", saved["params"]["loss"], 1)
    scores = model.evaluate(prepared.x_test, y, verbose=0, return_dict=True)
    assert scores["accuracy"] == pytest.approx(accuracy["runs"][0], abs=1e-6)

    # The ensemble: the three seeds' models (the first is the one above), their mean output.
    ensemble = model_lib.keras.saving.load_model(folder / "seed-ensemble.keras")
    members = [ensemble.get_layer(f"member_{i}") for i in range(3)]
    x = prepared.x_test[:50]
    # (two differently compiled programs: oneDNN's graph rewrites may round the last bit apart)
    np.testing.assert_allclose(
        members[0].predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6
    )
    mean = np.mean([m.predict(x, verbose=0) for m in members], axis=0)
    np.testing.assert_allclose(ensemble.predict(x, verbose=0), mean, rtol=1e-5, atol=1e-6)
    scores = ensemble.evaluate(prepared.x_test, y, verbose=0, return_dict=True)
    assert scores["accuracy"] == pytest.approx(saved["seed_ensemble_test"]["accuracy"], abs=1e-6)
    assert f"{saved['seed_ensemble_test']['accuracy']:.4f}" in out

    # The report and its figures, and the results back in the study for any Optuna client.
    report = (folder / "report.md").read_text()
    for figure in ("curves.png", "history.png", "importances.png"):
        assert (folder / figure).stat().st_size > 5000
        assert f"({figure})" in report
    assert "## Effect of each factor" in report and "keras" in report
    assert study.user_attrs["analysis"]["best"]["test"]["accuracy"]["runs"] == accuracy["runs"]
    assert not list(folder.parent.glob(".tiny.*"))  # no staging folder left behind
    # Three figures, the report and the handed-over model for the study, and each trial's
    # validation predictions.
    names = sorted(m.filename for m in optuna.artifacts.get_all_artifact_meta(study))
    assert names == ANALYSIS_ARTIFACTS
    trials = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    store = workdir / "storage" / "artifacts"
    assert all((store / t.user_attrs["val_predictions"]["artifact_id"]).is_file() for t in trials)
    assert len(list(store.iterdir())) == 5 + len(trials)
    # A holdout trial's kept predictions are of its validation rows (the first 100), at its
    # best epoch: their accuracy is the trial's value (float16 may move one row across 0.5).
    from hpo.train import predictions

    y_val = prepared.y_train[:100]
    for trial in trials:
        kept = predictions.fetch(trial, optuna.artifacts.FileSystemArtifactStore(str(store)))
        assert kept.shape == (100, 1)
        assert ((kept[:, 0] >= 0.5) == y_val).mean() == pytest.approx(trial.value, abs=0.011)
    from optuna_dashboard import get_note

    assert "Best configuration" in get_note(study)


def test_regression_ensemble_is_never_worse_than_its_seeds_on_average(workdir, capsys):
    path = tiny_study(workdir, "boston_housing", epochs=4, validation="kfold:2")
    code, _, err = run_cli(capsys, "optimize", str(path), "--trials", "2", "--seed", "0")
    assert code == 0, err
    code, _, err = run_cli(capsys, "analyze", str(path), "--seeds", "3")
    assert code == 0, err
    saved = json.loads((workdir / "storage" / "reports" / "tiny" / "params.json").read_text())
    maes = saved["test"]["mae"]["runs"]
    # |mean prediction - y| <= mean |prediction - y| for every house.
    assert saved["seed_ensemble_test"]["mae"] <= np.mean(maes) + 1e-6
    assert saved["seed_ensemble_test"]["mae"] < max(maes)


def test_analyze_top_trials(searched, workdir, capsys):
    code, _out, err = run_cli(
        capsys, "analyze", str(searched), "--top", "2", "--out", str(workdir / "two")
    )
    assert code == 0, err
    saved = optuna.load_study(study_name="tiny", storage=DEFAULT_URL).user_attrs["analysis"]
    assert len(saved["top"]) == 1
    assert (workdir / "two" / "report.md").read_text().count("± ") >= 4


def test_analyze_bad_input(searched, workdir, capsys):
    code, _, err = run_cli(capsys, "analyze", str(searched), "--study", "nope")
    assert code == 2 and "no study named 'nope'" in err
    # A space that no longer admits the trials' parameters.
    narrowed = searched.read_text().replace("units = { choices = [8, 16] }", "units = 64")
    changed = workdir / "changed.toml"
    changed.write_text(narrowed.replace("[study]", '[study]\nname = "tiny"'))
    code, _, err = run_cli(capsys, "analyze", str(changed))
    assert code == 2 and "no longer fit" in err and "units=" in err
    # An --out that cannot be written: one line, and nothing left behind.
    blocker = workdir / "file"
    blocker.write_text("")
    code, _, err = run_cli(capsys, "analyze", str(searched), "--out", str(blocker / "sub"))
    assert code == 2 and "cannot write there" in err
    assert len(err.strip().splitlines()) == 1


def test_analyze_needs_a_completed_trial(workdir, capsys):
    path = tiny_study(workdir, epochs=2)
    from hpo.search import study_loop
    from hpo.study import studyfile

    study_loop.open_study(studyfile.load(str(path)), DEFAULT_URL, "tiny")
    code, _, err = run_cli(capsys, "analyze", str(path))
    assert code == 2 and "has no completed trial" in err
    assert not (workdir / "storage" / "reports" / "tiny").exists()


def test_experiment_one_row_per_value(workdir, capsys):
    path = tiny_study(workdir, epochs=2)
    code, _out, err = run_cli(
        capsys, "experiment", str(path), "--vary", "units=8,32", "--seeds", "2", "--study", "exp"
    )
    assert code == 0, err
    study = optuna.load_study(study_name="exp", storage=DEFAULT_URL)
    rows = study.user_attrs["experiment"]
    assert [r["variant"] for r in rows] == ["book", "units=8", "units=32"]
    assert [r["params"]["units"] for r in rows] == [16, 8, 32]
    assert all(len(r["test"]["accuracy"]["runs"]) == 2 for r in rows)
    trials = study.get_trials()
    assert len(trials) == 3 and all(t.user_attrs["history"] for t in trials)
    report = workdir / "storage" / "reports" / "exp" / "experiment.md"
    assert report.read_text().count("| units=") == 2
    assert (report.parent / "experiment.png").stat().st_size > 5000
    # Re-running resumes: nothing is trained twice.
    code, _, err = run_cli(
        capsys, "experiment", str(path), "--vary", "units=8,32", "--study", "exp"
    )
    assert code == 0, err
    assert len(optuna.load_study(study_name="exp", storage=DEFAULT_URL).get_trials()) == 3


@pytest.mark.parametrize(
    ("vary", "message"),
    [
        ("units", "expected FACTOR=v1,v2"),
        ("neurons=3", "unknown factor"),
        ("units=big", "'big' is not an integer"),
        ("loss=categorical_crossentropy", "not a loss"),
    ],
)
def test_experiment_bad_vary(workdir, capsys, vary, message):
    code, _, err = run_cli(capsys, "experiment", "imdb", "--vary", vary)
    assert code == 2 and message in err


def test_experiment_does_not_queue_a_waiting_variant_twice():
    from hpo.results import one_factor as exp

    study = optuna.create_study()
    wanted = exp.variants(BOOK_CONFIGS["imdb"], {"units": [8]})
    study.enqueue_trial(wanted[1])
    assert exp.missing(study, wanted) == [wanted[0]]


def test_experiment_trains_every_epoch_whatever_the_study_file_says():
    """The book's comparison is of whole curves: no pruner, and no study file's patience."""
    from hpo.results import one_factor as exp
    from hpo.study import studyfile

    spec = studyfile.load("imdb")
    assert spec.patience > 0 and spec.pruner["name"] == "median"
    varied = exp.experiment_spec(spec, BOOK_CONFIGS["imdb"], {"units": [8]}, epochs=None)
    assert (varied.patience, varied.pruner, varied.max_epochs) == (0, {"name": "none"}, 20)


def test_factor_effects_name_float_bins_by_the_values_drawn(workdir):
    from hpo.results import report
    from hpo.study import studyfile

    spec = studyfile.load(str(tiny_study(workdir)))  # learning_rate: float [0.003, 0.01], log
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    for _ in range(9):
        trial = study.ask()
        params = spec.space.suggest(trial)
        study.tell(trial, params["learning_rate"] * 10)

    effects = report.factor_effects(study, spec)
    rates = effects[effects["factor"] == "learning_rate"]
    assert rates["trials"].tolist() == [3, 3, 3]
    spans = [tuple(float(x) for x in label.split("–")) for label in rates["value"]]
    drawn = sorted(t.params["learning_rate"] for t in study.trials)
    assert spans[0][0] == pytest.approx(drawn[0], rel=1e-2)  # from the lowest drawn, not below
    assert spans[-1][1] == pytest.approx(drawn[-1], rel=1e-2)
    assert all(low <= high for low, high in spans)
    assert [s[0] for s in spans] == sorted(s[0] for s in spans)  # in increasing order
    best = rates["best"].tolist()
    assert best == sorted(best)  # value = 10 x learning_rate: the highest bin holds the best


def test_long_curves_are_zoomed_past_their_first_epochs():
    from hpo.results.report import curve_y_range

    falling = [20.0, 14.0, 8.0, 5.0, 4.0, 3.5, 3.2, 3.0, 2.9, 2.8] + [
        2.5 + 0.01 * i for i in range(50)
    ]
    low, high = curve_y_range(falling, [float("nan"), *falling[1:]])
    assert low < 2.5 < 2.99 < high < 3.5  # the epochs after the 10th, not the early 20.0
    assert curve_y_range(falling[:20]) is None  # a 20-epoch curve is shown whole, as the book does


def test_curves_figure_shows_the_moving_mean_that_chose_the_epoch(tmp_path, monkeypatch):
    from hpo.results import report

    curve = [5.0, 3.0, 1.0, 3.0, 2.0, 2.0, 2.0, 3.0]
    history = {"loss": curve, "val_loss": curve, "mae": curve, "val_mae": curve}
    trial = optuna.trial.create_trial(value=2.0, user_attrs={"history": history})
    figures = []
    monkeypatch.setattr(report.plt, "close", figures.append)

    report.plot_curves(trial, "val_mae", 6, tmp_path / "curves.png", smooth_epochs=3)
    loss_axis, mae_axis = figures[0].axes
    mean = next(line for line in mae_axis.get_lines() if line.get_label() == "3-epoch mean")
    np.testing.assert_allclose(mean.get_ydata()[1:-1], [3.0, 7 / 3, 2.0, 7 / 3, 2.0, 7 / 3])
    assert "3-epoch mean" not in [line.get_label() for line in loss_axis.get_lines()]
    assert (tmp_path / "curves.png").stat().st_size > 0
