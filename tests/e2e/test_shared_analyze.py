"""`hpo analyze` on a shared storage, after a real search: it never writes over a user's
folder, an existing odd study name still analyzes, and an interrupted analysis publishes
nothing (the rest of what a shared storage may not make hpo do:
tests/unit/test_shared_outputs.py)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import optuna
import pytest
from conftest import run_cli, tiny_study

import hpo
from hpo.results.handover import ATTR
from hpo.search.storage import DEFAULT_URL


@pytest.fixture
def searched(workdir, capsys) -> Path:
    path = tiny_study(workdir, "boston_housing", epochs=2, validation="first:40")
    code, _, err = run_cli(capsys, "optimize", str(path), "--trials", "1", "--seed", "1")
    assert code == 0, err
    return path


def test_analyze_out_keeps_a_users_folder(searched, workdir, capsys):
    mine = workdir / "thesis"
    mine.mkdir()
    (mine / "thesis.tex").write_text("two years of work")
    code, out, err = run_cli(capsys, "analyze", str(searched), "--out", str(mine))
    assert code == 2, out + err
    assert "thesis" in err and len(err.strip().splitlines()) == 1
    assert (mine / "thesis.tex").read_text() == "two years of work"
    assert [p.name for p in workdir.iterdir() if p.name.startswith(("thesis", ".thesis"))] == [
        "thesis"
    ]

    # hpo's own report folder is replaced again, and a sibling NAME.old is not hpo's to delete.
    report = workdir / "report"
    code, _, err = run_cli(capsys, "analyze", str(searched), "--out", str(report))
    assert code == 0, err
    (workdir / "report.old").mkdir()
    (workdir / "report.old" / "keep.txt").write_text("mine")
    code, _, err = run_cli(capsys, "analyze", str(searched), "--out", str(report))
    assert code == 0, err
    assert (report / "model.keras").is_file()
    assert (workdir / "report.old" / "keep.txt").read_text() == "mine"

    # A file of the user's dropped into hpo's folder makes it the user's: refused, kept.
    (report / "notes.txt").write_text("mine too")
    code, _, err = run_cli(capsys, "analyze", str(searched), "--out", str(report))
    assert code == 2 and "notes.txt" in err
    assert (report / "notes.txt").read_text() == "mine too"


def test_an_existing_odd_study_name_still_analyzes(searched, workdir, capsys):
    optuna.copy_study(
        from_study_name="tiny",
        from_storage=DEFAULT_URL,
        to_storage=DEFAULT_URL,
        to_study_name="..",
    )
    code, out, err = run_cli(capsys, "analyze", str(searched), "--study", "..")
    assert code == 0, out + err
    assert (workdir / "storage" / "hpo.db").is_file()
    reports = [p for p in (workdir / "storage" / "reports").iterdir() if p.is_dir()]
    assert len(reports) == 1 and (reports[0] / "model.keras").is_file()
    assert reports[0].name not in ("..", ".")
    kept = {p.name for p in (workdir / "storage").iterdir()} - {"hpo.db-wal", "hpo.db-shm"}
    assert kept == {"artifacts", "hpo.db", "reports"}


def test_interrupted_analyze_publishes_nothing(searched, workdir, capsys, monkeypatch):
    code, _, err = run_cli(capsys, "analyze", str(searched), "--handover", "best")
    assert code == 0, err
    study = optuna.load_study(study_name="tiny", storage=DEFAULT_URL)
    before = {k: study.user_attrs[k] for k in ("analysis", ATTR)}
    optuna_artifacts = importlib.import_module("optuna.artifacts")  # optuna.artifacts is lazy
    real = optuna_artifacts.upload_artifact

    def killed(*, file_path, **kwargs):
        if file_path.endswith(".keras"):
            raise KeyboardInterrupt
        return real(file_path=file_path, **kwargs)

    monkeypatch.setattr(optuna_artifacts, "upload_artifact", killed)
    with pytest.raises(KeyboardInterrupt):
        hpo.analyze(searched, seeds=2, handover="seeds", progress=False)
    study = optuna.load_study(study_name="tiny", storage=DEFAULT_URL)
    assert {k: study.user_attrs[k] for k in ("analysis", ATTR)} == before
    # and the local report still is the one the storage hands over
    handed = json.loads((workdir / "storage" / "reports" / "tiny" / "handover.json").read_text())
    assert handed["model"] == before[ATTR]["file"] == "model.keras"
