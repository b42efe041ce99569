"""The analysis report: Markdown with PNG figures, written under storage/reports/<study>/.

Figures: the best trial's learning curves with the chosen epoch marked (like the book's),
Optuna's optimization history and parameter importances. Tables: the effect of each searched
factor (best and median validation metric per value), the top trials, the test results, and
the versions and seeds that produced them.
"""

from __future__ import annotations

import importlib.metadata
import math
import platform
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt
import optuna
import pandas as pd
from matplotlib.ticker import MaxNLocator

from hpo.results.handover import FILES, Handed
from hpo.results.retrained import Retrained, test_metrics
from hpo.results.summary import ABSENT, missing, param_columns, trials_frame
from hpo.search.budget import COPIED
from hpo.search.warm_start import BOOK, ENQUEUED
from hpo.study.space import DEFAULT_LOSS
from hpo.study.studyfile import StudySpec
from hpo.train.curves import smoothed


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; a missing value (a parameter the trial does not have) shows ABSENT."""

    def cell(value: Any) -> str:
        if missing(value):
            return ABSENT
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


LONG_CURVE = 30  # epochs; beyond this the curves are drawn without markers, zoomed as below
SKIPPED_EPOCHS = 10  # left out of a long curve's y-range, as the book does for Boston


def curve_y_range(*curves: Sequence[float]) -> tuple[float, float] | None:
    """The y-range of long curves without their first epochs, whose values (a Boston MAE of 20
    falling to 2.5) would flatten everything after them; None for short curves."""
    if max((len(c) for c in curves), default=0) <= LONG_CURVE:
        return None
    rest = [v for c in curves for v in c[SKIPPED_EPOCHS:] if math.isfinite(v)]
    if not rest:
        return None
    low, high = min(rest), max(rest)
    margin = (high - low) * 0.08 or abs(high) * 0.05 or 0.1
    return low - margin, high + margin


def plot_curves(
    trial: optuna.trial.FrozenTrial, metric: str, epoch: int, path: Path, smooth_epochs: int = 1
) -> Path:
    """Training and validation loss and metric per epoch, the retraining epoch marked; with
    smoothing, also the moving mean of the monitored metric that chose that epoch."""
    history = trial.user_attrs["history"]
    name = metric.removeprefix("val_")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    zoomed = False
    for ax, key in zip(axes, ("loss", name), strict=True):
        train, val = history.get(key, []), history.get(f"val_{key}", [])
        long = len(train) > LONG_CURVE
        epochs = range(1, len(train) + 1)
        ax.plot(epochs, train, ":" if long else "o:", label=f"training {key}")
        ax.plot(epochs, val, "-" if long else "o-", label=f"validation {key}")
        if key == name and smooth_epochs > 1 and val:
            ax.plot(epochs, smoothed(val, smooth_epochs), "-", label=f"{smooth_epochs}-epoch mean")
        ax.axvline(epoch, color="grey", linestyle="--", label=f"chosen epoch ({epoch})")
        y_range = curve_y_range(train, val)
        if y_range:
            ax.set_ylim(*y_range)
            zoomed = True
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    title = f"trial {trial.number}: training and validation curves"
    if zoomed:
        title += f" (y-axis without the first {SKIPPED_EPOCHS} epochs)"
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _optuna_plot(plot, study: optuna.Study, path: Path) -> Path | None:
    """Save one of Optuna's matplotlib plots; None when the study cannot support it yet."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # these plots are marked experimental
        try:
            ax = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError):
            return None
    fig = ax.figure
    fig.set_size_inches(8, 4.5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def factor_effects(study: optuna.Study, spec: StudySpec) -> pd.DataFrame:
    """Per searched parameter and value: trials, best and median validation metric.

    Continuous ranges are cut into three equal-count bins, each named by the lowest and
    highest value its trials drew. Per-layer values (units_1, units_2, ...) are factors of
    their own; the trials without a parameter (a false `when`, fewer layers) are one more row,
    its value ABSENT."""
    frame = trials_frame(study)
    done = frame[frame["state"] == "complete"]
    rows = []
    best = "max" if spec.direction == "maximize" else "min"
    trials = [t.params for t in study.get_trials(deepcopy=False)]
    for name in param_columns(spec.space.searched(), trials):
        if name not in done or done.empty:
            continue
        held = done[done[name].notna()]
        column, labels = held[name], {}
        drawn = column.astype(float) if pd.api.types.is_numeric_dtype(column) else None
        # An integer parameter that some trials lack is a float column to pandas: grouped by
        # value all the same, as it is when every trial has it.
        if drawn is not None and not (drawn == drawn.round()).all() and column.nunique() > 4:
            column, labels = _value_ranges(column)
        groups = list(held.groupby(column)["value"])
        if len(held) < len(done):
            groups.append((ABSENT, done[done[name].isna()]["value"]))
        for value, values in groups:
            rows.append(
                {
                    "factor": name,
                    "value": labels.get(value, value),
                    "trials": len(values),
                    "best": values.agg(best),
                    "median": values.median(),
                }
            )
    return pd.DataFrame(rows)


def _value_ranges(column: pd.Series) -> tuple[pd.Series, dict[int, str]]:
    """Three equal-count bins of a float parameter: (bin number per trial, "low–high" label of
    the values drawn in each bin). Not pandas' interval edges, which reach below the range: a
    learning rate "from -0.00066"."""
    codes = pd.qcut(column, 3, labels=False, duplicates="drop")
    spans = column.groupby(codes).agg(["min", "max"])
    return codes, {code: f"{row['min']:.3g}–{row['max']:.3g}" for code, row in spans.iterrows()}


def versions(seeds: Sequence[int]) -> dict[str, str]:
    import keras

    backend = keras.backend.backend()
    package = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend, backend)
    try:
        backend_version = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        backend_version = "?"
    return {
        "python": platform.python_version(),
        "keras": keras.__version__,
        "backend": f"{backend} {backend_version}",
        "optuna": optuna.__version__,
        "numpy": importlib.metadata.version("numpy"),
        "seeds": ", ".join(map(str, seeds)),
    }


def handover_section(
    study: optuna.Study, spec: StudySpec, best: Retrained, handed: Handed
) -> list[str]:
    """The three handovers side by side, which one `hpo predict` uses, and the trial
    ensemble: its members and its nested validation score beside the best single trial's."""
    metrics = test_metrics(spec.task)
    seeds = len(best.seeds)
    rows = [
        [
            f"best trial {best.trial}, retrained ({seeds} seed(s), mean ± std)",
            *[f"{best.mean(m):.4f} ± {best.std(m):.4f}" for m in metrics],
            f"`{FILES['best']}` (first seed)",
        ]
    ]
    if best.ensemble is not None:
        rows.append(
            [
                f"the {seeds} seeds' ensemble",
                *[f"{best.ensemble[m]:.4f}" for m in metrics],
                f"`{FILES['seeds']}`",
            ]
        )
    chosen = handed.selection
    if chosen is not None and handed.trial_ensemble_test is not None:
        rows.append(
            [
                f"trial ensemble, {len(chosen.members())} trials (Caruana selection"
                + ("" if spec.task == "regression" else f"; loss: {DEFAULT_LOSS[spec.task]}")
                + ")",
                *[f"{handed.trial_ensemble_test[m]:.4f}" for m in metrics],
                f"`{FILES['trial-ensemble']}`",
            ]
        )
    lines = [
        "## Handover",
        "",
        markdown_table(["model", *[f"test {m}" for m in metrics], "file"], rows),
        "",
        f"Handed over: **{handed.name}** (`{handed.file}`), the model `hpo predict` uses.",
        "",
        *[f"- {note}" for note in handed.notes],
    ]
    if chosen is None:
        return [*lines, ""]
    nested = chosen.nested
    lines += [
        "",
        f"The trial ensemble was chosen from the top {len(chosen.candidates)} trials' "
        f"predictions of {chosen.rows} validation rows, by greedy selection with replacement "
        f"on {chosen.metric}. Scored nested (weights chosen on 4/5 of the rows, scored on the "
        f"other 1/5, rotating): ensemble **{nested.ensemble:.4f}**, best single trial "
        f"{nested.best_single:.4f}, under the same protocol (on the rows that chose it: "
        f"{nested.in_sample:.4f}, optimistic).",
        "",
    ]
    searched = param_columns(spec.space.searched(), [t.params for t in chosen.candidates])
    members = [
        [t.number, f"{w:.2f}", t.user_attrs["best_epoch"], f"{t.value:.4f}"]
        + [t.params.get(p, ABSENT) for p in searched]
        for t, w in chosen.members()
    ]
    header = ["trial", "weight", "epochs", spec.metric, *searched]
    return [*lines, markdown_table(header, members), ""]


def baseline_lines(study: optuna.Study, spec: StudySpec, best: Any) -> list[str]:
    """The book's configuration, run first (hpo.search.warm_start), beside the best trial's
    validation figure; none where the study did not run it. A trial of this study is preferred
    to one copied from another (--warm-start)."""
    runs = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(ENQUEUED) == BOOK]
    runs.sort(key=lambda t: (COPIED in t.user_attrs, t.number))
    if not runs:
        return []
    book = runs[0]
    where = f"trial {book.number}" + (", copied" if COPIED in book.user_attrs else "")
    if book.state != optuna.trial.TrialState.COMPLETE or book.value is None:
        state = book.state.name.lower()
        return [f"The book's configuration ({where}) was {state}: no baseline to compare.", ""]
    line = f"The book's configuration ({where}): {spec.metric} {book.value:.4f}"
    if best is not None and best.value is not None and best.number != book.number:
        gain = best.value - book.value
        better = gain >= 0 if spec.direction == "maximize" else gain <= 0
        line += (
            f"; the best trial {best.number}'s {best.value:.4f} ({gain:+.4f}, "
            f"{'better' if better else 'worse'})"
        )
    elif best is not None and best.number == book.number:
        line += ": the best trial is the book's configuration"
    return [line + ".", ""]


def write(
    study: optuna.Study,
    spec: StudySpec,
    results: list[Retrained],
    folder: Path,
    data_notes: tuple[str, ...] = (),
    handed: Handed | None = None,
) -> Path:
    """Write report.md and its figures into `folder`; returns the Markdown file's path.
    `data_notes`: how your own data was read (task, test split, unseen categories); `handed`:
    the model handed over, compared with the other handovers."""
    best = study.trials[results[0].trial] if results[0].trial is not None else None
    figures: dict[str, Path | None] = {}
    if best is not None and "history" in best.user_attrs:
        figures["Learning curves of the best trial"] = plot_curves(
            best, spec.metric, results[0].epochs, folder / "curves.png", spec.smooth_epochs
        )
    figures["Optimization history"] = _optuna_plot(
        optuna.visualization.matplotlib.plot_optimization_history, study, folder / "history.png"
    )
    figures["Parameter importances"] = _optuna_plot(
        optuna.visualization.matplotlib.plot_param_importances, study, folder / "importances.png"
    )

    metrics = test_metrics(spec.task)
    ranked_by = spec.metric
    if spec.smooth_epochs > 1:
        ranked_by += f" ({spec.smooth_epochs}-epoch mean)"
    lines = [f"# {study.study_name}: {spec.dataset}, {spec.metric} ({spec.direction})", ""]
    head = results[0]
    summary = ", ".join(f"{m} {head.mean(m):.4f} ± {head.std(m):.4f}" for m in metrics)
    lines += [
        f"Best trial **{head.trial}**, retrained from scratch on the whole training set "
        f"for **{head.epochs} epochs** with {len(head.seeds)} seed(s): test {summary}.",
        "",
        *baseline_lines(study, spec, best),
    ]
    ensembles = [f"ensemble {m}" for m in metrics] if head.ensemble else []
    if head.ensemble:
        together = ", ".join(f"{m} {head.ensemble[m]:.4f}" for m in metrics)
        lines += [
            f"The ensemble of those {len(head.seeds)} models (their mean prediction, saved as "
            f"`{FILES['seeds']}`): test {together}.",
            "",
        ]
    if handed is not None:
        lines += handover_section(study, spec, head, handed)
    lines += [
        "## Test results",
        "",
        markdown_table(
            ["trial", ranked_by, "epochs", *[f"test {m}" for m in metrics], *ensembles],
            [
                [
                    r.trial,
                    study.trials[r.trial].value if r.trial is not None else "",
                    r.epochs,
                    *[f"{r.mean(m):.4f} ± {r.std(m):.4f}" for m in metrics],
                    *[f"{r.ensemble[m]:.4f}" for m in metrics if r.ensemble],
                ]
                for r in results
            ],
        ),
        "",
    ]
    if data_notes:
        lines += ["## Data", "", *[f"- {note}" for note in data_notes], ""]
    # With the searched parameters it lacks (a false `when`, fewer layers), shown absent.
    searched = param_columns(spec.space.searched(), [t.params for t in study.trials])
    lacking = [(name, ABSENT) for name in searched if name not in head.params]
    lines += [
        "Parameters of the best trial:",
        "",
        markdown_table(["parameter", "value"], [*head.params.items(), *lacking]),
        "",
    ]
    for title, path in figures.items():
        if path is not None:
            lines += [f"## {title}", "", f"![{title}]({path.name})", ""]
        else:
            lines += [f"## {title}", "", "_Not enough completed trials to draw this yet._", ""]
    effects = factor_effects(study, spec)
    if not effects.empty:
        lines += [
            "## Effect of each factor",
            "",
            f"Validation {spec.metric} of the completed trials, per value.",
            "",
            markdown_table(list(effects.columns), effects.values.tolist()),
            "",
        ]
    frame = trials_frame(study)
    top = (
        frame[frame["state"] == "complete"]
        .sort_values("value", ascending=spec.direction == "minimize")
        .head(10)
    )
    params = param_columns(spec.space.searched(), [t.params for t in study.trials])
    shown = ["trial", "value", "best_epoch", *params]
    rows = top.reindex(columns=shown).astype(object).values.tolist()
    lines += ["## Top trials", "", markdown_table(shown, rows), ""]
    counts = frame["state"].value_counts().to_dict()
    lines += [f"{len(frame)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items()), ""]
    lines += ["## Versions", "", markdown_table(["", ""], list(versions(head.seeds).items())), ""]
    report = folder / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return report
