"""The live view of a running study: a rich progress bar fed by an Optuna callback."""

from __future__ import annotations

import time

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hpo.search.budget import over_budget, study_counts


class StudyProgress:
    """Shows the study's finished trials (of all its workers, from every run of it) with how
    many were pruned or failed, the best value so far, and this worker's current epoch."""

    def __init__(self, console: Console, study: optuna.Study, total: int, metric: str) -> None:
        self.console = console
        self.metric = metric
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
        self.counts = study_counts(study)
        self.task = self.progress.add_task(
            "trials", total=total, completed=self.counts["finished"], status=""
        )
        self.epoch_line = ""
        self._refresh(study)

    def __enter__(self) -> StudyProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def on_epoch(self, trial_number: int, epoch: int, value: float) -> None:
        self.epoch_line = f"trial {trial_number} epoch {epoch}: {self.metric} {value:.4g}"
        self._refresh(None)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.FAIL and not over_budget(trial):
            reason = trial.user_attrs.get("fail_reason", "see the storage")
            self.progress.console.print(f"[yellow]trial {trial.number} failed: {reason}")
        self.counts = study_counts(study)  # all workers' trials, as `hpo list` counts them
        self.epoch_line = ""
        self.progress.update(self.task, completed=self.counts["finished"])
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


class RetrainStatus:
    """A spinner counting retrain-and-test runs; the instance is the per-run callback."""

    def __init__(self, console: Console, runs: int) -> None:
        self.runs, self.done = runs, 0
        self.status = console.status(self._text())

    def _text(self) -> str:
        return f"retraining and testing: {self.done}/{self.runs} runs done"

    def __enter__(self) -> RetrainStatus:
        self.status.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.status.stop()

    def expect(self, runs: int) -> None:
        """The number of runs, once known (analyze knows it after choosing an ensemble)."""
        self.runs = runs
        self.status.update(self._text())

    def __call__(self, seed: int) -> None:
        self.done += 1
        self.status.update(self._text())
