"""How a queued study stands: `hpo list`'s Standing (read from its trials) and the Tally a
worker chooses its next study by (one grouped query for all the queued studies)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import optuna
from optuna.trial import TrialState

from hpo.search.budget import OVER_BUDGET, counts, counts_toward_budget, over_budget
from hpo.search.queue import DONE, LEFT, PAUSED, QUEUED, Entry

RATE_WINDOW = timedelta(minutes=10)  # `hpo list`'s trials per minute: over the last 10 minutes


@dataclass
class Standing:
    """How a study stands, for `hpo list`."""

    finished: int  # trials that count towards the budget
    running: int  # trials in flight now: the workers on it
    per_minute: float  # trials finished a minute, over its last RATE_WINDOW of activity

    @classmethod
    def of(cls, trials: list[optuna.trial.FrozenTrial]) -> Standing:
        trials = [t for t in trials if not over_budget(t)]
        # Measured on the trials' own timestamps (the workers' clocks), not this machine's:
        # Optuna writes them in the workers' local time.
        done = [t.datetime_complete for t in trials if counts_toward_budget(t)]
        done = [d for d in done if d is not None]
        starts = [t.datetime_start for t in trials if t.datetime_start is not None]
        per_minute = 0.0
        if done:
            latest = max(done)
            recent = sum(latest - d <= RATE_WINDOW for d in done)
            span = min(RATE_WINDOW, latest - min(starts))
            per_minute = recent / max(span.total_seconds() / 60, 1.0)
        return cls(
            sum(counts_toward_budget(t) for t in trials),
            sum(t.state == TrialState.RUNNING for t in trials),
            per_minute,
        )


@dataclass
class Tally:
    """What a worker needs of a queued study to choose its next trial (one query for all)."""

    finished: int = 0  # trials that count towards the budget
    running: int = 0
    started_since: int = 0  # trials (placeholders aside) started since the given trial id


def tallies(store: Any, entries: list[Entry], since_trial: int) -> dict[int, Tally]:
    """Each entry's Tally, by study id, from one grouped query (storage.trial_tally); started
    counts the trials made after trial id `since_trial`."""
    found = {entry.study_id: Tally() for entry in entries}
    rows = store.trial_tally(list(found), since_trial)
    for study_id, state, reason_json, count, recent in rows:
        if not isinstance(state, TrialState):  # a driver that gives the stored name
            state = TrialState[state] if isinstance(state, str) else TrialState(state)
        reason = json.loads(reason_json) if reason_json is not None else None
        tally = found[study_id]
        if counts(state, reason):
            tally.finished += count
        if state == TrialState.RUNNING:
            tally.running += count
        if not (state == TrialState.FAIL and reason == OVER_BUDGET):
            tally.started_since += int(recent or 0)
    return found


STOPPED = "stopped"  # a stop rule ended it (hpo.search.stop_rules): `hpo list` says why


def state(entry: Entry, standing: Standing) -> str:
    if entry.state in (PAUSED, LEFT):
        return entry.state
    if standing.finished >= entry.trials:
        return DONE
    if entry.stop is not None:
        return "running" if standing.running else STOPPED  # its last trials end first
    return "running" if standing.running else QUEUED
