"""`hpo experiment` (hpo.results.one_factor): the book's one-factor-at-a-time homework, made exact.

Every parameter stays at the book's configuration for the dataset except one factor at a
time, which takes each of the values asked for. Each variant is trained with its learning
curve recorded (as a trial of an Optuna study, so the comparison is resumable and visible in
the dashboard), its best epoch chosen, then retrained from scratch and tested with K seeds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import HpoError
from hpo.results import analysis
from hpo.results.report import markdown_table
from hpo.results.retrained import Retrained, test_metrics
from hpo.search.budget import counts_toward_budget
from hpo.study.space import BOOK_CONFIGS as BOOK_CONFIGS  # where bench/ scripts import it
from hpo.study.space import PARAMS, Choice, Space, book_config, parse_space
from hpo.study.studyfile import StudySpec


def _convert(name: str, text: str) -> Any:
    kind = PARAMS[name].kind
    try:
        return int(text) if kind == "int" else float(text) if kind == "float" else text
    except ValueError:
        what = "an integer" if kind == "int" else "a number"
        raise HpoError(f"--vary {name}: {text!r} is not {what}") from None


def base_config(spec: StudySpec) -> dict[str, Any]:
    """The configuration variants vary from: the book's for its datasets; for your own data,
    the defaults a study file's [space] starts from (the book's Dense stack for the task).
    A study of your own model ([model]) has no such configuration: one line."""
    if spec.model is not None:
        raise HpoError(
            f"hpo experiment varies the book's Dense stack, and {spec.path or 'this study'} "
            "builds its own model ([model]); search its [space] with hpo optimize instead"
        )
    return book_config(spec.dataset if spec.data is None else None, spec.task)


def parse_vary(items: list[str], task: str) -> dict[str, list[Any]]:
    """["units=8,16", "loss=mse"] → {"units": [8, 16], "loss": ["mse"]}, each value checked."""
    if not items:
        raise HpoError("give at least one --vary FACTOR=v1,v2,…")
    factors: dict[str, list[Any]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip()
        if not sep or not values.strip():
            raise HpoError(f"--vary {item!r}: expected FACTOR=v1,v2,…")
        if name not in PARAMS:
            raise HpoError(f"--vary {name}: unknown factor (known: {', '.join(PARAMS)})")
        if name in factors:
            raise HpoError(f"--vary {name}: given twice")
        factors[name] = [_convert(name, v.strip()) for v in values.split(",") if v.strip()]
    # The space parser holds every rule about values (ranges, losses per task): reuse it.
    parse_space({n: {"choices": v} for n, v in factors.items()}, task, "--vary")
    return factors


def variants(base: dict[str, Any], factors: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The book's configuration first, then each factor's values with all else at the book's."""
    out = [dict(base)]
    for name, values in factors.items():
        for value in values:
            candidate = {**base, name: value}
            if candidate not in out:
                out.append(candidate)
    return out


def experiment_spec(
    spec: StudySpec, base: dict[str, Any], factors: dict[str, list[Any]], epochs: int | None
) -> StudySpec:
    dims = {
        name: Choice(tuple(dict.fromkeys([base[name], *factors.get(name, [])]))) for name in base
    }
    return replace(  # every variant trains all its epochs: no pruner, no early stop
        spec,
        space=Space(dims),
        max_epochs=epochs or spec.max_epochs,
        patience=0,
        pruner={"name": "none"},
        sampler={"name": "random"},
    )


def default_name(dataset: str, factors: dict[str, list[Any]]) -> str:
    text = "-".join(f"{k}={'_'.join(map(str, v))}" for k, v in factors.items())
    return f"{dataset}-experiment-" + re.sub(r"[^A-Za-z0-9_.=-]", "", text)


def trial_for(study: optuna.Study, params: dict[str, Any]) -> FrozenTrial | None:
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if trial.params == params:
            return trial
    return None


@dataclass
class VariantResult:
    label: str
    params: dict[str, Any]
    trial: FrozenTrial | None
    retrained: Retrained | None


def label(base: dict[str, Any], params: dict[str, Any], own_data: bool = False) -> str:
    changed = [f"{k}={v}" for k, v in params.items() if base[k] != v]
    return ", ".join(changed) or ("default" if own_data else "book")


def plot(results: list[VariantResult], spec: StudySpec, path: Path) -> Path:
    """Validation curves of every variant, and their test metric with its std across seeds."""
    metric = test_metrics(spec.task)[0]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in results:
        if r.trial is not None:
            curve = r.trial.user_attrs["history"][spec.metric]
            left.plot(range(1, len(curve) + 1), curve, "o-", markersize=3, label=r.label)
    left.set_xlabel("epoch")
    left.set_ylabel(spec.metric)
    left.legend(fontsize="small")
    done = [r for r in results if r.retrained is not None]
    right.bar(
        [r.label for r in done],
        [r.retrained.mean(metric) for r in done],
        yerr=[r.retrained.std(metric) for r in done],
        capsize=4,
        color="tab:blue",
    )
    right.set_ylabel(f"test {metric}")
    right.tick_params(axis="x", labelrotation=30)
    low = min((r.retrained.mean(metric) - r.retrained.std(metric) for r in done), default=0)
    high = max((r.retrained.mean(metric) + r.retrained.std(metric) for r in done), default=1)
    margin = (high - low) * 0.5 or 0.01
    right.set_ylim(low - margin, high + margin)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def missing(study: optuna.Study, wanted: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Variants with no finished (or already queued) trial yet."""
    have = [
        # a queued trial has no params yet: enqueue_trial keeps them as "fixed_params"
        t.system_attrs.get("fixed_params", {}) if t.state == TrialState.WAITING else t.params
        for t in study.get_trials(deepcopy=False)
        if counts_toward_budget(t) or t.state == TrialState.WAITING
    ]
    return [v for v in wanted if v not in have]


def write_report(
    results: list[VariantResult], spec: StudySpec, study: optuna.Study, folder: Path
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    figure = plot(results, spec, folder / "experiment.png")
    metrics = test_metrics(spec.task)
    rows = []
    for r in results:
        if r.trial is None or r.retrained is None:
            rows.append([r.label, "", "failed", *["" for _ in metrics]])
            continue
        rows.append(
            [
                r.label,
                r.retrained.epochs,
                r.trial.value,
                *[f"{r.retrained.mean(m):.4f} ± {r.retrained.std(m):.4f}" for m in metrics],
            ]
        )
    seeds = next((r.retrained.seeds for r in results if r.retrained), [])
    around = (
        f"the default configuration for {spec.dataset}"
        if spec.data is not None
        else f"the book's {spec.dataset} configuration"
    )
    text = "\n".join(
        [
            f"# {study.study_name}",
            "",
            f"One factor at a time around {around}; each variant "
            f"trained up to {spec.max_epochs} epochs, retrained for its best epoch on the whole "
            f"training set and tested with seeds {', '.join(map(str, seeds))}.",
            "",
            markdown_table(
                ["variant", "best epoch", f"best {spec.metric}", *[f"test {m}" for m in metrics]],
                rows,
            ),
            "",
            f"![variants]({figure.name})",
            "",
        ]
    )
    path = folder / "experiment.md"
    path.write_text(text, encoding="utf-8")
    study.set_user_attr(
        "experiment",
        [
            {"variant": r.label, **(r.retrained.summary() if r.retrained else {"failed": True})}
            for r in results
        ],
    )
    return path


def retrain_variants(
    study: optuna.Study,
    base: dict[str, Any],
    wanted: list[dict[str, Any]],
    data,
    seeds: list[int],
    on_run=None,
) -> list[VariantResult]:
    results = []
    for params in wanted:
        trial = trial_for(study, params)
        retrained = None
        if trial is not None:
            retrained = analysis.retrain_config(
                params, data, analysis.best_epoch(trial), seeds, trial=trial.number, on_run=on_run
            )
        own = data.preparation is not None
        results.append(VariantResult(label(base, params, own), params, trial, retrained))
    return results
