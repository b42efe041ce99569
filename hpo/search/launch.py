"""Starting a search from one command or call: open (or resume) the study, start the other
worker processes on this machine, run trials here, and say how to resume; and starting
`hpo worker`'s processes, which serve the queue (`serve_queue`; each serves it with
hpo.search.queue_worker.Worker).

hpo.api's `optimize` and the `hpo optimize` command both build a SearchOptions and run it
through `run_optimize`; the command line it writes (SearchOptions.argv) is what child workers
run and what resume lines show.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from rich.console import Console

from hpo import resources
from hpo.errors import HpoError
from hpo.search import budget, local_workers, queue_worker, storage, study_loop
from hpo.search.interrupt import GracefulInterrupt
from hpo.search.search_options import SearchOptions, command_line, location_options
from hpo.study.studyfile import StudySpec

__all__ = [
    "OptimizeRun",
    "command_line",
    "location_options",
    "restart_if_due",
    "resume_line",
    "run_optimize",
    "serve_queue",
]


@dataclass
class OptimizeRun:
    """What one call of run_optimize did, for its caller to report."""

    spec: StudySpec
    name: str
    result: study_loop.RunResult
    argv: list[str]  # the `hpo optimize …` arguments of one more worker, and of the resume line
    options: SearchOptions
    children: list[Any] = field(default_factory=list)  # worker processes it started
    inherited: list[int] = field(default_factory=list)  # workers started before a restart
    deadline: float | None = None  # the wall-clock end of --timeout, kept across restarts
    exit_codes: list[int] = field(default_factory=list)  # of the workers started, once ended

    @property
    def again(self) -> str:
        return resume_line(self.argv, self.options.workers)


def resume_line(argv: list[str], workers: str) -> str:
    """The command that resumes a study with as many workers, password hidden."""
    if workers != "1":
        argv = local_workers.with_option(argv, "--workers", workers)
    return command_line(argv)


def run_optimize(options: SearchOptions, console: Console) -> OptimizeRun:
    """Open (or resume) the study, start `workers - 1` more worker processes, run trials here
    until the study's budget is met; the workers started are returned still running. From the
    start, a first Ctrl-C or SIGTERM only asks to stop: one that lands while TensorFlow is
    imported or the data is loaded is not lost, and the study says how to resume."""
    with GracefulInterrupt() as signals:
        run = _run_optimize(options, console, signals)
        if not run.result.recycle:  # a restart hands the children on instead
            _wait_for_children(run, signals)
        return run


def _wait_for_children(run: OptimizeRun, signals: GracefulInterrupt) -> None:
    """Wait for the workers started to finish their last trials, still passing a stop signal
    on (without this, one landing now would kill this process alone, and in a container the
    children with it, mid-trial); if one came, count the trials they finished."""
    run.exit_codes = local_workers.wait(run.children) + local_workers.wait_pids(run.inherited)
    run.children, run.inherited = [], []
    if signals.requested and not run.result.interrupted:
        run.result.interrupted, run.result.signum = True, signals.signum
    if run.result.interrupted:  # the trials the children finished after the stop count too
        run.result.finished_after = budget.finished(run.result.study)


def _run_optimize(
    options: SearchOptions, console: Console, signals: GracefulInterrupt
) -> OptimizeRun:
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # hpo reports the study itself
    spec = options.spec()
    name = options.name(spec)
    gpus = resources.gpu_count() if options.workers != "1" else 0  # nvidia-smi: only if needed
    n_workers = _worker_count(options.workers, gpus)
    _check_build(spec, options, n_workers, console)
    _announce(spec, name, options, console)
    recycler = options.recycler()
    argv = options.argv(name)
    restarted = local_workers.restarted()
    inherited = local_workers.inherited_children()  # when this worker restarted itself
    deadline = local_workers.deadline(options.timeout)  # wall clock, kept across restarts
    _check_data(spec, options, console)
    # Before any child, which would race to create it.
    opened = study_loop.open_for_search(spec, name, options, console)
    children = []
    if not inherited:
        children = _start_workers(n_workers, gpus, options, name, argv, console, signals)
    signals.adopt([*children, *inherited])  # a stop signal to this process stops them too
    try:
        result = study_loop.run(
            spec,
            name,
            options,
            console,
            timeout=None if deadline is None else max(deadline - time.time(), 0.0),
            recycler=recycler,
            notes=not restarted,  # the data notes were printed before the restart
            study=opened,
        )
    except storage.StorageUnavailable as exc:
        local_workers.interrupt(signals, children, inherited)
        raise HpoError(
            f"{exc}. Finished trials are saved there; when it is back, resume with: "
            f"{resume_line(argv, options.workers)}"
        ) from exc
    except BaseException:
        local_workers.interrupt(signals, children, inherited)  # they stop after their epoch
        raise
    if result.interrupted:  # they end at their epoch; run_optimize waits for them and counts
        signals.tell_children()
    return OptimizeRun(spec, name, result, argv, options, children, inherited, deadline)


def restart_if_due(run: OptimizeRun, argv: list[str], console: Console) -> None:
    """When the run stopped for this worker to restart (--recycle-after: Keras keeps memory
    across trials), replace this process by the command `argv` as one worker, its children
    and --timeout's end handed on; otherwise return."""
    if not run.result.recycle:
        return
    console.print(
        f"restarting this worker {run.result.recycle} to release the memory Keras keeps "
        "across trials"
    )
    children = [c.pid for c in run.children] + run.inherited
    local_workers.restart(local_workers.with_option(argv, "--workers", "1"), children, run.deadline)


def _announce(spec: StudySpec, name: str, options: SearchOptions, console: Console) -> None:
    """The study's first line, and a note when its space searches nothing."""
    console.print(
        f"study [bold]{name}[/] · {spec.dataset} · {spec.metric} ({spec.direction}) · "
        f"{spec.sampler['name']} sampler · {spec.pruner['name']} pruner · "
        f"storage {storage.redact(options.storage_url)}"
    )
    searched = spec.space.searched()
    if options.trials > 1 and not searched and os.environ.get(local_workers.RESTARTED) != "1":
        console.print(
            "note: this study's space searches nothing: every trial trains the same "
            "configuration; add a [space] table (docs/study-file.md)",
            highlight=False,
            markup=False,
        )


BUILD_NOT_SHARED = (
    "build=: a function defined in Python reaches other workers only as an importable "
    "module: name it in the study file's [model] build"
)


def _check_build(spec: StudySpec, options: SearchOptions, n_workers: int, console: Console) -> None:
    """A function passed from Python (hpo.optimize(build=fn)) runs in this process only: no
    code travels to a worker, through the storage or otherwise. It wins over the study
    file's [model] build, and says so."""
    if options.build is None:
        return
    if n_workers > 1:
        raise HpoError(BUILD_NOT_SHARED)
    if spec.model is not None:
        passed = study_loop.function_record(options.build)["build"]
        console.print(
            f"note: build=: the function passed ({passed}) is used, not the study file's "
            f"[model] build ({spec.model.build})",
            highlight=False,
            markup=False,
        )


def _worker_count(workers: str, gpus: int) -> int:
    """--workers as a number of processes (auto: by the cores and GPUs)."""
    try:
        return resources.parse_workers(workers, gpus)
    except ValueError as exc:
        raise HpoError(str(exc)) from exc


def _check_data(spec: StudySpec, options: SearchOptions, console: Console) -> None:
    """Own data read and checked now: bad data is one line before the study exists, not
    after."""
    if spec.data is not None:
        from hpo.data.load import load_source

        with console.status(f"loading {spec.dataset}…"):
            load_source(spec.source, options.data_dir)


def _start_workers(
    n_workers: int,
    gpus: int,
    options: SearchOptions,
    name: str,
    argv: list[str],
    console: Console,
    signals: GracefulInterrupt,
) -> list[Any]:
    """The other `n_workers - 1` worker processes of this machine, each on its GPU share."""
    if options.workers == "auto":
        console.print(f"workers auto: {n_workers} (for {os.cpu_count()} cores, {gpus} GPUs)")
    if n_workers <= 1 or signals.requested:
        return []
    shares = resources.share_gpu_memory(n_workers, gpus)
    if gpus:
        console.print(
            f"{n_workers} workers on {gpus} GPU(s), each taking "
            f"{shares['XLA_PYTHON_CLIENT_MEM_FRACTION']} of its memory (JAX) or growing "
            "on demand (TensorFlow)"
        )
    child_argv = local_workers.with_option(argv, "--workers", "1")
    if options.timeout is not None:
        child_argv += ["--timeout", str(options.timeout)]
    children = local_workers.spawn(
        n_workers - 1, options.log_dir, name, child_argv, options.storage_url
    )
    console.print(f"{len(children)} more workers started; their logs: {options.log_dir}/")
    return children


def serve_queue(
    storage_url: str,
    *,
    slots: str,
    argv: list[str],
    console: Console,
    recycle_after: int | str | None = None,
    log_dir: Path = Path("storage/logs"),
    **options: Any,
) -> int:
    """`hpo worker`: serve the queue here and in `slots - 1` more processes (`hpo ARGV --slots
    1`, logging to `log_dir`); restart this process when `recycle_after` (workers.Recycler)
    says (Keras keeps memory across trials). Returns the exit status after a signal, the
    children ended. Run it inside a GracefulInterrupt (the command does), so a first signal
    only asks to stop."""
    inherited = local_workers.inherited_children()  # when this worker restarted itself
    restarted = local_workers.restarted()
    gpus = resources.gpu_count() if slots != "1" else 0  # asks nvidia-smi: only if needed
    try:
        count = resources.parse_workers(slots, gpus)
    except ValueError as exc:
        raise HpoError(str(exc).replace("--workers", "--slots")) from exc
    if options.get("poll_s", queue_worker.POLL_S) <= 0:
        raise HpoError("--poll must be above 0")
    recycler = None if recycle_after is None else local_workers.Recycler(recycle_after)
    children: list[subprocess.Popen] = []
    with GracefulInterrupt() as signals:  # the command's, entered again: shared
        if not restarted:
            console.print(
                f"worker on {storage.redact(storage_url)} · {count} slot(s) · studies "
                f"{options.get('pattern', '*')} · reads the queue every "
                f"{options.get('poll_s', queue_worker.POLL_S):g} s when idle",
                highlight=False,
            )
            if count > 1 and not signals.requested:
                resources.share_gpu_memory(count, gpus)
                child = local_workers.with_option(argv, "--slots", "1")
                children = local_workers.spawn(count - 1, log_dir, "pool", child, storage_url)
                console.print(f"{count - 1} more worker processes; their logs: {log_dir}/")
        # A signal to this process alone (docker stop, Kubernetes, kill PID) is passed on.
        signals.adopt([*children, *inherited])
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # the worker says each trial itself
        logging.getLogger("hpo").setLevel(logging.WARNING)
        try:
            worker = queue_worker.Worker(storage_url, console=console, **options)
            code = worker.serve(recycler)
        except BaseException:
            local_workers.interrupt(signals, children, inherited)  # they end their epoch, re-queue
            raise
        if code is None:
            console.print(
                f"restarting this worker {worker.recycled} to release the memory "
                "Keras keeps across trials",
                highlight=False,
            )
            local_workers.restart(argv, [c.pid for c in children] + inherited, None)
        local_workers.interrupt(signals, children, inherited)  # passed on already: waits
    return code
