"""The `hpo` command line. Each command is a thin layer over one module."""

from __future__ import annotations

import logging
import os
import shlex
import sys
import threading
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import optuna
import typer
from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table

import hpo
from hpo import resources, runner, storage, studyfile, summary
from hpo import workers as hpo_workers
from hpo.backend import import_keras
from hpo.errors import HpoError
from hpo.retrained import test_metrics

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


class SamplerName(StrEnum):
    tpe = "tpe"
    random = "random"
    cmaes = "cmaes"
    qmc = "qmc"


class PrunerName(StrEnum):
    median = "median"
    hyperband = "hyperband"
    successive_halving = "successive-halving"
    none = "none"


StorageOpt = Annotated[
    str,
    typer.Option(
        "--storage",
        envvar="HPO_STORAGE",
        show_default=True,
        help="SQLAlchemy URL of the study database (sqlite, postgresql+psycopg, mysql+pymysql).",
    ),
]
DataDirOpt = Annotated[
    str | None,
    typer.Option(
        "--data-dir",
        envvar="HPO_DATA_DIR",
        help="Folder with keras' dataset files (imdb.npz, …); searched before downloading.",
    ),
]


def _command_line(
    command: str, target: str, study: str, storage_url: str, *extra: str, data_dir: str | None
) -> str:
    """The hpo command line a user types next, password hidden. The data folder is spelt out:
    it may have come from an HPO_DATA_DIR set for this command only."""
    parts = ["hpo", command, target, *extra, "--study", study]
    if storage_url != storage.DEFAULT_URL:
        parts += ["--storage", storage.redact(storage_url)]
    if data_dir:
        parts += ["--data-dir", data_dir]
    return shlex.join(parts)


@app.command(epilog="Example: hpo optimize imdb --trials 50 --seed 0")
def optimize(
    target: Annotated[
        str,
        typer.Argument(
            help="A built-in dataset (imdb, reuters, boston_housing, mnist) or a STUDY.toml file."
        ),
    ],
    trials: Annotated[
        int, typer.Option("--trials", "-n", help="Finished trials the study should have in all.")
    ] = 50,
    timeout: Annotated[
        float | None, typer.Option(help="Stop starting trials after S seconds.")
    ] = None,
    storage_url: StorageOpt = storage.DEFAULT_URL,
    study: Annotated[
        str | None, typer.Option(help="Study name (default: the study file's).")
    ] = None,
    sampler: Annotated[
        SamplerName | None, typer.Option(help="Override the file's sampler.")
    ] = None,
    pruner: Annotated[PrunerName | None, typer.Option(help="Override the file's pruner.")] = None,
    max_epochs: Annotated[
        int | None, typer.Option(help="Override the epoch budget per trial.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed the sampler and each trial's weights.")
    ] = None,
    data_dir: DataDirOpt = None,
    workers: Annotated[
        str,
        typer.Option(
            help="Worker processes on this machine, all on the same study: a number, or auto "
            "(8 per GPU, else one per core, at most 8)."
        ),
    ] = "1",
    recycle_after: Annotated[
        int,
        typer.Option(
            help="Restart a worker process after N trials (Keras keeps memory across trials); "
            "0: never."
        ),
    ] = 10,
    heartbeat: Annotated[
        int,
        typer.Option(
            help="Seconds between a running trial's heartbeats; a trial silent for 3 times "
            "that is failed and re-run."
        ),
    ] = storage.HEARTBEAT_S,
    reconnect: Annotated[
        float,
        typer.Option(
            envvar="HPO_RECONNECT_S",
            help="Seconds to wait for a database that went away before giving up.",
        ),
    ] = storage.RECONNECT_S,
) -> None:
    """Run (or resume) a study until it has --trials finished trials, across all workers."""
    spec = studyfile.load(target).with_overrides(
        sampler=sampler and sampler.value,
        pruner=pruner and pruner.value,
        max_epochs=max_epochs,
        seed=seed,
    )
    name = study or spec.name
    console.print(
        f"study [bold]{name}[/] · {spec.dataset} · {spec.metric} ({spec.direction}) · "
        f"{spec.sampler['name']} sampler · {spec.pruner['name']} pruner · "
        f"storage {storage.redact(storage_url)}"
    )
    if heartbeat < 1 or recycle_after < 0 or reconnect < 0:
        raise HpoError("--heartbeat must be at least 1, --recycle-after and --reconnect at least 0")
    gpus = resources.gpu_count() if workers != "1" else 0  # asks nvidia-smi: only if needed
    try:
        n_workers = resources.parse_workers(workers, gpus)
    except ValueError as exc:
        raise HpoError(str(exc)) from exc
    again = _command_line(
        "optimize", target, name, storage_url, "--trials", str(trials), data_dir=data_dir
    )
    inherited = hpo_workers.inherited_children()  # when this worker restarted itself
    deadline = hpo_workers.deadline(timeout)  # wall clock, kept across restarts
    runner.open_study(spec, storage_url, name, heartbeat, reconnect)  # once, before any child
    children = []
    if workers == "auto" and not inherited:
        console.print(f"--workers auto: {n_workers} (for {os.cpu_count()} cores, {gpus} GPUs)")
    if n_workers > 1 and not inherited:
        shares = resources.share_gpu_memory(n_workers, gpus)
        if gpus:
            console.print(
                f"{n_workers} workers on {gpus} GPU(s), each taking "
                f"{shares['XLA_PYTHON_CLIENT_MEM_FRACTION']} of its memory (JAX) or growing "
                "on demand (TensorFlow)"
            )
        children = hpo_workers.spawn(n_workers - 1, Path("storage/logs"), name)
        console.print(f"{len(children)} more workers started; their logs: storage/logs/")
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
        )
    except storage.StorageUnavailable as exc:
        hpo_workers.interrupt(children, inherited)
        raise HpoError(
            f"{exc}. Finished trials are saved there; when it is back, resume with: {again}"
        ) from exc
    except BaseException:
        hpo_workers.interrupt(children, inherited)  # they stop after their current epoch
        raise
    if result.recycle:
        console.print(
            f"restarting this worker after {recycle_after} trials to release the "
            "memory Keras keeps across trials"
        )
        argv = hpo_workers.with_option(sys.argv[1:], "--workers", "1")
        hpo_workers.restart(argv, [c.pid for c in children] + inherited, deadline)
    codes = hpo_workers.wait(children) + hpo_workers.wait_pids(inherited)
    failed_children = [code for code in codes if code not in (0, 130)]
    if failed_children:
        err.print(f"{len(failed_children)} worker(s) failed: see storage/logs/{name}-worker*.log")
    if result.finished_before >= trials:
        console.print(
            f"study {name} already has {result.finished_before} finished trials "
            f"(budget {trials}); raise --trials to run more."
        )
    console.print(summary.top_trials(result.study, spec))
    if result.interrupted:
        err.print(
            f"interrupted: {result.finished_after} of {trials} trials finished and saved. "
            f"Resume with: {again}"
        )
        raise typer.Exit(130)
    console.print(
        f"{result.finished_after} finished trials in {name}. Retrain the best and test it "
        f"with: {_command_line('analyze', target, name, storage_url, data_dir=data_dir)}"
    )


DEFAULT_ARTIFACTS = "storage/artifacts"


class RetrainStatus:
    """A spinner counting retrain-and-test runs; the instance is the per-run callback."""

    def __init__(self, runs: int) -> None:
        self.runs, self.done = runs, 0
        self.status = console.status(self._text())

    def _text(self) -> str:
        return f"retraining and testing: {self.done}/{self.runs} runs done"

    def __enter__(self) -> RetrainStatus:
        self.status.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.status.stop()

    def __call__(self, seed: int) -> None:
        self.done += 1
        self.status.update(self._text())


def _load_study(spec: studyfile.StudySpec, name: str, storage_url: str) -> optuna.Study:
    store = storage.open_storage(storage_url)
    try:
        study = optuna.load_study(study_name=name, storage=store)
    except KeyError as exc:
        raise HpoError(
            f"no study named {name!r} in {storage.redact(storage_url)} "
            "(hpo list shows the studies there)"
        ) from exc
    recorded = study.user_attrs.get(runner.SPEC_ATTR, {})
    if recorded.get("dataset", spec.dataset) != spec.dataset:
        raise HpoError(f"study {name!r} tunes {recorded['dataset']}, not {spec.dataset}")
    return study


@app.command(epilog="Example: hpo analyze imdb --seeds 3")
def analyze(
    target: Annotated[
        str, typer.Argument(help="The dataset or STUDY.toml the study was run with.")
    ],
    study: Annotated[
        str | None, typer.Option(help="Study name (default: the study file's).")
    ] = None,
    storage_url: StorageOpt = storage.DEFAULT_URL,
    seeds: Annotated[int, typer.Option(help="Retrain each configuration with K seeds.")] = 1,
    top: Annotated[int, typer.Option(help="Retrain the T best trials.")] = 1,
    out: Annotated[Path | None, typer.Option(help="Report folder [storage/reports/STUDY].")] = None,
    artifacts: Annotated[str, typer.Option(help="Optuna artifact folder for the figures.")] = (
        DEFAULT_ARTIFACTS
    ),
    data_dir: DataDirOpt = None,
) -> None:
    """Retrain the best trial(s) for their best epoch on all training data and test them."""
    import_keras()
    from hpo import analysis, data

    spec = studyfile.load(target)
    name = study or spec.name
    found = _load_study(spec, name, storage_url)
    folder = out or Path("storage/reports") / name
    with console.status(f"loading {spec.dataset}…"):
        prepared = data.load(spec.dataset, data_dir, spec.num_words)
    with RetrainStatus(seeds * top) as progress:
        result = analysis.analyze_study(
            found,
            spec,
            prepared,
            seeds=seeds,
            top=top,
            folder=folder,
            artifact_dir=Path(artifacts),
            on_run=progress,
        )
    metrics = test_metrics(spec.task)
    ensembles = seeds > 1
    table = Table(title=f"test results of {name} ({len(result.results[0].seeds)} seed(s) each)")
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
    console.print(
        f"report {result.report}\nmodel  {result.model_path}\n"
        + (f"ensemble {result.folder / 'ensemble.keras'}\n" if ensembles else "")
        + f"params {result.folder / 'params.json'}"
    )


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
    from hpo import experiment as exp

    spec = studyfile.load(target)
    if seeds < 1:
        raise HpoError("--seeds must be at least 1")
    if epochs is not None and epochs < 1:
        raise HpoError(f"--epochs must be at least 1, got {epochs}")
    base = exp.BOOK_CONFIGS[spec.dataset]
    factors = exp.parse_vary(vary, spec.task)
    xspec = exp.experiment_spec(spec, base, factors, epochs)
    name = study or exp.default_name(spec.dataset, factors)
    wanted = exp.variants(base, factors)
    found = runner.open_study(xspec, storage_url, name)
    for params in exp.missing(found, wanted):
        found.enqueue_trial(params)
    console.print(
        f"experiment [bold]{name}[/] · {len(wanted)} variants · "
        f"{xspec.max_epochs} epochs · {seeds} seed(s)"
    )
    result = runner.run(
        xspec,
        storage_url=storage_url,
        study_name=name,
        trials=len(wanted),
        timeout=None,
        data_dir=data_dir,
        console=console,
    )
    if result.interrupted:
        again = _command_line(
            "experiment",
            target,
            name,
            storage_url,
            *[f"--vary={v}" for v in vary],
            data_dir=data_dir,
        )
        err.print(f"interrupted: variants trained so far are saved. Resume with: {again}")
        raise typer.Exit(130)
    from hpo import data

    prepared = data.load(spec.dataset, data_dir, spec.num_words)
    with RetrainStatus(len(wanted) * seeds) as progress:
        results = exp.retrain_variants(
            result.study, base, wanted, prepared, list(range(seeds)), on_run=progress
        )
    report = exp.write_report(results, xspec, result.study, out or Path("storage/reports") / name)
    console.print(Markdown(report.read_text(encoding="utf-8").split("![")[0]))
    console.print(f"report {report}")


@app.command(epilog="Example: hpo dashboard --port 8080")
def dashboard(
    storage_url: StorageOpt = storage.DEFAULT_URL,
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 exposes it.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free port).")] = 8080,
    artifacts: Annotated[str, typer.Option(help="Optuna artifact folder.")] = DEFAULT_ARTIFACTS,
    screenshot: Annotated[
        Path | None, typer.Option(help="Save a PNG of the page with headless Chromium, then exit.")
    ] = None,
    study: Annotated[str | None, typer.Option(help="With --screenshot: this study's page.")] = None,
) -> None:
    """Browse the studies of a storage in optuna-dashboard."""
    from hpo import dashboard as board

    server = board.make_app_server(storage_url, host, port, Path(artifacts))
    url = f"http://{host}:{server.server_port}"
    if screenshot is not None:
        page = url + (board.study_path(storage_url, study) if study else "/dashboard")
        board.serve_in_thread(server)
        try:
            board.screenshot(page, screenshot)
        finally:
            server.shutdown()
            server.server_close()
        console.print(f"screenshot of {page} saved to {screenshot}")
        return
    console.print(
        f"optuna-dashboard on {storage.redact(storage_url)}: {url}/dashboard (Ctrl-C to stop)"
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@app.command(epilog="Example: hpo studies")
def studies() -> None:
    """List the built-in study files."""
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
    console.print(table)


@app.command("list", epilog="Example: hpo list --storage sqlite:///storage/hpo.db")
def list_studies(storage_url: StorageOpt = storage.DEFAULT_URL) -> None:
    """List the studies in a storage with their trial counts and best values."""
    console.print(summary.storage_table(storage.open_storage(storage_url)))


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
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    handler = logging.StreamHandler()  # hpo's own warnings (a lost database), timestamped
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logging.getLogger("hpo").addHandler(handler)
    if not debug:  # Optuna's heartbeat thread has no handler of its own: one line, not a trace
        threading.excepthook = _thread_error
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except HpoError as exc:
        if debug:
            raise
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except Exception as exc:
        if debug:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
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
