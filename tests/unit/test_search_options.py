"""hpo.search.search_options: a search's options, built once, write the command line that
child workers run and resume lines show."""

from __future__ import annotations

import dataclasses

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
