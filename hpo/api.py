"""hpo from Python — a notebook or a script. The `hpo` command line is a thin layer over this.

    import hpo
    study = hpo.optimize("boston_housing", trials=20, seed=0)   # an optuna.Study
    result = hpo.analyze("boston_housing")                      # test figures, report, model
    hpo.predict("my_study.toml", "new_rows.csv")                # a pandas DataFrame

Errors are raised as hpo.HpoError with a one-line message. Progress is drawn with rich (in a
terminal, or as a notebook cell's output); `progress=False` keeps quiet. An interrupt (Ctrl-C,
or a notebook's "interrupt kernel") stops after the current epoch and leaves the study
resumable: call the same function again.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from rich.console import Console

from hpo import resources, runner, storage, studyfile, summary
from hpo import workers as hpo_workers
from hpo.errors import HpoError
from hpo.progress import RetrainStatus
from hpo.studyfile import StudySpec

DEFAULT_STORAGE = storage.DEFAULT_URL
DEFAULT_ARTIFACTS = "storage/artifacts"
REPORTS = Path("storage/reports")


def _console(progress: bool | Console) -> Console:
    if isinstance(progress, Console):
        return progress
    return Console(quiet=not progress)


def study_spec(target: str | Path, **overrides: Any) -> StudySpec:
    """The study file of `target` (a built-in dataset or a STUDY.toml), with options applied."""
    return studyfile.load(str(target)).with_overrides(**overrides)


@dataclass
class OptimizeRun:
    """What one call of run_optimize did, for its caller to report."""

    spec: StudySpec
    name: str
    result: runner.RunResult
    argv: list[str]  # the `hpo optimize …` arguments of one more worker, and of the resume line
    children: list[Any] = field(default_factory=list)  # worker processes it started
    inherited: list[int] = field(default_factory=list)  # workers started before a restart
    workers: str = "1"  # as asked for: a number or "auto"
    deadline: float | None = None  # the wall-clock end of --timeout, kept across restarts
    location: list[str] = field(default_factory=list)  # its --storage and --data-dir

    @property
    def again(self) -> str:
        return resume_line(self.argv, self.workers)


def resume_line(argv: list[str], workers: str) -> str:
    """The command that resumes a study with as many workers, password hidden."""
    if workers != "1":
        argv = hpo_workers.with_option(argv, "--workers", workers)
    return command_line(argv)


def command_line(argv: Sequence[str]) -> str:
    """`hpo ARGV` as a user types it, with any database password replaced by ***."""
    shown = list(argv)
    for i, arg in enumerate(shown[:-1]):
        if arg == "--storage":
            shown[i + 1] = storage.redact(shown[i + 1])
    return shlex.join(["hpo", *shown])


def location_options(storage_url: str, data_dir: str | None) -> list[str]:
    """--storage and --data-dir as a command line repeats them (when not the defaults)."""
    argv = ["--storage", storage_url] if storage_url != storage.DEFAULT_URL else []
    return argv + (["--data-dir", str(data_dir)] if data_dir else [])


def optimize_argv(
    target: str | Path,
    name: str,
    trials: int,
    storage_url: str,
    data_dir: str | None,
    options: dict[str, Any],
) -> list[str]:
    """The command line of a worker on this study: children run it, and resume lines show it.
    The data folder is spelt out: it may have come from an HPO_DATA_DIR of this process only."""
    argv = ["optimize", str(target), "--trials", str(trials), "--study", name]
    argv += location_options(storage_url, data_dir)
    for option, value in options.items():
        if value is not None:
            argv += [f"--{option.replace('_', '-')}", str(value)]
    return argv


def run_optimize(
    target: str | Path,
    *,
    trials: int,
    study: str | None,
    storage_url: str,
    data_dir: str | None,
    console: Console,
    timeout: float | None = None,
    workers: int | str = 1,
    heartbeat: int = storage.HEARTBEAT_S,
    reconnect: float = storage.RECONNECT_S,
    recycle_after: int | None = None,  # restart this process after N trials (CLI); None, 0: never
    log_dir: Path = Path("storage/logs"),
    **overrides: Any,
) -> OptimizeRun:
    """Open (or resume) the study, start `workers - 1` more worker processes, run trials here
    until the study's budget is met; the workers started are returned still running."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # hpo reports the study itself
    spec = study_spec(target, **overrides)
    name = study or spec.name
    console.print(
        f"study [bold]{name}[/] · {spec.dataset} · {spec.metric} ({spec.direction}) · "
        f"{spec.sampler['name']} sampler · {spec.pruner['name']} pruner · "
        f"storage {storage.redact(storage_url)}"
    )
    if heartbeat < 1 or (recycle_after or 0) < 0 or reconnect < 0:
        raise HpoError("--heartbeat must be at least 1, --recycle-after and --reconnect at least 0")
    gpus = resources.gpu_count() if str(workers) != "1" else 0  # asks nvidia-smi: only if needed
    try:
        n_workers = resources.parse_workers(str(workers), gpus)
    except ValueError as exc:
        raise HpoError(str(exc)) from exc
    options = {
        "sampler": overrides.get("sampler"),
        "pruner": overrides.get("pruner"),
        "max_epochs": overrides.get("max_epochs"),
        "seed": overrides.get("seed"),
    }
    if heartbeat != storage.HEARTBEAT_S:
        options["heartbeat"] = heartbeat
    if reconnect != storage.RECONNECT_S:
        options["reconnect"] = reconnect
    if recycle_after not in (None, hpo_workers.RECYCLE_AFTER):
        options["recycle_after"] = recycle_after
    argv = optimize_argv(target, name, trials, storage_url, data_dir, options)
    restarted = hpo_workers.restarted()
    inherited = hpo_workers.inherited_children()  # when this worker restarted itself
    deadline = hpo_workers.deadline(timeout)  # wall clock, kept across restarts
    if spec.data is not None:  # bad data is one line before the study exists, not after
        from hpo import data

        with console.status(f"loading {spec.dataset}…"):
            data.load_spec(spec, data_dir)
    opened = runner.open_study(spec, storage_url, name, heartbeat, reconnect)  # before any child
    children = []
    if str(workers) == "auto" and not inherited:
        console.print(f"workers auto: {n_workers} (for {os.cpu_count()} cores, {gpus} GPUs)")
    if n_workers > 1 and not inherited:
        shares = resources.share_gpu_memory(n_workers, gpus)
        if gpus:
            console.print(
                f"{n_workers} workers on {gpus} GPU(s), each taking "
                f"{shares['XLA_PYTHON_CLIENT_MEM_FRACTION']} of its memory (JAX) or growing "
                "on demand (TensorFlow)"
            )
        child_argv = hpo_workers.with_option(argv, "--workers", "1")
        if os.environ.get("HPO_STORAGE") == storage_url:  # inherited: no password in `ps`
            child_argv = hpo_workers.without_option(child_argv, "--storage")
        if timeout is not None:
            child_argv += ["--timeout", str(timeout)]
        children = hpo_workers.spawn(n_workers - 1, log_dir, name, child_argv)
        console.print(f"{len(children)} more workers started; their logs: {log_dir}/")
    try:
        result = runner.run(
            spec,
            storage_url=storage_url,
            study_name=name,
            trials=trials,
            timeout=None if deadline is None else max(deadline - time.time(), 0.0),
            data_dir=data_dir,
            console=console,
            heartbeat_s=heartbeat,
            reconnect_s=reconnect,
            recycle_after=recycle_after or None,
            notes=not restarted,  # the data notes were printed before the restart
            study=opened,
        )
    except storage.StorageUnavailable as exc:
        hpo_workers.interrupt(children, inherited)
        again = resume_line(argv, str(workers))
        raise HpoError(
            f"{exc}. Finished trials are saved there; when it is back, resume with: {again}"
        ) from exc
    except BaseException:
        hpo_workers.interrupt(children, inherited)  # they stop after their current epoch
        raise
    return OptimizeRun(
        spec,
        name,
        result,
        argv,
        children,
        inherited,
        workers=str(workers),
        deadline=deadline,
        location=location_options(storage_url, data_dir),
    )


def finish_optimize(run: OptimizeRun, trials: int, console: Console, err: Console) -> None:
    """Wait for the workers started, then say how the study stands and what to type next."""
    codes = hpo_workers.wait(run.children) + hpo_workers.wait_pids(run.inherited)
    failed = [code for code in codes if code not in (0, 130)]
    if failed:
        err.print(f"{len(failed)} worker(s) failed: see storage/logs/{run.name}-worker*.log")
    result = run.result
    if result.finished_before >= trials:
        console.print(
            f"study {run.name} already has {result.finished_before} finished trials "
            f"(budget {trials}); raise --trials to run more."
        )
    console.print(summary.top_trials(result.study, run.spec))
    if result.interrupted:
        err.print(
            f"interrupted: {result.finished_after} of {trials} trials finished and saved. "
            f"Resume with: {run.again}"
        )
        return
    analyze_argv = ["analyze", run.argv[1], "--study", run.name, *run.location]
    console.print(
        f"{result.finished_after} finished trials in {run.name}. Retrain the best and test it "
        f"with: {command_line(analyze_argv)}"
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
    seed: int | None = None,
    timeout: float | None = None,
    data_dir: str | None = None,
    workers: int | str = 1,
    progress: bool | Console = True,
) -> optuna.Study:
    """Run (or resume) the study of `target` until it has `trials` finished trials.

    `target` is a built-in dataset (imdb, reuters, boston_housing, mnist) or a STUDY.toml
    path; the other arguments are those of `hpo optimize`. `workers` > 1 starts that many
    worker processes on this machine. Returns the optuna.Study (an interrupted one included:
    call optimize again to resume it)."""
    console = _console(progress)
    run = run_optimize(
        target,
        trials=trials,
        study=study,
        storage_url=storage,
        data_dir=data_dir,
        console=console,
        timeout=timeout,
        workers=workers,
        sampler=sampler,
        pruner=pruner,
        max_epochs=max_epochs,
        seed=seed,
    )
    finish_optimize(run, trials, console, Console(stderr=True))
    return run.result.study


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
    recorded = found.user_attrs.get(runner.SPEC_ATTR, {})
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
    out: str | Path | None = None,
    artifacts: str | Path | None = DEFAULT_ARTIFACTS,
    data_dir: str | None = None,
    progress: bool | Console = True,
):
    """Retrain the best trial(s) for their best epoch on all training data and test them.

    Returns hpo.analysis.AnalysisResult: `.results` (per trial: `.mean("mae")`, `.std(…)`,
    `.ensemble`, `.model`), `.report` (report.md), `.folder`, `.model_path`."""
    from hpo import analysis
    from hpo.backend import import_keras

    import_keras()
    spec = studyfile.load(str(target))
    name = study or spec.name
    found = load_study(spec, name, storage)
    console = _console(progress)
    prepared = runner.load_data(spec, data_dir, found, console)
    with RetrainStatus(console, seeds * top) as on_run:
        return analysis.analyze_study(
            found,
            spec,
            prepared,
            seeds=seeds,
            top=top,
            folder=Path(out) if out else REPORTS / name,
            artifact_dir=Path(artifacts) if artifacts else None,
            on_run=on_run,
        )


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
    from hpo import one_factor as exp

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
    found = runner.open_study(xspec, storage, name)
    for params in exp.missing(found, wanted):
        found.enqueue_trial(params)
    console.print(
        f"experiment [bold]{name}[/] · {len(wanted)} variants · "
        f"{xspec.max_epochs} epochs · {seeds} seed(s)"
    )
    result = runner.run(
        xspec,
        storage_url=storage,
        study_name=name,
        trials=len(wanted),
        timeout=None,
        data_dir=data_dir,
        console=console,
    )
    if result.interrupted:
        argv = ["experiment", str(target), *[f"--vary={v}" for v in vary], "--study", name]
        argv += location_options(storage, data_dir)
        Console(stderr=True).print(
            f"interrupted: variants trained so far are saved. Resume with: {command_line(argv)}"
        )
        return None
    prepared = runner.load_data(spec, data_dir, result.study, console)
    with RetrainStatus(console, len(wanted) * seeds) as on_run:
        results = exp.retrain_variants(
            result.study, base, wanted, prepared, list(range(seeds)), on_run=on_run
        )
    return exp.write_report(results, xspec, result.study, Path(out) if out else REPORTS / name)


def load_model(
    target: str | Path,
    *,
    study: str | None = None,
    storage: str = DEFAULT_STORAGE,
    model: str | Path | None = None,
):
    """The model `hpo analyze` saved for a study (the seeds' ensemble when there is one), with
    the preparation of its data: an hpo.prediction.Predictor (`.predict(rows)`, `.model`)."""
    from hpo import prediction as predict_lib

    found = studyfile.identity(str(target))
    name = study or found.name
    return predict_lib.open_predictor(
        found,
        Path(model) if model else None,
        REPORTS / name,
        lambda: _open_existing(name, storage),
        name,
    )


def predict(
    target: str | Path,
    rows: str | Path | Any,
    *,
    out: str | Path | None = None,
    study: str | None = None,
    storage: str = DEFAULT_STORAGE,
    model: str | Path | None = None,
    probabilities: bool = False,
):
    """Predictions of the tuned model for `rows` (a .csv/.parquet/.npz path, a DataFrame or an
    array), prepared as the study's training rows were; written to `out` when given. Returns a
    pandas DataFrame: the value for regression; the class and its probability (and each class'
    probability with `probabilities=True`) for classification."""
    predictor = load_model(target, study=study, storage=storage, model=model)
    return predictor.predict_file(rows, out=Path(out) if out else None, probabilities=probabilities)
