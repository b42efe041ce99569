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
from rich.table import Table

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
    DataDirOpt,
    HandoverOpt,
    HeartbeatOpt,
    MaxEpochsOpt,
    PatienceOpt,
    PrunerOpt,
    ReconnectOpt,
    RecycleOpt,
    SamplerOpt,
    SeedOpt,
    StorageOpt,
    StudyOpt,
    TargetArg,
    TrialsOpt,
)
from hpo.results import summary
from hpo.results.retrained import test_metrics
from hpo.search import batched, launch, pool, queue, storage
from hpo.search import workers as hpo_workers
from hpo.search.interrupt import GracefulInterrupt, exit_code

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
    timeout: Annotated[
        float | None, typer.Option(help="Stop starting trials after S seconds.")
    ] = None,
    storage_url: StorageOpt = storage.DEFAULT_URL,
    study: StudyOpt = None,
    sampler: SamplerOpt = None,
    pruner: PrunerOpt = None,
    max_epochs: MaxEpochsOpt = None,
    patience: PatienceOpt = None,
    seed: SeedOpt = None,
    data_dir: DataDirOpt = None,
    artifacts: ArtifactsOpt = api.DEFAULT_ARTIFACTS,
    workers: Annotated[
        str,
        typer.Option(
            help="Worker processes on this machine, all on the same study: a number, or auto "
            "(8 per GPU, else one per core, at most 8)."
        ),
    ] = "1",
    recycle_after: RecycleOpt = hpo_workers.RECYCLE_AFTER,
    batch_trials: BatchTrialsOpt = batched.AUTO,
    heartbeat: HeartbeatOpt = storage.HEARTBEAT_S,
    reconnect: ReconnectOpt = storage.RECONNECT_S,
) -> None:
    """Run (or resume) a study until it has --trials finished trials, across all workers."""
    run = launch.run_optimize(
        target,
        trials=trials,
        study=study,
        storage_url=storage_url,
        data_dir=data_dir,
        console=console,
        timeout=timeout,
        workers=workers,
        heartbeat=heartbeat,
        reconnect=reconnect,
        recycle_after=recycle_after,
        batch_trials=batch_trials,
        artifacts=artifacts,
        sampler=sampler and sampler.value,
        pruner=pruner and pruner.value,
        max_epochs=max_epochs,
        patience=patience,
        seed=seed,
    )
    if run.result.recycle:
        console.print(
            f"restarting this worker {run.result.recycle} to release the memory Keras keeps "
            "across trials"
        )
        argv = hpo_workers.with_option(sys.argv[1:], "--workers", "1")
        children = [c.pid for c in run.children] + run.inherited
        hpo_workers.restart(argv, children, run.deadline)
    api.finish_optimize(run, trials, console, err)
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
    out: Annotated[Path | None, typer.Option(help="Report folder [storage/reports/STUDY].")] = None,
    artifacts: ArtifactsOpt = api.DEFAULT_ARTIFACTS,
    data_dir: DataDirOpt = None,
) -> None:
    """Retrain the best trial(s) for their best epoch on all training data and test them, with
    the ensemble chosen from the search's trials; hand over one of them."""
    result = api.analyze(
        target,
        study=study,
        storage=storage_url,
        seeds=seeds,
        top=top,
        candidates=candidates,
        handover=handover.value,
        out=out,
        artifacts=artifacts,
        data_dir=data_dir,
        progress=console,
    )
    metrics = test_metrics(result.task)
    ensembles = seeds > 1
    runs = len(result.best.seeds)
    table = Table(title=f"test results of {result.study} ({runs} seed(s) each)")
    columns = [f"test {m}" for m in metrics] + [f"ensemble {m}" for m in metrics if ensembles]
    for column in ("trial", "epochs", *columns):
        table.add_column(column, justify="right")
    for r in result.results:
        cells = [f"{r.mean(m):.4f} ± {r.std(m):.4f}" for m in metrics]
        cells += [f"{r.ensemble[m]:.4f}" for m in metrics if r.ensemble]
        table.add_row(str(r.trial), str(r.epochs), *cells)
    console.print(table)
    if ensembles:
        console.print(f"ensemble: the mean prediction of the {seeds} seeds' models")
    handed = result.handed
    for note in handed.notes:
        console.print(f"note: {note}", highlight=False)
    if handed.selection is not None and handed.selected_test is not None:
        chosen = handed.selection
        members = ", ".join(f"{t.number} ({w:.2f})" for t, w in chosen.members())
        tested = ", ".join(f"test {m} {handed.selected_test[m]:.4f}" for m in metrics)
        console.print(
            f"trial ensemble {members}: {tested}; validation {chosen.metric} scored nested "
            f"{chosen.nested.ensemble:.4f} against the best single trial's "
            f"{chosen.nested.best_single:.4f}",
            highlight=False,
        )
    console.print(
        f"report {result.report}\nhanded over ({handed.name}) {result.model_path}\n"
        f"params {result.folder / 'params.json'}"
    )
    if (result.folder / "preparation.json").exists():
        again = ["predict", target, "NEW_ROWS.csv", "--out", "predictions.csv"]
        again += ["--study", study] if study else []
        again += launch.location_options(storage_url, None)
        again += ["--model", str(result.folder)] if out else []
        console.print(f"predict with: {launch.command_line(again)}")


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
    out: Annotated[Path | None, typer.Option(help="Report folder [storage/reports/STUDY].")] = None,
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
    token: Annotated[
        str | None,
        typer.Option(
            envvar="HPO_DASHBOARD_TOKEN",
            show_default=False,
            help="Required of every request (?token= once, or Authorization: Bearer); beyond "
            "127.0.0.1 without it or --read-only, one is made and printed.",
        ),
    ] = None,
    read_only: Annotated[
        bool, typer.Option("--read-only", help="Refuse every write: delete, rename, tell, upload.")
    ] = False,
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
    priority: Annotated[
        float | None,
        typer.Option(
            help="Its share of the trials against other studies (2: twice 1's) [1, or as "
            "submitted before]."
        ),
    ] = None,
    storage_url: StorageOpt = storage.DEFAULT_URL,
    study: StudyOpt = None,
    sampler: SamplerOpt = None,
    pruner: PrunerOpt = None,
    max_epochs: MaxEpochsOpt = None,
    patience: PatienceOpt = None,
    seed: SeedOpt = None,
    data_dir: DataDirOpt = None,
    artifacts: ArtifactsOpt = api.DEFAULT_ARTIFACTS,
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
    slots: Annotated[
        str,
        typer.Option(
            help="Trials trained at once on this machine: a number, or auto (as --workers)."
        ),
    ] = "1",
    studies: Annotated[
        str, typer.Option(help="Serve only the studies whose names match this glob.")
    ] = "*",
    poll: Annotated[
        float, typer.Option(help="Seconds between reads of an idle queue.")
    ] = pool.POLL_S,
    recycle_after: RecycleOpt = hpo_workers.RECYCLE_AFTER,
    batch_trials: BatchTrialsOpt = batched.AUTO,
    heartbeat: HeartbeatOpt = storage.HEARTBEAT_S,
    reconnect: ReconnectOpt = storage.RECONNECT_S,
) -> None:
    """Serve every queued study of a storage, fairly by priority, until stopped (SIGTERM or
    Ctrl-C: the trials in flight end their epoch and are queued again)."""
    with GracefulInterrupt():  # a signal while it starts (the storage, its slots) is not lost
        code = pool.start(
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
    err.print(
        f"warning: {name}: {hook.exc_type.__name__}: {' '.join(first)}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


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
        err.print(
            f"interrupted: resume with: {launch.command_line(sys.argv[1:])}"
            if again
            else "interrupted",
            markup=False,
            highlight=False,
        )
        sys.exit(130)
    except HpoError as exc:
        if debug:
            raise
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except Exception as exc:
        if debug:
            raise
        first = first_line(exc, limit=1000) if str(exc).strip() else ""
        err.print(
            f"error: {type(exc).__name__}: {first} (run with HPO_DEBUG=1 for the traceback)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)
    finally:
        logging.getLogger("hpo").removeHandler(handler)


if __name__ == "__main__":
    main()
