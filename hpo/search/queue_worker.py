"""`hpo worker`: a long-running process that serves every queued study of a storage.

Each round it reads the queue (hpo.search.queue: the studies and their attrs) and the trials
of the queued studies, and picks the study furthest below its share of the trials
(`Worker.choose`: trials started for its priority, stride scheduling). It runs one trial
there, with the options the study was submitted with and under the study's exact budget
(hpo.search.budget), then reads the queue again, so a study submitted a moment ago is served
from the next trial on. With nothing to run it sleeps `poll_s` between reads, each a few
queries (docs/budget-and-storage.md#the-queue-and-fair-shares).

`hpo stop` is seen within STOP_CHECK_S seconds at the end of an epoch: the trial ends, failed
with reason "stopped" (it does not count), and its parameters are queued again to run first
on resume. SIGTERM or Ctrl-C: the epoch ends, the trial is failed and queued again the same
way, and the worker exits 143 or 130.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from rich.console import Console

from hpo import artifacts as artifact_stores
from hpo.backend import freeze_heap
from hpo.errors import HpoError, first_line
from hpo.search import (
    batched,
    local_workers,
    queue,
    queue_standing,
    stop_rules,
    study_loop,
    tracking,
)
from hpo.search.budget import (
    DIED,
    STOPPED,
    Budget,
    OverBudget,
    counts_toward_budget,
    fail_stale,
    failed_as_stale,
    over_budget,
)
from hpo.search.interrupt import GracefulInterrupt, exit_code
from hpo.search.storage import HEARTBEAT_S, RECONNECT_S, open_storage, redact, unavailable_in
from hpo.study import algorithms
from hpo.study.studyfile import StudySpec

POLL_S = 2.0  # seconds between reads of an idle queue
# A running trial looks for `hpo stop` at an epoch's end, this often at most (seconds).
STOP_CHECK_S = float(os.environ.get("HPO_STOP_CHECK_S", 5.0))  # internal: the tests shorten it
KEEP = 3  # studies whose data and compiled arrays a worker keeps between trials
STALE_CHECK_S = 5.0  # how often a worker waiting on a study's last trials seeks dead ones
FAILURES_TO_LEAVE = 3  # trials that raise in a row before a worker leaves their study
# Trials of a study whose workers died (out of memory, killed) in a row before every worker
# leaves it: under a restart policy it would otherwise kill the whole pool over and over.
DEATHS_TO_LEAVE = 3


class Stopped(KeyboardInterrupt):
    """The study was paused (`hpo stop`): the running trial ends at this epoch."""

    reason = STOPPED


@dataclass
class Served:
    """What a worker keeps of one study between its trials."""

    study: optuna.Study
    objective: Any  # hpo.train.objective.Objective: imported only when training
    budget: Budget
    catch: tuple[type[Exception], ...]  # a trial's own failures (NaN): recorded, not raised


class StopCheck:
    """Raises Stopped at an epoch's end once the study is paused; reads its state at most
    every STOP_CHECK_S seconds (one query), so a fast epoch costs the database nothing."""

    def __init__(self, store: Any, study_id: int, every_s: float = STOP_CHECK_S) -> None:
        self.store, self.study_id, self.every_s = store, study_id, every_s
        self.last = time.monotonic()

    def __call__(self) -> None:
        if time.monotonic() - self.last < self.every_s:
            return
        self.last = time.monotonic()
        record = self.store.get_study_user_attrs(self.study_id).get(queue.ATTR)
        if isinstance(record, dict) and record.get("state") == queue.PAUSED:
            raise Stopped


class Worker:
    def __init__(
        self,
        storage_url: str,
        *,
        console: Console,
        artifacts: str = artifact_stores.DEFAULT,
        data_dir: str | None = None,
        pattern: str = "*",
        poll_s: float = POLL_S,
        heartbeat_s: int = HEARTBEAT_S,
        reconnect_s: float = RECONNECT_S,
        batch_trials: int = 1,
        code_paths: tuple[str, ...] = (),
        mlflow: str | None = None,
    ) -> None:
        self.url = storage_url
        # --mlflow: each ended trial of every study served logged as a run under the study's
        self.runs = tracking.trial_runs(mlflow, console)
        # Where a study's [model] module is looked for, before the installed ones: never
        # beside the submitter's study file (a path of another machine, read from the storage).
        self.code_paths = code_paths
        self.batch_trials = batch_trials  # trials asked at once (hpo.search.batched)
        self.store = open_storage(storage_url, heartbeat_s, reconnect_s)
        self.artifacts = artifacts
        self.data_dir = data_dir
        self.pattern = pattern
        self.poll_s = poll_s
        self.console = console
        self.served: OrderedDict[str, Served] = OrderedDict()
        self.studies: dict[str, tuple[optuna.Study, StudySpec]] = {}
        self.stale_checked: dict[str, float] = {}  # when each study's dead trials were sought
        self.failures: dict[str, int] = {}  # trials that raised in a row, by study
        # Studies this worker cannot serve (said once), with when they were submitted then:
        # submitted or resumed again, they are tried again.
        self.left: dict[str, float] = {}
        self.store.after_death.append(self._died)
        self.signals: GracefulInterrupt | None = None
        self.recycler: local_workers.Recycler | None = None  # when this process restarts
        self.recycled: str | None = None  # why it should restart now (serve returned None)

    # --- choosing -------------------------------------------------------------------------

    def choose(self) -> queue.Entry | None:
        """The queued study with an open slot that has started the fewest trials for its
        priority since the newest of them joined the queue; None when there is none.

        Counting from the newest arrival puts every study on an equal footing from then on
        (stride scheduling): over time each gets trials in proportion to its priority, and a
        study submitted late neither waits for the others nor takes every worker to catch up.
        Running trials are counted too, so workers that choose at once spread out."""
        queued = []
        for entry in queue.entries(self.store, self.pattern):
            if self.left.get(entry.name, entry.since) != entry.since:
                del self.left[entry.name]  # submitted again: try it again
            if entry.malformed and entry.name not in self.left:
                self._leave(entry, entry.reason or "malformed")
            if (
                entry.state == queue.QUEUED
                and entry.name not in self.left
                and entry.stop is None  # a stop rule ended it
                and not self._time_spent(entry)
            ):
                queued.append(entry)
        if not queued:
            return None
        # Trials started since the newest joined, in the database's order of trials: the
        # workers' clocks, in their own time zones, are not compared.
        newest = max(entry.since_trial for entry in queued)
        tallies = queue_standing.tallies(self.store, queued, newest)
        open_slots = []
        for entry in queued:
            tally = tallies[entry.study_id]
            if tally.finished >= entry.trials:
                if not tally.running:
                    self._mark_done(entry)
            elif tally.finished + tally.running >= entry.trials:
                self._fail_stale(entry)  # a dead worker's slot is re-run
            else:
                open_slots.append((tally.started_since / entry.priority, entry.name, entry))
        return min(open_slots)[-1] if open_slots else None

    def _time_spent(self, entry: queue.Entry) -> bool:
        """Whether the study's time budget (hpo submit --timeout) is spent: then its stop is
        recorded (once, whichever worker sees it first) and no worker starts its trials."""
        used = entry.rules.time_used()
        if used is None or entry.rules.timeout is None or used < entry.rules.timeout:
            return False
        trials = self.store.get_all_trials(entry.study_id, deepcopy=False)
        direction = self.store.get_study_directions(entry.study_id)[0].name.lower()
        stop = stop_rules.fired(entry.rules, trials, direction, "value")
        if stop is not None:
            self._stopped(entry.name, entry.study_id, stop)
        return True

    def _stopped(self, name: str, study_id: int, stop: stop_rules.Stop) -> None:
        """Record why a rule ended the study, and say it (here, on `hpo list`, on its note)."""
        stop, wrote = stop_rules.record_stop(self.store, study_id, stop)
        if wrote:
            self._on_stop(optuna.load_study(study_name=name, storage=self.store), stop)

    def _on_stop(self, study: optuna.Study, stop: stop_rules.Stop) -> None:
        self.console.print(f"{study.study_name}: {stop.line()}", highlight=False, markup=False)
        record = study.user_attrs.get(queue.ATTR)
        if queue.malformed(record) is None:
            queue.note(study, record)

    def _mark_done(self, entry: queue.Entry) -> None:
        """Record the study as done, so idle reads skip its trials until it is extended: a
        compare-and-set, so a submit or stop that lands after this worker read the record is
        kept, never overwritten."""

        def done(record: object) -> dict | None:
            if (
                queue.malformed(record) is None
                and record.get("state", queue.QUEUED) == queue.QUEUED
                and record.get("trials") == entry.trials
            ):
                return {**record, "state": queue.DONE}
            return None

        record, wrote = queue.update(self.store, entry.study_id, done)
        if wrote:
            queue.note(optuna.load_study(study_name=entry.name, storage=self.store), record)
            self.console.print(f"{entry.name}: done ({entry.trials} trials)", highlight=False)

    def _fail_stale(self, entry: queue.Entry) -> None:
        """Fail the trials of dead workers (their heartbeat stopped), so they are re-run; at
        most every STALE_CHECK_S per study: a study's last running trials are waited for by
        every idle worker, and a death is rare."""
        now = time.monotonic()
        if now - self.stale_checked.get(entry.name, -STALE_CHECK_S) < STALE_CHECK_S:
            return
        self.stale_checked[entry.name] = now
        known = self.studies.get(entry.name)
        fail_stale(
            known[0] if known else optuna.load_study(study_name=entry.name, storage=self.store)
        )

    # --- serving --------------------------------------------------------------------------

    def serve(self, recycler: local_workers.Recycler | None = None) -> int | None:
        """Serve the queue until a signal (returns its exit status) or until `recycler` says
        this process should restart (returns None; the reason is in `recycled`)."""
        self.recycler = recycler
        said_idle = False
        with GracefulInterrupt() as signals:
            self.signals = signals
            while not signals.requested:
                self.recycled = recycler and recycler.due()
                if self.recycled:
                    self.close()
                    return None
                entry = self.choose()
                if signals.requested:  # while the queue was read: start no trial
                    break
                if entry is None:
                    if not said_idle:
                        self.console.print(
                            f"waiting for studies in {redact(self.url)} (hpo submit …)",
                            highlight=False,
                        )
                        said_idle = True
                    self._sleep(self.poll_s)
                    continue
                said_idle = False
                self.run_one(entry)
        self.close()
        return exit_code(signals.signum)

    def close(self) -> None:
        """Before this process ends or restarts: its trials still being logged to MLflow."""
        if self.runs is not None:
            self.runs.close()

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (self.signals and self.signals.requested):
            time.sleep(min(0.2, end - time.monotonic()))

    def run_one(self, entry: queue.Entry) -> None:
        """One trial of `entry`'s study."""
        served = self._serve(entry)
        if served is None:
            return
        served.budget.total = entry.trials  # hpo submit may have extended it
        if entry.rules.timeout is not None and entry.rules.clock_started is None:
            stop_rules.start_clock(self.store, entry.study_id)  # its time budget starts now
        if served.budget.stopped(served.study, served.study.get_trials(deepcopy=False)):
            return  # a stop rule fired since the queue was read: recorded, said; the next one
        objective = served.objective
        stop = StopCheck(self.store, entry.study_id)
        objective.trial_number = None  # set by the objective once the trial exists
        asked: list[optuna.Trial] = []  # a batch's trials
        requeued: list[int] = []

        def requeue_in_flight() -> None:
            numbers = [t.number for t in asked] or [objective.trial_number]
            for number in numbers:
                if number not in requeued and self._requeue(served.study, entry, number):
                    requeued.append(number)

        check = self._checks(stop)

        def check_then_requeue() -> None:
            """An interrupted trial's parameters are queued again *before* it is failed:
            queued after, another worker could take the slot its failure frees, and they
            would wait for ever."""
            try:
                check()
            except KeyboardInterrupt:
                requeue_in_flight()
                raise

        objective.check_interrupt = check_then_requeue
        ran = 1
        try:
            ran = batched.run_trials(
                served.study,
                objective,
                self.batch_trials,
                served.budget,
                [self._said] if self.runs is None else [self._said, self.runs],
                served.catch,
                asked,
            )
        except KeyboardInterrupt as exc:  # paused, or this worker was asked to stop
            requeue_in_flight()  # those a second signal ended outside a check
            why = "stopped (hpo stop)" if isinstance(exc, Stopped) else "interrupted"
            self.console.print(
                f"{entry.name}: trial {', '.join(map(str, requeued)) or None} {why}; its "
                "parameters run again first",
                highlight=False,
            )
        except Exception as exc:
            lost = unavailable_in(exc)
            if lost is not None:
                raise lost from None
            self._failed(entry, exc)
        else:
            self.failures.pop(entry.name, None)
        finally:
            if self.recycler:
                self.recycler.add_trials(ran)

    def _failed(self, entry: queue.Entry, exc: Exception) -> None:
        """A trial that raised (not a NaN loss, which the objective records): failed, and not
        counted, so the study runs another. After FAILURES_TO_LEAVE in a row the study is
        broken for this worker (its data, its space): it leaves it rather than loop."""
        why = f"{type(exc).__name__}: {first_line(exc)}"
        if failed_as_stale(exc):  # its re-run is queued
            self.console.print(f"{entry.name}: a trial was failed as stale ({why})")
            return
        count = self.failures[entry.name] = self.failures.get(entry.name, 0) + 1
        self.console.print(f"{entry.name}: trial failed ({why})", highlight=False)
        if count >= FAILURES_TO_LEAVE:
            self._leave(entry, f"{count} trials in a row failed")

    def _checks(self, stop: StopCheck) -> Callable[[], None]:
        signals = self.signals

        def check() -> None:
            if signals is not None:
                signals.check()
            stop()

        return check

    def _said(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        value = "" if trial.value is None else f" {trial.value:.4f}"
        self.console.print(
            f"{study.study_name}: trial {trial.number} {trial.state.name.lower()}{value}",
            highlight=False,
        )

    def _requeue(self, study: optuna.Study, entry: queue.Entry, number: int | None) -> bool:
        """Queue an interrupted trial's parameters again: they run next, first in its budget.
        False for a trial that finished (a batch's trials end one by one) or had none."""
        if number is None:
            return False
        trial_id = self.store.get_trial_id_from_study_id_trial_number(entry.study_id, number)
        trial = self.store.get_trial(trial_id)
        if counts_toward_budget(trial) or not trial.params:
            return False
        study.enqueue_trial(trial.params, user_attrs={"requeued_from": number})
        return True

    def _leave(self, entry: queue.Entry, why: str, every_worker: bool = False) -> None:
        """Stop serving the study, and say why where its submitter looks (`hpo list`, the
        dashboard note): for this worker, or for all (`every_worker`)."""
        self.left[entry.name] = entry.since
        self.served.pop(entry.name, None)
        self.studies.pop(entry.name, None)
        self.console.print(  # whole on one line, as `hpo list` shows it
            f"{entry.name}: this worker leaves the study: {why}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        queue.leave(self.store, entry, why, every_worker=every_worker)

    def _died(self, study_id: int, trial: optuna.trial.FrozenTrial) -> None:
        """After a trial of a study was failed because its worker died: when its last
        DEATHS_TO_LEAVE ended trials all died (out of memory, killed), every worker leaves
        the study, with that reason, until `hpo resume`."""
        trials = self.store.get_all_trials(study_id, deepcopy=False)
        ended = sorted((t for t in trials if t.state.is_finished()), key=lambda t: t.number)
        last = [t for t in ended if not over_budget(t)][-DEATHS_TO_LEAVE:]
        died = [t for t in last if t.user_attrs.get("fail_reason") == DIED]
        if len(died) < DEATHS_TO_LEAVE:
            return
        name = self.store.get_study_name_from_id(study_id)  # by id: a name may hold [ * ?
        entry = queue.Entry.of(name, study_id, self.store.get_study_user_attrs(study_id))
        if entry is None or entry.state != queue.QUEUED:
            return
        self._leave(
            entry,
            f"the workers of its last {DEATHS_TO_LEAVE} trials died (out of memory, or "
            f"killed); make its space smaller, then hpo resume {entry.name}",
            every_worker=True,
        )

    def _serve(self, entry: queue.Entry) -> Served | None:
        """The study's objective and data, kept for the KEEP studies served last (each holds
        its training arrays); its Optuna study and sampler, kept for every study served."""
        if entry.name in self.served:
            self.served.move_to_end(entry.name)
            return self.served[entry.name]
        try:
            if entry.name not in self.studies:
                self.studies[entry.name] = self._study(entry)
            served = self._open(entry, *self.studies[entry.name])
        except Exception as exc:  # its data or its study file: one line, and the next study
            lost = unavailable_in(exc)
            if lost is not None:
                raise lost from None
            why = str(exc) if isinstance(exc, HpoError) else f"{type(exc).__name__}: {exc}"
            self._leave(entry, first_line(why))
            return None
        self.served[entry.name] = served
        while len(self.served) > KEEP:
            self.served.popitem(last=False)
        return served

    def _study(self, entry: queue.Entry) -> tuple[optuna.Study, StudySpec]:
        """The study with the sampler and pruner of the study file it was submitted with, and
        its model's module found here with the SHA-256 it was submitted with."""
        spec = queue.spec_of(entry)
        spec = study_loop.served_model(spec, entry.model_code, entry.name, self.code_paths)
        study = optuna.load_study(  # made by hpo submit (study_loop.open_study): only loaded here
            study_name=entry.name,
            storage=self.store,
            sampler=algorithms.make_sampler(spec.sampler, spec.seed),
            pruner=algorithms.make_pruner(spec.pruner, spec.max_epochs),
        )
        if self.runs is not None:
            self.runs.describe(entry.name, spec)
        self.console.print(
            f"{entry.name}: serving ({spec.dataset}, {spec.metric}, budget {entry.trials}, "
            f"priority {entry.priority:g})",
            highlight=False,
        )
        return study, spec

    def _open(self, entry: queue.Entry, study: optuna.Study, spec: StudySpec) -> Served:
        """The study's data, and the objective that trains its trials on it."""
        store = artifact_stores.open_store(self.artifacts)
        if entry.data is not None:
            from hpo.data import shipped_arrays

            with self.console.status(f"{entry.name}: fetching its data…"):
                prepared = shipped_arrays.fetch(entry.data, store)
        elif spec.data is not None:  # a path the storage names: never read on a worker
            raise HpoError(queue.NOT_SHIPPED)
        else:
            prepared = study_loop.load_data(spec, self.data_dir, study, self.console)
        from hpo.train.objective import Objective
        from hpo.train.reporting import TrialFailed

        budget = Budget(entry.trials, stop=stop_rules.Watch(spec.metric, on_stop=self._on_stop))
        objective = Objective(
            spec,
            prepared,
            admit=budget.admit,
            artifact_store=store,
            **study_loop.model_options(spec, None, self.code_paths),
        )
        freeze_heap()  # the backend's and this study's data: not walked after each trial
        return Served(study, objective, budget, (TrialFailed, OverBudget))
