"""Create or resume a study and run trials on it until the study's trial budget is met."""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from rich.console import Console

from hpo import artifacts as artifact_stores
from hpo import names
from hpo.backend import freeze_heap, import_keras
from hpo.data import stored_preparation
from hpo.data.arrays import Prepared
from hpo.data.load import load_source
from hpo.errors import HpoError
from hpo.search import ahead, batched
from hpo.search.budget import Budget, OverBudget, failed_as_stale, finished
from hpo.search.interrupt import GracefulInterrupt
from hpo.search.local_workers import Recycler
from hpo.search.progress import StudyProgress
from hpo.search.search_options import SearchOptions
from hpo.search.storage import HEARTBEAT_S, RECONNECT_S, open_storage, redact, unavailable_in
from hpo.study import algorithms
from hpo.study.studyfile import StudySpec

SPEC_ATTR = "hpo"  # study user attr holding what analyze needs to rebuild the objective


def spec_record(spec: StudySpec) -> dict:
    return {
        "dataset": spec.dataset,
        "task": spec.task,
        "metric": spec.metric,
        "direction": spec.direction,
        "max_epochs": spec.max_epochs,
        "validation": str(spec.validation),
        "num_words": spec.num_words,
        "study_file": spec.path,
        "study_file_text": Path(spec.path).read_text(encoding="utf-8") if spec.path else "",
        "data": spec.data.record() if spec.data else None,
    }


def open_study(
    spec: StudySpec,
    storage_url: str,
    study_name: str,
    heartbeat_s: int = HEARTBEAT_S,
    reconnect_s: float = RECONNECT_S,
    storage: optuna.storages.BaseStorage | None = None,
) -> optuna.Study:
    """The study `study_name` in the storage (`storage`, else opened at `storage_url`),
    created for `spec` or checked to be of it."""
    storage = storage or open_storage(storage_url, heartbeat_s, reconnect_s)
    if names.problem(study_name) is not None:  # an odd name may load, never be made anew
        try:
            storage.get_study_id_from_name(study_name)
        except KeyError:
            names.check_new(study_name)
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        direction=spec.direction,
        sampler=algorithms.make_sampler(spec.sampler, spec.seed),
        pruner=algorithms.make_pruner(spec.pruner, spec.max_epochs),
        load_if_exists=True,
    )
    if study.direction.name.lower() != spec.direction:
        raise HpoError(
            f"study {study_name!r} in {redact(storage_url)} was made to "
            f"{study.direction.name.lower()}, this study file says {spec.direction}; "
            "choose another --study"
        )
    recorded = study.user_attrs.get(SPEC_ATTR)
    if recorded is None:
        study.set_user_attr(SPEC_ATTR, spec_record(spec))
    elif recorded.get("dataset") != spec.dataset or recorded.get("metric") != spec.metric:
        raise HpoError(
            f"study {study_name!r} in {redact(storage_url)} tunes "
            f"{recorded.get('dataset')} on {recorded.get('metric')}; choose another --study"
        )
    if study.metric_names is None:
        with warnings.catch_warnings():  # metric names are "experimental" in Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([spec.metric])  # the dashboard's axis says val_accuracy
    return study


def load_data(
    spec: StudySpec, data_dir: str | None, study: optuna.Study, console: Console
) -> Prepared:
    """The study's data; your own data checked against the preparation the study's first
    worker stored (or stored now): trials, or a model retrained on an edited file, would not
    be the study's."""
    with console.status(f"loading {spec.dataset}…"):
        prepared = load_source(spec.source, data_dir)
    if prepared.preparation is not None:
        stored_preparation.save_or_check(study, prepared.preparation.to_dict(), spec.dataset)
    return prepared


@dataclass
class RunResult:
    study: optuna.Study
    finished_before: int
    finished_after: int
    interrupted: bool
    recycle: str | None = None  # why this worker should restart now to free memory (Recycler)
    signum: int | None = None  # the signal that interrupted it (SIGINT, SIGTERM), if one did


def run(
    spec: StudySpec,
    name: str,
    options: SearchOptions,
    console: Console,
    *,
    timeout: float | None = None,
    recycler: Recycler | None = None,
    notes: bool = True,
    study: optuna.Study | None = None,
) -> RunResult:
    """Run trials on the study `name` until it has `options.trials` finished ones, for
    `timeout` seconds at most (what is left of --timeout: hpo.search.launch keeps its wall-clock
    end across restarts), or until `recycler` says this process should restart (Keras and
    TensorFlow keep memory across trials even after clear_session, so a long-lived worker is
    restarted; see the CLI). Each trial keeps its validation predictions in the artifact store
    `options.artifacts` (None: not kept). With --batch-trials above 1 it asks for that many
    trials at a time and trains those of one structure side by side (hpo.search.batched)."""
    trials = options.trials
    if trials < 1:
        raise HpoError(f"--trials must be at least 1, got {trials}")
    if study is None:  # else the caller's open_study: its storage, not a second connection
        study = open_study(spec, options.storage_url, name, options.heartbeat, options.reconnect)
    before = finished(study)
    if before >= trials:
        return RunResult(study, before, before, interrupted=False)
    prepared = load_data(spec, options.data_dir, study, console)
    artifacts = options.artifacts
    store = None if artifacts is None else artifact_stores.open_store(artifacts)
    batch_trials = batched.resolve(options.batch_trials)
    for note in prepared.notes if notes else ():
        console.print(f"data: {note}", highlight=False, markup=False)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the progress bar reports each trial
    logging.getLogger("hpo").setLevel(logging.WARNING)
    interrupted = False
    import_keras()
    from hpo.train.objective import Objective  # imports keras: only when training
    from hpo.train.reporting import TrialFailed

    freeze_heap()  # TensorFlow's, Keras' and the data's objects: not walked after each trial

    budget = Budget(trials)
    deadline = None if timeout is None else time.monotonic() + timeout
    with (
        StudyProgress(console, study, trials, spec.metric) as progress,
        GracefulInterrupt() as ctrl_c,
    ):
        objective = Objective(
            spec,
            prepared,
            on_epoch=progress.on_epoch,
            check_interrupt=ctrl_c.check,
            admit=budget.admit,
            artifact_store=store,
        )
        own_failures = (TrialFailed, OverBudget)  # a trial's own ends: recorded, not raised
        why_not = batch_trials > 1 and objective.unstackable()
        if why_not and notes:  # run_trials asks for one at a time: asking ahead gains nothing
            console.print(f"note: --batch-trials {batch_trials}: {why_not}", highlight=False)
        asks_ahead = ahead.enabled(objective, batch_trials)
        pipeline = ahead.AskAhead(
            study,
            objective,
            budget,
            [progress],
            may_ask=lambda: (
                not (
                    ctrl_c.requested
                    or (deadline is not None and time.monotonic() >= deadline)
                    or (recycler and recycler.due(running=1))
                )
            ),
        )
        try:
            # One trial (or batch) at a time, each admitted by the study-wide budget; a trial
            # asked ahead (hpo.search.ahead) holds a slot already, and runs unless Ctrl-C.
            while (pipeline.pending and not ctrl_c.requested) or budget.wait_for_slot(
                study, deadline, lambda: ctrl_c.requested
            ):
                reason = recycler and recycler.due()
                if reason and not pipeline.pending:
                    return RunResult(study, before, finished(study), False, recycle=reason)
                ran = 1
                try:
                    if asks_ahead:
                        ran = pipeline.run_one()
                    else:
                        ran = batched.run_trials(
                            study, objective, batch_trials, budget, [progress], own_failures
                        )
                except Exception as exc:
                    if failed_as_stale(exc):  # its re-run is queued: this worker goes on
                        console.print(f"[yellow]a trial of this worker was failed as stale: {exc}")
                        continue
                    lost = unavailable_in(exc)
                    if lost is None:
                        raise
                    raise lost from None
                finally:
                    if recycler:
                        recycler.add_trials(ran)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            pipeline.close()
        interrupted = interrupted or ctrl_c.requested
    return RunResult(study, before, finished(study), interrupted, signum=ctrl_c.signum)
