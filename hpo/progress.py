"""The live view of a running study: a rich progress bar fed by an Optuna callback."""

from __future__ import annotations

import time

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hpo.budget import finished


class StudyProgress:
    """Counts finished trials (done/pruned/failed) and shows the best value so far."""

    def __init__(self, console: Console, total: int, already: int, metric: str) -> None:
        self.console = console
        self.metric = metric
        self.counts = {"complete": 0, "pruned": 0, "failed": 0}
        self.started = time.monotonic()
        self.progress = Progress(
            TextColumn("[bold]trials"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task("trials", total=total, completed=already, status="")
        self.epoch_line = ""

    def __enter__(self) -> StudyProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def on_epoch(self, trial_number: int, epoch: int, value: float) -> None:
        self.epoch_line = f"trial {trial_number} epoch {epoch}: {self.metric} {value:.4g}"
        self._refresh(None)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.COMPLETE:
            self.counts["complete"] += 1
        elif trial.state == TrialState.PRUNED:
            self.counts["pruned"] += 1
        elif trial.state == TrialState.FAIL:
            reason = trial.user_attrs.get("fail_reason", "see the storage")
            if reason == "over budget":  # another worker holds the last slots: not a failure
                return
            self.counts["failed"] += 1
            self.progress.console.print(f"[yellow]trial {trial.number} failed: {reason}")
        self.epoch_line = ""
        self.progress.update(self.task, completed=finished(study))  # all workers' trials
        self._refresh(study)

    def _refresh(self, study: optuna.Study | None) -> None:
        c = self.counts
        parts = [f"pruned {c['pruned']}", f"failed {c['failed']}"]
        if study is not None:
            self.best = best_line(study, self.metric)
        if getattr(self, "best", ""):
            parts.append(self.best)
        if self.epoch_line:
            parts.append(f"[dim]{self.epoch_line}")
        self.progress.update(self.task, status=" · ".join(parts))


def best_line(study: optuna.Study, metric: str) -> str:
    try:
        best = study.best_trial
    except ValueError:  # no completed trial yet
        return ""
    return f"best {metric} {best.value:.4f} (trial {best.number})"
