"""Stop rules: a study ends before its trial budget when its best value stops improving
(`--stop-after N`), when it reaches a target (`--target VALUE`), or when the pool's time budget
is spent (`hpo submit --timeout S`).

The rules are a property of the study, kept in one study attr (ATTR), so every worker of
`hpo optimize --workers K`, every `hpo worker` of the pool and `hpo list` read the same ones.
A command that gives a rule sets it (a compare-and-set, its version counted up); one that gives
none keeps the study's. When a rule fires, the budget's admission (hpo.search.budget.Budget)
refuses every new trial with the reason, running trials finish, and the study records why it
ended (STOPPED_ATTR: rule, why, at_trial, and the rules' version it fired under), again by
compare-and-set, so two workers that see it at once write it once. A stop recorded under older
rules is void: giving a new rule (another N, another target, a new --timeout) lets a stopped
study go on.

No-improvement is counted in trial-number order (numbers are given by the database), over the
COMPLETE trials; a trial still running counts once it ends. A trial copied from another study
(--warm-start) is a best to beat, never one of the N: this search did not run it. No worker's
clock is compared with another's, except for the pool's time budget, which is wall-clock time
(time.time(), UTC) from the moment the first worker serves the study.

Both attrs are data from a shared storage: each value is bound-checked when read (rules_of,
stop_of), never trusted.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo import optuna_private
from hpo.errors import HpoError
from hpo.search.storage_queries import update_study_attr

ATTR = "stop_rules"  # {"stop_after", "target", "timeout", "clock_started", "version"}
STOPPED_ATTR = "stopped"  # {"rule", "why", "at_trial", "version"}
RULES = ("stop_after", "target", "timeout")
STOP_AFTER_MAX = 1_000_000
TIMEOUT_MAX = 10 * 366 * 24 * 3600.0  # ten years: beyond is a typo, or a hand-written record
WHY_MAX = 300  # characters of a recorded reason shown
NOTE = "**Stopped:**"  # how a stopped study's own dashboard note begins
# The user attr marking a trial copied from another study (--warm-start: hpo.search.warm_start).
COPIED = "warm_start_from"


@dataclass(frozen=True)
class Rules:
    """A study's stop rules (None: that rule is off) and its time budget's clock."""

    stop_after: int | None = None
    target: float | None = None
    timeout: float | None = None  # seconds of the pool's time budget
    clock_started: float | None = None  # time.time() when a worker first served it
    version: int = 0

    def any(self) -> bool:
        return any(getattr(self, rule) is not None for rule in RULES)

    def record(self) -> dict[str, Any]:
        return {
            "stop_after": self.stop_after,
            "target": self.target,
            "timeout": self.timeout,
            "clock_started": self.clock_started,
            "version": self.version,
        }

    def describe(self, metric: str, direction: str) -> str:
        """The rules in words: "stops after 10 trials without improvement, at val_mae ≤ 3"."""
        parts = []
        if self.stop_after is not None:
            parts.append(f"after {self.stop_after} trials without improvement")
        if self.target is not None:
            parts.append(f"at target {metric} {sign(direction)} {self.target:g}")
        if self.timeout is not None:
            parts.append(f"when its {self.timeout:g} s time budget is spent")
        return "stops " + ", or ".join(parts) if parts else "no stop rule"

    def time_used(self, now: float | None = None) -> float | None:
        """Seconds of the time budget used (None: no budget, or its clock has not started)."""
        if self.timeout is None or self.clock_started is None:
            return None
        return max((time.time() if now is None else now) - self.clock_started, 0.0)

    def time_line(self, now: float | None = None) -> str | None:
        """`hpo list`'s line on the time budget, or None without one."""
        if self.timeout is None:
            return None
        used = self.time_used(now)
        if used is None:
            return f"time budget {self.timeout:g} s: its clock starts when a worker serves it"
        left = max(self.timeout - used, 0.0)
        return f"time budget {self.timeout:g} s: {used:.0f} s used, {left:.0f} s left"


@dataclass(frozen=True)
class Stop:
    """Why a study ended: the rule that fired, in words, and the trial it fired at."""

    rule: str  # "stop_after", "target", "timeout"; "malformed": a record hpo cannot read
    why: str
    at_trial: int | None
    version: int = 0

    def record(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "why": self.why,
            "at_trial": self.at_trial,
            "version": self.version,
        }

    def line(self) -> str:
        return f"stopped: {self.why}"


def sign(direction: str) -> str:
    return "≥" if direction == "maximize" else "≤"


# --- checking what a person gives ------------------------------------------------------------


def check(
    stop_after: int | None = None, target: float | None = None, timeout: float | None = None
) -> None:
    """One line for a rule out of bounds (the CLI's exit 2)."""
    if stop_after is not None and (
        isinstance(stop_after, bool)
        or not isinstance(stop_after, int)
        or not 1 <= stop_after <= STOP_AFTER_MAX
    ):
        raise HpoError(
            f"--stop-after must be a whole number of trials from 1 to {STOP_AFTER_MAX}, "
            f"got {stop_after}"
        )
    if target is not None and not _number(target):
        raise HpoError(f"--target must be a finite number, got {target}")
    if timeout is not None and not (_number(timeout) and 0 < timeout <= TIMEOUT_MAX):
        raise HpoError(f"--timeout must be a number of seconds above 0, got {timeout}")


# --- reading what the storage holds --------------------------------------------------------


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def rules_of(value: Any) -> tuple[Rules, str | None]:
    """The rules an ATTR value holds, and what in it is not what hpo writes (then the rules
    are off and the problem is said: a study whose rules cannot be read starts no trial)."""
    if value is None:
        return Rules(), None
    if not isinstance(value, dict):
        return Rules(), f"not a table: {type(value).__name__}"
    stop_after, target = value.get("stop_after"), value.get("target")
    timeout, started, version = (
        value.get("timeout"),
        value.get("clock_started"),
        value.get("version", 0),
    )
    if stop_after is not None and not (_count(stop_after) and 1 <= stop_after <= STOP_AFTER_MAX):
        return (
            Rules(),
            f"stop_after: must be a whole number from 1 to {STOP_AFTER_MAX}, got {stop_after!r}",
        )
    if target is not None and not _number(target):
        return Rules(), f"target: must be a finite number, got {target!r}"
    if timeout is not None and not (_number(timeout) and 0 < timeout <= TIMEOUT_MAX):
        return Rules(), f"timeout: must be seconds above 0, got {timeout!r}"
    if started is not None and not (_number(started) and started >= 0):
        return Rules(), f"clock_started: must be a time, got {started!r}"
    if not _count(version):
        return Rules(), f"version: must be a whole number, got {version!r}"
    return (
        Rules(
            stop_after,
            None if target is None else float(target),
            None if timeout is None else float(timeout),
            None if started is None else float(started),
            version,
        ),
        None,
    )


def stop_of(value: Any, rules: Rules) -> Stop | None:
    """The stop a STOPPED_ATTR value records, if it is well formed and was recorded under
    `rules` (a stop under older rules is void: new rules were given since)."""
    if not isinstance(value, dict) or value.get("version") != rules.version:
        return None
    rule, why, at_trial = value.get("rule"), value.get("why"), value.get("at_trial")
    if rule not in RULES or not isinstance(why, str):
        return None
    if at_trial is not None and not _count(at_trial):
        return None
    if getattr(rules, rule) is None:
        return None  # a rule that is off now cannot have stopped it
    return Stop(rule, _printable(why), at_trial, rules.version)


def _printable(text: str) -> str:
    """A reason read from the storage as one short line: no control characters (a terminal's
    escapes), at most WHY_MAX characters."""
    text = re.sub(r"[\x00-\x1f\x7f-\x9f]", " ", text)
    return text if len(text) <= WHY_MAX else text[: WHY_MAX - 1] + "…"


def of_attrs(attrs: dict[str, Any]) -> tuple[Rules, Stop | None, str | None]:
    """A study's rules, its current stop, and a problem with its rules record."""
    rules, problem = rules_of(attrs.get(ATTR))
    return rules, (None if problem else stop_of(attrs.get(STOPPED_ATTR), rules)), problem


def malformed_stop(problem: str) -> Stop:
    """What the admission says of a study whose rules record cannot be read: it starts no trial
    until a command gives its rules again."""
    return Stop(
        "malformed",
        f"its {ATTR} record is malformed ({problem}); give --stop-after or --target again",
        None,
    )


# --- deciding ------------------------------------------------------------------------------


def fired(
    rules: Rules,
    trials: Iterable[FrozenTrial],
    direction: str,
    metric: str,
    now: float | None = None,
) -> Stop | None:
    """The first rule that `trials` (and the clock) make fire, or None: the target, then
    no improvement, then the time budget."""
    done = sorted(
        (
            t
            for t in trials
            if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)
        ),
        key=lambda t: t.number,
    )
    better = (lambda a, b: a > b) if direction == "maximize" else (lambda a, b: a < b)
    if rules.target is not None:
        for t in done:
            if t.value == rules.target or better(t.value, rules.target):
                reached = f"{metric} {sign(direction)} {rules.target:g}"
                why = f"target {reached} reached at trial {t.number}"
                return Stop("target", why, t.number, rules.version)
    if rules.stop_after is not None:
        best: FrozenTrial | None = None
        since = 0
        for t in done:
            if best is None or better(t.value, best.value):
                best, since = t, 0
                continue
            if COPIED in t.user_attrs:
                continue  # copied (--warm-start): a best to beat, never a trial this study ran
            since += 1
            if since >= rules.stop_after:
                why = (
                    f"no improvement in {rules.stop_after} trials (best {best.value:.4g} at "
                    f"trial {best.number})"
                )
                return Stop("stop_after", why, t.number, rules.version)
    used = rules.time_used(now)
    if used is not None and rules.timeout is not None and used >= rules.timeout:
        started = [t.number for t in trials if t.state != TrialState.WAITING]
        why = f"its {rules.timeout:g} s time budget is spent"
        return Stop("timeout", why, max(started, default=None), rules.version)
    return None


# --- writing -------------------------------------------------------------------------------


def set_rules(
    store: Any,
    study_id: int,
    *,
    stop_after: int | None = None,
    target: float | None = None,
    timeout: float | None = None,
) -> tuple[Rules, Rules | None]:
    """Give the study the rules given (None: keep the study's), by compare-and-set; a new
    --timeout restarts its clock. Returns (the rules now, the rules before when this call
    changed them, else None)."""
    check(stop_after, target, timeout)
    given = {
        k: v
        for k, v in (("stop_after", stop_after), ("target", target), ("timeout", timeout))
        if v is not None
    }
    before: list[Rules] = []

    def change(current: Any) -> dict | None:
        old, problem = rules_of(current)
        if not given:
            return None
        new = replace(old, **given)
        if "timeout" in given:
            new = replace(new, clock_started=None)
        if new == old and problem is None:
            return None
        version = current.get("version") if isinstance(current, dict) else 0
        version = version if _count(version) else 0
        before[:] = [old]
        return replace(new, version=version + 1).record()

    value, wrote = update_study_attr(store, study_id, ATTR, change)
    rules, _ = rules_of(value)
    return rules, (before[0] if wrote and before else None)


def start_clock(store: Any, study_id: int, now: float | None = None) -> Rules:
    """Start the study's time budget now, if it has one not yet started (the first worker of
    the pool to serve it): a compare-and-set, so the first writer's time stays."""
    now = time.time() if now is None else now

    def change(current: Any) -> dict | None:
        rules, problem = rules_of(current)
        if problem or rules.timeout is None or rules.clock_started is not None:
            return None
        return replace(rules, clock_started=now).record()

    value, _ = update_study_attr(store, study_id, ATTR, change)
    return rules_of(value)[0]


def record_stop(store: Any, study_id: int, stop: Stop) -> tuple[Stop, bool]:
    """Record why the study ended, unless a worker recorded it already under the same rules
    (then theirs stays). Returns (the stop recorded, whether this call wrote it)."""

    rules = [Rules()]

    def change(current: Any) -> dict | None:
        rules[0], _ = rules_of(store.get_study_user_attrs(study_id).get(ATTR))
        if rules[0].version != stop.version:
            return None  # the rules changed since they fired: this stop is void
        if stop_of(current, rules[0]) is not None:
            return None  # another worker recorded it first: theirs stays
        return stop.record()

    value, wrote = update_study_attr(store, study_id, STOPPED_ATTR, change)
    return (stop if wrote else stop_of(value, rules[0]) or stop), wrote


def note(study: optuna.Study, stop: Stop) -> None:
    """Say why the study ended on its dashboard note, unless the note is someone else's
    (analyze's report, the user's, the queue's: queue.note says it there)."""
    from optuna_dashboard import get_note, save_note

    existing = get_note(study)
    if existing and not existing.startswith(NOTE):
        return
    save_note(study, f"{NOTE} {stop.why}\n\n(`hpo list` says it too; a new rule lets it go on)")


# --- watching ------------------------------------------------------------------------------


class Watch:
    """The budget's stop check (Budget(stop=…)): why no new trial of the study may start, or
    None. Reads the study's two attrs (one query), and its trials only when a rule is set;
    records the stop the first time a rule fires, and calls `on_stop` then."""

    def __init__(
        self, metric: str, on_stop: Callable[[optuna.Study, Stop], None] | None = None
    ) -> None:
        self.metric = metric
        self.on_stop = on_stop

    def __call__(self, study: optuna.Study, trials: list[FrozenTrial] | None = None) -> str | None:
        stop = self.check(study, trials)
        return None if stop is None else stop.why

    def check(self, study: optuna.Study, trials: list[FrozenTrial] | None = None) -> Stop | None:
        # The storage itself, not Optuna's cache around it: its compare-and-set writes.
        store, study_id = optuna_private.rdb_storage_of(study), optuna_private.study_id(study)
        rules, stop, problem = of_attrs(store.get_study_user_attrs(study_id))
        if problem:
            return malformed_stop(problem)
        if stop is not None or not rules.any():
            return stop
        if trials is None:
            trials = study.get_trials(deepcopy=False)
        direction = study.direction.name.lower()
        stop = fired(rules, trials, direction, self.metric)
        if stop is None:
            return None
        stop, wrote = record_stop(store, study_id, stop)
        if wrote and self.on_stop is not None:
            with contextlib.suppress(Exception):  # a note is a courtesy: the stop is recorded
                self.on_stop(study, stop)
        return stop
