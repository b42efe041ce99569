"""How a study's own model code reaches its workers (docs/scale-out.md, "Your model's code on
workers"): never through the storage. A study records its build function and its module's
SHA-256; `hpo optimize` resumed with another copy, and a pool worker whose copy differs or is
missing, refuse it with one line, and `hpo list` shows the worker's; `--code-path` finds the
study's copy; a function passed from Python runs in that process only.

Real `hpo worker` processes on SQLite, and 1-epoch trials of the tiny boston_housing data.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import textwrap
from pathlib import Path

import optuna
import pytest
from conftest import run_cli, tiny_study
from test_queue import counted, read_until, stop_worker, wait_for, worker

import hpo
from hpo.errors import HpoError
from hpo.search import launch, queue
from hpo.study.model_code import digest

MODULE = '''
import os

import keras


def build(params, inputs):
    """A user's model for the tiny regression data; says which copy built it."""
    if os.environ.get("MYMOD_MARK"):
        with open(os.environ["MYMOD_MARK"], "a") as mark:
            mark.write(__file__ + "\\n")
    x = inputs.input()
    hidden = keras.layers.Dense(params["units"], activation="relu")(inputs.as_float(x))
    return keras.Model(x, keras.layers.Dense(1)(hidden))
'''


def model_study(folder: Path, module: str = MODULE) -> Path:
    """A tiny boston_housing study with `[model] build = "mymod:build"`, its module beside."""
    folder.mkdir(parents=True, exist_ok=True)
    path = tiny_study(folder, "boston_housing", epochs=1, validation="first:40", name="own")
    path.write_text(path.read_text() + '\n[model]\nbuild = "mymod:build"\n')
    (folder / "mymod.py").write_text(textwrap.dedent(module))
    return path


def changed(folder: Path) -> Path:
    """A copy of the module that differs from the study's by one comment."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mymod.py").write_text(MODULE + "# edited since\n")
    return folder


def sqlite_url(workdir: Path) -> str:
    return f"sqlite:///{workdir}/queue.db"


def queue_record(workdir: Path, name: str) -> dict:
    """The study's queue record, read straight from the database."""
    with sqlite3.connect(workdir / "queue.db") as db:
        (value,) = db.execute(
            "SELECT value_json FROM study_user_attributes a JOIN studies s "
            "ON a.study_id = s.study_id WHERE s.study_name = ? AND a.key = ?",
            (name, queue.ATTR),
        ).fetchone()
    return json.loads(value)


def test_a_worker_serves_a_study_only_with_its_copy_of_the_module(workdir, capsys):
    """A worker whose copy differs refuses the study with one line, `hpo list` shows it, and
    it serves another study; a worker with `--code-path` at the study's copy serves it. The
    workers run in a folder of their own: the submitter's folder is not theirs to read."""
    url = sqlite_url(workdir)
    path = model_study(workdir / "mine")
    sha = digest(workdir / "mine" / "mymod.py")
    code, out, err = run_cli(
        capsys, "submit", str(path), "--trials", "2", "--study", "own", "--storage", url
    )
    assert code == 0, err
    assert queue_record(workdir, "own")["model_code"] == {
        "build": "mymod:build",
        "sha256": sha,
        "file": "mymod.py",  # the name only: no path of this machine
    }
    plain = tiny_study(workdir, "boston_housing", epochs=1, validation="first:40")
    assert run_cli(capsys, "submit", str(plain), "--trials", "1", "--storage", url)[0] == 0

    elsewhere = workdir / "worker"
    elsewhere.mkdir()
    other = changed(workdir / "other")
    refusing = worker(elsewhere, url, "--code-path", str(other), "--recycle-after", "0")
    try:
        said = read_until(refusing, "this worker leaves the study")
        wait_for(lambda: counted("tiny", url) == 1, what="the other study, served")
    finally:
        said += stop_worker(refusing)
    lines = [line for line in said.splitlines() if "leaves the study" in line]
    assert len(lines) == 1 and lines[0].startswith("own: this worker leaves the study: "), said
    assert "model.build: mymod.py here differs from the study's (sha256 " in lines[0]
    assert f"vs {sha[:8]}…): install the study's version or pass --code-path" in lines[0]
    assert counted("own", url) == 0
    code, out, _ = run_cli(capsys, "list", "--storage", url)
    assert code == 0 and "left by " in out and "mymod.py here differs from the study's" in out

    right = workdir / "right"
    right.mkdir()
    shutil.copy(workdir / "mine" / "mymod.py", right / "mymod.py")
    mark = workdir / "built_by.txt"
    serving = worker(
        elsewhere,
        url,
        "--code-path",
        str(right),
        "--recycle-after",
        "0",
        env={"MYMOD_MARK": str(mark)},
    )
    try:
        wait_for(lambda: counted("own", url) == 2, what="the study served with its copy")
    finally:
        served = stop_worker(serving)
    assert "leaves the study" not in served, served
    built_by = set(mark.read_text().split())
    assert built_by == {str(right / "mymod.py")}, built_by  # the --code-path copy, imported


def test_optimize_resumed_with_another_copy_is_one_line(workdir, capsys):
    """The study records its module's SHA-256; a resume whose module differs stops with one
    line and exit 2, and `--code-path` at the study's copy resumes it."""
    url = sqlite_url(workdir)
    path = model_study(workdir / "mine")
    kept = workdir / "kept"
    kept.mkdir()
    shutil.copy(workdir / "mine" / "mymod.py", kept / "mymod.py")
    args = ["optimize", str(path), "--storage", url, "--study", "own"]
    code, _, err = run_cli(capsys, *args, "--trials", "1")
    assert code == 0, err
    study = optuna.load_study(study_name="own", storage=url)
    assert study.user_attrs["model_code"]["sha256"] == digest(kept / "mymod.py")
    changed(workdir / "mine")  # edited in place
    code, _, err = run_cli(capsys, *args, "--trials", "2")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: model.build: mymod.py here differs from the study's (sha256 ")
    assert "install the study's version or pass --code-path" in err
    code, _, err = run_cli(capsys, *args, "--trials", "2", "--code-path", str(kept))
    assert code == 0, err
    assert len(optuna.load_study(study_name="own", storage=url).trials) == 2


def test_submit_of_a_module_not_found_is_one_line(workdir, capsys):
    path = model_study(workdir / "mine")
    # A module name of its own: an earlier test of this process put its mymod on sys.path.
    path.write_text(path.read_text().replace("mymod:build", "gone_mod:build"))
    url = sqlite_url(workdir)
    code, _, err = run_cli(capsys, "submit", str(path), "--storage", url, "--study", "own")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "model.build: no module 'gone_mod'" in err
    assert "own" not in optuna.get_all_study_names(url)  # no study made
    code, _, err = run_cli(capsys, "worker", "--storage", url, "--code-path", "nowhere")
    assert code == 2 and err.strip() == "error: --code-path nowhere: no such folder"


def test_a_function_from_python_trains_in_this_process(workdir):
    """hpo.optimize(build=fn): a function defined here (as in a notebook) builds every trial;
    it wins over the study file's [model] build and is recorded by its name and its module's
    SHA-256. With two workers it is refused with one line: no code travels."""
    path = model_study(workdir / "mine")
    url = sqlite_url(workdir)
    calls: list[dict] = []

    def build(params, inputs):
        import keras

        calls.append(dict(params))
        x = inputs.input()
        return keras.Model(x, keras.layers.Dense(1)(inputs.as_float(x)))

    study = hpo.optimize(path, trials=2, storage=url, study="py", build=build, progress=False)
    assert len([t for t in study.trials if t.state.is_finished()]) == 2
    assert len(calls) >= 2 and all("units" in params for params in calls)
    assert study.user_attrs["model_code"] == {
        "build": f"{__name__}:{build.__qualname__}",
        "sha256": digest(Path(__file__)),
        "file": Path(__file__).name,
    }
    with pytest.raises(HpoError) as refused:
        hpo.optimize(path, trials=3, storage=url, study="py2", build=build, workers=2)
    assert str(refused.value) == launch.BUILD_NOT_SHARED
    assert "py2" not in optuna.get_all_study_names(url)
