"""Each epoch of a trial, told to Optuna: the curve kept, the value reported, the pruner asked.

EpochReporter records an epoch: its logs into the trial's curve, the monitored value reported
to the study, pruning and NaN failing the trial, patience ending it early. It is a Keras
callback for model.fit and is called directly by the fused loop (hpo.train.objective), which
tells the storage on a thread while the next epoch trains (ReportAhead).

Why not optuna_integration's KerasPruningCallback: k-fold trials must report the metric averaged
over folds, and a mistyped monitor must stop the study, not warn and silently never prune.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, wait
from typing import Any

import optuna

from hpo.backend import import_keras
from hpo.errors import HpoError
from hpo.train.curves import best_point

keras = import_keras()  # through hpo.backend, which keeps the backend's start-up quiet


class TrialFailed(Exception):
    """The trial cannot produce a value (NaN loss); the study records it as FAILED and goes on."""


class EpochReporter(keras.callbacks.Callback):
    """Collect each epoch's logs, report the monitored metric, prune, stop on NaN, and say when
    the metric has not improved for `patience` epochs.

    Used as a Keras callback for a holdout trial, and called directly with fold-averaged logs
    for a k-fold trial.
    """

    def __init__(
        self,
        trial: optuna.Trial,
        monitor: str,
        direction: str,
        on_epoch: Callable[[int, float], None] | None = None,
        check_interrupt: Callable[[], None] | None = None,
        smooth_epochs: int = 1,
        patience: int = 0,
    ) -> None:
        super().__init__()
        self.trial = trial
        self.monitor = monitor
        self.maximize = direction == "maximize"
        self.smooth_epochs = smooth_epochs
        self.patience = patience
        self.on_epoch = on_epoch
        self.check_interrupt = check_interrupt
        self.history: dict[str, list[float]] = {}
        self._best: tuple[int, float] | None = None
        self._improved = 0  # the epoch that gave the best point so far

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.record(epoch + 1, logs or {}):
            self.model.stop_training = True

    def record(self, epoch: int, logs: dict[str, Any]) -> bool:
        """Record epoch `epoch` (1-based); True when the trial should stop here, complete:
        `patience` epochs passed without a new best. Raises when it is pruned or failed."""
        value = self.observe(epoch, logs)
        if self.tell(epoch, value):
            self.prune(epoch)
        return self.stalled(epoch)

    def observe(self, epoch: int, logs: dict[str, Any]) -> float:
        """The local half of record(): keep the epoch's logs, show it, fail the trial on a
        non-finite value; the monitored value, for tell()."""
        if self.monitor not in logs:
            raise HpoError(
                f"metric {self.monitor!r} is not in the training logs "
                f"({', '.join(sorted(logs))}); pruning would never happen"
            )
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))
        if self.check_interrupt:
            self.check_interrupt()
        bad = [key for key, value in logs.items() if not math.isfinite(float(value))]
        if bad:
            self.save()
            reason = f"{bad[0]} became {logs[bad[0]]} at epoch {epoch}"
            self.trial.set_user_attr("fail_reason", reason)
            raise TrialFailed(reason)
        value = float(logs[self.monitor])
        if self.on_epoch:
            self.on_epoch(epoch, value)
        return value

    def tell(self, epoch: int, value: float) -> bool:
        """The storage half of record(): report the epoch to Optuna; whether to prune here.
        It touches nothing observe() does, so it may run on another thread (ReportAhead)."""
        self.trial.report(value, step=epoch)
        return self.trial.should_prune()

    def prune(self, epoch: int) -> None:
        """Save the curve and raise TrialPruned."""
        self.save()
        raise optuna.TrialPruned(f"pruned at epoch {epoch}")

    def stalled(self, epoch: int) -> bool:
        """Whether `patience` epochs have passed without a new best point (always False
        without a patience)."""
        if not self.patience:  # no early stop: the best point is found once, at the end
            return False
        best = self.best()
        if best != self._best:  # a new best point (on the smoothed curve, if smoothed)
            self._best, self._improved = best, epoch
        return epoch - self._improved >= self.patience

    def best(self) -> tuple[int, float] | None:
        """(1-based best epoch, its monitored value), on the curve smoothed as the study says;
        None before the first finite value."""
        return best_point(self.history.get(self.monitor, []), self.maximize, self.smooth_epochs)

    def save(self) -> None:
        """One user attr for the whole curve: cheap on an RDB, and readable by any Optuna tool."""
        self.trial.set_user_attr("history", self.history)
        best = self.best()
        if best:
            self.trial.set_user_attr("best_epoch", best[0])


class ReportAhead:
    """Tell the storage of each epoch on a thread while the next epoch trains.

    A fused epoch of a small model takes a few milliseconds, and so do its storage calls
    (trial.report and should_prune: a database transaction, and the pruner's reads), a good
    part of a Boston search on SQLite (docs/engine.md, "The host's work"). The compiled epoch
    leaves Python free, so here epoch e's calls run on a thread while epoch e+1 trains, and
    their answer is taken (settle) before epoch e+1 is recorded: a trial pruned at epoch e is
    pruned there, its curve ending at e, as before; only epoch e+1's arithmetic is wasted.
    Leaving the block by an exception (Ctrl-C, a failed trial) first waits for the pending
    call, so every epoch told is stored before the trial ends."""

    def __init__(self, reporter: EpochReporter, calls: BackgroundCalls) -> None:
        self.reporter = reporter
        self.calls = calls
        self._pending: tuple[int, Future] | None = None

    def record(self, epoch: int, logs: dict[str, Any]) -> bool:
        """EpochReporter.record, its storage half (tell) started on the thread, not waited
        for; settle() the epoch before first. True when patience stops the trial here."""
        assert self._pending is None
        value = self.reporter.observe(epoch, logs)
        self._pending = (epoch, self.calls.submit(self.reporter.tell, epoch, value))
        return self.reporter.stalled(epoch)

    def settle(self) -> None:
        """Wait for the epoch sent last: raises TrialPruned (after saving the curve) when the
        pruner stopped it, or what the storage raised."""
        if self._pending is None:
            return
        epoch, future = self._pending
        self._pending = None
        if future.result():
            self.reporter.prune(epoch)

    def __enter__(self) -> ReportAhead:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.settle()
        elif self._pending is not None:  # the trial ends by `exc` whatever the pruner says
            wait([self._pending[1]])
            self._pending = None


class BackgroundCalls:
    """Calls run one after another on one daemon thread, started at the first. Not a
    ThreadPoolExecutor: Python joins its threads at exit, so a second Ctrl-C would wait for a
    call retrying a lost database (up to the storage's reconnect window) before the process
    could end."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()

    def submit(self, fn: Callable, *args: Any) -> Future:
        with self._starting:
            if self._thread is None or not self._thread.is_alive():  # not alive: forked
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
        future: Future = Future()
        self._calls.put((future, fn, args))
        return future

    def _run(self) -> None:
        while True:
            future, fn, args = self._calls.get()
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the caller, as an executor does
                future.set_exception(exc)


# The fused loop's storage calls, one epoch behind its training (ReportAhead): one thread
# for the process, whatever the number of Objectives it makes.
STORAGE_CALLS = BackgroundCalls("hpo-report")


def interrupted(trial: optuna.Trial, reporter: EpochReporter, exc: BaseException) -> None:
    """Keep an interrupted trial's curve and say why it stopped (Ctrl-C, SIGTERM, `hpo stop`)."""
    reporter.save()
    trial.set_user_attr("fail_reason", getattr(exc, "reason", "interrupted"))
