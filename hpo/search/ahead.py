"""One worker, two cores busy: the next trial is asked for while this one trains, and its
program compiles on a thread meanwhile.

A search trains one trial at a time, and a trial of a new structure first spends 1-2.5 s
tracing and compiling its program (hpo.train.programs) on one core while the other waits. Here,
once a trial's own program is ready, the worker asks the sampler for the next trial (Optuna's
ask-and-tell; TPE sees the running trial as running, as it sees another worker's) and compiles
that trial's program on a thread while this trial's epochs run. The next trial then starts at
once. Nothing depends on timing: the next trial is always asked at the same point, its program
is the one it would have compiled itself (from its own seed), and it trains exactly as it would
have (tests/unit/test_ahead.py). What changes against one trial after another is what the sampler
knows when it asks: not yet the running trial's value, as with two workers.

The asked trial holds a slot of the study's budget and beats its heartbeat while it waits. It
is always run, even past --timeout (as Optuna finishes a running trial), except after Ctrl-C or
an error: then it is failed as "interrupted", without epochs, and does not count.

$HPO_ASK_AHEAD=1 turns it on; it is off by default. On this project's 2 cores it made the same
Boston trials only a little faster (docs/lab/performance.md, "Asking for the next trial
ahead"): the compiling thread slows the running trial's epochs by most of what it
saves. It is meant for a
GPU worker, whose epochs leave the CPU idle (not yet measured), and it changes which trials a
seeded TPE search samples after its start-up trials.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo import optuna_private
from hpo.search.budget import Budget, OverBudget, fail_stale

if TYPE_CHECKING:  # the objective imports Keras: only once a worker trains
    from hpo.train.objective import Objective

ENV = "HPO_ASK_AHEAD"
log = logging.getLogger("hpo.ahead")


def enabled(objective: Objective, batch_trials: int) -> bool:
    """Whether a worker asks ahead: with $HPO_ASK_AHEAD=1, one trial at a time on the fused
    loop (the only loop with programs to compile ahead)."""
    return os.environ.get(ENV, "0") == "1" and batch_trials == 1 and objective.engine == "fused"


@dataclass
class Asked:
    """A trial asked for and begun: its parameters, and its heartbeat until it is told."""

    trial: optuna.Trial
    beat: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    params: dict[str, Any] | None = None
    compiling: threading.Thread | None = None


class AskAhead:
    """Runs a study's trials one at a time, each asked for while the one before trains."""

    def __init__(
        self,
        study: optuna.Study,
        objective: Objective,
        budget: Budget,
        callbacks: list[Callable[[optuna.Study, FrozenTrial], None]],
        may_ask: Callable[[], bool] = lambda: True,
    ) -> None:
        self.study = study
        self.objective = objective
        self.budget = budget
        self.callbacks = callbacks
        self.may_ask = may_ask  # False once the worker should start no trial (Ctrl-C, recycle)
        self.pending: Asked | None = None  # asked while the last trial trained, not yet run

    def run_one(self) -> int:
        """Run the trial asked ahead, or else a newly asked one; while it trains, ask for the
        next and compile its program (beside). How many trials ran: 0 when another worker took
        the last slot meanwhile."""
        asked = self._take_pending() or self._ask()
        if asked is None:
            return 0
        from hpo.search.batched import alone

        with asked.beat:
            try:
                state, value = alone(self.objective, asked.trial, asked.params, self._ask_next)
            except BaseException:
                self._fail(asked.trial)  # as study.optimize: failed, no callbacks
                raise
            frozen = self.study.tell(asked.trial, value, state=state, skip_if_finished=True)
        for callback in self.callbacks:
            callback(self.study, frozen)
        gc.collect()  # as study.optimize(gc_after_trial=True)
        return 1

    def close(self) -> None:
        """Fail the trial asked ahead if it never ran (Ctrl-C, an error): it does not count."""
        asked = self._take_pending()
        if asked is None:
            return
        with asked.beat:
            asked.trial.set_user_attr("fail_reason", "interrupted")
            self._fail(asked.trial)

    def _take_pending(self) -> Asked | None:
        """The trial asked ahead, its program compiled (the thread waited for)."""
        asked, self.pending = self.pending, None
        if asked is not None and asked.compiling is not None:
            asked.compiling.join()
        return asked

    def _ask(self) -> Asked | None:
        """Ask for a trial the budget admits and begin it (its parameters); None if the
        budget was taken meanwhile."""
        fail_stale(self.study)  # as study.optimize does before each trial
        with warnings.catch_warnings():  # "heartbeat … supposed to be used with optimize":
            warnings.simplefilter("ignore", UserWarning)  # this module beats it as optimize does
            trial = self.study.ask()
        asked = Asked(trial)
        asked.beat.enter_context(optuna_private.heartbeat(trial, self.study))
        try:
            self.budget.admit(trial)
        except OverBudget:
            with asked.beat:
                self._fail(trial)
            return None
        try:
            asked.params = self.objective.begin(trial)
        except BaseException:
            with asked.beat:
                self._fail(trial)
            raise
        return asked

    def _ask_next(self) -> None:
        """Called once the running trial's program is ready: ask for the next trial if the
        budget has a slot for it, and compile its program on a thread."""
        if not self.may_ask() or self.budget.free_slots(self.study) < 1:
            return
        asked = self._ask()
        if asked is None:
            return
        self.pending = asked
        asked.compiling = threading.Thread(
            target=self._compile, args=(asked,), name="hpo-compile-ahead", daemon=True
        )
        asked.compiling.start()

    def _compile(self, asked: Asked) -> None:
        try:
            self.objective.prepare(asked.trial, asked.params)
        except Exception:  # the trial compiles again when it runs, and fails there if it must
            log.debug("trial %d: compiling ahead failed", asked.trial.number, exc_info=True)

    def _fail(self, trial: optuna.Trial) -> None:
        with contextlib.suppress(Exception):  # a lost storage: the heartbeat fails it later
            self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
