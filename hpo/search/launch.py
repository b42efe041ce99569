"""Starting a search from one command or call: open (or resume) the study, start the other
worker processes on this machine, run trials here, and say how to resume.

hpo.api's `optimize` and the `hpo optimize` command both run through `run_optimize`; the command
lines it builds (`optimize_argv`) are what child workers run and what resume lines show.
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

from hpo import artifacts as artifact_stores
from hpo import resources
from hpo.errors import HpoError
from hpo.search import batched, budget, runner, storage
from hpo.search import workers as hpo_workers
from hpo.search.interrupt import GracefulInterrupt
from hpo.study import studyfile
from hpo.study.studyfile import StudySpec


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


def location_options(
    storage_url: str, data_dir: str | None, artifacts: str | None = artifact_stores.DEFAULT
) -> list[str]:
    """--storage, --data-dir and --artifacts as a command line repeats them (when not the
    defaults)."""
    argv = ["--storage", storage_url] if storage_url != storage.DEFAULT_URL else []
    argv += ["--data-dir", str(data_dir)] if data_dir else []
    return argv + (["--artifacts", str(artifacts)] if artifacts != artifact_stores.DEFAULT else [])


def optimize_argv(
    target: str | Path,
    name: str,
    trials: int,
    storage_url: str,
    data_dir: str | None,
    options: dict[str, Any],
    artifacts: str = artifact_stores.DEFAULT,
) -> list[str]:
    """The command line of a worker on this study: children run it, and resume lines show it.
    The data folder is spelt out: it may have come from an HPO_DATA_DIR of this process only."""
    argv = ["optimize", str(target), "--trials", str(trials), "--study", name]
    argv += location_options(storage_url, data_dir, artifacts)
    for option, value in options.items():
        if value is not None:
            argv += [f"--{option.replace('_', '-')}", str(value)]
    return argv


def run_optimize(target: str | Path, **options: Any) -> OptimizeRun:
    """Open (or resume) the study, start `workers - 1` more worker processes, run trials here
    until the study's budget is met (`_run_optimize`'s options); the workers started are
    returned still running. From the start, a first Ctrl-C or SIGTERM only asks to stop: one
    that lands while TensorFlow is imported or the data is loaded is not lost, and the study
    says how to resume."""
    with GracefulInterrupt() as signals:
        return _run_optimize(target, signals=signals, **options)


def _run_optimize(
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
    recycle_after: int | str | None = None,  # when this process restarts (CLI): Recycler
    batch_trials: int | str = batched.AUTO,
    log_dir: Path = Path("storage/logs"),
    artifacts: str = artifact_stores.DEFAULT,
    signals: GracefulInterrupt,
    **overrides: Any,
) -> OptimizeRun:
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # hpo reports the study itself
    spec = study_spec(target, **overrides)
    name = study or spec.name
    console.print(
        f"study [bold]{name}[/] · {spec.dataset} · {spec.metric} ({spec.direction}) · "
        f"{spec.sampler['name']} sampler · {spec.pruner['name']} pruner · "
        f"storage {storage.redact(storage_url)}"
    )
    if trials > 1 and not spec.space.searched() and os.environ.get(hpo_workers.RESTARTED) != "1":
        console.print(
            "note: this study's space searches nothing: every trial trains the same "
            "configuration; add a [space] table (docs/study-file.md)",
            highlight=False,
            markup=False,
        )
    if heartbeat < 1 or reconnect < 0:
        raise HpoError("--heartbeat must be at least 1, --reconnect at least 0")
    recycler = None if recycle_after is None else hpo_workers.Recycler(recycle_after)
    batch_setting = batched.parse(batch_trials)
    gpus = resources.gpu_count() if str(workers) != "1" else 0  # asks nvidia-smi: only if needed
    try:
        n_workers = resources.parse_workers(str(workers), gpus)
    except ValueError as exc:
        raise HpoError(str(exc)) from exc
    options = {
        "sampler": overrides.get("sampler"),
        "pruner": overrides.get("pruner"),
        "max_epochs": overrides.get("max_epochs"),
        "patience": overrides.get("patience"),
        "seed": overrides.get("seed"),
    }
    if heartbeat != storage.HEARTBEAT_S:
        options["heartbeat"] = heartbeat
    if reconnect != storage.RECONNECT_S:
        options["reconnect"] = reconnect
    if recycler is not None and recycler.setting != hpo_workers.RECYCLE_AFTER:
        options["recycle_after"] = recycler.setting
    if batch_setting != batched.AUTO:
        options["batch_trials"] = batch_setting
    argv = optimize_argv(target, name, trials, storage_url, data_dir, options, artifacts)
    restarted = hpo_workers.restarted()
    inherited = hpo_workers.inherited_children()  # when this worker restarted itself
    deadline = hpo_workers.deadline(timeout)  # wall clock, kept across restarts
    if spec.data is not None:  # bad data is one line before the study exists, not after
        from hpo.data.load import load_source

        with console.status(f"loading {spec.dataset}…"):
            load_source(spec.source, data_dir)
    opened = runner.open_study(spec, storage_url, name, heartbeat, reconnect)  # before any child
    children = []
    if str(workers) == "auto" and not inherited:
        console.print(f"workers auto: {n_workers} (for {os.cpu_count()} cores, {gpus} GPUs)")
    if n_workers > 1 and not inherited and not signals.requested:
        shares = resources.share_gpu_memory(n_workers, gpus)
        if gpus:
            console.print(
                f"{n_workers} workers on {gpus} GPU(s), each taking "
                f"{shares['XLA_PYTHON_CLIENT_MEM_FRACTION']} of its memory (JAX) or growing "
                "on demand (TensorFlow)"
            )
        child_argv = hpo_workers.with_option(argv, "--workers", "1")
        if timeout is not None:
            child_argv += ["--timeout", str(timeout)]
        children = hpo_workers.spawn(n_workers - 1, log_dir, name, child_argv)
        console.print(f"{len(children)} more workers started; their logs: {log_dir}/")
    signals.adopt([*children, *inherited])  # a stop signal to this process stops them too
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
            recycler=recycler,
            notes=not restarted,  # the data notes were printed before the restart
            study=opened,
            artifacts=artifacts,
            batch_trials=batched.resolve(batch_setting),
        )
    except storage.StorageUnavailable as exc:
        hpo_workers.interrupt(signals, children, inherited)
        again = resume_line(argv, str(workers))
        raise HpoError(
            f"{exc}. Finished trials are saved there; when it is back, resume with: {again}"
        ) from exc
    except BaseException:
        hpo_workers.interrupt(signals, children, inherited)  # they stop after their epoch
        raise
    if result.interrupted:  # the children were passed the signal: they end at their epoch
        hpo_workers.interrupt(signals, children, inherited)
        result.finished_after = budget.finished(result.study)  # their trials counted too
    return OptimizeRun(
        spec,
        name,
        result,
        argv,
        children,
        inherited,
        workers=str(workers),
        deadline=deadline,
        location=location_options(storage_url, data_dir, artifacts),
    )
