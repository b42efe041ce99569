"""The `hpo` command line. Each command is a thin layer over one module."""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from typing import Annotated

import optuna
import typer
from rich.console import Console
from rich.markdown import Markdown

import hpo
from hpo import api
from hpo.backend import without_tensorflow
from hpo.errors import HpoError, first_line
from hpo.options import (
    DEFAULT_CANDIDATES,
    DEFAULT_HANDOVER,
    ArtifactsOpt,
    BatchTrialsOpt,
    CandidatesOpt,
    CodePathOpt,
    DataDirOpt,
    HandoverOpt,
    HeartbeatOpt,
    MaxEpochsOpt,
    MlflowOpt,
    PatienceOpt,
    PollOpt,
    PoolTimeoutOpt,
    PriorityOpt,
    PrunerOpt,
    ReadOnlyOpt,
    ReconnectOpt,
    RecycleOpt,
    ReportOpt,
    SamplerOpt,
    SeedOpt,
    SlotsOpt,
    StopAfterOpt,
    StorageOpt,
    StudiesOpt,
    StudyOpt,
    TargetArg,
    TargetValueOpt,
    TimeoutOpt,
    TokenOpt,
    TrialsOpt,
    WarmStartOpt,
    WorkersOpt,
)
from hpo.results import summary
from hpo.results.analyze_options import AnalyzeOptions
from hpo.search import batched, launch, local_workers, queue, queue_worker, storage
from hpo.search.interrupt import GracefulInterrupt, exit_code
from hpo.search.search_options import SearchOptions, check_code_paths, check_mlflow

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Tune the Keras networks of Deep Learning with Python, chapter 3, with Optuna.",
    epilog="Example: hpo optimize imdb --trials 50",
)

# Piped or logged output gets a fixed width, so tables are not cut to 80 columns.
console = Console(width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


def _version(value: bool) -> None:
    if value:
        console.print(f"hpo {hpo.__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print hpo's version and exit."
        ),
    ] = False,
) -> None:
    """Options of hpo itself, before the command (its help is the Typer app's)."""


@app.command(epilog="Example: hpo optimize imdb --trials 50 --seed 0")
def optimize(
    target: TargetArg,
    trials: TrialsOpt = 50,
    timeout: TimeoutOpt = None,
    stop_after: StopAfterOpt = None,
    target_value: TargetValueOpt = None,
    storage_url: StorageOpt = storage.DEFAULT_URL,
    study: StudyOpt = None,
    sampler: SamplerOpt = None,
    pruner: PrunerOpt = None,
    max_epochs: MaxEpochsOpt = None,
    patience: PatienceOpt = None,
    seed: SeedOpt = None,
    data_dir: DataDirOpt = None,
    artifacts: ArtifactsOpt = api.DEFAULT_ARTIFACTS,
    workers: WorkersOpt = "1",
    recycle_after: RecycleOpt = local_workers.RECYCLE_AFTER,
    batch_trials: BatchTrialsOpt = batched.AUTO,
    heartbeat: HeartbeatOpt = storage.HEARTBEAT_S,
    reconnect: ReconnectOpt = storage.RECONNECT_S,
    code_path: CodePathOpt = None,
    mlflow: MlflowOpt = None,
    warm_start: WarmStartOpt = None,
) -> None:
    """Run (or resume) a study until it has --trials finished trials, across all workers."""
    options = SearchOptions(
        target,
        trials=trials,
        study=study,
        storage_url=storage_url,
        sampler=sampler and sampler.value,
        pruner=pruner and pruner.value,
        max_epochs=max_epochs,
        patience=patience,
        seed=seed,
        timeout=timeout,
        data_dir=data_dir,
        artifacts=artifacts,
        workers=workers,
        recycle_after=recycle_after,
        batch_trials=batch_trials,
        heartbeat=heartbeat,
        reconnect=reconnect,
        code_paths=tuple(code_path or ()),
        mlflow=mlflow,
        stop_after=stop_after,
        target_value=target_value,
        warm_start=warm_start,
    )
    run = launch.run_optimize(options, console)
    launch.restart_if_due(run, sys.argv[1:], console)
    api.finish_optimize(run, console, err)
    if run.result.interrupted:
        raise typer.Exit(exit_code(run.result.signum))


@app.command(epilog="Example: hpo analyze imdb --seeds 3")
def analyze(
    target: Annotated[
        str, typer.Argument(help="The dataset or STUDY.toml the study was run with.")
    ],
    study: StudyOpt = None,
    storage_url: StorageOpt = storage.DEFAULT_URL,
    seeds: Annotated[int, typer.Option(help="Retrain each configuration with K seeds.")] = 1,
    top: Annotated[int, typer.Option(help="Retrain the T best trials.")] = 1,
    candidates: CandidatesOpt = DEFAULT_CANDIDATES,
    handover: HandoverOpt = DEFAULT_HANDOVER,
    out: ReportOpt = None,
    artifacts: ArtifactsOpt = api.DEFAULT_ARTIFACTS,
    data_dir: DataDirOpt = None,
    code_path: CodePathOpt = None,
    mlflow: MlflowOpt = None,
) -> None:
    """Retrain the best trial(s) for their best epoch on all training data and test them, with
    the ensemble chosen from the search's trials; hand over one of them."""
    options = AnalyzeOptions(
        target,
        study=study,
        storage_url=storage_url,
        seeds=seeds,
        top=top,
        candidates=candidates,
        handover=handover.value,
        out=out,
        artifacts=artifacts,
        data_dir=data_dir,
        code_paths=check_code_paths(code_path),
        mlflow=check_mlflow(mlflow),
    )
    result = api.analyze_with(options, console)
    console.print(summary.analysis_table(result, seeds))
    for line in summary.analysis_lines(result, seeds):
        console.print(line, highlight=False)
    if (result.folder / "preparation.json").exists():
        again = launch.command_line(options.predict_argv(result.folder))
        console.print(f"predict with: {again}")


@app.command(epilog="Example: hpo experiment imdb --vary units=16,32,64 --epochs 20 --seeds 3")
def experiment(
    target: Annotated[str, typer.Argument(help="A built-in dataset or a STUDY.toml.")],
    vary: Annotated[
        list[str],
        typer.Option(
            help="FACTOR=v1,v2,… to vary, all else at the book's configuration (repeatable)."
        ),
    ],
    epochs: Annotated[
        int | None, typer.Option(help="Epochs per variant [the study file's].")
    ] = None,
    seeds: Annotated[int, typer.Option(help="Retrain each variant with K seeds.")] = 1,
    study: Annotated[str | None, typer.Option(help="Study name [DATASET-experiment-…].")] = None,
    storage_url: StorageOpt = storage.DEFAULT_URL,
    out: ReportOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Compare one factor at a time around the book's configuration, tested with K seeds."""
    report = api.experiment(
        target,
        vary,
        epochs=epochs,
        seeds=seeds,
        study=study,
        storage=storage_url,
        out=out,
        data_dir=data_dir,
        progress=console,
    )
    if report is None:
        raise typer.Exit(130)
    console.print(Markdown(report.read_text(encoding="utf-8").split("![")[0]))
    console.print(f"report {report}")


@app.command(epilog="Example: hpo predict examples/churn.toml new_customers.csv --out p.csv")
def predict(
    target: Annotated[str, typer.Argument(help="The STUDY.toml the study was run with.")],
    rows: Annotated[
        Path, typer.Argument(help="New rows: a .csv or .parquet of the training columns, or .npz")
    ],
    out: Annotated[
        Path | None, typer.Option(help="Write the predictions here (.csv, .parquet or .npz).")
    ] = None,
    probabilities: Annotated[
        bool, typer.Option(help="Also write each class' probability (classification).")
    ] = False,
    study: StudyOpt = None,
    storage_url: StorageOpt = storage.DEFAULT_URL,
    model: Annotated[
        Path | None,
        typer.Option(help="hpo analyze's folder or a .keras file [storage/reports/STUDY]."),
    ] = None,
    artifacts: ArtifactsOpt = api.DEFAULT_ARTIFACTS,
    code_path: CodePathOpt = None,
) -> None:
    """Predict new rows with the model hpo analyze saved, prepared as the training rows were."""
    predicted = api.predict(
        target,
        rows,
        out=out,
        study=study,
        storage=storage_url,
        model=model,
        artifacts=artifacts,
        code_paths=check_code_paths(code_path),
        probabilities=probabilities,
    )
    for column, count in predicted.attrs.get("unseen", {}).items():
        err.print(
            f"note: {count} row(s) have a {column} never seen in training "
            "(predicted from an all-zero one-hot)",
            highlight=False,
        )
    if out is None:
        console.print(predicted.to_string(max_rows=20), highlight=False, soft_wrap=True)
    else:
        console.print(f"{len(predicted)} predictions written to {out}")


@app.command(epilog="Example: hpo export examples/churn.toml --format onnx --out churn.onnx")
def export(
    target: Annotated[
        str, typer.Argument(help="A built-in dataset or the STUDY.toml the study was run with.")
    ],
    format: Annotated[
        str,
        typer.Option(
            "--format", help="keras (a .keras file), saved_model (a folder) or onnx (a file)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Where to write the exported model.")],
    study: StudyOpt = None,
    storage_url: StorageOpt = storage.DEFAULT_URL,
    artifacts: ArtifactsOpt = api.DEFAULT_ARTIFACTS,
    code_path: CodePathOpt = None,
) -> None:
    """Export the model hpo analyze handed over, for production: your own data's takes the raw
    columns and prepares them inside; a built-in dataset's takes the book's float vectors."""
    exported = api.export(
        target,
        format=format,
        out=out,
        study=study,
        storage=storage_url,
        artifacts=artifacts,
        code_paths=check_code_paths(code_path),
    )
    console.print(exported.describe(), highlight=False, soft_wrap=True)


@app.command(epilog="Example: hpo dashboard --port 8080")
def dashboard(
    storage_url: StorageOpt = storage.DEFAULT_URL,
    host: Annotated[
        str, typer.Option(help="Address to bind; beyond 127.0.0.1 a token or --read-only.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free port).")] = 8080,
    artifacts: ArtifactsOpt = api.DEFAULT_ARTIFACTS,
    screenshot: Annotated[
        Path | None, typer.Option(help="Save a PNG of the page with headless Chromium, then exit.")
    ] = None,
    study: Annotated[str | None, typer.Option(help="With --screenshot: this study's page.")] = None,
    token: TokenOpt = None,
    read_only: ReadOnlyOpt = False,
) -> None:
    """Browse the studies of a storage in optuna-dashboard."""
    from hpo.results import dashboard as board

    board.run(storage_url, host, port, artifacts, screenshot, study, console, token, read_only)


@app.command(epilog="Example: hpo studies")
def studies() -> None:
    """List the built-in study files."""
    console.print(summary.study_files_table())


@app.command("list", epilog="Example: hpo list --storage sqlite:///storage/hpo.db")
def list_studies(storage_url: StorageOpt = storage.DEFAULT_URL) -> None:
    """List the studies in a storage: trial counts, best values, and the queue's state."""
    table, reasons = summary.storage_listing(storage.open_storage(storage_url))
    console.print(table)
    for reason in reasons:  # why a submitted study is not served, whole on one line
        console.print(reason, highlight=False, markup=False, soft_wrap=True)


@app.command(epilog="Example: hpo submit imdb --trials 50 --priority 2")
def submit(
    target: TargetArg,
    trials: TrialsOpt = 50,
    priority: PriorityOpt = None,
    timeout: PoolTimeoutOpt = None,
    stop_after: StopAfterOpt = None,
    target_value: TargetValueOpt = None,
    storage_url: StorageOpt = storage.DEFAULT_URL,
    study: StudyOpt = None,
    sampler: SamplerOpt = None,
    pruner: PrunerOpt = None,
    max_epochs: MaxEpochsOpt = None,
    patience: PatienceOpt = None,
    seed: SeedOpt = None,
    data_dir: DataDirOpt = None,
    artifacts: ArtifactsOpt = api.DEFAULT_ARTIFACTS,
    code_path: CodePathOpt = None,
) -> None:
    """Queue a study (or extend its budget) for the workers of a storage, and return."""
    name = api.submit(
        target,
        trials=trials,
        priority=priority,
        study=study,
        storage=storage_url,
        sampler=sampler and sampler.value,
        pruner=pruner and pruner.value,
        max_epochs=max_epochs,
        patience=patience,
        seed=seed,
        data_dir=data_dir,
        artifacts=artifacts,
        code_paths=tuple(code_path or ()),
        timeout=timeout,
        stop_after=stop_after,
        target_value=target_value,
        progress=console,
    )
    where = launch.location_options(storage_url, None, artifacts)
    console.print(
        f"queued study {name}: {trials} trials. Watch it with: "
        f"{launch.command_line(['list', *where[:2]])}; serve it with: "
        f"{launch.command_line(['worker', *where])}",
        highlight=False,
    )


@app.command(epilog="Example: hpo worker --slots auto")
def worker(
    storage_url: StorageOpt = storage.DEFAULT_URL,
    artifacts: ArtifactsOpt = api.DEFAULT_ARTIFACTS,
    data_dir: DataDirOpt = None,
    slots: SlotsOpt = "1",
    studies: StudiesOpt = "*",
    poll: PollOpt = queue_worker.POLL_S,
    recycle_after: RecycleOpt = local_workers.RECYCLE_AFTER,
    batch_trials: BatchTrialsOpt = batched.AUTO,
    heartbeat: HeartbeatOpt = storage.HEARTBEAT_S,
    reconnect: ReconnectOpt = storage.RECONNECT_S,
    code_path: CodePathOpt = None,
    mlflow: MlflowOpt = None,
) -> None:
    """Serve every queued study of a storage, fairly by priority, until stopped (SIGTERM or
    Ctrl-C: the trials in flight end their epoch and are queued again). A study with its own
    model is served only with its module's very copy, found on --code-path or installed."""
    with GracefulInterrupt():  # a signal while it starts (the storage, its slots) is not lost
        code = launch.serve_queue(
            storage_url,
            slots=slots,
            argv=sys.argv[1:],
            console=console,
            recycle_after=recycle_after,
            artifacts=artifacts,
            data_dir=data_dir,
            pattern=studies,
            poll_s=poll,
            heartbeat_s=heartbeat,
            reconnect_s=reconnect,
            batch_trials=batched.resolve(batched.parse(batch_trials)),
            code_paths=check_code_paths(code_path),
            mlflow=check_mlflow(mlflow),
        )
    raise typer.Exit(code)


@app.command(epilog="Example: hpo stop imdb")
def stop(
    name: Annotated[str, typer.Argument(help="The study.")],
    storage_url: StorageOpt = storage.DEFAULT_URL,
) -> None:
    """Pause a queued study: its running trials end at their next epoch and run again on resume."""
    queue.set_state(name, storage_url, queue.PAUSED, reason="stopped by hpo stop")
    console.print(
        f"study {name} paused; its running trials end within seconds. "
        f"hpo resume {name} queues it again.",
        highlight=False,
    )


@app.command(epilog="Example: hpo resume imdb")
def resume(
    name: Annotated[str, typer.Argument(help="The study.")],
    storage_url: StorageOpt = storage.DEFAULT_URL,
) -> None:
    """Put a paused study back in the queue."""
    queue.set_state(name, storage_url, queue.QUEUED)
    console.print(f"study {name} queued again", highlight=False)


def _thread_error(hook: threading.ExceptHookArgs) -> None:
    if isinstance(hook.exc_value, storage.StorageUnavailable):
        return  # a heartbeat thread: the main thread meets the same error and reports it
    first = str(hook.exc_value).strip().splitlines()[:1]
    name = hook.thread.name if hook.thread else "a thread"
    _say(f"warning: {name}: {hook.exc_type.__name__}: {' '.join(first)}")


def _say(line: str) -> None:
    """One line on stderr as written: no markup, colours or wrapping (it may be a command)."""
    err.print(line, markup=False, highlight=False, soft_wrap=True)


def main() -> None:
    """Entry point: user errors become one line on stderr, never a traceback."""
    debug = bool(os.environ.get("HPO_DEBUG"))
    without_tensorflow()  # a JAX or torch worker need not import it (hpo.backend)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    handler = logging.StreamHandler()  # hpo's own warnings (a lost database), timestamped
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logging.getLogger("hpo").addHandler(handler)
    if not debug:  # Optuna's heartbeat thread has no handler of its own: one line, not a trace
        threading.excepthook = _thread_error
    try:
        app()
    except KeyboardInterrupt:  # before the study's own Ctrl-C handling began, or after it
        again = sys.argv[1:2] == ["optimize"]
        _say(
            f"interrupted: resume with: {launch.command_line(sys.argv[1:])}"
            if again
            else "interrupted"
        )
        sys.exit(130)
    except HpoError as exc:
        if debug:
            raise
        _say(f"error: {exc}")
        sys.exit(2)
    except Exception as exc:
        if debug:
            raise
        first = first_line(exc, limit=1000) if str(exc).strip() else ""
        _say(f"error: {type(exc).__name__}: {first} (run with HPO_DEBUG=1 for the traceback)")
        sys.exit(1)
    finally:
        logging.getLogger("hpo").removeHandler(handler)


if __name__ == "__main__":
    main()
