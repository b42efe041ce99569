"""hpo.search.search_options: a search's options, built once, write the command line that
child workers run and resume lines show."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hpo.errors import HpoError
from hpo.search.search_options import SearchOptions
from hpo.search.storage import DEFAULT_URL


def test_the_command_line_repeats_only_what_differs_from_the_defaults():
    options = SearchOptions("imdb", trials=20, seed=3, heartbeat=5, batch_trials="4")
    assert options.argv("s") == [
        "optimize", "imdb", "--trials", "20", "--study", "s",
        "--seed", "3", "--heartbeat", "5", "--batch-trials", "4",
    ]  # fmt: skip
    assert SearchOptions("imdb", recycle_after="auto").argv("s")[-1] == "s"  # the default
    assert SearchOptions("imdb", recycle_after="10").argv("s")[-2:] == ["--recycle-after", "10"]


def test_options_from_python_read_as_the_command_line_gives_them(tmp_path):
    options = SearchOptions(tmp_path / "s.toml", workers=4, batch_trials="auto")
    assert (options.target, options.workers, options.batch_trials) == (
        str(tmp_path / "s.toml"),
        "4",
        "auto",
    )
    assert SearchOptions("imdb", batch_trials="2").batch_trials == 2
    located = SearchOptions("imdb", storage_url="sqlite:///x.db", data_dir="d", artifacts="a")
    assert located.location() == [
        "--storage",
        "sqlite:///x.db",
        "--data-dir",
        "d",
        "--artifacts",
        "a",
    ]
    assert SearchOptions("imdb", storage_url=DEFAULT_URL).location() == []


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("heartbeat", 0, "--heartbeat must be at least 1"),
        ("reconnect", -1, "--reconnect at least 0"),
        ("batch_trials", "0", "--batch-trials must be auto or a number of at least 1"),
        ("recycle_after", "often", "--recycle-after often: expected auto or a number"),
    ],
)
def test_a_bad_option_is_one_line_before_anything_starts(field, value, message):
    with pytest.raises(HpoError, match=message):
        SearchOptions("imdb", **{field: value})


def test_the_options_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SearchOptions("imdb").trials = 3  # type: ignore[misc]


def test_code_paths_reach_the_command_line_of_child_workers(tmp_path):
    """`--code-path` is repeated for `--workers N` children and resume lines; one folder
    given as text is one folder, and a missing one is one line."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    options = SearchOptions("imdb", code_paths=(a, str(b)))
    assert options.code_paths == (str(a), str(b))
    assert options.argv("s")[-4:] == ["--code-path", str(a), "--code-path", str(b)]
    assert SearchOptions("imdb", code_paths=str(a)).code_paths == (str(a),)
    with pytest.raises(HpoError, match=r"^--code-path .*nowhere: no such folder$"):
        SearchOptions("imdb", code_paths=[tmp_path / "nowhere"])
    with pytest.raises(HpoError, match=r"^build=: must be a function, got str$"):
        SearchOptions("imdb", build="mymod:build")  # type: ignore[arg-type]


def _spec(tmp_path, build="unitmod:build"):
    from hpo.study import studyfile

    path = tmp_path / "s.toml"
    path.write_text(
        '[study]\ndataset = "boston_housing"\nmetric = "val_mae"\n'
        f'[space]\nunits = 8\n[model]\nbuild = "{build}"\n'
    )
    return studyfile.load(str(path))


def test_a_study_records_its_module_and_a_worker_refuses_another_copy(tmp_path):
    """model_record: the build, the SHA-256 and the file's name only (never its folder). A
    worker reading it looks on its --code-path and installed modules, not beside the
    submitter's study file, and refuses a missing module or another copy with one line.
    (A module name no other test imports: an import puts its folder on sys.path.)"""
    from hpo.search import study_loop
    from hpo.study.model_code import digest

    (tmp_path / "unitmod.py").write_text("def build(params, inputs):\n    return None\n")
    spec = _spec(tmp_path)
    record = study_loop.model_record(spec)
    assert record == {
        "build": "unitmod:build",
        "sha256": digest(tmp_path / "unitmod.py"),
        "file": "unitmod.py",
    }
    missing = r"^model.build: no module 'unitmod', on --code-path or installed$"
    with pytest.raises(HpoError, match=missing):
        study_loop.served_model(spec, record, "s", ())  # beside the study file: not looked in
    other = tmp_path / "other"
    other.mkdir()
    (other / "unitmod.py").write_text("def build(params, inputs):\n    return 1\n")
    with pytest.raises(HpoError) as refused:
        study_loop.served_model(spec, record, "s", (str(other),))
    line = str(refused.value)
    assert line.startswith("model.build: unitmod.py here differs from the study's (sha256 ")
    assert line.endswith("install the study's version or pass --code-path")
    assert "\n" not in line
    same = tmp_path / "same"
    same.mkdir()
    (same / "unitmod.py").write_bytes((tmp_path / "unitmod.py").read_bytes())
    served = study_loop.served_model(spec, record, "s", (str(same),))
    assert served.model.folder == "" and served.model.build == "unitmod:build"
    for recorded, why in (
        (None, "records no SHA-256"),
        ({**record, "sha256": None}, "records no SHA-256"),
        ({**record, "build": "unitmod:other"}, "trains unitmod:other, this run builds unitmod:b"),
    ):
        with pytest.raises(HpoError, match=why):
            study_loop.served_model(spec, recorded, "s", (str(same),))


def test_a_function_passed_from_python_is_recorded_by_its_module():
    from hpo.search import study_loop
    from hpo.study.model_code import digest

    def build(params, inputs):
        return None

    record = study_loop.function_record(build)
    assert record["build"] == f"{__name__}:{build.__qualname__}"
    assert record == {**record, "sha256": digest(Path(__file__)), "file": Path(__file__).name}
    exec_scope: dict = {"__name__": "notebook_cell"}
    exec("def made(params, inputs):\n    return None\n", exec_scope)  # a module with no file
    assert study_loop.function_record(exec_scope["made"]) == {
        "build": "notebook_cell:made",
        "sha256": None,
        "file": None,
    }


@pytest.mark.parametrize(
    ("model_code", "problem"),
    [
        ({"build": "os:system", "sha256": "x" * 64, "file": "os.py"}, "sha256"),
        ({"build": "a b:c", "sha256": "a" * 64, "file": "a.py"}, "build"),
        ({"build": "m:f", "sha256": "a" * 64, "file": "../../etc/m.py"}, "file"),
        ("m:f", "not a table"),
    ],
)
def test_a_queue_record_s_model_code_is_checked_before_any_use(model_code, problem):
    from hpo.search import queue

    found = queue.malformed({"trials": 2, "model_code": model_code})
    assert found is not None and found.startswith("model_code: ") and problem in found
    good = {"build": "m:f", "sha256": "a" * 64, "file": "m.py"}
    assert queue.malformed({"trials": 2, "model_code": good}) is None
