"""hpo from Python — a notebook or a script. The `hpo` command line is a thin layer over this.

    import hpo
    study = hpo.optimize("boston_housing", trials=20, seed=0)   # an optuna.Study
    result = hpo.analyze("boston_housing")                      # test figures, report, model
    hpo.predict("my_study.toml", "new_rows.csv")                # a pandas DataFrame
    hpo.submit("imdb", trials=50, storage=URL)                  # queued for `hpo worker`s

Errors are raised as hpo.HpoError with a one-line message. Progress is drawn with rich (in a
terminal, or as a notebook cell's output); `progress=False` keeps quiet. An interrupt (Ctrl-C,
or a notebook's "interrupt kernel") stops after the current epoch and leaves the study
resumable: call the same function again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from rich.console import Console

from hpo import artifacts as artifact_stores
from hpo.errors import HpoError
from hpo.results import handover as handover_lib
from hpo.results import summary
from hpo.results.analyze_options import AnalyzeOptions, report_folder
from hpo.search import launch, local_workers, queue, storage, study_loop
from hpo.search.progress import RetrainStatus
from hpo.search.search_options import SearchOptions, check_code_paths, check_mlflow
from hpo.study import studyfile
from hpo.study.studyfile import StudySpec

DEFAULT_STORAGE = storage.DEFAULT_URL
DEFAULT_ARTIFACTS = artifact_stores.DEFAULT


def _console(progress: bool | Console) -> Console:
    if isinstance(progress, Console):
        return progress
    return Console(quiet=not progress)


def finish_optimize(run: launch.OptimizeRun, console: Console, err: Console) -> None:
    """Wait for the workers started, then say how the study stands and what to type next."""
    trials = run.options.trials
    codes = local_workers.wait(run.children) + local_workers.wait_pids(run.inherited)
    codes += run.exit_codes  # those run_optimize waited for
    failed = [code for code in codes if code not in (0, 130, 143)]  # 130, 143: interrupted
    if failed:
        err.print(f"{len(failed)} worker(s) failed: see storage/logs/{run.name}-worker*.log")
    result = run.result
    if result.finished_before >= trials:
        console.print(
            f"study {run.name} already has {result.finished_before} finished trials "
            f"(budget {trials}); raise --trials to run more."
        )
    console.print(summary.top_trials(result.study, run.spec))
    if result.stopped:  # a stop rule ended it before its budget (hpo.search.stop_rules)
        console.print(f"study {run.name} {result.stopped}", highlight=False, markup=False)
    if result.interrupted:
        err.print(
            f"interrupted: {result.finished_after} of {trials} trials finished and saved. "
            f"Resume with: {run.again}"
        )
        return
    analyze_argv = ["analyze", run.options.target, "--study", run.name, *run.options.location()]
    console.print(
        f"{result.finished_after} finished trials in {run.name}. Retrain the best and test it "
        f"with: {launch.command_line(analyze_argv)}"
    )


def optimize(
    target: str | Path,
    *,
    trials: int = 50,
    study: str | None = None,
    storage: str = DEFAULT_STORAGE,
    sampler: str | None = None,
    pruner: str | None = None,
    max_epochs: int | None = None,
    patience: int | None = None,
    seed: int | None = None,
    timeout: float | None = None,
    data_dir: str | None = None,
    workers: int | str = 1,
    batch_trials: int | str = "auto",
    artifacts: str = DEFAULT_ARTIFACTS,
    build: Callable[[dict[str, Any], Any], Any] | None = None,
    code_paths: str | Path | Sequence[str | Path] = (),
    mlflow: str | None = None,
    stop_after: int | None = None,
    target_value: float | None = None,
    warm_start: str | None = None,
    progress: bool | Console = True,
) -> optuna.Study:
    """Run (or resume) the study of `target` until it has `trials` finished trials.

    `target` is a built-in dataset (imdb, reuters, boston_housing, mnist) or a STUDY.toml
    path; the other arguments are those of `hpo optimize`. `workers` > 1 starts that many
    worker processes on this machine; each trial keeps its validation predictions in the
    artifact store `artifacts` (a folder, or s3://BUCKET). `build` is your model's function,
    `build(params, inputs) -> keras.Model` (one defined in a notebook works): it wins over the
    study file's [model] build, and runs in this process only, so with one worker. `code_paths`
    are folders a [model] module is looked for in first. `mlflow` is a tracking URI: each ended
    trial is logged there as a run nested under the study's. `stop_after` (N trials without
    improvement) and `target_value` (a best value to reach) are the study's stop rules, kept
    by every worker (hpo.search.stop_rules; None: the study's own). `warm_start`
    ("OTHER_STUDY" or "OTHER_STUDY@STORAGE_URL") makes a new study with that study's finished
    trials that fit its space copied in (hpo.search.warm_start); they do not count in
    `trials`. Returns the optuna.Study (an interrupted or stopped one included: call optimize
    again to resume it)."""
    options = SearchOptions(
        str(target),
        trials=trials,
        study=study,
        storage_url=storage,
        sampler=sampler,
        pruner=pruner,
        max_epochs=max_epochs,
        patience=patience,
        seed=seed,
        timeout=timeout,
        data_dir=data_dir,
        artifacts=artifacts,
        workers=str(workers),
        batch_trials=batch_trials,
        build=build,
        code_paths=check_code_paths(code_paths),
        mlflow=mlflow,
        stop_after=stop_after,
        target_value=target_value,
        warm_start=warm_start,
    )
    console = _console(progress)
    run = launch.run_optimize(options, console)
    finish_optimize(run, console, Console(stderr=True))
    return run.result.study


def submit(
    target: str | Path,
    *,
    trials: int = 50,
    priority: float | None = None,
    study: str | None = None,
    storage: str = DEFAULT_STORAGE,
    sampler: str | None = None,
    pruner: str | None = None,
    max_epochs: int | None = None,
    patience: int | None = None,
    seed: int | None = None,
    data_dir: str | None = None,
    artifacts: str = DEFAULT_ARTIFACTS,
    code_paths: str | Path | Sequence[str | Path] = (),
    timeout: float | None = None,
    stop_after: int | None = None,
    target_value: float | None = None,
    progress: bool | Console = True,
) -> str:
    """Queue the study of `target` for the workers of `storage` (`hpo worker`) with a budget of
    `trials` and a `priority` (a share of the trials: 2 gets twice 1's; default 1, or what it
    was submitted with before), and return its name
    at once. Own data is uploaded to the artifact store `artifacts`, which the workers share;
    submitting an existing study sets its budget (and queues it again if it was paused). A
    study file's [model] module is found as `optimize` finds it (`code_paths` first) and its
    SHA-256 recorded: a worker serves the study only with that very copy. `timeout` is a time
    budget in seconds the pool keeps (its clock starts when a worker first serves the study);
    `stop_after` and `target_value` are stop rules as in `optimize` (None: the study's own)."""
    options = SearchOptions(
        str(target),
        trials=trials,
        study=study,
        storage_url=storage,
        sampler=sampler,
        pruner=pruner,
        max_epochs=max_epochs,
        patience=patience,
        seed=seed,
        data_dir=data_dir,
        artifacts=artifacts,
        code_paths=check_code_paths(code_paths),
        timeout=timeout,
        stop_after=stop_after,
        target_value=target_value,
    )
    return queue.submit(options, priority, _console(progress))


def _open_existing(name: str, storage_url: str) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage.open_storage(storage_url))
    except KeyError as exc:
        raise HpoError(
            f"no study named {name!r} in {storage.redact(storage_url)} "
            "(hpo list shows the studies there)"
        ) from exc


def load_study(spec: StudySpec, name: str, storage_url: str) -> optuna.Study:
    """An existing study of `spec`'s dataset, or an HpoError saying what is there instead."""
    found = _open_existing(name, storage_url)
    recorded = found.user_attrs.get(study_loop.SPEC_ATTR, {})
    if recorded.get("dataset", spec.dataset) != spec.dataset:
        raise HpoError(f"study {name!r} tunes {recorded['dataset']}, not {spec.dataset}")
    return found


def analyze(
    target: str | Path,
    *,
    study: str | None = None,
    storage: str = DEFAULT_STORAGE,
    seeds: int = 1,
    top: int = 1,
    candidates: int = handover_lib.CANDIDATES,
    handover: str = handover_lib.DEFAULT,
    out: str | Path | None = None,
    artifacts: str | Path | None = DEFAULT_ARTIFACTS,
    data_dir: str | None = None,
    build: Callable[[dict[str, Any], Any], Any] | None = None,
    code_paths: str | Path | Sequence[str | Path] = (),
    mlflow: str | None = None,
    progress: bool | Console = True,
):
    """Retrain the best trial(s) for their best epoch on all training data and test them, and
    the ensemble chosen from the top `candidates` trials' validation predictions; hand over
    `handover` (best, seeds or trial-ensemble: the model predict uses). A study of your own
    model retrains it from `build` (the function `optimize` was given), else from the study
    file's [model] module, looked for on `code_paths`, beside the study file, then installed.
    `mlflow`: a tracking URI where the handed-over model, its test metrics and the report are
    logged, and the model registered under the study's name.

    Returns hpo.results.analysis.AnalysisResult: `.results` (per trial: `.mean("mae")`, `.std(…)`,
    `.ensemble`, `.model`), `.handed` (`.name`, `.selection`, `.trial_ensemble_test`), `.report`
    (report.md), `.folder`, `.model_path` (the handed-over model)."""
    options = AnalyzeOptions(
        str(target),
        study=study,
        storage_url=storage,
        seeds=seeds,
        top=top,
        candidates=candidates,
        handover=handover,
        out=Path(out) if out else None,
        artifacts=str(artifacts) if artifacts else None,
        data_dir=data_dir,
        code_paths=check_code_paths(code_paths),
        mlflow=check_mlflow(mlflow),
    )
    return analyze_with(options, _console(progress), build)


def analyze_with(
    options: AnalyzeOptions, console: Console, build: Callable[..., Any] | None = None
):
    """hpo.analyze, or `hpo analyze`, on options built once; `build`: a function from Python."""
    from hpo.backend import import_keras
    from hpo.results import analysis
    from hpo.train import predictions

    seeds, top, artifacts = options.seeds, options.top, options.artifacts
    analysis.check_options(seeds, top, options.candidates, options.handover)
    import_keras()
    spec = studyfile.load(options.target, own_model=build is not None)
    name = options.study or spec.name
    found = load_study(spec, name, options.storage_url)
    # The model code found here must be the one the study trained (its recorded SHA-256).
    local = study_loop.model_record(spec, build, options.code_paths)
    study_loop.check_model_code(found.user_attrs.get(study_loop.MODEL_ATTR), local, name)
    # A study whose trials kept predictions needs the store they are in; one that never
    # stored anything there may start it now (for the report's figures).
    kept = any(predictions.ATTR in t.user_attrs for t in found.get_trials(deepcopy=False))
    store = artifact_stores.open_store(artifacts, create=not kept) if artifacts else None
    prepared = study_loop.load_data(spec, options.data_dir, found, console)
    with RetrainStatus(console, seeds * top) as status:
        result = analysis.analyze_study(
            found,
            spec,
            prepared,
            seeds=seeds,
            top=top,
            folder=options.folder(name),
            store=store,
            candidates=options.candidates,
            handover=options.handover,
            progress=status,
            build=build,
            code_paths=options.code_paths,
        )
    if options.mlflow:  # the analysis stands whatever MLflow says: a warning at most
        from hpo.results import mlflow_model

        mlflow_model.log_analysis(options.mlflow, found, result, spec, prepared, console)
    return result


def experiment(
    target: str | Path,
    vary: Sequence[str] | dict[str, Sequence[Any]],
    *,
    epochs: int | None = None,
    seeds: int = 1,
    study: str | None = None,
    storage: str = DEFAULT_STORAGE,
    out: str | Path | None = None,
    data_dir: str | None = None,
    progress: bool | Console = True,
) -> Path | None:
    """Train the book's configuration and one-factor-at-a-time variants of it, test each with
    `seeds` seeds; `vary` as on the command line (["units=16,32,64"]) or a dict
    ({"units": [16, 32, 64]}). Returns the report's path, or None when interrupted (call again
    to resume)."""
    from hpo.results import one_factor as exp

    if isinstance(vary, dict):
        vary = [f"{k}={','.join(map(str, v))}" for k, v in vary.items()]
    spec = studyfile.load(str(target))
    if seeds < 1:
        raise HpoError("--seeds must be at least 1")
    if epochs is not None and epochs < 1:
        raise HpoError(f"--epochs must be at least 1, got {epochs}")
    base = exp.base_config(spec)
    factors = exp.parse_vary(list(vary), spec.task)
    xspec = exp.experiment_spec(spec, base, factors, epochs)
    name = study or exp.default_name(spec.name if spec.data else spec.dataset, factors)
    wanted = exp.variants(base, factors)
    console = _console(progress)
    found = study_loop.open_study(xspec, storage, name)
    for params in exp.missing(found, wanted):
        found.enqueue_trial(params)
    console.print(
        f"experiment [bold]{name}[/] · {len(wanted)} variants · "
        f"{xspec.max_epochs} epochs · {seeds} seed(s)"
    )
    options = SearchOptions(
        str(target),
        trials=len(wanted),
        study=name,
        storage_url=storage,
        data_dir=data_dir,
        artifacts=None,  # one factor at a time hands over no ensemble of its variants
        batch_trials=1,
    )
    result = study_loop.run(xspec, name, options, console, study=found)
    if result.interrupted:
        argv = ["experiment", str(target), *[f"--vary={v}" for v in vary], "--study", name]
        argv += launch.location_options(storage, data_dir)
        again = launch.command_line(argv)
        Console(stderr=True).print(
            f"interrupted: variants trained so far are saved. Resume with: {again}"
        )
        return None
    prepared = study_loop.load_data(spec, data_dir, result.study, console)
    with RetrainStatus(console, len(wanted) * seeds) as on_run:
        results = exp.retrain_variants(
            result.study, base, wanted, prepared, list(range(seeds)), on_run=on_run
        )
    return exp.write_report(results, xspec, result.study, Path(out) if out else report_folder(name))


def load_model(
    target: str | Path,
    *,
    study: str | None = None,
    storage: str = DEFAULT_STORAGE,
    model: str | Path | None = None,
    artifacts: str = DEFAULT_ARTIFACTS,
    code_paths: str | Path | Sequence[str | Path] = (),
):
    """The model `hpo analyze` handed over for a study, with the preparation of its data: a
    Predictor (hpo.results.prediction; `.predict(rows)`, `.model`). Found in analyze's folder
    (`model`, else storage/reports/STUDY), else fetched from the artifact store `artifacts`.
    A study of your own model imports its [model] module first (on `code_paths`, beside the
    study file, or installed), so the custom layers it registers load."""
    from hpo.results import prediction as predict_lib

    found = studyfile.identity(str(target))
    name = study or found.name
    return predict_lib.open_predictor(
        found,
        Path(model) if model else None,
        report_folder(name),
        lambda: _open_existing(name, storage),
        name,
        lambda: artifact_stores.open_store(artifacts, create=False),
        code=predict_lib.model_code(str(target)),
        code_paths=check_code_paths(code_paths),
    )


def predict(
    target: str | Path,
    rows: str | Path | Any,
    *,
    out: str | Path | None = None,
    study: str | None = None,
    storage: str = DEFAULT_STORAGE,
    model: str | Path | None = None,
    artifacts: str = DEFAULT_ARTIFACTS,
    probabilities: bool = False,
    code_paths: str | Path | Sequence[str | Path] = (),
):
    """Predictions of the tuned model for `rows` (a .csv/.parquet/.npz path, a DataFrame or an
    array), prepared as the study's training rows were; written to `out` when given. Returns a
    pandas DataFrame: the value for regression; the class and its probability (and each class'
    probability with `probabilities=True`) for classification."""
    predictor = load_model(
        target,
        study=study,
        storage=storage,
        model=model,
        artifacts=artifacts,
        code_paths=code_paths,
    )
    return predictor.predict_file(rows, out=Path(out) if out else None, probabilities=probabilities)


def export(
    target: str | Path,
    *,
    format: str,
    out: str | Path,
    study: str | None = None,
    storage: str = DEFAULT_STORAGE,
    artifacts: str = DEFAULT_ARTIFACTS,
    code_paths: str | Path | Sequence[str | Path] = (),
):
    """Export the model `hpo analyze` handed over for a study, for production: `format` keras
    (a .keras file plain Keras loads), saved_model (TensorFlow's, signature serving_default)
    or onnx. Your own data's model takes the raw columns, one named input each, and prepares
    them inside; a built-in dataset's takes the book's float vectors (hpo.results.export).
    Returns an hpo.results.export.Exported: where, what it takes and what it returns."""
    from hpo.backend import import_keras
    from hpo.results import export as export_lib
    from hpo.results import prediction as predict_lib

    export_lib.check_format(format)
    found = studyfile.identity(str(target))
    name = study or found.name
    code = predict_lib.model_code(str(target))
    opened: list[optuna.Study] = []

    def existing() -> optuna.Study:
        if not opened:
            opened.append(_open_existing(name, storage))
        return opened[0]

    default = report_folder(name)
    if not default.is_dir():
        attrs = existing().user_attrs
        if "analysis" not in attrs and handover_lib.ATTR not in attrs:
            raise HpoError(f"no analysis of study {name!r}: run hpo analyze first")
    folder, _ = predict_lib.model_folder(
        None, default, existing, lambda: artifact_stores.open_store(artifacts, create=False)
    )
    path = predict_lib.handed_over(folder)
    preparation = None
    if found.own_data:
        preparation = predict_lib.load_preparation(folder, existing, name)
    predict_lib.import_model_code(code, check_code_paths(code_paths))
    model = predict_lib.load_keras(path)
    ready, exported = export_lib.production_model(model, preparation, own_model=code is not None)
    if format == "keras" or import_keras().backend.backend() == "tensorflow":
        export_lib.write(ready, format, Path(out))
    else:  # SavedModel and ONNX go through TensorFlow's graph: a child process exports them
        export_lib.write_through_tensorflow(
            ready, format, Path(out), str(target), check_code_paths(code_paths)
        )
    exported.path, exported.format = Path(out), format
    exported.study, exported.source = name, path.name
    return exported
