"""Stop rules (hpo.search.stop_rules): when --stop-after, --target and the pool's --timeout fire,
on hand-made trials; how they are recorded (compare-and-set, versions) and read back from a
storage that may hold anything; the budget's admission refusing new trials once one fired."""

from __future__ import annotations

import math

import optuna
import pytest
from conftest import run_cli, tiny_study
from optuna.trial import TrialState, create_trial

from hpo.errors import HpoError
from hpo.optuna_private import rdb_storage_of, study_id
from hpo.results import summary
from hpo.search import queue, stop_rules
from hpo.search.budget import OVER_BUDGET, Budget, OverBudget
from hpo.search.stop_rules import COPIED, Rules, fired, rules_of, stop_of
from hpo.search.storage import open_storage


def trial(number: int, value: float | None, state=TrialState.COMPLETE, **attrs):
    made = create_trial(state=state, value=value if state == TrialState.COMPLETE else None)
    made.number = number
    made.user_attrs.update(attrs)
    return made


def values(*vals, start: int = 0):
    return [trial(start + i, v) for i, v in enumerate(vals)]


def test_stop_after_counts_complete_trials_without_improvement_in_number_order():
    rules = Rules(stop_after=2)
    # maximize: 0.5, 0.7 (best), 0.6, 0.7 (equal: no improvement) -> fires at trial 3
    stop = fired(rules, values(0.5, 0.7, 0.6, 0.7), "maximize", "val_accuracy")
    assert stop is not None and stop.rule == "stop_after" and stop.at_trial == 3
    assert stop.why == "no improvement in 2 trials (best 0.7 at trial 1)"
    # an improvement resets the count
    assert fired(rules, values(0.5, 0.4, 0.6, 0.5), "maximize", "m") is None
    # minimize: lower is better
    stop = fired(rules, values(3.0, 2.0, 2.5, 2.1), "minimize", "val_mae")
    assert stop is not None and stop.at_trial == 3 and "best 2 at trial 1" in stop.why
    assert fired(rules, values(3.0, 2.0, 2.5, 1.0), "minimize", "val_mae") is None


def test_stop_after_leaves_out_running_pruned_failed_and_copied_trials():
    rules = Rules(stop_after=2)
    trials = [
        trial(0, 0.9),
        trial(1, None, TrialState.RUNNING),  # counts once it ends
        trial(2, None, TrialState.PRUNED),
        trial(3, None, TrialState.FAIL, fail_reason="NaN loss"),
        trial(4, 0.5),
    ]
    assert fired(rules, trials, "maximize", "m") is None  # one non-improving trial so far
    stop = fired(rules, [*trials, trial(5, 0.8)], "maximize", "m")
    assert stop is not None and stop.at_trial == 5
    # Trials copied from another study are a best to beat, never one of the N.
    copied = [trial(i, 0.95, **{COPIED: {"study": "old", "trial": i}}) for i in range(3)]
    assert fired(rules, [*copied, trial(3, 0.5)], "maximize", "m") is None
    stop = fired(rules, [*copied, trial(3, 0.5), trial(4, 0.6)], "maximize", "m")
    assert stop is not None and "best 0.95 at trial 0" in stop.why


def test_target_fires_at_the_first_trial_that_reaches_it():
    stop = fired(Rules(target=0.89), values(0.8, 0.9, 0.95), "maximize", "val_accuracy")
    assert stop is not None and stop.rule == "target" and stop.at_trial == 1
    assert stop.why == "target val_accuracy ≥ 0.89 reached at trial 1"
    assert fired(Rules(target=0.89), values(0.8, 0.88), "maximize", "val_accuracy") is None
    stop = fired(Rules(target=3), values(4.0, 3.0), "minimize", "val_mae")  # reached when equal
    assert stop is not None and stop.why == "target val_mae ≤ 3 reached at trial 1"
    assert fired(Rules(target=3), values(4.0, 3.5), "minimize", "val_mae") is None


def test_the_time_budget_fires_once_its_clock_has_run_for_it():
    rules = Rules(timeout=60, clock_started=1000.0)
    trials = [*values(0.5, 0.6), trial(2, None, TrialState.RUNNING)]
    assert fired(rules, trials, "maximize", "m", now=1059.0) is None
    stop = fired(rules, trials, "maximize", "m", now=1060.0)
    assert stop is not None and stop.rule == "timeout" and stop.at_trial == 2
    assert stop.why == "its 60 s time budget is spent"
    assert fired(Rules(timeout=60), trials, "maximize", "m", now=1e12) is None  # not started
    assert Rules(timeout=60, clock_started=1000.0).time_line(now=1020) == (
        "time budget 60 s: 20 s used, 40 s left"
    )


@pytest.mark.parametrize(
    "record, problem",
    [
        ("ten", "not a table"),
        ({"stop_after": 0}, "stop_after"),
        ({"stop_after": True}, "stop_after"),
        ({"stop_after": 2.5}, "stop_after"),
        ({"target": "0.9"}, "target"),
        ({"target": math.inf}, "target"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": 1e30}, "timeout"),
        ({"clock_started": "now"}, "clock_started"),
        ({"version": -1}, "version"),
    ],
)
def test_a_rules_record_hpo_did_not_write_is_refused_with_the_reason(record, problem):
    rules, found = rules_of(record)
    assert rules == Rules() and found is not None and found.startswith(problem)


def test_a_stop_is_read_only_under_the_rules_it_fired_under_and_shown_as_one_line():
    rules = Rules(stop_after=3, version=2)
    good = {"rule": "stop_after", "why": "no improvement", "at_trial": 7, "version": 2}
    assert stop_of(good, rules) == stop_rules.Stop("stop_after", "no improvement", 7, 2)
    assert stop_of({**good, "version": 1}, rules) is None  # new rules given since: void
    assert stop_of({**good, "rule": "target"}, rules) is None  # that rule is off
    assert stop_of({**good, "rule": "rm -rf"}, rules) is None
    assert stop_of({**good, "at_trial": -1}, rules) is None
    assert stop_of({**good, "why": 3}, rules) is None
    shown = stop_of({**good, "why": "\x1b[31mred\n" + "x" * 1000}, rules)
    assert shown is not None and "\x1b" not in shown.why and "\n" not in shown.why
    assert len(shown.why) == stop_rules.WHY_MAX


def test_bad_rules_given_are_one_line():
    for kwargs, text in (
        ({"stop_after": 0}, "--stop-after must be a whole number of trials from 1"),
        ({"stop_after": -3}, "--stop-after must be"),
        ({"target": math.nan}, "--target must be a finite number"),
        ({"timeout": 0}, "--timeout must be a number of seconds above 0"),
    ):
        with pytest.raises(HpoError, match=text):
            stop_rules.check(**kwargs)


@pytest.mark.parametrize("value", ["0", "-2"])
def test_stop_after_0_is_one_line_and_exit_2(workdir, capsys, value):
    path = tiny_study(workdir)
    for command in ("optimize", "submit"):
        code, out, err = run_cli(capsys, command, str(path), f"--stop-after={value}")
        assert code == 2, out + err
        assert err.strip().count("\n") == 0 and "--stop-after must be" in err, err
        assert "Traceback" not in out + err
    code, _, err = run_cli(capsys, "submit", str(path), "--timeout", "0")
    assert code == 2 and "--timeout must be" in err and "\n" not in err.strip()


@pytest.fixture
def study(tmp_path) -> optuna.Study:
    store = open_storage(f"sqlite:///{tmp_path}/s.db")
    return optuna.create_study(storage=store, study_name="s", direction="maximize")


def test_rules_are_set_by_compare_and_set_and_a_new_rule_voids_a_stop(study):
    store, sid = rdb_storage_of(study), study_id(study)
    rules, before = stop_rules.set_rules(store, sid, stop_after=5)
    assert rules == Rules(stop_after=5, version=1) and before == Rules()
    assert stop_rules.set_rules(store, sid, stop_after=5) == (rules, None)  # no change, no write
    assert stop_rules.set_rules(store, sid) == (rules, None)  # none given: the study's stay
    rules, before = stop_rules.set_rules(store, sid, target=0.9, timeout=60)
    assert rules == Rules(5, 0.9, 60.0, None, 2) and before == Rules(stop_after=5, version=1)
    assert stop_rules.start_clock(store, sid, now=100.0).clock_started == 100.0
    assert stop_rules.start_clock(store, sid, now=200.0).clock_started == 100.0  # first stays
    # A recorded stop holds under these rules, and is void once new ones are given.
    stop = stop_rules.Stop("target", "target reached", 0, rules.version)
    assert stop_rules.record_stop(store, sid, stop) == (stop, True)
    other = stop_rules.Stop("stop_after", "no improvement", 4, rules.version)
    assert stop_rules.record_stop(store, sid, other) == (stop, False)  # the first one stays
    assert stop_rules.of_attrs(store.get_study_user_attrs(sid))[1] == stop
    rules, _ = stop_rules.set_rules(store, sid, timeout=120)  # a new time budget: clock again
    assert rules.clock_started is None and rules.version == 3
    assert stop_rules.of_attrs(store.get_study_user_attrs(sid))[1] is None


def test_once_a_rule_fires_the_budget_admits_no_trial_and_the_stop_is_recorded_once(
    study, monkeypatch
):
    stop_rules.set_rules(rdb_storage_of(study), study_id(study), stop_after=2)
    for value in (0.9, 0.5):
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=value))
    store, writes = rdb_storage_of(study), []
    cas = store.update_study_attr
    monkeypatch.setattr(
        store, "update_study_attr", lambda i, k, c: writes.append(k) or cas(i, k, c)
    )
    noted = []
    budget = Budget(10, stop=stop_rules.Watch("val_accuracy", on_stop=lambda s, t: noted.append(t)))
    budget.admit(study.ask())  # one trial without improvement: admitted
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.6))
    refused = study.ask()
    with pytest.raises(OverBudget, match="no improvement in 2 trials"):
        budget.admit(refused)
    assert (
        rdb_storage_of(study).get_trial(refused._trial_id).user_attrs["fail_reason"] == OVER_BUDGET
    )
    recorded = rdb_storage_of(study).get_study_user_attrs(study_id(study))[stop_rules.STOPPED_ATTR]
    assert recorded == {
        "rule": "stop_after",
        "why": "no improvement in 2 trials (best 0.9 at trial 0)",
        "at_trial": 3,
        "version": 1,
    }
    assert budget.free_slots(study) == 0 and not budget.wait_for_slot(study)
    # Written by the storage's compare-and-set (not through Optuna's cache, which has none).
    assert writes == [stop_rules.STOPPED_ATTR]
    # A second worker's watch sees the recorded stop: it writes and says nothing again.
    other = stop_rules.Watch("val_accuracy", on_stop=lambda s, t: noted.append(t))
    assert other(study) == recorded["why"]
    assert len(noted) == 1


def test_a_malformed_rules_record_starts_no_trial_and_leaves_the_queued_study(study):
    study.set_user_attr(stop_rules.ATTR, {"stop_after": "many"})
    why = stop_rules.Watch("m")(study)
    assert why is not None and "stop_rules record is malformed" in why
    attrs = {queue.ATTR: {"trials": 5}, stop_rules.ATTR: {"stop_after": "many"}}
    entry = queue.Entry.of("s", 1, attrs)
    assert entry.malformed and entry.state == queue.LEFT and "stop_after" in entry.reason
    # Given again, the rule replaces the record.
    rules, _ = stop_rules.set_rules(rdb_storage_of(study), study_id(study), stop_after=3)
    assert rules.stop_after == 3 and stop_rules.Watch("m")(study) is None


def test_list_says_why_a_study_stopped_and_its_time_budget(study, capsys):
    sid = study_id(study)
    study.set_user_attr("hpo", {"dataset": "imdb", "metric": "val_accuracy"})
    stop_rules.set_rules(rdb_storage_of(study), sid, target=0.5)
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.7))
    assert stop_rules.Watch("val_accuracy")(study) is not None
    other = optuna.create_study(storage=rdb_storage_of(study), study_name="t")
    stop_rules.set_rules(rdb_storage_of(study), study_id(other), timeout=3600)
    table, lines = summary.storage_listing(rdb_storage_of(study))
    assert "s: stopped: target val_accuracy ≥ 0.5 reached at trial 0" in lines
    assert "t: time budget 3600 s: its clock starts when a worker serves it" in lines
    from rich.console import Console

    console = Console(width=200)
    with console.capture() as captured:
        console.print(table)
    row = next(line for line in captured.get().splitlines() if "│ s " in line)
    assert "stopped" in row
