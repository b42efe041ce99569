"""The model a search hands over: each trial's kept validation predictions, the trial
ensemble chosen from them, its file, its fallbacks and its bad inputs (tiny data)."""

import json
import uuid

import numpy as np
import optuna
import pytest
from conftest import run_cli, tiny_study

from hpo.data import builtin
from hpo.data.spec import Validation
from hpo.search.storage import DEFAULT_URL
from hpo.train import predictions


@pytest.fixture
def boston(workdir, capsys):
    """A tiny 2-fold Boston search of 4 trials: k-fold trials keep out-of-fold predictions."""
    path = tiny_study(workdir, "boston_housing", epochs=5, validation="kfold:2")
    code, _, err = run_cli(capsys, "optimize", str(path), "--trials", "4", "--seed", "0")
    assert code == 0, err
    return path


def test_trials_keep_their_best_epochs_out_of_fold_predictions(boston, workdir):
    study = optuna.load_study(study_name="tiny", storage=DEFAULT_URL)
    store = optuna.artifacts.FileSystemArtifactStore(str(workdir / "storage" / "artifacts"))
    prepared = builtin.load("boston_housing")
    rows = Validation.parse("kfold:2").kept_rows(len(prepared.y_train))
    for trial in study.get_trials(states=[optuna.trial.TrialState.COMPLETE]):
        kept = predictions.fetch(trial, store)
        meta = trial.user_attrs[predictions.ATTR]
        assert kept.shape == (rows.stop, 1) and meta["rows"] == rows.stop
        assert meta["epoch"] == trial.user_attrs["best_epoch"]
        # The trial's value is the fold-averaged MAE at its best epoch: the kept predictions'
        # MAE over both folds (float16 storage: 3 significant digits).
        mae = np.abs(kept[:, 0] - prepared.y_train[rows]).mean()
        assert mae == pytest.approx(trial.value, rel=2e-3)


def test_analyze_hands_over_the_trial_ensemble(boston, workdir, capsys):
    code, out, err = run_cli(capsys, "analyze", str(boston), "--seeds", "2")
    assert code == 0, err
    folder = workdir / "storage" / "reports" / "tiny"
    saved = json.loads((folder / "params.json").read_text())
    assert json.loads((folder / "handover.json").read_text()) == {  # the default handover
        "handover": "trial-ensemble",
        "model": "trial-ensemble.keras",
    }
    selected = saved["trial_ensemble"]
    weights = [m["weight"] for m in selected["members"]]
    assert sum(weights) == pytest.approx(1) and all(w > 0 for w in weights)
    assert all(round(w * 25) == pytest.approx(w * 25) for w in weights)  # 25 steps
    assert selected["metric"] == "mae" and set(selected["nested"]) == {"ensemble", "best_single"}
    # The saved ensemble is the members' seeds' models with their weights, and it tests as
    # analyze reported.
    from hpo.train import model as model_lib

    ensemble = model_lib.keras.saving.load_model(folder / "trial-ensemble.keras")
    prepared = builtin.load("boston_housing")
    y = prepared.y_test[:, None]
    scores = ensemble.evaluate(prepared.x_test, y, verbose=0, return_dict=True)
    assert scores["mae"] == pytest.approx(selected["test"]["mae"], rel=1e-5)
    assert len([layer for layer in ensemble.layers if layer.name.startswith("member_")]) == (
        2 * len(weights)
    )
    report = (folder / "report.md").read_text()
    assert "## Handover" in report and "Handed over: **trial-ensemble**" in report
    assert f"{selected['test']['mae']:.4f}" in out and "scored nested" in out
    study = optuna.load_study(study_name="tiny", storage=DEFAULT_URL)
    assert study.user_attrs["analysis"]["handover"] == "trial-ensemble"
    from optuna_dashboard import get_note

    assert "Trial ensemble" in get_note(study)

    # Each handover can be chosen; predict's model is the one handover.json names.
    code, _, err = run_cli(capsys, "analyze", str(boston), "--handover", "seeds", "--seeds", "2")
    assert code == 0, err
    assert json.loads((folder / "handover.json").read_text())["model"] == "seed-ensemble.keras"
    code, _, err = run_cli(capsys, "analyze", str(boston), "--handover", "best")
    assert code == 0, err
    assert json.loads((folder / "handover.json").read_text())["model"] == "model.keras"
    code, out, err = run_cli(capsys, "analyze", str(boston), "--handover", "seeds")
    assert code == 0, err  # one seed: its ensemble is the best trial's model, no note
    assert json.loads((folder / "handover.json").read_text())["model"] == "model.keras"
    assert "not available" not in out


def test_earlier_hpo_handover_names_still_load(workdir):
    """Folders and records written before the trial ensemble had its name (selected.keras, and
    ensemble.keras for the seeds') still hand over their model; `selected` is still taken."""
    from hpo.results import analysis, prediction
    from hpo.results import handover as handover_lib

    for old in ("selected.keras", "ensemble.keras"):
        folder = workdir / old.removesuffix(".keras")
        folder.mkdir()
        (folder / old).write_bytes(b"a model")
        (folder / "params.json").write_text("{}")
        (folder / "handover.json").write_text(json.dumps({"handover": "selected", "model": old}))
        assert prediction.handed_over(folder) == folder / old
        analysis.check_target(folder)  # an unmarked folder of earlier hpo's: still replaceable
        study = optuna.create_study()
        study.set_user_attr(handover_lib.ATTR, {"file": old, "model": str(uuid.uuid4())})
        assert prediction.handover_record(study)[0] == old
    assert handover_lib.canonical("selected") == "trial-ensemble"
    analysis.check_options(1, 1, 1, "selected")


def test_analyze_holds_at_most_the_candidates_predictions(boston, workdir, capsys, monkeypatch):
    fetched = []
    real = predictions.fetch
    monkeypatch.setattr(predictions, "fetch", lambda t, s: fetched.append(t.number) or real(t, s))
    code, _, err = run_cli(capsys, "analyze", str(boston), "--candidates", "2")
    assert code == 0, err
    study = optuna.load_study(study_name="tiny", storage=DEFAULT_URL)
    ranked = sorted(
        study.get_trials(states=[optuna.trial.TrialState.COMPLETE]), key=lambda t: t.value
    )
    assert fetched == [t.number for t in ranked[:2]]


def test_handover_bad_input_is_one_line(boston, workdir, capsys):
    code, _, err = run_cli(capsys, "analyze", str(boston), "--candidates", "0")
    assert code == 2 and "--candidates must be at least 1" in err
    code, _, err = run_cli(capsys, "analyze", str(boston), "--artifacts", str(workdir / "nowhere"))
    assert code == 2 and "no such folder" in err and len(err.strip().splitlines()) == 1
    # A store without the trials' predictions (each worker kept its own on another machine):
    # analyze still hands over a model, and says why it is not a trial ensemble.
    other = workdir / "other"
    other.mkdir()
    code, out, err = run_cli(capsys, "analyze", str(boston), "--artifacts", str(other))
    assert code == 0, err
    assert "kept their predictions in another artifact store" in out and "shared --artifacts" in out
    assert "handed over (best)" in out
    # The study file's validation changed since the search: the kept predictions are of other
    # rows, and are not scored against these.
    boston.write_text(boston.read_text().replace('"kfold:2"', '"kfold:3"'))
    code, out, err = run_cli(capsys, "analyze", str(boston))
    assert code == 0, err
    assert "4 of the top 4 trials kept predictions of other rows" in out


def test_kept_predictions_round_trip_exactly_for_large_regression_values(tmp_path):
    """Prices above float16's 65,504 (and its 3 digits) are kept as float32."""
    store = optuna.artifacts.FileSystemArtifactStore(str(tmp_path))
    study = optuna.create_study()
    y = np.array([1250.75, 70000.5, 3.25], dtype=np.float32)
    rows = {"validation": "first:3", "targets": predictions.rows_digest(y)}
    trial = study.ask()
    predictions.keep(trial, store, predictions.compact(y[:, None], "regression"), 4, rows)
    study.tell(trial, 1.0)
    (done,) = study.trials
    np.testing.assert_array_equal(predictions.fetch(done, store)[:, 0], y)
    assert predictions.of_rows(done, rows)
    assert not predictions.of_rows(done, {**rows, "validation": "last:3"})
    assert not predictions.of_rows(done, {**rows, "targets": predictions.rows_digest(y[::-1])})
    assert predictions.compact(np.array([0.5]), "binary").dtype == np.float16


def test_trials_without_kept_predictions_fall_back_with_a_note(workdir, capsys, monkeypatch):
    """Trials run by an earlier hpo, or through model.fit, kept no predictions."""
    monkeypatch.setenv("HPO_ENGINE", "fit")
    path = tiny_study(workdir, epochs=2)
    code, _, err = run_cli(capsys, "optimize", str(path), "--trials", "2", "--seed", "0")
    assert code == 0, err
    code, out, err = run_cli(capsys, "analyze", str(path), "--handover", "selected")
    assert code == 0, err
    assert "2 of the top 2 trials kept no validation predictions" in out
    assert "handover trial-ensemble not available" in out  # `selected`: its old name
    handover = json.loads((workdir / "storage" / "reports" / "tiny" / "handover.json").read_text())
    assert handover == {"handover": "best", "model": "model.keras"}
