"""Create or resume a study and run trials on it until the study's trial budget is met."""

from __future__ import annotations

import logging
import re
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from rich.console import Console

from hpo import artifacts as artifact_stores
from hpo import names, optuna_private
from hpo.backend import freeze_heap, import_keras
from hpo.data import stored_preparation
from hpo.data.arrays import Prepared
from hpo.data.load import load_source
from hpo.errors import HpoError
from hpo.search import ahead, batched, stop_rules, tracking
from hpo.search import warm_start as warm_starts
from hpo.search.budget import Budget, OverBudget, failed_as_stale, finished
from hpo.search.interrupt import GracefulInterrupt
from hpo.search.local_workers import Recycler
from hpo.search.progress import StudyProgress
from hpo.search.search_options import SearchOptions
from hpo.search.storage import HEARTBEAT_S, RECONNECT_S, open_storage, redact, unavailable_in
from hpo.study import algorithms
from hpo.study.model_code import ModelCode, digest, locate
from hpo.study.studyfile import StudySpec

SPEC_ATTR = "hpo"  # study user attr holding what analyze needs to rebuild the objective
# Study user attr naming the study's build function and its module's SHA-256 (and the file's
# name, to say which file differs): what a resuming run or a worker compares its copy with.
# Data only: no process imports or opens anything because of it.
MODEL_ATTR = "model_code"


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


def model_record(
    spec: StudySpec, build: Callable | None = None, code_paths: Sequence[str | Path] = ()
) -> dict[str, Any] | None:
    """What a study records of its model code (MODEL_ATTR), found here as training would find
    it: `build` (a function passed from Python) wins over the study file's [model] build; None
    for hpo's own Dense stack. A module that cannot be found is one line."""
    if build is not None:
        return function_record(build)
    if spec.model is None:
        return None
    path = locate(spec.model, code_paths)
    return {"build": spec.model.build, "sha256": digest(path), "file": path.name}


def function_record(build: Callable) -> dict[str, Any]:
    """MODEL_ATTR for a function object: its module's file's SHA-256 when it has one (a
    notebook's function has none: null)."""
    module_name = getattr(build, "__module__", None) or "__main__"
    name = getattr(build, "__qualname__", None) or getattr(build, "__name__", "build")
    file = getattr(sys.modules.get(module_name), "__file__", None)
    path = Path(file) if isinstance(file, str) and Path(file).is_file() else None
    return {
        "build": f"{module_name}:{name}",
        "sha256": digest(path) if path else None,
        "file": path.name if path else None,
    }


def model_record_problem(record: Any) -> str | None:
    """What in a MODEL_ATTR read from the storage is not what hpo writes, or None. Its values
    are shown and compared, never imported or opened."""
    if not isinstance(record, dict):
        return f"not a table: {type(record).__name__}"
    if not isinstance(record.get("build"), str) or not record["build"]:
        return f"build: must be a text, got {record.get('build')!r}"
    sha = record.get("sha256")
    if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
        return f"sha256: must be 64 hex digits, got {sha!r}"
    file = record.get("file")
    if file is not None and not (isinstance(file, str) and file and Path(file).name == file):
        return f"file: must be a file's name, got {file!r}"
    return None


def check_model_code(recorded: Any, local: dict[str, Any] | None, study_name: str) -> None:
    """Refuse to train a study with another model than it records (MODEL_ATTR): another
    build function, or a module whose SHA-256 differs. One line saying what to do."""
    if recorded is None:
        return
    problem = model_record_problem(recorded)
    if problem is not None:
        raise HpoError(
            f"study {study_name!r}: its {MODEL_ATTR} record is malformed ({problem}); "
            "choose another --study"
        )
    if local is None:
        raise HpoError(
            f"study {study_name!r} trains model.build {recorded['build']}; this study file "
            "has no [model]: add it, or choose another --study"
        )
    if local["build"] != recorded["build"]:
        raise HpoError(
            f"model.build: study {study_name!r} trains {recorded['build']}, this run builds "
            f"{local['build']}; choose another --study"
        )
    theirs, ours = recorded.get("sha256"), local.get("sha256")
    if theirs and ours and theirs != ours:
        raise HpoError(differs(local.get("file") or recorded["build"], ours, theirs))


def differs(file: str, here: str, theirs: str) -> str:
    """The line that refuses a study whose module differs from the copy found here."""
    return (
        f"model.build: {file} here differs from the study's (sha256 {here[:8]}… vs "
        f"{theirs[:8]}…): install the study's version or pass --code-path"
    )


def served_model(
    spec: StudySpec, recorded: Any, study_name: str, code_paths: Sequence[str | Path]
) -> StudySpec:
    """`spec` (read from a shared storage) as a pool worker trains it, or one line why it
    cannot: its module is looked for on `code_paths` and installed only (never beside the
    submitter's study file, a path of another machine), and must have the SHA-256 the study
    records."""
    if spec.model is None:
        if recorded is not None:
            raise HpoError(f"its {MODEL_ATTR} names a model but its study file has no [model]")
        return spec
    if recorded is None or model_record_problem(recorded) or not recorded.get("sha256"):
        raise HpoError(
            f"it records no SHA-256 of its model code ({spec.model.build}); hpo submit it again"
        )
    spec = replace(spec, model=ModelCode(spec.model.build))  # no folder of another machine
    check_model_code(recorded, model_record(spec, code_paths=code_paths), study_name)
    return spec


def open_for_search(
    spec: StudySpec, name: str, options: SearchOptions, console: Console | None
) -> optuna.Study:
    """open_study as a search opens it (`hpo optimize`, hpo.optimize): with the options' model
    code, warm start and artifact store, enqueueing what a new study runs first."""
    return open_study(
        spec,
        options.storage_url,
        name,
        options.heartbeat,
        options.reconnect,
        build=options.build,
        code_paths=options.code_paths,
        enqueue=True,  # the book's configuration and [[enqueue]], when this makes the study
        warm_start=options.warm_start,
        artifacts=options.artifacts,
        console=console,
    )


def open_study(
    spec: StudySpec,
    storage_url: str,
    study_name: str,
    heartbeat_s: int = HEARTBEAT_S,
    reconnect_s: float = RECONNECT_S,
    storage: optuna.storages.BaseStorage | None = None,
    *,
    build: Callable | None = None,
    code_paths: Sequence[str | Path] = (),
    enqueue: bool = False,
    warm_start: str | None = None,
    artifacts: str | None = None,
    console: Console | None = None,
) -> optuna.Study:
    """The study `study_name` in the storage (`storage`, else opened at `storage_url`),
    created for `spec` or checked to be of it: its dataset, its metric and its model code
    (`build`, else the study file's [model] found on `code_paths`: model_record).

    Created here (not by another worker), it copies the trials of `warm_start`
    (OTHER_STUDY[@URL], checked before the study is made) and, with `enqueue`, enqueues what
    it runs first (hpo.search.warm_start), saying so on `console`."""
    model = model_record(spec, build, code_paths)  # a missing module: one line, no study made
    storage = storage or open_storage(storage_url, heartbeat_s, reconnect_s)
    exists = True
    try:
        storage.get_study_id_from_name(study_name)
    except KeyError:
        exists = False
        names.check_new(study_name)  # an odd name may load, never be made anew
    source = None if warm_start is None else warm_starts.parse_source(warm_start, storage_url)
    source_study = None
    if source and not exists:
        if (source.study, source.url) == (study_name, storage_url):
            raise HpoError(f"--warm-start {source.shown}: a study cannot warm-start itself")
        source_study = warm_starts.open_source(source)
        warm_starts.check_source(
            source,
            source_study.user_attrs.get(SPEC_ATTR),
            source_study.user_attrs.get(MODEL_ATTR),
            spec,
            model,
        )
    sampler = algorithms.make_sampler(spec.sampler, spec.seed)
    pruner = algorithms.make_pruner(spec.pruner, spec.max_epochs)
    created = False

    def create(load_if_exists: bool) -> optuna.Study:
        return optuna.create_study(
            storage=storage,
            study_name=study_name,
            direction=spec.direction,
            sampler=sampler,
            pruner=pruner,
            load_if_exists=load_if_exists,
        )

    if not exists:  # the storage settles which of several workers creates it
        try:
            study = create(load_if_exists=False)
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            pass
    if not created:
        study = create(load_if_exists=True)
    if source and created:
        study.set_user_attr(warm_starts.RECORD, source.record())  # at once: resumes see it
    elif source:
        warm_starts.check_record(study, source)
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
    recorded_model = study.user_attrs.get(MODEL_ATTR)
    if recorded_model is None and model is not None:
        study.set_user_attr(MODEL_ATTR, model)
    check_model_code(recorded_model, model, study_name)
    if study.metric_names is None:
        with warnings.catch_warnings():  # metric names are "experimental" in Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([spec.metric])  # the dashboard's axis says val_accuracy
    if created:
        _start(study, spec, source, source_study, enqueue, artifacts, console)
    return study


def _start(
    study: optuna.Study,
    spec: StudySpec,
    source: warm_starts.Source | None,
    source_study: optuna.Study | None,
    enqueue: bool,
    artifacts: str | None,
    console: Console | None,
) -> None:
    """A new study's warm start: the other study's trials copied, then what it runs first
    enqueued (a configuration a copied trial ran is not enqueued again)."""
    lines = []
    if source and source_study:
        store = artifact_stores.open_store(artifacts) if artifacts else None
        copied = warm_starts.copy_trials(study, source_study, source, spec, store)
        lines += copied.lines(source)
    if enqueue:
        lines += warm_starts.enqueue_first(study, spec)
    for line in lines if console else ():
        console.print(line, highlight=False, markup=False)


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


def model_options(
    spec: StudySpec, build: Callable | None, code_paths: Sequence[str | Path]
) -> dict[str, Any]:
    """The Objective's arguments for the study's own model: the function passed from Python,
    and where its [model] module is found; none for hpo's Dense stack."""
    if build is None and spec.model is None:
        return {}
    return {"build": build, "code_paths": tuple(str(p) for p in code_paths)}


@dataclass
class RunResult:
    study: optuna.Study
    finished_before: int
    finished_after: int
    interrupted: bool
    recycle: str | None = None  # why this worker should restart now to free memory (Recycler)
    signum: int | None = None  # the signal that interrupted it (SIGINT, SIGTERM), if one did
    stopped: str | None = None  # why a stop rule ended the study (hpo.search.stop_rules)


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
        study = open_for_search(spec, name, options, console)
    before = finished(study)
    watch = stop_rules.Watch(spec.metric, on_stop=stop_rules.note)
    stop = set_stop_rules(study, spec.metric, options, console, notes)
    if before >= trials or stop is not None:
        return RunResult(study, before, before, False, stopped=stop and stop.line())
    runs = tracking.trial_runs(options.mlflow, console)  # --mlflow: each ended trial logged
    if runs is not None:
        runs.describe(name, spec)
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

    budget = Budget(trials, stop=watch)
    deadline = None if timeout is None else time.monotonic() + timeout
    with (
        StudyProgress(console, study, trials, spec.metric) as progress,
        GracefulInterrupt() as ctrl_c,
    ):
        ended = [progress] if runs is None else [progress, runs]  # called as each trial ends
        objective = Objective(
            spec,
            prepared,
            on_epoch=progress.on_epoch,
            check_interrupt=ctrl_c.check,
            admit=budget.admit,
            artifact_store=store,
            **model_options(spec, options.build, options.code_paths),
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
            ended,
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
                            study, objective, batch_trials, budget, ended, own_failures
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
            if runs is not None:  # its trials still being logged to MLflow
                runs.close()
        interrupted = interrupted or ctrl_c.requested
    after = finished(study)
    stop = watch.check(study) if after < trials else None  # a met budget ended it, not a rule
    stopped = stop and stop.line()
    return RunResult(study, before, after, interrupted, signum=ctrl_c.signum, stopped=stopped)


def set_stop_rules(
    study: optuna.Study, metric: str, options: SearchOptions, console: Console, notes: bool = True
) -> stop_rules.Stop | None:
    """Give the study the stop rules of `options` (--stop-after, --target; those not given stay
    the study's) and say what changed; return the stop that ends it already, if one does."""
    store, study_id = optuna_private.rdb_storage_of(study), optuna_private.study_id(study)
    rules, before = stop_rules.set_rules(
        store, study_id, stop_after=options.stop_after, target=options.target_value
    )
    direction = study.direction.name.lower()
    if before is not None and before.any() and notes:
        console.print(
            f"note: study {study.study_name}'s stop rules changed: it "
            f"{rules.describe(metric, direction)} (it {before.describe(metric, direction)} before)",
            highlight=False,
            markup=False,
        )
    stop = stop_rules.Watch(metric).check(study)
    if stop is not None:
        console.print(
            f"study {study.study_name} {stop.line()}; give a new --stop-after or --target to go on",
            highlight=False,
            markup=False,
        )
    return stop
