"""Your own data end to end: a study file's [data] table through optimize → analyze → predict,
from the command line and from Python, on tiny tables the tests write themselves."""

from __future__ import annotations

import os
import signal
import threading
import time
import tomllib
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from conftest import REPO, run_cli, run_hpo_process

import hpo
from hpo.data.spec import parse_table
from hpo.search import budget
from hpo.search.storage import DEFAULT_URL

SPACE = """
[space]
layers = { int = [1, 2] }
units = { choices = [8, 16] }
learning_rate = 0.01
batch_size = 16
"""


def churn(n: int, seed: int = 0) -> pd.DataFrame:
    """A binary table with string labels, a text column and an id column to drop."""
    rng = np.random.default_rng(seed)
    plan = rng.choice(["basic", "family", "premium"], size=n)
    tenure = rng.integers(1, 60, size=n)
    calls = rng.poisson(2, size=n)
    left = (calls * 0.8 - tenure * 0.05 + (plan == "premium") + rng.normal(0, 0.5, n)) > 0
    return pd.DataFrame(
        {
            "id": np.arange(n),
            "plan": plan,
            "tenure": tenure,
            "calls": calls,
            "left": np.where(left, "yes", "no"),
        }
    )


def prices(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    area = rng.uniform(20, 150, size=n)
    city = rng.choice(["Lyon", "Paris"], size=n)
    price = area * np.where(city == "Paris", 9.0, 4.0) + rng.normal(0, 20, size=n)
    return pd.DataFrame({"area": area, "city": city, "price": price})


def study_file(folder: Path, name: str, data: str, study: str = "", space: str = SPACE) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(
        f'[study]\nname = "{name}"\nmax_epochs = 3\n{study}\n'
        f'[sampler]\nname = "random"\n[pruner]\nname = "none"\n[data]\n{data}\n{space}'
    )
    return path


@pytest.fixture
def churn_study(workdir: Path) -> Path:
    churn(160).to_csv(workdir / "churn.csv", index=False)
    churn(6, seed=1).drop(columns="left").to_csv(workdir / "new.csv", index=False)
    return study_file(
        workdir,
        "churn",
        'train = "churn.csv"\ntarget = "left"\ndrop = ["id"]\ncategorical = ["plan"]',
    )


def test_csv_classification_from_python(churn_study, workdir):
    study = hpo.optimize(churn_study, trials=2, seed=0, progress=False)
    assert budget.finished(study) == 2
    assert study.best_trial.user_attrs["best_epoch"] >= 1
    result = hpo.analyze(churn_study, seeds=2, progress=False)
    assert 0.0 <= result.best.mean("accuracy") <= 1.0
    assert result.model_path.name == "trial-ensemble.keras"  # the default: the trial ensemble
    assert result.handed.name == "trial-ensemble" and result.handed.selection is not None
    assert (result.folder / "preparation.json").is_file()

    predicted = hpo.predict(churn_study, workdir / "new.csv", probabilities=True)
    assert len(predicted) == 6
    assert set(predicted["prediction"]) <= {"no", "yes"}  # the original labels, not 0/1
    assert predicted["probability"].between(0.5, 1.0).all()
    both = predicted["probability_no"] + predicted["probability_yes"]
    np.testing.assert_allclose(both, 1.0, atol=1e-6)
    chosen = np.where(
        predicted["prediction"] == "yes", predicted["probability_yes"], predicted["probability_no"]
    )
    np.testing.assert_allclose(chosen, predicted["probability"])
    assert list(predicted.columns[:4]) == ["id", "plan", "tenure", "calls"]  # rows kept

    # In memory: a DataFrame in, the same predictions out, from the loaded model.
    model = hpo.load_model(churn_study)
    again = model.predict(pd.read_csv(workdir / "new.csv"))
    np.testing.assert_allclose(again["probability"], predicted["probability"], rtol=1e-6)

    # Predicting needs neither the training file (the preparation is kept) nor pickles.
    (workdir / "churn.csv").unlink()
    hpo.predict(churn_study, workdir / "new.csv", out=workdir / "p.npz")
    with np.load(workdir / "p.npz") as saved:  # allow_pickle=False
        assert set(saved["prediction"]) <= {"no", "yes"}

    # On another machine: a folder with the study file and new rows only, the storage and the
    # artifact store reached by their URLs. The handed-over model comes from the store.
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "churn.toml").write_text(churn_study.read_text())
    os.chdir(elsewhere)
    remote = hpo.predict(
        "churn.toml",
        workdir / "new.csv",
        storage=f"sqlite:///{workdir}/storage/hpo.db",
        artifacts=str(workdir / "storage" / "artifacts"),
        probabilities=True,
    )
    np.testing.assert_allclose(remote["probability"], predicted["probability"], rtol=1e-6)
    assert not (elsewhere / "storage" / "reports").exists()
    with pytest.raises(hpo.HpoError, match="no such folder"):
        hpo.predict(
            "churn.toml", workdir / "new.csv", storage=f"sqlite:///{workdir}/storage/hpo.db"
        )


def test_cli_and_python_give_the_same_study(churn_study, workdir, capsys):
    code, out, err = run_cli(
        capsys,
        "optimize",
        str(churn_study),
        "--trials",
        "2",
        "--seed",
        "0",
        "--storage",
        "sqlite:///cli.db",
    )
    assert code == 0, err
    assert "task inferred: binary" in out
    from_cli = optuna.load_study(study_name="churn", storage="sqlite:///cli.db")
    from_api = hpo.optimize(
        churn_study, trials=2, seed=0, storage="sqlite:///api.db", progress=False
    )
    assert [t.params for t in from_cli.trials] == [t.params for t in from_api.trials]
    np.testing.assert_allclose(
        [t.value for t in from_cli.trials], [t.value for t in from_api.trials], rtol=1e-5
    )

    code, out, err = run_cli(capsys, "analyze", str(churn_study), "--storage", "sqlite:///cli.db")
    assert code == 0, err
    assert "hpo predict" in out
    code, out, err = run_cli(
        capsys,
        "predict",
        str(churn_study),
        str(workdir / "new.csv"),
        "--out",
        "p.csv",
        "--storage",
        "sqlite:///cli.db",
    )
    assert code == 0, err
    written = pd.read_csv(workdir / "p.csv")
    assert len(written) == 6 and {"prediction", "probability"} <= set(written.columns)


def test_regression_with_a_test_file_and_kfold(workdir):
    prices(120).to_csv(workdir / "train.csv", index=False)
    test = prices(40, seed=1)
    test.loc[0, "city"] = "Nantes"  # never seen in training: an all-zero one-hot row
    test.to_csv(workdir / "test.csv", index=False)
    path = study_file(
        workdir,
        "prices",
        'train = "train.csv"\ntest = "test.csv"\ntarget = "price"\ncategorical = ["city"]',
        study='validation = "kfold:3"\nmetric = "val_mae"',
        space=SPACE.replace("[space]", '[space]\nloss = { choices = ["mse", "mae"] }'),
    )
    study = hpo.optimize(path, trials=2, seed=0, progress=False)
    assert study.user_attrs["hpo"]["task"] == "regression"
    result = hpo.analyze(path, progress=False)
    assert result.best.mean("mae") > 0
    report = result.report.read_text()
    assert "city: 1 test rows had a value not seen in training" in report
    predicted = hpo.predict(path, test.drop(columns="price"))
    assert predicted.attrs["unseen"] == {"city": 1}
    assert np.isfinite(predicted["prediction"]).all()


@pytest.mark.parametrize("kind", ["parquet", "npz"])
def test_parquet_and_npz_files(workdir, kind):
    if kind == "parquet":
        pytest.importorskip("pyarrow")
        table = churn(150)
        table["left"] = np.where(table["calls"] > 2, "many", table["left"])  # 3 classes
        table["plan"] = table["plan"].astype("category")  # categorical by its dtype
        table.to_parquet(workdir / "train.parquet")
        data = 'train = "train.parquet"\ntarget = "left"\ndrop = ["id"]'
        new = table.drop(columns="left").head(5)
        new.to_parquet(workdir / "new.parquet")
        task, rows = "multiclass", workdir / "new.parquet"
    else:
        rng = np.random.default_rng(0)
        x = rng.normal(size=(150, 3, 2)).astype(np.float32)  # n-D samples are flattened
        y = (x.reshape(150, -1) @ np.arange(6) + 3).astype(np.float32)
        np.savez(
            workdir / "arrays.npz", x_train=x[:120], y_train=y[:120], x_test=x[120:], y_test=y[120:]
        )
        np.savez(workdir / "new.npz", x=x[:5])
        data = 'train = "arrays.npz"'
        task, rows = "regression", workdir / "new.npz"
    path = study_file(workdir, kind, data)
    study = hpo.optimize(path, trials=1, seed=0, progress=False)
    assert study.user_attrs["hpo"]["task"] == task
    hpo.analyze(path, progress=False)
    predicted = hpo.predict(path, rows, out=workdir / f"out.{kind}")
    assert len(predicted) == 5
    assert (workdir / f"out.{kind}").is_file()


def test_changed_data_is_refused_by_a_resuming_worker(churn_study, workdir, capsys):
    code, _, err = run_cli(capsys, "optimize", str(churn_study), "--trials", "1")
    assert code == 0, err
    changed = churn(160, seed=5)
    changed.to_csv(workdir / "churn.csv", index=False)
    code, _, err = run_cli(capsys, "optimize", str(churn_study), "--trials", "2")
    assert code == 2
    assert "file was changed" in err and len(err.strip().splitlines()) == 1


def write_churn(folder: Path, table: pd.DataFrame, test: pd.DataFrame | None = None) -> None:
    table.to_csv(folder / "churn.csv", index=False)
    if test is not None:
        test.to_csv(folder / "test.csv", index=False)


@pytest.mark.parametrize(
    ("setup", "extra", "message"),
    [
        (lambda d: None, "", "no such file"),
        (lambda d: (d / "churn.csv").write_text("a,b\n1,2\n3,4\n"), "", "target"),
        (
            lambda d: write_churn(d, churn(40).assign(tenure=[np.nan] * 3 + [1.0] * 37)),
            "",
            "column 'tenure' has 3 missing (NaN) values",
        ),
        (lambda d: write_churn(d, churn(40).assign(left="yes")), "", "one class"),
        (
            lambda d: write_churn(d, churn(40), churn(10).drop(columns="calls")),
            'test = "test.csv"',
            "calls",
        ),
        (lambda d: write_churn(d, churn(40).groupby("left").head(2)), "", "needs at least"),
    ],
    ids=["missing file", "missing target", "nan", "one class", "test columns", "too few rows"],
)
def test_bad_data_is_one_line_and_no_study(workdir, capsys, setup, extra, message):
    setup(workdir)
    path = study_file(
        workdir,
        "bad",
        'train = "churn.csv"\ntarget = "left"\ndrop = ["id"]\ncategorical = ["plan"]\n' + extra,
        study='validation = "kfold:4"',
    )
    code, out, err = run_cli(capsys, "optimize", str(path), "--trials", "1")
    assert code == 2, out + err
    assert message in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in out + err
    db = Path("storage/hpo.db")  # no half-written study: the data is checked first
    assert not db.exists() or optuna.get_all_study_names(f"sqlite:///{db}") == []


def test_predict_with_wrong_columns_is_one_line(churn_study, workdir, capsys):
    hpo.optimize(churn_study, trials=1, seed=0, progress=False)
    hpo.analyze(churn_study, progress=False)
    pd.DataFrame({"plan": ["basic"], "age": [3]}).to_csv(workdir / "odd.csv", index=False)
    code, _, err = run_cli(capsys, "predict", str(churn_study), str(workdir / "odd.csv"))
    assert code == 2
    assert "missing columns" in err and "tenure" in err
    assert len(err.strip().splitlines()) == 1


def test_interrupt_from_python_leaves_a_resumable_study(churn_study):
    """A notebook's interrupt is SIGINT in the kernel: the run stops after the epoch, returns
    the study, and the next call finishes it."""

    def interrupt_after_first_trial() -> None:
        storage = "sqlite:///storage/hpo.db"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if budget.finished(optuna.load_study(study_name="churn", storage=storage)):
                    break
            except Exception:
                pass
            time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)

    # As in a terminal or a Jupyter kernel; a background job (CI's shell) inherits it ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    watcher = threading.Thread(target=interrupt_after_first_trial, daemon=True)
    watcher.start()
    try:
        study = hpo.optimize(churn_study, trials=60, seed=0, progress=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    watcher.join()
    done = budget.finished(study)
    assert 1 <= done < 60
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    again = hpo.optimize(churn_study, trials=done + 1, seed=0, progress=False)
    assert budget.finished(again) == done + 1


def test_a_large_preparation_is_stored_in_chunks(workdir):
    """MySQL keeps a user attr in 64 KB: a wide table's preparation is split and joined."""
    from hpo.data import stored_preparation

    study = optuna.create_study(storage="sqlite:///chunks.db", study_name="wide")
    preparation = {"means": [0.123456789] * 12_000, "columns": [f"c{i}" for i in range(12_000)]}
    stored_preparation.save_or_check(study, preparation, "wide.csv")
    assert study.user_attrs[stored_preparation.KEY]["chunks"] > 1
    longest = max(len(v) for v in study.user_attrs.values() if isinstance(v, str))
    assert longest <= stored_preparation.CHUNK
    again = optuna.load_study(study_name="wide", storage="sqlite:///chunks.db")
    assert stored_preparation.load(again) == preparation
    stored_preparation.save_or_check(again, preparation, "wide.csv")  # the same data: accepted
    with pytest.raises(hpo.HpoError, match="file was changed"):
        stored_preparation.save_or_check(again, {**preparation, "means": [1.0]}, "wide.csv")


def test_the_docs_example_study_file_is_valid():
    text = (REPO / "docs" / "own-data.md").read_text()
    doc = tomllib.loads(text.split("```toml\n")[1].split("```")[0])
    spec = parse_table(doc["data"], "own-data.md", REPO)
    assert spec.target == "churned" and spec.test is not None


def test_uint8_pixels_stay_compact_and_are_scaled_in_the_model(workdir):
    """As the built-in MNIST: 0-255 bytes in memory, x / 255 inside the model."""
    from hpo.data.load import load_source
    from hpo.study import studyfile

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(90, 4, 4), dtype=np.uint8)
    y = (x.reshape(90, -1).mean(axis=1) > 127).astype(np.int64)
    np.savez(workdir / "pixels.npz", x_train=x[:70], y_train=y[:70], x_test=x[70:], y_test=y[70:])
    np.savez(workdir / "new.npz", x=x[:3])
    path = study_file(
        workdir, "pixels", 'train = "pixels.npz"\nstandardize = false\nscale = 0.00392156862745098'
    )
    prepared = load_source(studyfile.load(str(path)).source)
    assert prepared.x_train.dtype == np.uint8 and prepared.x_train.shape == (70, 16)
    assert prepared.input_scale == pytest.approx(1 / 255)
    hpo.optimize(path, trials=1, seed=0, progress=False)
    hpo.analyze(path, progress=False)
    predicted = hpo.predict(path, workdir / "new.npz")
    assert len(predicted) == 3 and predicted["probability"].between(0.5, 1).all()


def test_workers_from_python_share_the_study(churn_study, workdir):
    """workers=2 starts one `hpo optimize` child with the command line built from the options."""
    study = hpo.optimize(churn_study, trials=4, workers=2, seed=0, progress=False)
    assert budget.finished(study) == 4  # exact, however the two shared it
    log = (workdir / "storage" / "logs" / "churn-worker1.log").read_text()
    assert "study churn · churn.csv" in log and "Traceback" not in log, log


def test_a_recycled_worker_says_its_data_notes_once(churn_study, workdir):
    """A worker that restarts itself to free memory goes on with the same study and data: it
    does not print the data notes (task, test split, columns) a second time."""
    command = ["optimize", str(churn_study), "--trials", "2", "--recycle-after", "1"]
    proc = run_hpo_process(workdir, *command)
    assert proc.returncode == 0, proc.stderr
    assert "restarting this worker" in proc.stdout
    notes = [line for line in proc.stdout.splitlines() if line.startswith("data: ")]
    assert notes and len(notes) == len(set(notes)), proc.stdout
    assert budget.finished(optuna.load_study(study_name="churn", storage=DEFAULT_URL)) == 2


FIXED = """
[space]
layers = 1
units = 8
activation = "relu"
optimizer = "adam"
learning_rate = 0.01
batch_size = 16
dropout = 0.0
"""


def test_a_space_that_searches_nothing_is_said_once(workdir, capsys):
    churn(60).to_csv(workdir / "churn.csv", index=False)
    data = 'train = "churn.csv"\ntarget = "left"\ndrop = ["id"]\ncategorical = ["plan"]'
    fixed = study_file(workdir, "fixed", data, space=FIXED)
    note = "note: this study's space searches nothing: every trial trains the same configuration"
    code, out, err = run_cli(capsys, "optimize", str(fixed), "--trials", "2", "--study", "s")
    assert code == 0, err
    assert out.count(note) == 1 and "add a [space] table" in out
    # One trial asked for (the two are done: nothing trains): nothing to say.
    code, out, err = run_cli(capsys, "optimize", str(fixed), "--trials", "1", "--study", "s")
    assert code == 0, err
    assert note not in out
    # The same table without [space]: the default space searches, so no note.
    default = study_file(workdir, "default", data, space="")
    code, out, err = run_cli(capsys, "optimize", str(default), "--trials", "2", "--study", "s")
    assert code == 0, err
    assert note not in out and "study s" in out
