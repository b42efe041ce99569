"""Warm starts without training: [[enqueue]] tables checked against the space, the book's
configuration run first, once per study, and the trials of another study copied (fitting ones
only, with their curves, user attrs and this study's distributions), outside the budget."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial
from rich.console import Console

from hpo import artifacts
from hpo.errors import HpoError
from hpo.results.report import baseline_lines
from hpo.search import budget, warm_start
from hpo.search.study_loop import open_study
from hpo.study import studyfile
from hpo.study.space import BOOK_CONFIGS

# study.ask() here stands for a worker's trial: Optuna warns that heartbeats expect optimize
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage")

SPACE = """
[space]
layers = { int = [1, 3] }
units = { choices = [16, 32] }
learning_rate = { float = [1e-4, 1e-2], log = true }
batch_size = { choices = [256, 512] }
"""


def study_file(tmp_path: Path, text: str, name: str = "s", dataset: str = "imdb") -> Path:
    path = tmp_path / f"{name}.toml"
    head = f'[study]\nname = "{name}"\ndataset = "{dataset}"\n'
    path.write_text(head + textwrap.dedent(text))
    return path


def spec_of(tmp_path: Path, text: str = SPACE, **kw):
    return studyfile.load(str(study_file(tmp_path, text, **kw)))


def test_enqueue_tables_parse_with_per_layer_keys(tmp_path):
    spec = spec_of(
        tmp_path,
        """
        [space]
        layers = { int = [1, 3] }
        units = { choices = [16, 32], per_layer = true }
        [[enqueue]]
        layers = 2
        units_1 = 32
        units_2 = 16
        [[enqueue]]
        learning_rate = 0.001
        """,
    )
    assert spec.enqueue == ({"layers": 2, "units_1": 32, "units_2": 16}, {"learning_rate": 0.001})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[enqueue]]\nwidth = 3\n", "s.toml: enqueue[0].width: not a parameter of this study"),
        (
            "[[enqueue]]\nunits = 16\n[[enqueue]]\nunits = 64\n",
            "s.toml: enqueue[1].units: 64 lies outside its choices: 16, 32",
        ),
        (
            "[[enqueue]]\nlearning_rate = 0.5\n",
            "enqueue[0].learning_rate: 0.5 lies outside its range: float [0.0001, 0.01]",
        ),
        ("[[enqueue]]\nlayers = 2.5\n", "enqueue[0].layers: 2.5 lies outside its range: int"),
        ("[[enqueue]]\n", "enqueue[0]: empty"),
    ],
)
def test_bad_enqueue_values_are_one_line(tmp_path, text, message):
    with pytest.raises(HpoError) as caught:
        spec_of(tmp_path, SPACE + text)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_enqueue_must_be_an_array_of_tables():
    with pytest.raises(HpoError, match=r"^s.toml: enqueue: must be \[\[enqueue\]\] tables"):
        studyfile.parse({"study": {"dataset": "imdb"}, "enqueue": 3}, "s.toml")


def test_enqueue_per_layer_and_condition_checks(tmp_path):
    space = """
    [space]
    layers = { int = [1, 3] }
    units = { choices = [16, 32], per_layer = true }
    l2 = { float = [0.0, 0.01], when = { layers = 3 } }
    """
    with pytest.raises(HpoError, match=r"enqueue\[0\]\.units: units is per-layer"):
        spec_of(tmp_path, space + "[[enqueue]]\nunits = 16\n")
    with pytest.raises(HpoError, match=r"units_3: the table's layers is 2"):
        spec_of(tmp_path, space + "[[enqueue]]\nlayers = 2\nunits_3 = 16\n")
    with pytest.raises(HpoError, match=r"enqueue\[0\]\.l2: absent where layers = 1"):
        spec_of(tmp_path, space + "[[enqueue]]\nlayers = 1\nl2 = 0.001\n")


@pytest.mark.parametrize("name", ["imdb", "reuters", "boston_housing", "mnist"])
def test_builtin_studies_run_the_book_configuration_first(name):
    spec = studyfile.load(name)
    params, note = warm_start.book_params(spec)
    assert note is None
    assert params == {k: v for k, v in BOOK_CONFIGS[name].items() if k in spec.space.dims}


def test_book_configuration_outside_the_space_is_said_not_widened(tmp_path):
    spec = spec_of(tmp_path, SPACE.replace("[16, 32]", "[32, 64]"))
    params, note = warm_start.book_params(spec)
    assert params is None
    assert "its units 16 lies outside its choices: 32, 64" in note
    assert spec.space.dims["units"].values == (32, 64)
    no_baseline = spec_of(tmp_path, SPACE.replace("[space]", "baseline = false\n[space]"))
    assert warm_start.book_params(no_baseline) == (None, None)


def test_enqueued_once_when_the_study_is_created(tmp_path):
    spec = spec_of(tmp_path, SPACE + "[[enqueue]]\nunits = 32\nlayers = 3\n")
    url = f"sqlite:///{tmp_path}/hpo.db"
    console = Console(record=True, width=200)
    study = open_study(spec, url, "s", enqueue=True, console=console)
    for _ in range(2):  # a resume, another worker: nothing more
        open_study(spec, url, "s", enqueue=True, console=console)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.system_attrs["fixed_params"] for t in waiting] == [
        BOOK_CONFIGS["imdb"],  # every parameter: the fixed ones are suggested too
        {"units": 32, "layers": 3},
    ]
    assert [t.user_attrs[warm_start.ENQUEUED] for t in waiting] == ["book", "enqueue[0]"]
    assert console.export_text().count("run first:") == 1
    # a study made by another worker (here: without enqueue) is only loaded: nothing added
    open_study(spec, url, "other")
    open_study(spec, url, "other", enqueue=True)
    assert optuna.load_study(study_name="other", storage=url).trials == []


def source_study(spec, url: str, name: str = "src", store=None) -> optuna.Study:
    """A study of `spec` with three complete trials (one outside a narrower space), one
    pruned and one failed, as hpo records them."""
    study = open_study(spec, url, name)
    dists = {name: warm_start.distribution(dim) for name, dim in spec.space.dims.items()}
    assert dists["layers"] == IntDistribution(1, 3)
    assert dists["learning_rate"] == FloatDistribution(1e-4, 1e-2, log=True)
    book = BOOK_CONFIGS["imdb"]
    kept = None
    if store is not None:
        artifact_id = str(uuid.uuid4())
        store.write(artifact_id, __import__("io").BytesIO(b"x"))
        kept = {"artifact_id": artifact_id, "rows": 10, "targets": "abc", "validation": "f"}
    configs = [(1, 16, 0.80), (2, 32, 0.85), (3, 16, 0.83)]
    for i, (layers, units, value) in enumerate(configs):
        params = {**book, "layers": layers, "units": units}
        attrs = {"history": {"val_accuracy": [value - 0.1, value]}, "best_epoch": 2}
        if kept and i == 0:
            attrs["val_predictions"] = kept
        elif i == 1:
            attrs["val_predictions"] = {**(kept or {}), "artifact_id": str(uuid.uuid4())}
        study.add_trial(
            create_trial(
                value=value,
                params=params,
                distributions=dists,
                user_attrs=attrs,
                intermediate_values={1: value - 0.1, 2: value},
            )
        )
    pruned = {**book, "layers": 1, "batch_size": 256}
    study.add_trial(
        create_trial(state=TrialState.PRUNED, params=pruned, distributions=dists, value=None)
    )
    study.add_trial(create_trial(state=TrialState.FAIL))
    return study


def test_warm_start_copies_fitting_trials_with_curves_outside_the_budget(tmp_path):
    url = f"sqlite:///{tmp_path}/hpo.db"
    store = artifacts.open_store(tmp_path / "artifacts")
    source_study(spec_of(tmp_path, SPACE), url, store=store)
    narrower = SPACE.replace("int = [1, 3]", "int = [1, 2]").replace("[16, 32]", "[16, 32, 64]")
    spec = spec_of(tmp_path, narrower, name="new")
    console = Console(record=True, width=300)
    study = open_study(
        spec,
        url,
        "new",
        enqueue=True,
        warm_start="src",
        artifacts=str(tmp_path / "artifacts"),
        console=console,
    )
    text = console.export_text()
    assert (
        "warm start: copied 2 trials from src@" in text
        and "skipped 3: " in text
        and "1 with layers outside this study's space" in text
        and "1 pruned (only complete trials are copied)" in text
        and "1 fail (only complete trials are copied)" in text
    ), text
    assert "1 of them kept their validation predictions" in text
    copied = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert [t.user_attrs[budget.COPIED] for t in copied] == [
        {"study": "src", "trial": 0},
        {"study": "src", "trial": 1},
    ]
    assert [t.intermediate_values for t in copied] == [
        {1: pytest.approx(0.7), 2: 0.8},
        {1: pytest.approx(0.75), 2: 0.85},
    ]
    assert copied[0].user_attrs["best_epoch"] == 2 and "history" in copied[0].user_attrs
    # its predictions are in this store: kept; the other's are not there: dropped
    assert "val_predictions" in copied[0].user_attrs
    assert "val_predictions" not in copied[1].user_attrs
    # this study's distributions (units has 64 here), so its own trials may follow
    assert copied[0].distributions["units"] == CategoricalDistribution([16, 32, 64])
    # the book's configuration (trial 0 of the other study ran it? no: 2 layers of 16) runs
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs[warm_start.ENQUEUED] for t in waiting] == ["book"]
    assert budget.finished(study) == 0  # the copies count for TPE, not in --trials
    assert budget.Budget(1).free_slots(study) == 1
    assert study.user_attrs[warm_start.RECORD]["copied"] == 2
    book = study.ask()  # the book's configuration first
    assert spec.space.suggest(book) == BOOK_CONFIGS["imdb"]
    study.tell(book, 0.5)
    trial = study.ask()  # then TPE, which sees the copies: their distributions are this study's
    assert set(spec.space.suggest(trial)) == set(BOOK_CONFIGS["imdb"])
    study.tell(trial, 0.6)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
    assert budget.finished(study) == 2

    # once: the same source again copies nothing; another source is one line
    again = open_study(spec, url, "new", warm_start="src", console=console)
    assert len(again.trials) == 4 and budget.finished(again) == 2
    with pytest.raises(HpoError, match=r"was warm-started from src@.*a study is warm-started once"):
        open_study(spec, url, "new", warm_start="other")
    with pytest.raises(HpoError, match="exists already and was started without it"):
        open_study(spec, url, "src", warm_start="new")


def test_a_copied_book_configuration_is_not_run_again(tmp_path):
    url = f"sqlite:///{tmp_path}/hpo.db"
    spec = spec_of(tmp_path, SPACE)
    src = open_study(spec, url, "src", enqueue=True)
    trial = src.ask()
    spec.space.suggest(trial)
    src.tell(trial, 0.9)
    assert src.trials[0].user_attrs[warm_start.ENQUEUED] == "book"
    new = open_study(
        spec_of(tmp_path, SPACE, name="new"), url, "new", enqueue=True, warm_start="src"
    )
    assert [t.state for t in new.trials] == [TrialState.COMPLETE]  # no second book trial
    best = new.trials[0]
    lines = baseline_lines(new, spec, best)
    assert lines[0] == (
        "The book's configuration (trial 0, copied): val_accuracy 0.9000: the best trial is "
        "the book's configuration."
    )


def test_warm_start_refuses_another_dataset_metric_or_missing_study(tmp_path):
    url = f"sqlite:///{tmp_path}/hpo.db"
    source_study(spec_of(tmp_path, SPACE), url)
    reuters = spec_of(tmp_path, SPACE, name="r", dataset="reuters")
    cases = [
        (reuters, "src", "--warm-start src@sqlite:///.* it tunes imdb, this study reuters"),
        (
            spec_of(tmp_path, SPACE.replace("[space]", 'metric = "val_loss"\n[space]'), name="l"),
            "src",
            r"it ranks trials by val_accuracy \(maximize\), this study by val_loss \(minimize\)",
        ),
        (reuters, "nope", "no study named 'nope' there"),
        (reuters, "", "name the study to copy from"),
    ]
    for spec, source, message in cases:
        with pytest.raises(HpoError, match=message) as caught:
            open_study(spec, url, "target", warm_start=source)
        assert "\n" not in str(caught.value)
    # refused before the study is made
    assert "target" not in optuna.get_all_study_names(url)


def test_unreachable_source_storage_is_one_redacted_line(tmp_path):
    spec = spec_of(tmp_path, SPACE)
    url = f"sqlite:///{tmp_path}/hpo.db"
    away = "postgresql+psycopg://hpo:s3cret@127.0.0.1:1/db"
    with pytest.raises(HpoError) as caught:
        open_study(spec, url, "target", warm_start=f"src@{away}", reconnect_s=0)
    line = str(caught.value)
    assert line.startswith("--warm-start src@postgresql+psycopg://hpo:***@127.0.0.1:1/db: ")
    assert "s3cret" not in line and "\n" not in line


def test_source_parsing_splits_at_a_url():
    parse = warm_start.parse_source
    assert parse("a", "sqlite:///x.db") == warm_start.Source("a", "sqlite:///x.db")
    assert parse("a@b@sqlite:///y.db", "u") == warm_start.Source("a@b", "sqlite:///y.db")
    pg = "postgresql://u:p@w@h/db"
    assert parse(f"n@{pg}", "u") == warm_start.Source("n", pg)


def test_baseline_line_compares_the_best_trial(tmp_path):
    url = f"sqlite:///{tmp_path}/hpo.db"
    spec = spec_of(tmp_path, SPACE)
    study = open_study(spec, url, "s", enqueue=True)
    for value in (0.85, 0.88):
        trial = study.ask()
        spec.space.suggest(trial)
        study.tell(trial, value)
    assert baseline_lines(study, spec, study.trials[1])[0] == (
        "The book's configuration (trial 0): val_accuracy 0.8500; the best trial 1's 0.8800 "
        "(+0.0300, better)."
    )
    assert baseline_lines(optuna.create_study(), spec, None) == []


def _open_in_a_process(path: str, url: str, start: float) -> None:
    """One worker's open_study, all of them timed to start together."""
    import time

    enqueue = optuna.Study.enqueue_trial

    def slowly(study, *args, **kwargs):  # widens the race: the others open the study meanwhile
        time.sleep(1)
        enqueue(study, *args, **kwargs)

    optuna.Study.enqueue_trial = slowly
    time.sleep(max(start - time.time(), 0))
    open_study(studyfile.load(path), url, "race", enqueue=True)


def test_workers_racing_to_create_a_study_enqueue_once(tmp_path):
    import multiprocessing
    import time

    path = str(study_file(tmp_path, SPACE + "[[enqueue]]\nunits = 32\n"))
    url = f"sqlite:///{tmp_path}/hpo.db"
    optuna.create_study(storage=url, study_name="warm-up")  # the tables exist: a create races
    start = time.time() + 1
    context = multiprocessing.get_context("fork")  # this process's imports: a quick start
    workers = [
        context.Process(target=_open_in_a_process, args=(path, url, start)) for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0] * 4
    marks = [
        t.user_attrs[warm_start.ENQUEUED]
        for t in optuna.load_study(study_name="race", storage=url).trials
    ]
    assert marks == ["book", "enqueue[0]"]
