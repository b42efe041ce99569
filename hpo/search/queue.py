"""The study queue: studies submitted to a storage, for any `hpo worker` to run.

The database is the only server. A queued study is an ordinary Optuna study with one more
user attr (ATTR) saying how many trials it should have, its priority, the options it was
submitted with and, for own data, where its prepared arrays are in the artifact store.
`hpo submit` writes it, `hpo stop` and `hpo resume` change its state, workers read it: no
second server, no new protocol. The state stored is "queued" or "paused"; `hpo list` derives
"running" (trials in flight) and "done" (the budget met).
"""

from __future__ import annotations

import fnmatch
import json
import time
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import optuna
from optuna.trial import TrialState
from rich.console import Console

from hpo import artifacts as artifact_stores
from hpo.errors import HpoError
from hpo.search import runner, storage
from hpo.search.budget import OVER_BUDGET, counts, counts_toward_budget, over_budget
from hpo.study import studyfile
from hpo.study.studyfile import StudySpec

ATTR = "hpo_queue"
NOTE = "**Queue:**"  # how the queue's note on the study (optuna-dashboard) begins
QUEUED, PAUSED = "queued", "paused"
# What a worker applies to the study file.
OPTIONS = ("sampler", "pruner", "max_epochs", "patience", "seed")
RATE_WINDOW = timedelta(minutes=10)  # `hpo list`'s trials per minute: over the last 10 minutes


@dataclass
class Entry:
    """One study of the queue, as its attr records it."""

    name: str
    study_id: int
    trials: int  # the budget: finished trials it should have in all
    priority: float
    state: str  # QUEUED or PAUSED
    options: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] | None = None  # own data: its arrays in the artifact store
    reason: str | None = None  # why it was paused
    since: float = 0.0  # when it was last submitted or resumed (time.time())
    recorded: dict[str, Any] = field(default_factory=dict)  # its runner.SPEC_ATTR

    @classmethod
    def of(cls, name: str, study_id: int, attrs: dict[str, Any]) -> Entry | None:
        record = attrs.get(ATTR)
        if not isinstance(record, dict):
            return None
        return cls(
            name,
            study_id,
            int(record["trials"]),
            float(record.get("priority", 1)),
            record.get("state", QUEUED),
            dict(record.get("options") or {}),
            record.get("data"),
            record.get("reason"),
            float(record.get("since") or record.get("submitted") or 0.0),
            attrs.get(runner.SPEC_ATTR) or {},
        )


def entries(store: optuna.storages.BaseStorage, pattern: str = "*") -> list[Entry]:
    """The queued and paused studies whose names match `pattern` (one query for all)."""
    found = []
    for frozen in store.get_all_studies():
        if fnmatch.fnmatchcase(frozen.study_name, pattern):
            entry = Entry.of(frozen.study_name, frozen._study_id, frozen.user_attrs)
            if entry is not None:
                found.append(entry)
    return found


def spec_of(entry: Entry) -> StudySpec:
    """The study file the study was submitted with, as recorded in it, and its options: a
    worker trains what the submitter asked for, whatever study files its own machine has."""
    recorded = entry.recorded
    text = recorded.get("study_file_text")
    if not text:
        raise HpoError(f"study {entry.name!r} records no study file (it was not submitted by hpo)")
    source = recorded.get("study_file") or entry.name
    spec = studyfile.parse(tomllib.loads(text), source)
    return spec.with_overrides(**{k: v for k, v in entry.options.items() if k in OPTIONS})


def submit(
    target: str,
    *,
    trials: int,
    priority: float | None = None,
    study: str | None = None,
    storage_url: str,
    artifacts: str = artifact_stores.DEFAULT,
    data_dir: str | None = None,
    console: Console,
    **overrides: Any,
) -> str:
    """Create (or extend) the study of `target` in the storage, queued for workers with a budget
    of `trials`; returns its name. Own data is checked and uploaded to the artifact store. A
    study submitted before keeps its priority (1 for a new one) and options unless given."""
    if trials < 1:
        raise HpoError(f"--trials must be at least 1, got {trials}")
    if priority is not None and not priority > 0:
        raise HpoError(f"--priority must be above 0, got {priority}")
    spec = studyfile.load(str(target)).with_overrides(**overrides)
    name = study or spec.name
    data_record = None
    prepared = None
    if spec.data is not None:  # read and checked here: a bad file is one line, no study made
        from hpo.data.load import load_source

        with console.status(f"loading {spec.dataset}…"):
            prepared = load_source(spec.source, data_dir)
    opened = runner.open_study(spec, storage_url, name)
    old = opened.user_attrs.get(ATTR) or {}
    if prepared is not None:
        from hpo.data import shipped, stored

        stored.save_or_check(opened, prepared.preparation.to_dict(), spec.dataset)
        with console.status("uploading the prepared data to the artifact store…"):
            store = artifact_stores.open_store(artifacts)
            data_record = shipped.upload(prepared, store, opened, old.get("data"))
    given = {k: overrides.get(k) for k in OPTIONS if overrides.get(k) is not None}
    record = {
        "state": QUEUED,
        "trials": trials,
        "priority": priority if priority is not None else old.get("priority", 1.0),
        "options": {**(old.get("options") or {}), **given},
        "data": data_record,
        "submitted": time.time(),
        "since": time.time(),
    }
    opened.set_user_attr(ATTR, record)
    note(opened, record)
    return name


def set_state(name: str, storage_url: str, state: str, reason: str | None = None) -> Entry:
    """Pause (`hpo stop`) or queue again (`hpo resume`) a submitted study."""
    store = storage.open_storage(storage_url)
    try:
        study_id = store.get_study_id_from_name(name)
    except KeyError as exc:
        raise HpoError(
            f"no study named {name!r} in {storage.redact(storage_url)} "
            "(hpo list shows the studies there)"
        ) from exc
    study = optuna.load_study(study_name=name, storage=store)
    record = study.user_attrs.get(ATTR)
    if not isinstance(record, dict):
        raise HpoError(
            f"study {name!r} was not submitted to the queue (hpo submit); an hpo optimize "
            "run stops with Ctrl-C"
        )
    record = {**record, "state": state, "reason": reason}
    if state == QUEUED:  # it joins the queue's fair shares from now (hpo.search.pool)
        record["since"] = time.time()
    study.set_user_attr(ATTR, record)
    note(study, record)
    return Entry.of(name, study_id, {ATTR: record})


def note(study: optuna.Study, record: dict[str, Any]) -> None:
    """The queue state on the study's note, where optuna-dashboard shows it."""
    from optuna_dashboard import get_note, save_note

    existing = get_note(study)
    if existing and not existing.startswith(NOTE):
        return  # the study's note is analyze's or the user's: the queue's must not erase it
    when = datetime.fromtimestamp(record["submitted"]).strftime("%Y-%m-%d %H:%M")
    line = (
        f"{NOTE} {record['state']} · budget {record['trials']} trials · priority "
        f"{record['priority']:g} · submitted {when}"
    )
    if record.get("reason"):
        line += f" · {record['reason']}"
    save_note(
        study, line + "\n\n(`hpo list` shows the queue; `hpo stop` and `hpo resume` change it)"
    )


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
    started_since: int = 0  # trials (placeholders aside) started since the given moment


def tallies(store: Any, entries: list[Entry], since: float) -> dict[int, Tally]:
    """Each entry's Tally, by study id, from one grouped query (storage.trial_tally)."""
    found = {entry.study_id: Tally() for entry in entries}
    rows = store.trial_tally(list(found), datetime.fromtimestamp(since))
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


def state(entry: Entry, standing: Standing) -> str:
    if entry.state == PAUSED:
        return PAUSED
    if standing.finished >= entry.trials:
        return "done"
    return "running" if standing.running else QUEUED
