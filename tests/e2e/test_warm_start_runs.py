"""Warm starts end to end on tiny data: the book's configuration as trial 0 and in the report,
[[enqueue]] run first and once across a resume, `--warm-start` copying another study's trials
outside the budget of new ones, and refusing another dataset's study in one line."""

from __future__ import annotations

import optuna
from conftest import run_cli, tiny_study
from optuna.trial import TrialState

from hpo.search import budget, study_loop, warm_start
from hpo.search.storage import DEFAULT_URL
from hpo.study import studyfile
from hpo.study.space import BOOK_CONFIGS

# Holds the book's IMDB configuration (2 × 16 relu units, rmsprop at 1e-3, batch 512).
BOOK_SPACE = """
layers = { int = [1, 2] }
units = { choices = [8, 16] }
learning_rate = { float = [0.0005, 0.01], log = true }
batch_size = { choices = [64, 512] }
"""


def load(name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=DEFAULT_URL)


def test_the_book_configuration_is_trial_0_and_in_the_report(workdir, capsys):
    path = tiny_study(workdir, epochs=1, space=BOOK_SPACE)
    code, out, err = run_cli(capsys, "optimize", str(path), "--trials", "1")
    assert code == 0, err
    assert "run first: the book's configuration" in out
    trial = load("tiny").trials[0]
    assert trial.state == TrialState.COMPLETE
    assert trial.params == BOOK_CONFIGS["imdb"]
    assert trial.user_attrs[warm_start.ENQUEUED] == "book"
    code, out, err = run_cli(capsys, "analyze", str(path), "--artifacts", "storage/artifacts")
    assert code == 0, err
    report = (workdir / "storage/reports/tiny/report.md").read_text()
    assert "The book's configuration (trial 0): val_accuracy 0." in report
    assert "the best trial is the book's configuration" in report


ENQUEUE = """
[[enqueue]]
layers = 1
units = 8
[[enqueue]]
learning_rate = 0.005
"""


def test_enqueue_runs_first_once_across_a_resume_and_warm_starts_another(workdir, capsys):
    path = tiny_study(workdir, epochs=1, space=BOOK_SPACE)
    text = path.read_text().replace("[sampler]", "baseline = false\n\n[sampler]", 1)
    path.write_text(text + ENQUEUE)
    for trials in ("1", "3"):  # the resume enqueues nothing more
        code, out, err = run_cli(capsys, "optimize", str(path), "--trials", trials)
        assert code == 0, err
    trials = load("tiny").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert trials[0].params["layers"] == 1 and trials[0].params["units"] == 8
    assert trials[1].params["learning_rate"] == 0.005
    marks = [t.user_attrs.get(warm_start.ENQUEUED) for t in trials]
    assert marks == ["enqueue[0]", "enqueue[1]", None]

    # A new study warm-started from it: its three trials copied, one new trial run.
    args = ["optimize", str(path), "--study", "warm", "--warm-start", "tiny", "--trials", "1"]
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "warm start: copied 3 trials from tiny@sqlite:///" in out
    warm = load("warm")
    copied = [t for t in warm.trials if budget.COPIED in t.user_attrs]
    assert [t.user_attrs[budget.COPIED]["trial"] for t in copied] == [0, 1, 2]
    assert [t.intermediate_values for t in copied] == [t.intermediate_values for t in trials]
    assert [t.user_attrs["best_epoch"] for t in copied] == [
        t.user_attrs["best_epoch"] for t in trials
    ]
    assert len(warm.trials) == 4 and budget.finished(warm) == 1  # --trials 1: one new trial
    # Its kept predictions are in this same store, of the same rows: the ensemble may use them.
    assert all("val_predictions" in t.user_attrs for t in copied)
    code, out, err = run_cli(capsys, *args)  # again: nothing more copied, nothing more run
    assert code == 0, err
    assert "copied" not in out and len(load("warm").trials) == 4

    # From a study of another dataset: one line, exit 2, no study made.
    boston = studyfile.load(str(tiny_study(workdir, "boston_housing", name="bost")))
    study_loop.open_study(boston, DEFAULT_URL, "bost")
    args = ["optimize", str(path), "--study", "w2", "--warm-start", "bost", "--trials", "1"]
    code, out, err = run_cli(capsys, *args)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "--warm-start bost@sqlite:///storage/hpo.db: it tunes boston_housing, this study" in err
    assert "w2" not in optuna.get_all_study_names(DEFAULT_URL)
