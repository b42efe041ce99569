"""The study queue: studies submitted to a storage, for any `hpo worker` to run.

The database is the only server. A queued study is an ordinary Optuna study with one more
user attr (ATTR) saying how many trials it should have, its priority, the options it was
submitted with and, for own data, where its prepared arrays are in the artifact store.
`hpo submit` writes it, `hpo stop` and `hpo resume` change its state, workers read it: no
second server, no new protocol. The state stored is "queued", "paused", "done" (a worker saw
the budget met) or "left" (no worker serves it: its workers kept dying); `hpo list` derives
"running" (trials in flight) and "done" (the budget met).

Several people and machines write these records at once, so every change is a compare-and-set
in the database (`update`: storage.update_study_attr, with a version counter): a submit that
lands between a worker's read and its write is never overwritten. A record that does not hold
what hpo writes (by hand, an older hpo, an attacker) is one study left with the reason, never
a worker's crash; a study whose own data cannot be served says why on `hpo list` and the note.
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
import socket
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import optuna
from rich.console import Console

from hpo import artifacts as artifact_stores
from hpo import optuna_private
from hpo.errors import HpoError
from hpo.search import stop_rules, storage, study_loop
from hpo.search.search_options import OVERRIDES as OPTIONS
from hpo.search.search_options import SearchOptions
from hpo.study import studyfile
from hpo.study.model_code import check_build
from hpo.study.space import Choice
from hpo.study.studyfile import StudySpec

ATTR = "hpo_queue"
NOTE = "**Queue:**"  # how the queue's note on the study (optuna-dashboard) begins
QUEUED, PAUSED, DONE, LEFT = "queued", "paused", "done", "left"
STATES = (QUEUED, PAUSED, DONE, LEFT)
# What a worker applies to the study file.
# A study's share against a priority-1 study: bounded, so no study starves the others.
PRIORITY_MIN, PRIORITY_MAX = 0.01, 100.0
# What one submitted study may ask of a shared pool's workers: a worker that runs out of memory
# on a 10**6-unit layer or vocabulary dies, and the next one takes the same trial.
SHARED_LIMITS = {"layers": 16, "units": 4096, "batch_size": 8192}
NUM_WORDS_MAX = 100_000


@dataclass
class Entry:
    """One study of the queue, as its attr records it."""

    name: str
    study_id: int
    trials: int  # the budget: finished trials it should have in all
    priority: float
    state: str  # QUEUED, PAUSED, DONE or LEFT
    options: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] | None = None  # own data: its arrays in the artifact store
    reason: str | None = None  # why it was paused or left
    since: float = 0.0  # when it was last submitted or resumed (time.time())
    recorded: dict[str, Any] = field(default_factory=dict)  # its study_loop.SPEC_ATTR
    since_trial: int = 0  # the storage's newest trial id then (fair shares count from it)
    left: dict[str, Any] | None = None  # the last worker that could not serve it, and why
    malformed: bool = False  # its record is not what hpo writes: left, with the reason
    # Its build function and its module's SHA-256 and file name (study_loop.MODEL_ATTR), as
    # submitted: a worker serves it only with a copy of that module found on its own
    # --code-path or installed. None: hpo's Dense stack.
    model_code: dict[str, Any] | None = None
    # Its stop rules and time budget (hpo.search.stop_rules, the study's own attr, read here
    # with the queue in one query), and why a rule ended it (None: it goes on).
    rules: stop_rules.Rules = field(default_factory=stop_rules.Rules)
    stop: stop_rules.Stop | None = None

    @classmethod
    def of(cls, name: str, study_id: int, attrs: dict[str, Any]) -> Entry | None:
        """The entry of a study's attrs; None for a study never submitted."""
        if ATTR not in attrs:
            return None
        record = attrs[ATTR]
        recorded = attrs.get(study_loop.SPEC_ATTR)
        recorded = recorded if isinstance(recorded, dict) else {}
        problem = malformed(record)
        rules, stop, rules_problem = stop_rules.of_attrs(attrs)
        if problem is None and rules_problem is not None:
            problem = f"{stop_rules.ATTR}: {rules_problem}"
        if problem is not None:
            why = f"its queue record is malformed ({problem}); hpo submit it again"
            return cls(name, study_id, 0, 1.0, LEFT, reason=why, recorded=recorded, malformed=True)
        return cls(
            name,
            study_id,
            record["trials"],
            _bounded_priority(record),
            record.get("state", QUEUED),
            dict(record.get("options") or {}),
            record.get("data"),
            record.get("reason"),
            _since(record),
            recorded,
            int(record.get("since_trial") or 0),
            record.get("left"),
            model_code=record.get("model_code"),
            rules=rules,
            stop=stop,
        )

    def why(self) -> str | None:
        """Why it is not served (paused, left, or a worker that could not serve it)."""
        if self.state in (PAUSED, LEFT) and self.reason:
            return self.reason
        if self.state == QUEUED and self.left:
            return f"left by {self.left.get('by')}: {self.left.get('reason')}"
        return None


def malformed(record: Any) -> str | None:
    """What in a queue record is not what hpo writes, or None: checked before any use, so a
    record written by hand or by an attacker is one study left, not a crash of every worker
    (a KeyError, a priority of 0 dividing) under a restart policy."""
    if not isinstance(record, dict):
        return f"not a table: {type(record).__name__}"
    trials = record.get("trials")
    if trials is None:
        return "trials: missing"
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        return f"trials: must be a whole number of at least 1, got {trials!r}"
    priority = record.get("priority", 1.0)
    if not _number(priority) or priority <= 0:  # an older hpo's 200 or 0.001: bounded on read
        return f"priority: must be a number above 0, got {priority!r}"
    if record.get("state", QUEUED) not in STATES:
        return f"state: must be one of {', '.join(STATES)}, got {record.get('state')!r}"
    for key, kind in (("options", dict), ("data", dict), ("left", dict), ("reason", str)):
        if record.get(key) is not None and not isinstance(record[key], kind):
            return f"{key}: must be a {kind.__name__}, got {record[key]!r}"
    data = record.get("data")
    if data is not None and not (
        artifact_stores.is_artifact_id(data.get("artifact_id")) and _sha256(data.get("sha256"))
    ):
        # Both become paths on a worker (the artifact store's file, the cache's copy).
        return "data: must name its artifact_id (a UUID) and sha256 (64 hex digits)"
    for key in ("since", "submitted", "since_trial"):
        if record.get(key) is not None and not _number(record[key]):
            return f"{key}: must be a number, got {record[key]!r}"
    return _model_code_problem(record.get("model_code"))


def _model_code_problem(code: Any) -> str | None:
    """What in a record's model_code is not what `hpo submit` writes: a build that is not
    `module:function`, a SHA-256 that is not 64 hex digits, a file that is not a plain name.
    Shown and compared only: a worker imports the module it finds itself, never a path."""
    if code is None:
        return None
    problem = study_loop.model_record_problem(code)
    if problem is None:
        try:
            check_build(code["build"], "model_code")
        except HpoError:
            problem = f'build: must be "module:function", got {code["build"]!r}'
    if problem is None and not _sha256(code.get("sha256")):
        problem = f"sha256: must be 64 hex digits, got {code.get('sha256')!r}"
    return None if problem is None else f"model_code: {problem}"


def _since(record: dict[str, Any]) -> float:
    """When a well-formed record was last submitted or resumed (time.time()), 0 if never said."""
    return float(record.get("since") or record.get("submitted") or 0.0)


def _bounded_priority(record: dict[str, Any]) -> float:
    """A well-formed record's priority, within today's bounds (an older hpo allowed any)."""
    return min(max(float(record.get("priority", 1.0)), PRIORITY_MIN), PRIORITY_MAX)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _sha256(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) is not None


def update(
    store: storage.ReconnectingRDBStorage, study_id: int, change: Callable[[Any], dict | None]
) -> tuple[Any, bool]:
    """Change a study's queue record with no lost update (storage.update_study_attr: a
    compare-and-set, retried on conflict), its version counted up. `change` gets the record
    as stored now (None when absent) and returns the new one, or None to leave it. Returns
    (the record now, whether this call wrote it)."""

    def versioned(current: Any) -> dict | None:
        new = change(current)
        if new is None:
            return None
        version = current.get("version", 0) if isinstance(current, dict) else 0
        version = version if isinstance(version, int) and not isinstance(version, bool) else 0
        return {**new, "version": version + 1}

    return store.update_study_attr(study_id, ATTR, versioned)


def worker_id() -> str:
    """This worker, as the queue record names it: host and process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def entries(store: optuna.storages.BaseStorage, pattern: str = "*") -> list[Entry]:
    """The submitted studies whose names match `pattern` (one query for all)."""
    found = []
    for frozen in store.get_all_studies():
        if fnmatch.fnmatchcase(frozen.study_name, pattern):
            entry = Entry.of(frozen.study_name, optuna_private.study_id(frozen), frozen.user_attrs)
            if entry is not None:
                found.append(entry)
    return found


NOT_SHIPPED = (
    "its own data was not shipped with it (a worker reads only the arrays hpo submit "
    "uploads, never a file the queue names): hpo submit it again"
)


def spec_of(entry: Entry) -> StudySpec:
    """The study file the study was submitted with, as recorded in it, and its options: a
    worker trains what the submitter asked for, whatever study files its own machine has.
    For own data the task and training rows come from the record too (what submit found in
    the file), so a worker needs only the record and the arrays in the artifact store, never
    the submitter's file."""
    recorded = entry.recorded
    text = recorded.get("study_file_text")
    if not isinstance(text, str) or not text:
        raise HpoError(f"study {entry.name!r} records no study file (it was not submitted by hpo)")
    source = str(recorded.get("study_file") or entry.name)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise HpoError(f"{source}: the recorded study file is not valid TOML ({exc})") from exc
    known = None
    data = entry.data or {}
    rows = data.get("rows")
    if isinstance(data.get("task"), str) and isinstance(rows, int) and rows >= 1:
        known = studyfile.Known(task=data["task"], rows=rows)
    elif "data" in doc:  # parsing would read the file the record names, on this machine
        raise HpoError(NOT_SHIPPED)
    spec = studyfile.parse(doc, source, known)
    spec = spec.with_overrides(**{k: v for k, v in entry.options.items() if k in OPTIONS})
    check_shared(spec)
    return spec


def check_shared(spec: StudySpec) -> None:
    """Refuse a study whose space asks more of a shared pool's workers than SHARED_LIMITS
    and NUM_WORDS_MAX: its trials would run them out of memory one after another. Checked by
    submit and again by the worker (the record may have been written by hand)."""
    source = spec.path or spec.name
    for name, dim in spec.space.dims.items():
        # A build function's own per-layer names (units_1, units_2 …) get their base's limit.
        limit = SHARED_LIMITS.get(re.sub(r"_\d+$", "", name))
        if limit is None:
            continue
        values = dim.values if isinstance(dim, Choice) else (dim.high,)
        top = max((v for v in values if _number(v)), default=0)
        if top > limit:
            raise HpoError(
                f"{source}: space.{name}: {top} is more than a shared pool allows "
                f"({limit}); hpo optimize runs it on your own machine"
            )
    if spec.num_words > NUM_WORDS_MAX:
        raise HpoError(
            f"{source}: study.num_words: {spec.num_words} is more than a shared pool allows "
            f"({NUM_WORDS_MAX}); hpo optimize runs it on your own machine"
        )


def submit(options: SearchOptions, priority: float | None, console: Console) -> str:
    """Create (or extend) the study of `options.target` in the storage, queued for workers with
    a budget of `options.trials`; returns its name. Own data is checked and uploaded to the
    artifact store. A study submitted before keeps its priority (1 for a new one) and options
    unless given."""
    trials, storage_url, data_dir = options.trials, options.storage_url, options.data_dir
    if trials < 1:
        raise HpoError(f"--trials must be at least 1, got {trials}")
    stop_rules.check(timeout=options.timeout)  # the pool's time budget: checked before any write
    bounded = _number(priority) and PRIORITY_MIN <= priority <= PRIORITY_MAX
    if priority is not None and not bounded:
        raise HpoError(
            f"--priority must be above 0, from {PRIORITY_MIN:g} to {PRIORITY_MAX:g} (a share "
            f"against a priority-1 study), got {priority:g}"
        )
    spec = options.spec()
    check_shared(spec)
    name = options.name(spec)
    # Its module found here, as a worker must find its own copy: a missing one is one line.
    model_code = study_loop.model_record(spec, code_paths=options.code_paths)
    data_record = None
    prepared = None
    if spec.data is not None:  # read and checked here: a bad file is one line, no study made
        from hpo.data.load import load_source

        with console.status(f"loading {spec.dataset}…"):
            prepared = load_source(spec.source, data_dir)
    store = storage.open_storage(storage_url)
    opened = study_loop.open_study(
        spec,
        storage_url,
        name,
        storage=store,
        code_paths=options.code_paths,
        enqueue=True,  # the book's configuration and [[enqueue]], when this makes the study
        console=console,
    )
    old = opened.user_attrs.get(ATTR)
    old = old if isinstance(old, dict) and malformed(old) is None else {}
    if prepared is not None:
        from hpo.data import shipped_arrays, stored_preparation

        stored_preparation.save_or_check(opened, prepared.preparation.to_dict(), spec.dataset)
        with console.status("uploading the prepared data to the artifact store…"):
            artifact_store = artifact_stores.open_store(options.artifacts)
            data_record = shipped_arrays.upload(prepared, artifact_store, opened, old.get("data"))
        # What a worker needs to read the study file without the training file.
        data_record = {**data_record, "task": prepared.task, "rows": len(prepared.x_train)}
    given = {k: v for k, v in options.overrides().items() if v is not None}
    since_trial = store.last_trial_id()

    def change(current: Any) -> dict:
        current = current if isinstance(current, dict) else {}
        kept = current.get("options") if isinstance(current.get("options"), dict) else {}
        if priority is not None:
            share = priority
        elif malformed(current) is None:  # an older hpo's priority, bounded as on read
            share = _bounded_priority(current)
        else:
            share = 1.0
        now = time.time()
        return {
            "state": QUEUED,
            "trials": trials,
            "priority": share,
            "options": {**kept, **given},  # a malformed record's options are kept too
            "data": data_record,
            "submitted": now,
            "since": now,
            "since_trial": since_trial,
            "model_code": model_code,
        }

    stop_rules.set_rules(  # the study's own (those not given stay), before workers see it queued
        store,
        optuna_private.study_id(opened),
        stop_after=options.stop_after,
        target=options.target_value,
        timeout=options.timeout,
    )
    record, _ = update(store, optuna_private.study_id(opened), change)
    stopped = stop_rules.Watch(spec.metric).check(opened)
    if stopped is not None:
        console.print(
            f"note: study {name} {stopped.line()}; give a new --stop-after, --target or "
            "--timeout for the workers to go on",
            highlight=False,
            markup=False,
        )
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
    since_trial = store.last_trial_id()

    def change(record: Any) -> dict:
        if record is None:
            raise HpoError(
                f"study {name!r} was not submitted to the queue (hpo submit); an hpo optimize "
                "run stops with Ctrl-C"
            )
        problem = malformed(record)
        if problem is not None:
            raise HpoError(
                f"study {name!r}: its queue record is malformed ({problem}); hpo submit it "
                f"again (--study {name})"
            )
        record = {**record, "state": state, "reason": reason}
        if state == QUEUED:  # it joins the queue's fair shares from now (hpo.search.queue_worker)
            record.update(since=time.time(), since_trial=since_trial)
            record.pop("left", None)  # the workers try it again
        return record

    record, _ = update(store, study_id, change)
    note(optuna.load_study(study_name=name, storage=store), record)
    return Entry.of(name, study_id, {ATTR: record})


def leave(
    store: storage.ReconnectingRDBStorage, entry: Entry, reason: str, *, every_worker: bool
) -> None:
    """Say on the study's record, and so on `hpo list` and its note, why it is not served:
    by this worker only (its data, its artifact store), or by any worker (`every_worker`: its
    state becomes LEFT until `hpo resume`). A paused or resubmitted study is left alone."""
    if entry.malformed:
        return  # nothing to write into: `hpo list` shows why from the record itself

    def change(record: Any) -> dict | None:
        if malformed(record) is not None or record.get("state", QUEUED) != QUEUED:
            return None
        if _since(record) != entry.since and entry.since:
            return None  # submitted or resumed since this worker read it: try it again
        if every_worker:
            return {**record, "state": LEFT, "reason": reason}
        return {**record, "left": {"by": worker_id(), "reason": reason, "at": time.time()}}

    record, wrote = update(store, entry.study_id, change)
    if wrote:
        note(optuna.load_study(study_name=entry.name, storage=store), record)


def note(study: optuna.Study, record: dict[str, Any]) -> None:
    """The queue state on the study's note, where optuna-dashboard shows it."""
    from optuna_dashboard import get_note, save_note

    existing = get_note(study)
    if existing and not existing.startswith(NOTE):
        return  # the study's note is analyze's or the user's: the queue's must not erase it
    when = datetime.fromtimestamp(record.get("submitted") or 0).strftime("%Y-%m-%d %H:%M")
    line = (
        f"{NOTE} {record['state']} · budget {record['trials']} trials · priority "
        f"{record['priority']:g} · submitted {when}"
    )
    if record.get("reason"):
        line += f" · {record['reason']}"
    rules, stop, _ = stop_rules.of_attrs(study.user_attrs)  # bound-checked: a shared storage's
    if stop is not None:
        line += f" · {stop.line()}"
    elif rules.timeout is not None:
        line += f" · {rules.time_line()}"
    left = record.get("left")
    if record["state"] == QUEUED and isinstance(left, dict):
        line += f" · left by {left.get('by')}: {left.get('reason')}"
    save_note(
        study, line + "\n\n(`hpo list` shows the queue; `hpo stop` and `hpo resume` change it)"
    )
