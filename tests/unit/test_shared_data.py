"""Issue 35, items 4, 9 and 13: data in a shared setting never runs code, passwords never
reach a printed line, and a study's stored preparation is written once and checked on load."""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path

import numpy as np
import optuna
import pytest
from conftest import REPO, write_tiny_datasets
from packaging.requirements import Requirement
from packaging.version import Version

import hpo
from hpo.data import keras_files, stored_preparation
from hpo.search import launch, storage

# --- item 4: the Keras floor, and keras' dataset files read without running code --------------


def test_the_keras_floor_excludes_the_versions_with_known_bypasses():
    """safe_mode bypasses fixed by 3.11.3 and 3.14; keras' own imdb/reuters loaders unpickle
    freely (allow_pickle=True) up to 3.15.0."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    keras = [Requirement(r) for r in project["dependencies"] if r.startswith("keras")]
    assert len(keras) == 1
    for unsafe in ("3.10.0", "3.11.2", "3.13.2", "3.14.1", "3.15.0"):
        assert not keras[0].specifier.contains(unsafe), unsafe
    import keras as installed

    assert keras[0].specifier.contains(Version(installed.__version__).base_version)


class _Gadget:
    """An object whose unpickling calls os.system: what a crafted imdb.npz would hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _without_keras_npz_utils(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a keras without keras.src.datasets.npz_utils (all releases before 3.15.1)."""
    from hpo.backend import import_keras

    import_keras()
    import keras.src.datasets as datasets

    monkeypatch.setitem(sys.modules, "keras.src.datasets.npz_utils", None)
    monkeypatch.delattr(datasets, "npz_utils", raising=False)


@pytest.mark.parametrize("name", ["imdb", "reuters"])
def test_a_pickled_gadget_in_a_dataset_file_runs_nothing(tmp_path, monkeypatch, name):
    _without_keras_npz_utils(monkeypatch)
    marker = tmp_path / "ran"
    rows = np.empty(2, dtype=object)
    rows[0], rows[1] = [1, 2, 3], _Gadget(marker)
    labels = np.array([0, 1])
    path = tmp_path / f"{name}.npz"
    if name == "imdb":
        np.savez(path, x_train=rows, y_train=labels, x_test=rows, y_test=labels)
    else:
        np.savez(path, x=rows, y=labels)
    with pytest.raises(hpo.HpoError) as refused:
        keras_files.read_local(name, path, 100)
    assert not marker.exists(), "the file's pickle ran a command"
    message = str(refused.value)
    assert "\n" not in message and "posix.system" in message, message


def test_keras_format_files_still_load_as_keras_wrote_them(tmp_path, monkeypatch):
    """The tiny imdb and reuters in keras' layout (object arrays of lists) read exactly as an
    unrestricted np.load reads them, on any keras."""
    _without_keras_npz_utils(monkeypatch)
    folder = write_tiny_datasets(tmp_path / "datasets")
    for name in ("imdb", "reuters"):
        with np.load(folder / f"{name}.npz", allow_pickle=True) as trusted:  # our own file
            expected = {key: trusted[key] for key in trusted.files}
        got = keras_files._load_npz(folder / f"{name}.npz")
        assert sorted(got) == sorted(expected)
        for key, array in got.items():
            assert array.dtype == expected[key].dtype and len(array) == len(expected[key])
            assert all(np.array_equal(a, b) for a, b in zip(array, expected[key], strict=True))
        raw = keras_files.read_local(name, folder / f"{name}.npz", 100)
        rows = sum(len(a) for a in expected.values() if a.dtype == object)
        assert len(raw.x_train) + len(raw.x_test) == rows


def test_an_object_array_of_anything_but_int_lists_is_refused(tmp_path):
    rows = np.empty(2, dtype=object)
    rows[0], rows[1] = [1, 2], {"not": "a row"}
    path = tmp_path / "reuters.npz"
    np.savez(path, x=rows, y=np.array([0, 1]))
    with pytest.raises(hpo.HpoError, match="reuters"):
        keras_files.read_local("reuters", path, 100)


# --- item 9: passwords never printed ----------------------------------------------------------

SECRET = "s3cret-pw"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg://u:{SECRET}@db.example/hpo",
        f"postgresql+psycopg://u@db.example/hpo?password={SECRET}",
        f"postgresql+psycopg://u@db.example/hpo?sslmode=require&sslpassword={SECRET}",
        f"mysql+pymysql://root@db.example/hpo?passwd={SECRET}&charset=utf8mb4",
        f"mysql+pymysql://root@db.example/hpo?PASSWORD={SECRET}",
    ],
)
def test_no_password_reaches_a_printed_url(url):
    shown = storage.redact(url)
    assert SECRET not in shown and "***" in shown, shown
    assert "db.example/hpo" in shown  # still says which database
    line = launch.command_line(["worker", *launch.location_options(url, None)])
    assert SECRET not in line, line
    typed = launch.command_line(["optimize", "imdb", f"--storage={url}"])  # as a user typed it
    assert SECRET not in typed and "db.example/hpo" in typed, typed
    if "charset" in url:
        assert "charset=utf8mb4" in shown  # only the secrets are hidden


@pytest.mark.parametrize(
    "url",
    [
        SECRET,  # a password pasted into --storage
        f"postgresql+psycopg://u:{SECRET}@db.example:port/hpo",  # not a port
        f"postgresql+psycopg://u:{SECRET}@@db.example/hpo",
        f"postgresql+psycopg://u:{SECRET}@with@db.example/hpo",  # an @ in the password
        f"postgresql+psycopg://u:p@{SECRET}/x@db.example/hpo",  # an @, then a /, in it
    ],
)
def test_a_url_that_cannot_be_parsed_is_not_echoed(url):
    assert SECRET not in storage.redact(url)
    with pytest.raises(hpo.HpoError) as refused:
        storage.open_storage(url)
    assert SECRET not in str(refused.value) and "\n" not in str(refused.value)


def test_child_workers_get_the_storage_url_in_their_environment_not_their_command_line(
    tmp_path, monkeypatch
):
    """`ps` shows every user a process' command line: the children of --workers/--slots get
    the URL (its password) as HPO_STORAGE instead, and a study name read from the storage
    does not pick where their logs go."""
    from hpo.search import local_workers

    started = []
    monkeypatch.setattr(
        local_workers.subprocess, "Popen", lambda args, **kw: started.append((args, kw["env"]))
    )
    url = f"postgresql+psycopg://u:{SECRET}@db/hpo"
    argv = ["worker", "--storage", url, "-q"]
    local_workers.spawn(2, tmp_path / "logs", "../../escaped", argv, url)
    assert len(started) == 2
    for args, env in started:
        assert SECRET not in " ".join(args) and args[-2:] == ["worker", "-q"]
        assert env["HPO_STORAGE"] == url
    assert [p.parent for p in tmp_path.rglob("*.log")] == [tmp_path / "logs"] * 2
    # A parent told --storage (the default, left off its children's command line) while
    # HPO_STORAGE names another database: its children work on the parent's storage.
    monkeypatch.setenv("HPO_STORAGE", "postgresql+psycopg://u@elsewhere/other")
    local_workers.spawn(1, tmp_path / "logs", "s", ["optimize"], storage.DEFAULT_URL)
    assert started[-1][1]["HPO_STORAGE"] == storage.DEFAULT_URL


# --- item 13: the stored preparation, written once and checked on load ------------------------


def _preparation(value: float, columns: int = 10) -> dict:
    return {"means": [value] * columns, "columns": [f"c{i}" for i in range(columns)]}


def test_a_changed_stored_preparation_is_refused_on_load(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'p.db'}", study_name="p")
    stored_preparation.save_or_check(study, _preparation(1.0), "a.csv")
    chunks = [k for k in study.user_attrs if k.startswith(f"{stored_preparation.KEY}.")]
    assert len(chunks) == 1
    study.set_user_attr(chunks[0], study.user_attrs[chunks[0]].replace("1.0", "9.0"))
    with pytest.raises(hpo.HpoError, match="SHA-256") as refused:
        stored_preparation.load(study)
    assert "\n" not in str(refused.value)


def test_a_preparation_stored_before_this_change_still_loads(tmp_path):
    """Studies stored by earlier hpo: chunks `preparation.N`, a 16-digit digest."""
    import hashlib
    import json

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'old.db'}", study_name="old")
    text = json.dumps(_preparation(1.0), sort_keys=True)
    study.set_user_attr(f"{stored_preparation.KEY}.0", text)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    study.set_user_attr(stored_preparation.KEY, {"chunks": 1, "sha256": digest})
    assert stored_preparation.load(study) == _preparation(1.0)
    stored_preparation.save_or_check(study, _preparation(1.0), "a.csv")
    with pytest.raises(hpo.HpoError, match="file was changed"):
        stored_preparation.save_or_check(study, _preparation(2.0), "a.csv")
