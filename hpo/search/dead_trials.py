"""Trials whose worker died: found in one query, their re-runs queued, then failed.

A mixin of hpo.search.storage's ReconnectingRDBStorage, which Optuna's `fail_stale_trials`
asks (through the private method hpo.optuna_private names) for the trials to fail: this module
buries them itself, in the order that keeps the budget exact (hpo.search.budget), and answers
none. Optuna's own check would fail them first and queue the re-run after, so another worker
could take the freed slot in between.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import TrialState

from hpo.errors import first_line
from hpo.optuna_private import models
from hpo.search.budget import DIED, OVER_BUDGET

log = logging.getLogger("hpo.search.dead_trials")
GRACE_BEATS = 3  # a trial is stale after this many of its own heartbeat intervals of silence
# The trial system attr holding the heartbeat interval of the worker that runs the trial, so
# a checking worker judges it by that worker's setting, not its own (bounded: a trial cannot
# claim to be alive for ever).
HEARTBEAT_ATTR = "hpo_heartbeat_s"
HEARTBEAT_MAX_S = 3600
MAX_RETRY = 3


class DeadTrials:
    """Burial of dead workers' trials, for an RDBStorage with a heartbeat (`engine`,
    `grace_period`, `heartbeat_interval`, its trial methods)."""

    engine: sqlalchemy.Engine
    grace_period: int | None
    heartbeat_interval: int | None
    _silent_since: dict[int, float]
    # Called with (study id, trial) after a dead worker's trial is failed (_bury).
    after_death: list[Callable[[int, optuna.trial.FrozenTrial], None]]

    def bury_dead_trials(self, study_id: int) -> list[int]:
        """Fail the RUNNING trials whose worker died, each re-run queued first (_bury), and
        return none: Optuna's fail_stale_trials, which calls this, would fail them first and
        queue the re-run after, and another worker could take the slot in between. Dead is:

        - a trial silent for GRACE_BEATS of *its own* worker's heartbeat intervals
          (HEARTBEAT_ATTR), timed in the database's clock: a worker started with
          `--heartbeat 5` must not fail the live trials of workers that beat every 60 s;
        - a trial that never sent a first heartbeat for this worker's grace period: Optuna
          skips those, so a worker killed between creating a trial and its first heartbeat
          would hold a budget slot forever. The silence is timed on this process' clock, not
          against the trial's start time, which another machine's clock wrote."""
        trials, beats = models.TrialModel.__table__, models.TrialHeartbeatModel.__table__
        attrs = models.TrialSystemAttributeModel.__table__
        told = sqlalchemy.and_(attrs.c.trial_id == trials.c.trial_id, attrs.c.key == HEARTBEAT_ATTR)
        query = (
            sqlalchemy.select(trials.c.trial_id, beats.c.heartbeat, attrs.c.value_json)
            .select_from(
                trials.outerjoin(beats, beats.c.trial_id == trials.c.trial_id).outerjoin(
                    attrs, told
                )
            )
            .where(trials.c.study_id == study_id)
            .where(trials.c.state == TrialState.RUNNING)
        )
        own = self.grace_period or GRACE_BEATS * (self.heartbeat_interval or 0)
        with self.engine.connect() as connection:
            now = connection.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar_one()
            rows = connection.execute(query).all()
        now = now.replace(tzinfo=None)
        dead, silent = [], set()
        for trial_id, beat, interval in rows:
            if beat is None:
                silent.add(trial_id)
            elif now - beat.replace(tzinfo=None) > timedelta(seconds=_grace(interval, own)):
                dead.append((trial_id, beat))
        clock = time.monotonic()
        self._silent_since = {t: self._silent_since.get(t, clock) for t in silent}
        dead += [(t, None) for t, since in self._silent_since.items() if clock - since > own]
        for trial_id, beat in dead:
            self._bury(study_id, trial_id, beat)
        return []

    def _bury(self, study_id: int, trial_id: int, beat: Any) -> None:
        """Fail a trial whose worker died, its re-run queued *before* it is failed, so the
        budget slot its failure frees is the re-run's, not a new trial's:

        1. claim it (a compare-and-set on its heartbeat row): of several workers checking
           at once, one buries it; one that dies meanwhile leaves a fresh heartbeat, which
           goes stale again;
        2. say why (fail_reason DIED: not counted towards the budget);
        3. queue the re-run, as Optuna's RetryHeartbeatStaleTrialCallback does (the same
           parameters, system attrs failed_trial and retry_history, at most MAX_RETRY);
        4. fail it; if its worker was alive after all and ended it, withdraw the re-run;
        5. tell `after_death` (hpo.search.queue_worker: a study whose workers keep dying is
           left)."""
        if not self._claim(trial_id, beat):
            return
        try:
            self.set_trial_user_attr(trial_id, "fail_reason", DIED)
        except optuna.exceptions.UpdateFinishedTrialError:
            return  # it ended meanwhile
        trial = self.get_trial(trial_id)
        rerun = self._queue_rerun(study_id, trial)
        try:
            self.set_trial_state_values(trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            if rerun is not None:
                self._withdraw(rerun)
            return
        trial = self.get_trial(trial_id)
        for hook in self.after_death:
            try:
                hook(study_id, trial)
            except Exception as exc:  # the burial is done; not the served study's failure
                log.warning("after a dead trial of study %s: %s", study_id, first_line(exc))

    def _claim(self, trial_id: int, beat: Any) -> bool:
        """Take the burial of a dead trial: its heartbeat set to now only if it is still the
        one read (`beat`, None for none: a first one inserted, the row being unique)."""
        beats = models.TrialHeartbeatModel.__table__
        try:
            with self.engine.begin() as connection:
                if beat is None:
                    connection.execute(
                        sqlalchemy.insert(beats).values(
                            trial_id=trial_id, heartbeat=sqlalchemy.func.now()
                        )
                    )
                    return True
                claimed = connection.execute(
                    sqlalchemy.update(beats)
                    .where(beats.c.trial_id == trial_id, beats.c.heartbeat <= beat)
                    .values(heartbeat=sqlalchemy.func.now())
                )
                return claimed.rowcount == 1
        except sqlalchemy.exc.IntegrityError:
            return False  # another worker inserted it first

    def _queue_rerun(self, study_id: int, trial: optuna.trial.FrozenTrial) -> int | None:
        """The dead trial's re-run, WAITING (its id), or None after MAX_RETRY re-runs."""
        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        if len(history) > MAX_RETRY:
            return None
        # The dead worker's heartbeat interval is not the re-run's: its own worker records one.
        kept = {k: v for k, v in trial.system_attrs.items() if k != HEARTBEAT_ATTR}
        attrs = {**kept, "failed_trial": trial.number, "retry_history": history}
        user_attrs = {k: v for k, v in trial.user_attrs.items() if k != "fail_reason"}
        template = optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=user_attrs,
            system_attrs=attrs,
        )
        return self.create_new_trial(study_id, template_trial=template)

    def _withdraw(self, trial_id: int) -> None:
        """A re-run no longer needed, if no worker took it yet: failed as never run."""
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            if self.get_trial(trial_id).state == TrialState.WAITING:
                self.set_trial_user_attr(trial_id, "fail_reason", OVER_BUDGET)
                self.set_trial_state_values(trial_id, TrialState.FAIL)


def _grace(interval_json: str | None, own: float) -> float:
    """A trial's grace: GRACE_BEATS of the interval its worker recorded, else this worker's."""
    try:
        interval = json.loads(interval_json) if interval_json is not None else None
    except ValueError:
        interval = None
    if isinstance(interval, bool) or not isinstance(interval, int | float) or interval != interval:
        return own
    return GRACE_BEATS * min(max(float(interval), 1.0), HEARTBEAT_MAX_S)
