"""`hpo optimize` end to end on tiny data: trials, curves, resume, pruning, NaN, bad input."""

import contextlib
import math
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from conftest import (
    REPO,
    SHARED_DATASETS,
    default_sigint,
    run_cli,
    run_hpo_process,
    tiny_study,
)
from optuna.trial import TrialState
from rich.console import Console

from hpo.search import budget, study_loop
from hpo.search.search_options import SearchOptions
from hpo.search.storage import DEFAULT_URL
from hpo.study import studyfile


def load(name="tiny", url=DEFAULT_URL):
    return optuna.load_study(study_name=name, storage=url)


def test_optimize_records_curves_and_best_epoch(workdir, capsys, monkeypatch):
    path = tiny_study(workdir, epochs=4)
    code, out, err = run_cli(capsys, "optimize", str(path), "--trials", "3", "--seed", "7")
    assert code == 0, err
    assert "best trials of tiny" in out and "hpo analyze" in out
    # The next step it prints works as typed, without the HPO_DATA_DIR this run had.
    data_dir = os.environ["HPO_DATA_DIR"]
    monkeypatch.delenv("HPO_DATA_DIR")
    next_step = shlex.split(" ".join(out.split("test it with:")[1].split()))
    assert next_step[:2] == ["hpo", "analyze"] and next_step[-2:] == ["--data-dir", data_dir]
    code, _, err = run_cli(capsys, *next_step[1:])
    assert code == 0, err
    study = load()
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for t in trials:
        history = t.user_attrs["history"]
        assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
        assert all(len(curve) == 4 for curve in history.values())
        curve = history["val_accuracy"]
        # The value is the best epoch's, not the last one's.
        assert t.value == pytest.approx(max(curve))
        assert t.user_attrs["best_epoch"] == curve.index(max(curve)) + 1
        assert [t.intermediate_values[e] for e in (1, 2, 3, 4)] == pytest.approx(curve)
        assert set(t.params) == {
            "layers",
            "units",
            "activation",
            "loss",
            "optimizer",
            "learning_rate",
            "batch_size",
            "dropout",
        }
    assert study.best_value > 0.7  # the tiny data is learnable: the model did train
    assert study.user_attrs["hpo"]["dataset"] == "imdb"


def test_resume_runs_only_the_missing_trials(workdir, capsys):
    path = tiny_study(workdir, epochs=2)
    assert run_cli(capsys, "optimize", str(path), "--trials", "2")[0] == 0
    code, out, _ = run_cli(capsys, "optimize", str(path), "--trials", "4")
    assert code == 0
    assert len(load().get_trials()) == 4
    code, out, _ = run_cli(capsys, "optimize", str(path), "--trials", "3")
    assert code == 0 and "already has 4 finished trials" in out
    assert len(load().get_trials()) == 4
    code, out, _ = run_cli(capsys, "list")
    assert code == 0 and "tiny" in out and "imdb" in out


def test_poor_trial_is_pruned_and_keeps_its_curve(workdir):
    space = """
layers = 1
units = 16
learning_rate = { choices = [0.01, 1e-7] }
batch_size = 64
"""
    path = tiny_study(workdir, epochs=6, space=space)
    spec = replace(
        studyfile.load(str(path)),
        pruner={"name": "median", "n_startup_trials": 2, "n_warmup_steps": 1},
    )
    study = study_loop.open_study(spec, DEFAULT_URL, "tiny")
    for rate in (0.01, 0.01, 1e-7):  # a learning rate no model learns from in 6 epochs
        study.enqueue_trial({"learning_rate": rate})
    result = study_loop.run(spec, "tiny", SearchOptions(str(path), trials=3), Console(quiet=True))
    trials = result.study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.PRUNED]
    assert 1 <= len(trials[2].user_attrs["history"]["val_accuracy"]) < 6
    assert trials[2].user_attrs["best_epoch"] >= 1


def test_nan_loss_fails_the_trial_and_the_study_goes_on(workdir, capsys):
    space = """
layers = 1
units = 16
optimizer = "sgd"
loss = "mse"
learning_rate = { choices = [10.0, 0.01] }
batch_size = 16
"""
    path = tiny_study(workdir, "boston_housing", epochs=5, validation="kfold:2", space=space)
    spec = studyfile.load(str(path))
    study = study_loop.open_study(spec, DEFAULT_URL, "tiny")
    study.enqueue_trial({"learning_rate": 10.0})
    study.enqueue_trial({"learning_rate": 0.01})
    code, out, err = run_cli(capsys, "optimize", str(path), "--trials", "2")
    assert code == 0, err
    assert "Traceback" not in out + err
    failed, done = load().get_trials()
    assert failed.state == TrialState.FAIL
    assert "became" in failed.user_attrs["fail_reason"]
    assert f"trial 0 failed: {failed.user_attrs['fail_reason']}" in out
    assert done.state == TrialState.COMPLETE
    # Boston's k-fold trials report the fold-averaged MAE per epoch.
    assert len(done.intermediate_values) == 5 and math.isfinite(done.value)
    assert done.value == pytest.approx(min(done.user_attrs["history"]["val_mae"]))


@pytest.mark.parametrize(
    ("dataset", "validation", "engine", "batch"),
    [
        ("boston_housing", "kfold:2", "fused", "1"),
        ("boston_housing", "kfold:2", "fit", "1"),
        ("boston_housing", "kfold:2", "fused", "4"),
        ("imdb", "first:100", "fused", "1"),
        ("imdb", "first:100", "fit", "1"),
    ],
)
def test_patience_stops_a_trial_after_its_best_epoch(
    workdir, capsys, monkeypatch, dataset, validation, engine, batch
):
    """Each trial completes `patience` epochs after its best one, or at max_epochs, whichever
    comes first, with the best epoch's value: through the fused loop, model.fit (a Keras
    callback for a holdout, chunks of epochs for k folds) and trials stacked in a batch."""
    monkeypatch.setenv("HPO_ENGINE", engine)
    # Boston at high learning rates in IMDB's small, large-batch net, whose tiny curves peak
    # early (the book's Boston net, 2x64 at batch 16, keeps improving for 16 epochs).
    boston = "learning_rate = { float = [0.05, 0.2] }\nunits = 16\nbatch_size = 512"
    space = boston if dataset == "boston_housing" else None
    path = tiny_study(workdir, dataset, epochs=16, validation=validation, space=space)
    path.write_text(path.read_text().replace("max_epochs = 16", "max_epochs = 16\npatience = 3"))
    n = 2 if engine == "fit" else 3  # model.fit's k folds train an epoch a call: slow
    args = ("optimize", str(path), "--trials", str(n), "--seed", "1", "--batch-trials", batch)
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    trials = load().get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * n
    metric = "val_mae" if dataset == "boston_housing" else "val_accuracy"
    best_of = min if dataset == "boston_housing" else max
    stopped = 0
    for t in trials:
        curve = t.user_attrs["history"][metric]
        assert len(t.user_attrs["history"]["loss"]) == len(curve) == len(t.intermediate_values)
        best = curve.index(best_of(curve)) + 1
        assert t.value == pytest.approx(best_of(curve)) and t.user_attrs["best_epoch"] == best
        if len(curve) < 16:
            assert len(curve) - best == 3
            stopped += 1
        else:
            assert len(curve) - best <= 3
    assert stopped >= n - 1
    if batch != "1":
        assert max(t.user_attrs["worker"].get("stacked", 1) for t in trials) > 1


class _Trial:
    """What EpochReporter asks of an Optuna trial, recorded."""

    def __init__(self):
        self.reported, self.user_attrs = {}, {}

    def report(self, value, step):
        self.reported[step] = value

    def should_prune(self):
        return False

    def set_user_attr(self, key, value):
        self.user_attrs[key] = value


@pytest.mark.parametrize(
    ("smooth", "stop", "best_epoch"),
    # raw: best at epoch 4; 3-epoch means: best window 3-5, complete at epoch 5
    [(1, 7, 4), (3, 8, 4)],
)
def test_patience_counts_from_the_epoch_that_gave_the_best_point(smooth, stop, best_epoch):
    from hpo.train.reporting import EpochReporter

    curve = [5.0, 4.0, 3.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    reporter = EpochReporter(_Trial(), "val_mae", "minimize", smooth_epochs=smooth, patience=3)
    stops = [reporter.record(e, {"val_mae": v}) for e, v in enumerate(curve, 1)]
    assert stops.index(True) + 1 == stop
    assert reporter.best()[0] == best_epoch
    never = EpochReporter(_Trial(), "val_mae", "minimize", smooth_epochs=smooth, patience=0)
    assert not any(never.record(e, {"val_mae": v}) for e, v in enumerate(curve, 1))


def test_smoothed_study_ranks_trials_by_their_best_window(workdir, capsys):
    path = tiny_study(workdir, "boston_housing", epochs=8, validation="kfold:2")
    path.write_text(path.read_text().replace("max_epochs = 8", "max_epochs = 8\nsmooth_epochs = 3"))
    code, _, err = run_cli(capsys, "optimize", str(path), "--trials", "2", "--seed", "3")
    assert code == 0, err
    for trial in load().get_trials():
        curve = trial.user_attrs["history"]["val_mae"]
        means = [sum(curve[i - 1 : i + 2]) / 3 for i in range(1, len(curve) - 1)]
        best = min(range(len(means)), key=means.__getitem__)
        assert trial.value == pytest.approx(means[best])
        assert trial.user_attrs["best_epoch"] == best + 2  # 1-based centre of the window
        assert trial.intermediate_values[1] == pytest.approx(curve[0])  # the pruner sees raw


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["optimize", "cifar10"], "error: unknown dataset 'cifar10'"),
        (["optimize", "bad.toml"], "error: bad.toml: study.metric"),
        (["optimize", "imdb", "--storage", "not-a-url"], "is not a database URL"),
        (
            ["optimize", "imdb", "--storage", "postgresql+nodriver://u:secret@127.0.0.1/x"],
            "driver 'nodriver' is not installed",
        ),
        (
            ["optimize", "imdb", "--storage", "postgresql+psycopg://u:secret@127.0.0.1:1/x"],
            "cannot connect",
        ),
        (["optimize", "imdb", "--trials", "0"], "--trials must be at least 1"),
        (["optimize", "imdb", "--max-epochs", "0"], "--max-epochs must be at least 1"),
        (["optimize", "imdb", "--recycle-after", "often"], "expected auto or a number"),
        (["worker", "--recycle-after", "-2"], "--recycle-after must be auto or at least 0"),
    ],
)
def test_bad_input_is_one_line(workdir, capsys, args, message):
    (workdir / "bad.toml").write_text('[study]\ndataset = "imdb"\nmetric = "val_acc"\n')
    code, out, err = run_cli(capsys, *args)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert "secret" not in out + err
    assert "Traceback" not in out + err


def finished_trials_readonly() -> int:
    """Count finished trials without opening an Optuna storage: that would create the tables
    and race the worker doing the same."""
    path = Path("storage/hpo.db")
    if not path.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            query = "SELECT count(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED')"
            return db.execute(query).fetchone()[0]
    except sqlite3.OperationalError:  # tables not created yet, or locked for a moment
        return 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_leaves_a_resumable_study(workdir, capsys, sig):
    """Ctrl-C (or SIGTERM: docker stop, Kubernetes) ends the trial at its epoch; the exit
    status says which (130, 143), so `hpo optimize … && hpo analyze …` stops there."""
    path = tiny_study(workdir, epochs=3)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "hpo", "optimize", str(path), "--trials", "200"]
    proc = subprocess.Popen(
        cmd,
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and finished_trials_readonly() < 2:
        time.sleep(0.5)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert "Resume with: hpo optimize" in err and "Traceback" not in out + err
    done = budget.finished(load())
    assert 2 <= done < 200
    assert not [t for t in load().get_trials() if t.state == TrialState.RUNNING]
    # Resuming with a budget just above what is done runs exactly the missing trial (in this
    # process, through the same entry point: a second start of TensorFlow tells nothing more).
    code, _, err = run_cli(capsys, "optimize", str(path), "--trials", str(done + 1))
    assert code == 0, err
    assert budget.finished(load()) == done + 1


@pytest.mark.parametrize("moment", ["start", "restart"])
def test_ctrl_c_while_starting_says_how_to_resume(workdir, moment):
    """A Ctrl-C while the process starts (TensorFlow's import, seconds) or while a worker
    restarts itself (exec: the imports again) is neither lost nor a traceback, and shows
    none of TensorFlow's start-up notices: exit 130 and the resume line."""
    path = tiny_study(workdir, epochs=1)
    cmd = [sys.executable, "-m", "hpo", "optimize", str(path), "--trials", "50"]
    cmd += ["--recycle-after", "1"]
    proc = subprocess.Popen(
        cmd,
        cwd=workdir,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    wanted = "study tiny" if moment == "start" else "restarting this worker"
    for line in proc.stdout:
        if wanted in line:
            break
    time.sleep(0.3)  # into the imports (of the new process, after a restart)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "resume with: hpo optimize" in err.lower(), err
    assert "Traceback" not in out + err and "oneDNN" not in err and "absl" not in err, err
    assert budget.finished(load()) <= 2


def test_studies_lists_the_builtin_files(capsys):
    code, out, _ = run_cli(capsys, "studies")
    assert code == 0
    for name in ("imdb", "reuters", "boston_housing", "mnist"):
        assert name in out
    assert str(REPO / "studies") in out.replace("\n", "")


@pytest.mark.real_data
@pytest.mark.skipif(
    not (SHARED_DATASETS / "imdb.npz").is_file(),
    reason=f"real datasets not found in {SHARED_DATASETS}",
)
def test_short_real_imdb_study(workdir, capsys):
    code, _, err = run_cli(
        capsys,
        "optimize",
        "imdb",
        "--trials",
        "2",
        "--max-epochs",
        "3",
        "--seed",
        "0",
        "--data-dir",
        str(SHARED_DATASETS),
    )
    assert code == 0, err
    study = load("imdb")
    assert len(study.get_trials()) == 2
    # Any sane configuration passes 0.85 validation accuracy on IMDB within 3 epochs.
    assert study.best_value > 0.85


def test_study_name_of_another_dataset_is_refused(workdir, capsys):
    imdb = tiny_study(workdir, epochs=1)
    assert run_cli(capsys, "optimize", str(imdb), "--trials", "1", "--study", "shared")[0] == 0
    reuters = tiny_study(
        workdir, "reuters", epochs=1, name="other", space="units = 8\nbatch_size = 64\n"
    )
    code, _, err = run_cli(capsys, "optimize", str(reuters), "--trials", "1", "--study", "shared")
    assert code == 2 and "tunes imdb on val_accuracy; choose another --study" in err
    assert load("shared").metric_names == ["val_accuracy"]  # what the dashboard's axis says


def test_timeout_ends_the_run_across_restarts(workdir):
    """--timeout is a wall-clock limit that a worker's restarts keep, not reset."""
    path = tiny_study(workdir, epochs=1)
    start = time.monotonic()
    proc = run_hpo_process(
        workdir,
        *("optimize", str(path), "--trials", "1000", "--recycle-after", "2"),
        # long enough for 2 trials and a restart on a loaded CI machine (compiling a trial's
        # fused loop takes seconds there), far below the 1000 trials' time
        *("--timeout", "30"),
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    assert "restarting this worker" in proc.stdout
    assert 1 <= budget.finished(load()) < 1000
    # Without the deadline kept across restarts this would run 1000 trials (or forever).
    assert time.monotonic() - start < 120


def test_progress_counts_are_the_studys_across_restarts(workdir, capsys):
    """The progress line's pruned/failed counts are the study's, as `hpo list` shows them,
    not those of the worker process since its last restart."""
    space = """
layers = 1
units = 16
learning_rate = { choices = [0.01, 1e-7] }
batch_size = 64
"""
    path = tiny_study(workdir, epochs=4, space=space, pruner="median")
    path.write_text(
        path.read_text().replace(
            'name = "median"', 'name = "median"\nn_startup_trials = 2\nn_warmup_steps = 1'
        )
    )
    study = study_loop.open_study(studyfile.load(str(path)), DEFAULT_URL, "tiny")
    for rate in (0.01, 0.01, 1e-7, 0.01, 1e-7, 1e-7):  # 1e-7 learns nothing: pruned
        study.enqueue_trial({"learning_rate": rate})
    cmd = ["optimize", str(path), "--trials", "6", "--recycle-after", "3"]
    proc = run_hpo_process(workdir, *cmd)
    assert proc.returncode == 0, proc.stderr
    assert "restarting this worker" in proc.stdout  # trials 3-5 ran in a fresh process
    trials = load().get_trials()
    # The three 1e-7 trials are pruned, one before the restart and two after; a 0.01 trial can
    # be too, when its early epochs fall below the median (unseeded weights, tiny data).
    assert all(t.state == TrialState.PRUNED for t in trials if t.params["learning_rate"] < 1e-3)
    pruned = sum(t.state == TrialState.PRUNED for t in trials)
    last = [line for line in proc.stdout.splitlines() if "pruned " in line][-1]
    assert "6/6" in last and f"pruned {pruned} · failed 0" in last, last
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    row = next(line for line in out.splitlines() if "tiny" in line)
    cells = [cell.strip() for cell in row.strip("│ ").split("│")]
    # study, dataset, metric, trials, complete, pruned, failed, best
    assert cells[3:7] == ["6", str(6 - pruned), str(pruned), "0"], row


def test_list_leaves_out_over_budget_placeholders(workdir, capsys):
    """With many workers, trials created after the budget was taken end at once as FAIL
    "over budget": they never ran, so `hpo list` counts them neither as trials nor as failed
    (a real failure, NaN here, still counts)."""
    study = study_loop.open_study(studyfile.load(str(tiny_study(workdir))), DEFAULT_URL, "tiny")
    create = optuna.trial.create_trial
    study.add_trial(create(state=TrialState.COMPLETE, value=0.8))
    study.add_trial(create(state=TrialState.FAIL, user_attrs={"fail_reason": "NaN loss"}))
    for _ in range(3):
        study.add_trial(create(state=TrialState.FAIL, user_attrs={"fail_reason": "over budget"}))
    # A re-run of a trial carries the first run's attrs: complete, it is a trial like any.
    rerun = create(state=TrialState.COMPLETE, value=0.7, user_attrs={"fail_reason": "over budget"})
    study.add_trial(rerun)
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    row = next(line for line in out.splitlines() if "tiny" in line)
    cells = [cell.strip() for cell in row.strip("│ ").split("│")]
    # study, dataset, metric, trials, complete, pruned, failed, best
    assert cells[3:8] == ["3", "2", "0", "1", "0.8000"], row


def test_a_worker_opens_its_storage_once(workdir, capsys, monkeypatch):
    """`hpo optimize` opens the study before starting any other worker and trains on that
    same storage: a second one would hold a second server connection until garbage
    collection, and a full server would refuse workers for it."""
    opened = []
    real = study_loop.open_storage

    def counting(*args, **kwargs):
        opened.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(study_loop, "open_storage", counting)
    code, _, err = run_cli(capsys, "optimize", str(tiny_study(workdir)), "--trials", "1")
    assert code == 0, err
    assert opened == [DEFAULT_URL]
