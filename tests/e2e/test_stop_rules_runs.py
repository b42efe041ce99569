"""Stop rules end to end (SQLite, the tiny data, 1-epoch trials): `--stop-after` and `--target`
on `hpo optimize` (one worker, and two), `--stop-after` and `--timeout` on `hpo submit` kept by
a real `hpo worker`, and `hpo list` saying why each study ended.

A study that cannot improve is made cheaply: a hand-made first trial with a validation MAE of 0
that no real trial can beat, so every real trial is one more without improvement."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime

import optuna
from conftest import default_sigint, run_cli, tiny_study
from optuna.trial import TrialState, create_trial
from test_queue import read_until, stop_worker, wait_for

from hpo.optuna_private import study_id
from hpo.search import stop_rules, study_loop
from hpo.search.budget import over_budget
from hpo.search.storage import DEFAULT_URL
from hpo.study import studyfile


def unbeatable(path, name: str, url: str = DEFAULT_URL) -> optuna.Study:
    """The study of `path`, made now, with a first trial of val_mae 0: no trial improves on it."""
    study = study_loop.open_study(studyfile.load(str(path)), url, name)
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.0))
    return study


def real(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that ran (the hand-made one and over-budget placeholders aside)."""
    return [t for t in study.get_trials() if t.number > 0 and not over_budget(t)]


def stopped(name: str, url: str = DEFAULT_URL) -> dict | None:
    return optuna.load_study(study_name=name, storage=url).user_attrs.get(stop_rules.STOPPED_ATTR)


def list_lines(capsys, url: str = DEFAULT_URL) -> tuple[str, dict[str, str]]:
    code, out, err = run_cli(capsys, "list", "--storage", url)
    assert code == 0, err
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if "│" in line}
    return out, rows


def test_stop_after_ends_the_study_before_its_budget_and_list_says_why(workdir, capsys):
    path = tiny_study(workdir, "boston_housing", epochs=1, validation="first:30")
    unbeatable(path, "tiny")
    code, out, err = run_cli(capsys, "optimize", str(path), "--trials", "10", "--stop-after", "2")
    assert code == 0, err
    why = "no improvement in 2 trials (best 0 at trial 0)"
    assert f"study tiny stopped: {why}" in out
    study = optuna.load_study(study_name="tiny", storage=DEFAULT_URL)
    assert [t.state for t in real(study)] == [TrialState.COMPLETE] * 2  # not the 9 left
    assert stopped("tiny") == {"rule": "stop_after", "why": why, "at_trial": 2, "version": 1}
    out, rows = list_lines(capsys)
    assert f"tiny: stopped: {why}" in out and "stopped" in rows["tiny"]
    from optuna_dashboard import get_note

    assert get_note(study).startswith(f"{stop_rules.NOTE} {why}")  # the dashboard says it too

    # Run again without a rule: the study's own holds, and nothing runs.
    code, out, err = run_cli(capsys, "optimize", str(path), "--trials", "10")
    assert code == 0 and "give a new --stop-after or --target to go on" in out, err
    assert len(real(study)) == 2
    # A new rule lets it go on, and fires again in its turn.
    code, out, err = run_cli(capsys, "optimize", str(path), "--trials", "10", "--stop-after", "3")
    assert code == 0, err
    assert "stop rules changed: it stops after 3 trials without improvement" in out
    assert len(real(study)) == 3 and stopped("tiny")["at_trial"] == 3


def test_target_reached_stops_the_study(workdir, capsys):
    path = tiny_study(workdir, epochs=1)  # imdb, val_accuracy: always at least 0
    code, out, err = run_cli(capsys, "optimize", str(path), "--trials", "8", "--target", "0")
    assert code == 0, err
    assert "study tiny stopped: target val_accuracy ≥ 0 reached at trial 0" in out
    study = optuna.load_study(study_name="tiny", storage=DEFAULT_URL)
    assert len([t for t in study.get_trials() if not over_budget(t)]) == 1
    out, _ = list_lines(capsys)
    assert "tiny: stopped: target val_accuracy ≥ 0 reached at trial 0" in out


def test_with_two_workers_no_trial_starts_after_the_rule_fires(workdir):
    """The rule is given while two workers train (so both read it from the study, neither
    from its command line); once it is given, no trial starts: only those in flight end."""
    path = tiny_study(workdir, "boston_housing", epochs=1, validation="first:30")
    study = study_loop.open_study(studyfile.load(str(path)), DEFAULT_URL, "tiny")
    args = ["optimize", str(path), "--trials", "300", "--workers", "2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpo", *args],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=default_sigint,
    )
    try:
        wait_for(lambda: running(study) >= 2, timeout=240, what="two trials at once")
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.0))  # unbeatable
        stop_rules.set_rules(study._storage, study_id(study), stop_after=3)
        given = datetime.now()  # Optuna's trial times: this machine's clock, naive
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out[-3000:]
    assert "stopped: no improvement in 3 trials" in out
    record = stopped("tiny")
    assert record is not None and record["rule"] == "stop_after"
    trials = [t for t in study.get_trials() if not over_budget(t)]
    assert len(trials) < 100 and not [t for t in trials if t.state == TrialState.RUNNING]
    # It fires when its third trial without improvement ends, or at once when it is given
    # after that. From then on, each worker's trial in flight ends (two at most) and none is
    # admitted; one may start in the moment a worker's result is written and not yet read.
    third = next(t for t in trials if t.number == record["at_trial"]).datetime_complete
    fired = max(third, given)
    table = [(t.number, t.datetime_start, t.datetime_complete) for t in trials]
    started = [t.number for t in trials if t.datetime_start > fired]
    ended = [t.number for t in trials if t.datetime_complete > fired and t.value != 0.0]
    assert len(started) <= 1 and len(ended) <= 2, (record, fired, table)


def running(study: optuna.Study) -> int:
    return sum(t.state == TrialState.RUNNING for t in study.get_trials())


def start_worker(workdir, url: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hpo", "worker", "--storage", url, "--poll", "0.5"],
        cwd=workdir,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=default_sigint,
    )


def test_the_pool_keeps_stop_after_and_a_time_budget(workdir, capsys):
    """Submitted with --stop-after, a study ends at the rule; submitted with --timeout 2, no
    worker starts its trials once 2 s have passed since a worker first served it."""
    url = f"sqlite:///{workdir}/pool.db"
    path = tiny_study(workdir, "boston_housing", epochs=1, validation="first:30")
    unbeatable(path, "plateau", url)
    for name, rule in (("plateau", ["--stop-after", "2"]), ("timed", ["--timeout", "2"])):
        code, _, err = run_cli(
            capsys, "submit", str(path), "--trials", "30", "--study", name, "--storage", url, *rule
        )
        assert code == 0, err
    out, rows = list_lines(capsys, url)
    assert "timed: time budget 2 s: its clock starts when a worker serves it" in out
    proc = start_worker(workdir, url)
    try:
        read_until(proc, "serving")
        wait_for(lambda: stopped("plateau", url) and stopped("timed", url), what="both stopped")
        time.sleep(1.0)  # a last trial in flight ends
    finally:
        said = stop_worker(proc, signal.SIGTERM)
    assert "plateau: stopped: no improvement in 2 trials (best 0 at trial 0)" in said
    assert "timed: stopped: its 2 s time budget is spent" in said
    plateau = optuna.load_study(study_name="plateau", storage=url)
    assert len(real(plateau)) == 2
    timed = optuna.load_study(study_name="timed", storage=url)
    rules, stop, _ = stop_rules.of_attrs(timed.user_attrs)
    assert stop is not None and stop.rule == "timeout" and rules.clock_started is not None
    started = [t.datetime_start for t in timed.get_trials() if not over_budget(t)]
    assert 1 <= len(started) < 30
    # Optuna writes the worker's local time: the same clock as time.time() here.
    spent = datetime.fromtimestamp(rules.clock_started + rules.timeout)
    assert all(start <= spent for start in started), (started, spent)
    out, rows = list_lines(capsys, url)
    assert "plateau: stopped: no improvement in 2 trials (best 0 at trial 0)" in out
    assert "timed: stopped: its 2 s time budget is spent" in out
    assert "stopped" in rows["plateau"] and "stopped" in rows["timed"]
    from optuna_dashboard import get_note

    assert "stopped: its 2 s time budget is spent" in get_note(timed)  # the queue's note
