"""Tables a person reads after a run: the best trials of a study, the studies in a storage,
analyze's test results."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import optuna
import pandas as pd
from rich.table import Table

from hpo.optuna_private import study_id
from hpo.results.retrained import test_metrics
from hpo.search import queue, queue_standing, stop_rules
from hpo.search.budget import trial_counts
from hpo.study import studyfile
from hpo.study.studyfile import StudySpec


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial with its state, value, best epoch and parameters."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                "value": t.value,
                "best_epoch": t.user_attrs.get("best_epoch"),
                "epochs": len(t.intermediate_values),
                "seconds": t.duration.total_seconds() if t.duration else None,
                **t.params,
            }
        )
    return pd.DataFrame(rows)


ABSENT = "—"  # a parameter a trial does not have (its `when` was false; fewer layers)


def param_columns(searched: Iterable[str], trials: Iterable[Mapping[str, Any]]) -> list[str]:
    """The parameter columns of a table of trials (`trials`: their params): each searched name
    that some trial holds, followed by its per-layer values (units_1, units_2, ...) in layer
    order. A name no trial holds is left out rather than shown empty; a searched parameter
    with a `when` condition is shown, and a trial without it shows ABSENT."""
    held: list[str] = []
    for params in trials:
        held += [name for name in params if name not in held]
    columns = []
    for name in searched:
        if name in held:
            columns.append(name)
        per_layer = [p for p in held if re.fullmatch(rf"{re.escape(name)}_\d+", p)]
        columns += sorted(per_layer, key=lambda p: int(p.rpartition("_")[2]))
    return list(dict.fromkeys(columns))


def missing(value: object) -> bool:
    """Whether a table cell has no value (None, or pandas' NaN for a trial without it)."""
    return value is None or (isinstance(value, float) and value != value)


def top_trials(study: optuna.Study, spec: StudySpec, n: int = 5) -> Table:
    frame = trials_frame(study)
    table = Table(title=f"best trials of {study.study_name} ({spec.metric})")
    if frame.empty or "value" not in frame or frame["value"].isna().all():
        return table
    done = (
        frame[frame["state"] == "complete"]
        .sort_values("value", ascending=spec.direction == "minimize")
        .head(n)
    )
    trials = [t.params for t in study.get_trials(deepcopy=False)]
    shown = ["trial", "value", "best_epoch", *param_columns(spec.space.searched(), trials)]
    for column in shown:
        table.add_column(SHORT.get(column, column), justify="right")
    for _, row in done.iterrows():
        table.add_row(*(_cell(column, row.get(column)) for column in shown))
    return table


SHORT = {
    "best_epoch": "epoch",
    "learning_rate": "lr",
    "batch_size": "batch",
    "activation": "act",
    "optimizer": "opt",
    "dropout": "drop",
    "trial": "#",
}


def _cell(column: str, value: object) -> str:
    if missing(value):
        return "" if column in ("value", "best_epoch") else ABSENT
    if column == "value":
        return f"{value:.4f}"
    if column == "learning_rate":
        return f"{value:.1e}"
    if isinstance(value, float):
        # An integer parameter some trials lack comes out of pandas as a float: 32.0 → 32.
        return str(int(value)) if column == "best_epoch" or value.is_integer() else f"{value:.3g}"
    return str(value)


def storage_listing(storage: optuna.storages.BaseStorage) -> tuple[Table, list[str]]:
    """`hpo list`: every study's trial counts and best value; for a submitted study (hpo
    submit) also its queue state, budget, workers on it now, and trials finished a minute;
    and one line for each submitted study that is not served, saying why (paused, left, or
    a worker that could not serve it), so its submitter is told."""
    table = Table(title="studies")
    reasons: list[str] = []
    summaries = _summaries(storage)
    # A study's name is never cut short: it is what the other commands take.
    longest = max((len(s.study_name) for s in summaries), default=5)
    table.add_column("study", no_wrap=True, min_width=longest)
    columns = ("dataset", "metric", "trials", "complete", "pruned", "failed", "best")
    for column in columns:
        table.add_column(column, justify="left" if column == "dataset" else "right")
    table.add_column("state", no_wrap=True, min_width=7)  # the queue's, for a submitted study
    for column in ("of", "now", "/min", "prio"):
        table.add_column(column, justify="right")
    for summary in summaries:
        try:
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            trials = study.get_trials(deepcopy=False)
        except KeyError:  # deleted since it was listed (by someone else on a shared storage)
            continue
        counts = trial_counts(trials)  # over-budget placeholders of many workers left out
        info = summary.user_attrs.get("hpo")
        info = info if isinstance(info, dict) else {}  # data from a shared storage: any shape
        best = summary.best_trial.value if summary.best_trial else None
        entry = queue.Entry.of(summary.study_name, study_id(summary), summary.user_attrs)
        queued = ["", "", "", "", ""]
        if entry is not None and entry.malformed:
            queued = [queue.LEFT, "", "", "", ""]
            reasons.append(f"{summary.study_name}: {entry.reason}")
        elif entry is not None:
            standing = queue_standing.Standing.of(trials)
            state = queue_standing.state(entry, standing)
            queued = [
                state,
                str(entry.trials),
                str(standing.running),
                f"{standing.per_minute:.1f}" if state == "running" else "",
                f"{entry.priority:g}",
            ]
            why = entry.why()
            if why and state != queue.DONE:
                reasons.append(f"{summary.study_name}: {why}")
        reasons += _stop_lines(summary.study_name, summary.user_attrs, queued)
        table.add_row(
            summary.study_name,
            str(info.get("dataset", "?")),
            str(info.get("metric", "?")),
            *(str(counts[key]) for key in ("trials", "complete", "pruned", "failed")),
            "" if best is None else f"{best:.4f}",
            *queued,
        )
    return table, reasons


def _stop_lines(name: str, attrs: dict[str, Any], queued: list[str]) -> list[str]:
    """`hpo list`'s lines on a study's stop rules (hpo.search.stop_rules): why one ended it,
    or how much of its time budget is used; `queued` (its row's state cells) says "stopped"
    for a study that no queue state shows."""
    rules, stop, _ = stop_rules.of_attrs(attrs)  # bound-checked: a shared storage's data
    if stop is not None:
        if not queued[0]:
            queued[0] = queue_standing.STOPPED
        return [f"{name}: {stop.line()}"]
    line = rules.time_line()
    return [f"{name}: {line}"] if line else []


def _summaries(storage: optuna.storages.BaseStorage, tries: int = 3) -> list:
    """Every study's summary; read again when a study is deleted while they are read (the
    storage is shared: another person's `hpo` or dashboard may delete one at any time)."""
    for attempt in range(tries):
        try:
            return optuna.get_all_study_summaries(storage, include_best_trial=True)
        except KeyError:
            if attempt == tries - 1:
                raise
    return []


def study_files_table() -> Table:
    """`hpo studies`: the built-in study files and what each searches."""
    table = Table(title=f"study files in {studyfile.studies_dir()}")
    for column in ("name", "dataset", "metric", "epochs", "validation", "searched"):
        table.add_column(column)
    for path in studyfile.builtin_studies():
        spec = studyfile.load(str(path))
        table.add_row(
            path.stem,
            spec.dataset,
            f"{spec.metric} ({spec.direction})",
            str(spec.max_epochs),
            str(spec.validation),
            ", ".join(spec.space.searched()),
        )
    return table


def analysis_table(result: Any, seeds: int) -> Table:
    """`hpo analyze`'s test results, one row per retrained trial (`result`: an
    hpo.results.analysis.AnalysisResult, not imported: analysis imports this module's kin)."""
    metrics = test_metrics(result.task)
    runs = len(result.best.seeds)
    table = Table(title=f"test results of {result.study} ({runs} seed(s) each)")
    columns = [f"test {m}" for m in metrics] + [f"ensemble {m}" for m in metrics if seeds > 1]
    for column in ("trial", "epochs", *columns):
        table.add_column(column, justify="right")
    for r in result.results:
        cells = [f"{r.mean(m):.4f} ± {r.std(m):.4f}" for m in metrics]
        cells += [f"{r.ensemble[m]:.4f}" for m in metrics if r.ensemble]
        table.add_row(str(r.trial), str(r.epochs), *cells)
    return table


def analysis_lines(result: Any, seeds: int) -> list[str]:
    """What `hpo analyze` says under its table: the ensembles, the handover's notes, the trial
    ensemble's test figures, and where the report and the handed-over model are."""
    metrics = test_metrics(result.task)
    lines = [f"ensemble: the mean prediction of the {seeds} seeds' models"] if seeds > 1 else []
    handed = result.handed
    lines += [f"note: {note}" for note in handed.notes]
    if handed.selection is not None and handed.trial_ensemble_test is not None:
        chosen = handed.selection
        members = ", ".join(f"{t.number} ({w:.2f})" for t, w in chosen.members())
        tested = ", ".join(f"test {m} {handed.trial_ensemble_test[m]:.4f}" for m in metrics)
        lines.append(
            f"trial ensemble {members}: {tested}; validation {chosen.metric} scored nested "
            f"{chosen.nested.ensemble:.4f} against the best single trial's "
            f"{chosen.nested.best_single:.4f}"
        )
    lines.append(
        f"report {result.report}\nhanded over ({handed.name}) {result.model_path}\n"
        f"params {result.folder / 'params.json'}"
    )
    return lines
