"""Issue 35, outputs on a shared storage: what the storage names is data, never a path; hpo
replaces only folders it wrote; outputs are whole or absent; bad rows are one line each."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from conftest import run_cli, tiny_study

import hpo
from hpo.data import files
from hpo.data.preparation import Preparation
from hpo.results import prediction
from hpo.results.handover import ATTR


def stored_study(folder: Path, name: str = "shared") -> tuple[optuna.Study, object, str]:
    """A study and an artifact store holding one uploaded file, as analyze leaves them."""
    from optuna.artifacts import FileSystemArtifactStore, upload_artifact

    (folder / "store").mkdir()
    store = FileSystemArtifactStore(str(folder / "store"))
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{folder}/shared.db")
    (folder / "upload.bin").write_bytes(b"import os  # not a model\n")
    uploaded = upload_artifact(
        artifact_store=store, file_path=str(folder / "upload.bin"), study_or_trial=study
    )
    return study, store, uploaded


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


# --- item 1: a handover record is data ----------------------------------------------------


@pytest.mark.parametrize("escape", ["../../../escaped.pth", "/../../…/escaped.pth"])
def test_handover_record_cannot_write_outside_the_cache(workdir, escape):
    study, store, uploaded = stored_study(workdir)
    target = workdir / "escaped.pth"  # as the site-packages/x.pth: run at Python's start
    name = escape.replace("…/escaped.pth", "../" * 40 + str(target).lstrip("/"))
    study.set_user_attr(ATTR, {"file": name, "model": uploaded, "preparation": uploaded})
    before = files_under(workdir) - files_under(workdir / "cache")
    with pytest.raises(hpo.HpoError, match="handover record") as raised:
        prediction.fetch_handover(study, store)
    assert "\n" not in str(raised.value)
    assert not target.exists()
    assert files_under(workdir) - files_under(workdir / "cache") == before


def test_handover_artifact_ids_are_not_paths(workdir):
    study, store, _ = stored_study(workdir)
    (workdir / "secret.txt").write_text("a key")
    study.set_user_attr(ATTR, {"file": "model.keras", "model": "../secret.txt"})
    with pytest.raises(hpo.HpoError, match="handover"):
        prediction.fetch_handover(study, store)
    assert not any(p.read_bytes() == b"a key" for p in files_under(workdir / "cache"))


def test_study_name_does_not_pick_the_cache_path(workdir):
    study, store, uploaded = stored_study(workdir, name="../../../outside")
    study.set_user_attr(ATTR, {"file": "model.keras", "model": uploaded, "preparation": uploaded})
    folder = prediction.fetch_handover(study, store)
    models = (workdir / "cache" / "models").resolve()
    assert folder.resolve().is_relative_to(models)
    assert (folder / "model.keras").is_file() and (folder / "preparation.json").is_file()
    assert not list(workdir.glob("outside*"))


def test_recorded_report_folder_is_not_trusted(workdir):
    study, _, _ = stored_study(workdir)
    planted = workdir / "planted"
    planted.mkdir()
    (planted / "model.keras").write_bytes(b"not hpo's")
    (planted / "handover.json").write_text('{"model": "model.keras"}')
    study.set_user_attr("analysis", {"report": str(planted / "report.md")})
    with pytest.raises(hpo.HpoError, match="no saved model"):
        prediction.model_folder(None, workdir / "absent", lambda: study)


def test_local_handover_json_names_a_known_file(workdir):
    folder = workdir / "report"
    folder.mkdir()
    (workdir / "elsewhere.keras").write_bytes(b"x")
    (folder / "handover.json").write_text('{"model": "../elsewhere.keras"}')
    with pytest.raises(hpo.HpoError, match="handover"):
        prediction.handed_over(folder)


# --- item 2: analyze replaces only hpo's report folders; study names are one segment --------


@pytest.mark.parametrize("name", ["..", ".", "a/b", "/tmp/x", "a\nb"])
def test_new_study_names_are_one_plain_segment(workdir, capsys, name):
    path = tiny_study(workdir, "boston_housing", validation="first:40")
    for command in ("optimize", "submit"):
        code, out, err = run_cli(capsys, command, str(path), "--trials", "1", "--study", name)
        assert code == 2, out + err
        assert "study name" in err and len(err.strip().splitlines()) == 1
    db = workdir / "storage" / "hpo.db"
    assert not db.exists() or optuna.get_all_study_names(f"sqlite:///{db}") == []


# --- item 10: half-written outputs ---------------------------------------------------------


def tiny_predictor(folder: Path) -> prediction.Predictor:
    from hpo.backend import import_keras

    keras = import_keras()
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    preparation = Preparation(
        kind="table",
        task="regression",
        target="y",
        columns=["a"],
        numeric=["a"],
        means=[0.0],
        stds=[1.0],
        categories={},
        labels=None,
        feature_shape=[1],
        dtype="float32",
        standardize=True,
    )
    return prediction.Predictor(model, preparation, folder / "model.keras")


def test_predict_out_is_whole_or_absent(workdir, monkeypatch):
    predictor = tiny_predictor(workdir)
    pd.DataFrame({"a": np.arange(1000.0)}).to_csv(workdir / "rows.csv", index=False)
    out = workdir / "p.csv"
    out.write_text("prediction\n1\n")  # the last run's, whole
    real = pd.DataFrame.to_csv

    def killed(frame, path, *args, **kwargs):  # SIGTERM after 7 % of the rows
        real(frame.head(70), path, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_csv", killed)
    with pytest.raises(KeyboardInterrupt):
        predictor.predict_file(workdir / "rows.csv", out=out)
    assert out.read_text() == "prediction\n1\n"
    assert sorted(p.name for p in workdir.iterdir() if p.is_file()) == ["p.csv", "rows.csv"]
    monkeypatch.setattr(pd.DataFrame, "to_csv", real)
    predictor.predict_file(workdir / "rows.csv", out=out)
    assert len(pd.read_csv(out)) == 1000
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~current_umask())


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_an_interrupted_fetch_does_not_block_the_next(workdir, monkeypatch):
    study, store, uploaded = stored_study(workdir)
    study.set_user_attr(ATTR, {"file": "model.keras", "model": uploaded, "preparation": uploaded})
    real = store.open_reader

    def cut(artifact_id):  # the connection drops after the first bytes
        class Cut:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def read(self, *args):
                raise KeyboardInterrupt

        return Cut()

    monkeypatch.setattr(store, "open_reader", cut)
    with pytest.raises(KeyboardInterrupt):
        prediction.fetch_handover(study, store)
    monkeypatch.setattr(store, "open_reader", real)
    folder = prediction.fetch_handover(study, store)
    assert (folder / "model.keras").read_bytes() == b"import os  # not a model\n"
    assert sorted(p.name for p in folder.iterdir()) == [
        "handover.json",
        "model.keras",
        "preparation.json",
    ]


# --- item 11: bad rows, one line each ------------------------------------------------------


def test_a_row_with_one_field_more_is_refused(workdir):
    (workdir / "rows.csv").write_text("a,b,y\n1,2,3,4\n5,6,7,8\n")
    files.forget()
    with pytest.raises(hpo.HpoError, match=r"rows\.csv") as raised:
        files.read_file(workdir / "rows.csv")
    assert "field" in str(raised.value) and "\n" not in str(raised.value)
    (workdir / "some.csv").write_text("a,b,y\n1,2,3\n5,6,7,8\n")
    with pytest.raises(hpo.HpoError, match=r"some\.csv"):
        files.read_file(workdir / "some.csv")


def test_values_beyond_float32_are_refused(workdir):
    predictor = tiny_predictor(workdir)
    with pytest.raises(hpo.HpoError, match=r"'a'.*float32"):
        predictor.predict(pd.DataFrame({"a": [1.0, 1e39]}))
    arrays = Preparation.from_dict(
        {
            **predictor.preparation.to_dict(),
            "kind": "arrays",
            "columns": [],
            "numeric": [],
            "input_shape": [1],
            "standardize": False,
        }
    )
    with pytest.raises(hpo.HpoError, match="float32"):
        arrays.transform(np.array([[1.0], [-1e39]]))
    from hpo.data.values import regression_target

    with pytest.raises(hpo.HpoError, match=r"'y'.*float32"):
        regression_target(pd.Series([1.0, 1e300]), "y", "rows.csv")


def test_rows_with_a_prediction_column_are_refused(workdir):
    predictor = tiny_predictor(workdir)
    pd.DataFrame({"a": [1.0, 2.0], "prediction": [0, 0]}).to_csv(workdir / "rows.csv", index=False)
    with pytest.raises(hpo.HpoError, match="prediction"):
        predictor.predict_file(workdir / "rows.csv")
    with pytest.raises(hpo.HpoError, match="prediction"):
        predictor.predict_file(pd.DataFrame({"a": [1.0], "prediction": [3]}))


def test_hpo_list_survives_what_others_do_to_a_shared_storage(workdir, capsys, monkeypatch):
    """`hpo list` on a storage others write: a study deleted between being listed and being
    read is left out, and an hpo attr of any shape is shown as unknown, not a crash."""
    url = f"sqlite:///{workdir}/shared.db"
    for name in ("kept", "gone", "odd"):
        optuna.create_study(study_name=name, storage=url)
    optuna.load_study(study_name="odd", storage=url).set_user_attr("hpo", "not a table")
    load = optuna.load_study

    def deleted_meanwhile(*, study_name, storage, **kwargs):
        if study_name == "gone":
            optuna.delete_study(study_name="gone", storage=storage)
        return load(study_name=study_name, storage=storage, **kwargs)

    monkeypatch.setattr(optuna, "load_study", deleted_meanwhile)
    code, out, err = run_cli(capsys, "list", "--storage", url)
    assert code == 0, err
    assert "kept" in out and "odd" in out and "gone" not in out
