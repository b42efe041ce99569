"""The study's trial budget, exact across any number of worker processes and machines.

Optuna's `n_trials` is per process, and MaxTrialsCallback checks only after a trial ends, so
workers sharing a study overshoot. Here the budget is a property of the study:

- a trial *counts* when it finished on its own: COMPLETE, PRUNED, or FAILED with a reason the
  objective recorded (a NaN loss). A trial failed by the heartbeat (its worker died: DIED), by
  Ctrl-C or for being over budget does not count: it is re-run or was never run. Nor does a
  trial copied from another study (--warm-start): the budget is of the trials this study runs;
- a new trial is *admitted* only if fewer than N trials with smaller numbers (numbers are
  assigned atomically by the storage) are counted, running or waiting. Whatever order workers
  check in, the counted trials can never exceed N. A trial that is not admitted fails at once
  with reason "over budget", and its worker waits;
- a worker waits while every remaining slot is held by running trials, since one of them may
  die and need a re-run; it stops when N trials count;
- a study's stop rule (`stop`: hpo.search.stop_rules.Watch) that fired refuses every new trial
  as the budget does, with the rule's reason, and ends the workers' waits.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

OVER_BUDGET = "over budget"  # the fail_reason of a trial created after the budget was taken
STOPPED = "stopped"  # the fail_reason of a trial ended by `hpo stop`: run again on resume
# The fail_reason of a trial whose worker stopped beating (killed, out of memory): re-run.
DIED = "its worker died (no heartbeat)"
NOT_COUNTED = ("interrupted", OVER_BUDGET, STOPPED, DIED)
# The user attr of a trial copied from another study (hpo optimize --warm-start): it informs
# the sampler and the report, but the budget (--trials) counts the trials this study ran.
COPIED = "warm_start_from"


def counts_toward_budget(trial: FrozenTrial) -> bool:
    if COPIED in trial.user_attrs:
        return False
    return counts(trial.state, trial.user_attrs.get("fail_reason"))


def counts(state: TrialState, fail_reason: object) -> bool:
    """Whether a trial in `state`, failed with `fail_reason` (or None), counts."""
    if state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    if state == TrialState.FAIL:
        return fail_reason is not None and fail_reason not in NOT_COUNTED
    return False


def finished(study: optuna.Study) -> int:
    return sum(counts_toward_budget(t) for t in study.get_trials(deepcopy=False))


def over_budget(trial: FrozenTrial) -> bool:
    """A trial made after another worker took the last slot: it never ran, it is no failure."""
    # The state too: a re-run of a dead worker's trial (hpo.search.storage) copies its attrs.
    return trial.state == TrialState.FAIL and trial.user_attrs.get("fail_reason") == OVER_BUDGET


def study_counts(study: optuna.Study) -> dict[str, int]:
    """The study's trials that count towards its budget ("finished"), and of its trials
    (over-budget placeholders aside) how many there are, complete, pruned and failed, whichever
    worker or run made them: the figures of the progress line and of `hpo list`."""
    return trial_counts(study.get_trials(deepcopy=False))


def trial_counts(trials: list[FrozenTrial]) -> dict[str, int]:
    """study_counts of trials already read."""
    trials = [t for t in trials if not over_budget(t)]
    return {
        "finished": sum(counts_toward_budget(t) for t in trials),
        "trials": len(trials),
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
    }


class OverBudget(Exception):
    """This trial was created after the budget was taken; it ends without counting."""


# Why the study starts no more trials (a stop rule fired), or None: hpo.search.stop_rules.Watch.
StopCheck = Callable[[optuna.Study, list[FrozenTrial]], str | None]


class Budget:
    def __init__(self, total: int, poll_s: float = 2.0, stop: StopCheck | None = None) -> None:
        self.total = total
        self.poll_s = poll_s
        self.stop = stop

    def stopped(self, study: optuna.Study, trials: list[FrozenTrial]) -> str | None:
        """Why the study's stop rule refuses new trials, or None."""
        return None if self.stop is None else self.stop(study, trials)

    def admit(self, trial: optuna.Trial) -> None:
        """Raise OverBudget unless fewer than `total` earlier trials hold a slot and no stop
        rule of the study fired."""
        trials = trial.study.get_trials(deepcopy=False)
        why = self.stopped(trial.study, [t for t in trials if t.number != trial.number])
        if why is not None:
            trial.set_user_attr("fail_reason", OVER_BUDGET)
            raise OverBudget(f"trial {trial.number}: the study stopped: {why}")
        ahead = sum(
            1
            for t in trials
            if t.number < trial.number
            and (counts_toward_budget(t) or t.state in (TrialState.RUNNING, TrialState.WAITING))
        )
        if ahead >= self.total:
            trial.set_user_attr("fail_reason", OVER_BUDGET)
            raise OverBudget(f"trial {trial.number}: {self.total} trials already hold the budget")

    def free_slots(self, study: optuna.Study) -> int:
        """Slots of the budget neither counted nor held by a running trial."""
        trials = study.get_trials(deepcopy=False)
        if self.stopped(study, trials) is not None:
            return 0
        taken = sum(counts_toward_budget(t) or t.state == TrialState.RUNNING for t in trials)
        return max(self.total - taken, 0)

    def wait_for_slot(
        self, study: optuna.Study, deadline: float | None = None, stop_requested=lambda: False
    ) -> bool:
        """True when this worker may start a trial; False when the budget is met (or the
        deadline passed, or Ctrl-C was pressed, or a stop rule fired)."""
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            trials = study.get_trials(deepcopy=False)
            done = sum(counts_toward_budget(t) for t in trials)
            if done >= self.total or stop_requested() or self.stopped(study, trials):
                return False
            running = sum(t.state == TrialState.RUNNING for t in trials)
            if done + running < self.total:
                return True
            # Only running trials hold the rest: wait, failing any whose worker died, so
            # that the retry callback queues them again for us to run.
            fail_stale(study)
            time.sleep(self.poll_s)


def fail_stale(study: optuna.Study) -> None:
    """Fail the study's trials whose worker stopped beating (it died): hpo's storage queues
    each again first (hpo.search.dead_trials), so its budget slot is run by a live
    worker."""
    with warnings.catch_warnings():  # "experimental" since Optuna 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def failed_as_stale(exc: BaseException) -> bool:
    """Whether `exc` is Optuna refusing to update a trial that another worker's heartbeat
    check failed while it was alive (a stalled heartbeat): its re-run is queued, and the
    worker that ran it goes on."""
    return isinstance(exc, (ValueError, optuna.exceptions.UpdateFinishedTrialError)) and (
        "FAIL" in str(exc) or "finished" in str(exc)
    )
