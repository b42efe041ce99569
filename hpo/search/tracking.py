"""`--mlflow URI`: each ended trial logged as an MLflow run nested under its study's run.

hpo runs trials in its own loops (hpo.search.study_loop, hpo.search.queue_worker, and each
--workers child runs study_loop), so the logging is an Optuna-style callback, `(study,
trial)`, called where each loop tells a trial's end, as optuna-integration's MLflowCallback
is. It uses MlflowClient, never MLflow's fluent global run, so slots and threads cannot clash.
The callback only queues the ended trial: a thread of its own logs it (a trial's few requests
take 0.1-1 s on a busy server), so the next trial starts at once; `close` waits for the queue
to empty (up to CLOSE_S) before the process ends or restarts itself.

One study has one parent run per tracking URI, in the experiment named after the study:
workers on several machines log under the same one. MLflow has no compare-and-set, so the
study's storage settles it: the parent run's id is kept in the study attr `mlflow_runs` (a
key per tracking URI, its password left out), written by compare-and-set. A worker that finds
no id there creates a run (or takes the one an older hpo left, found by its tag) and proposes
it; the first proposal written wins, and a loser deletes its own run before any trial uses it.
An id read from the storage is data: used only if it is an MLflow run id of this study's
parent run on this server, else replaced the same way.

A tracking server that cannot be reached is one warning line, once a process; the search goes
on, trying again RETRY_S later. mlflow is imported only when a URI is given.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console

from hpo import optuna_private
from hpo.errors import HpoError, first_line
from hpo.search.storage import UNPARSEABLE, redact
from hpo.search.storage_queries import update_study_attr
from hpo.study.studyfile import StudySpec

STUDY_TAG = "hpo.study"  # the study's name, on its parent run and each trial's run
ROLE_TAG = "hpo.role"  # "study" (the parent run), "trial" or "analysis"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag: the UI shows the runs nested
RUNS_ATTR = "mlflow_runs"  # the study attr: {tracking URI key: parent run id}
RUN_ID = re.compile(r"[0-9a-f]{32}")  # an MLflow run id
CONNECT_TRIES, CONNECT_PAUSE_S = 10, 3.0  # making the client (TrialRuns.connect)
RETRY_S = 300.0  # after a failure, a process logs nothing for this long, then tries again
CLOSE_S = 60.0  # how long a process that ends waits for its trials still being logged
# MLflow's HTTP defaults retry for minutes (7 tries, 120 s each): a search must not wait that
# long on a server that is down. A user's own MLFLOW_HTTP_* settings win.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # and its extra request a run
}
STATUS = {  # an Optuna trial's end as an MLflow run's status
    TrialState.COMPLETE: "FINISHED",
    TrialState.PRUNED: "KILLED",
    TrialState.FAIL: "FAILED",
}
# MLflow's limits per log_batch request, and on a param's value
MAX_METRICS, MAX_PARAMS, MAX_VALUE = 1000, 100, 6000


def client(uri: str) -> Any:
    """An MlflowClient on `uri`, or one line saying to install the extra. Sets the short HTTP
    retries (HTTP_DEFAULTS) unless the user set them."""
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise HpoError(
            "--mlflow: mlflow is not installed; pip install 'hpo[mlflow]' (or leave --mlflow "
            "and HPO_MLFLOW unset)"
        ) from None
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    try:  # a URI MLflow cannot use at all (a file store it refuses): one line, at once
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    except Exception as exc:
        if "MLFLOW_ALLOW_FILE_STORE" in str(exc):
            raise HpoError(
                f"--mlflow {redact(uri)}: MLflow 3 refuses a file store; use "
                "sqlite:///PATH.db, or set MLFLOW_ALLOW_FILE_STORE=true"
            ) from None
        raise HpoError(f"--mlflow {redact(uri)}: {why(exc)}") from None


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """MLflow's and urllib3's own warnings (each retry of a refused connection) held back:
    the caller says what went wrong in one line."""
    import mlflow  # noqa: F401  (its first import sets its loggers' levels: before ours)

    loggers = [logging.getLogger(name) for name in ("mlflow", "urllib3")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def why(exc: BaseException) -> str:
    """An MLflow error in one short line (its messages repeat the whole request)."""
    text = f"{type(exc).__name__}: {first_line(exc)}"
    return text if len(text) <= 200 else text[:199] + "…"


def ms(when: datetime | None) -> int:
    """A datetime as MLflow's milliseconds since the epoch (now, for None)."""
    return int((when.timestamp() if when else time.time()) * 1000)


def metric_key(name: str) -> str:
    """A Keras log's name as an MLflow metric key (letters, digits, _ - . / and spaces)."""
    return re.sub(r"[^\w\-./ ]", "_", name)[:250] or "_"


def study_params(spec: StudySpec) -> dict[str, Any]:
    """What the study's parent run records of the study file."""
    return {
        "dataset": spec.dataset,
        "task": spec.task,
        "metric": spec.metric,
        "direction": spec.direction,
        "max_epochs": spec.max_epochs,
        "validation": str(spec.validation),
        "sampler": spec.sampler.get("name"),
        "pruner": spec.pruner.get("name"),
        "patience": spec.patience,
        "model": spec.model.build if spec.model else "hpo dense stack",
    }


def log_batch(
    mlflow_client: Any, run_id: str, metrics: Sequence[Any] = (), params: dict | None = None
) -> None:
    """Metrics and params in as few requests as MLflow's limits allow."""
    from mlflow.entities import Param

    plist = [Param(str(k)[:250], str(v)[:MAX_VALUE]) for k, v in (params or {}).items()]
    metrics = list(metrics)
    while metrics or plist:
        mlflow_client.log_batch(
            run_id, metrics=metrics[:MAX_METRICS], params=plist[:MAX_PARAMS], synchronous=True
        )
        metrics, plist = metrics[MAX_METRICS:], plist[MAX_PARAMS:]


def experiment_id(mlflow_client: Any, name: str) -> str:
    """The experiment named `name`, created (or restored) if need be; a concurrent creation
    by another worker is found again."""
    found = mlflow_client.get_experiment_by_name(name)
    if found is None:
        try:
            return mlflow_client.create_experiment(name)
        except Exception:  # another worker created it meanwhile: it is found now
            found = mlflow_client.get_experiment_by_name(name)
            if found is None:
                raise
    if found.lifecycle_stage == "deleted":
        mlflow_client.restore_experiment(found.experiment_id)
    return found.experiment_id


def _parents(mlflow_client: Any, exp_id: str, study_name: str) -> list[Any]:
    """The study's parent runs, earliest first (the study's name compared here: never quoted
    into a filter)."""
    runs = mlflow_client.search_runs([exp_id], f"tags.`{ROLE_TAG}` = 'study'", max_results=100)
    ours = [r for r in runs if r.data.tags.get(STUDY_TAG) == study_name]
    return sorted(ours, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def uri_key(uri: str) -> str:
    """The study attr's key for a tracking URI: a digest of it without its password."""
    shown = redact(uri)
    return hashlib.sha256((uri if shown == UNPARSEABLE else shown).encode()).hexdigest()[:16]


class ParentClaim:
    """The study's parent run id for one tracking URI in the study's storage (RUNS_ATTR),
    proposed by compare-and-set: the first id written stays, unless it is stale."""

    def __init__(self, store: Any, study_id: int, uri: str) -> None:
        self.store, self.study_id, self.key = store, study_id, uri_key(uri)

    def stored(self) -> str | None:
        """The id kept for this URI, if it looks like a run id."""
        runs = self.store.get_study_user_attrs(self.study_id).get(RUNS_ATTR)
        found = runs.get(self.key) if isinstance(runs, dict) else None
        return found if isinstance(found, str) and RUN_ID.fullmatch(found) else None

    def propose(self, run_id: str, stale: str | None = None) -> str:
        """The id kept after proposing `run_id`: ours if none (or only `stale`) was kept."""

        def change(current: Any) -> dict | None:
            runs = current if isinstance(current, dict) else {}
            kept = runs.get(self.key)
            if isinstance(kept, str) and RUN_ID.fullmatch(kept) and kept != stale:
                return None  # another worker's proposal stands
            return {**runs, self.key: run_id}

        value, _ = update_study_attr(self.store, self.study_id, RUNS_ATTR, change)
        kept = value.get(self.key) if isinstance(value, dict) else None
        return kept if isinstance(kept, str) and RUN_ID.fullmatch(kept) else run_id


def _is_parent(mlflow_client: Any, run_id: str, study_name: str) -> bool:
    """Whether `run_id` is an active parent run of `study_name` on this server."""
    try:
        run = mlflow_client.get_run(run_id)
    except Exception as exc:  # not on this server (another store, or deleted for good)
        if "RESOURCE_DOES_NOT_EXIST" in str(getattr(exc, "error_code", "")) or (
            "not found" in str(exc).lower()
        ):
            return False
        raise
    tags = run.data.tags
    return (
        run.info.lifecycle_stage == "active"
        and tags.get(ROLE_TAG) == "study"
        and tags.get(STUDY_TAG) == study_name
    )


def study_run(
    mlflow_client: Any, study_name: str, claim: ParentClaim, params: dict[str, Any] | None = None
) -> tuple[str, str]:
    """(experiment id, parent run id) of the study `study_name`: the one its storage keeps
    (`claim`), else one proposed there: an older hpo's, found by its tag, or a new one."""
    exp_id = experiment_id(mlflow_client, study_name)
    stale = claim.stored()
    if stale is not None and _is_parent(mlflow_client, stale, study_name):
        return exp_id, stale
    found = _parents(mlflow_client, exp_id, study_name)
    if found:
        return exp_id, claim.propose(found[0].info.run_id, stale)
    tags = {STUDY_TAG: study_name, ROLE_TAG: "study"}
    mine = mlflow_client.create_run(exp_id, tags=tags, run_name=study_name).info.run_id
    kept = claim.propose(mine, stale)
    if kept != mine:  # another worker's came first: ours goes before any trial uses it
        mlflow_client.delete_run(mine)
    elif params:
        log_batch(mlflow_client, mine, params=params)
    return exp_id, kept


def trial_metrics(trial: FrozenTrial) -> list[Any]:
    """The trial's curve (each Keras log at step = its 1-based epoch), its value and best
    epoch, all stamped with the trial's end."""
    from mlflow.entities import Metric

    stamp = ms(trial.datetime_complete)
    metrics = []
    history = trial.user_attrs.get("history")
    if isinstance(history, dict):
        for name, values in history.items():
            if not isinstance(values, list):
                continue
            key = metric_key(str(name))
            for epoch, value in enumerate(values, start=1):
                if isinstance(value, int | float):
                    metrics.append(Metric(key, float(value), stamp, epoch))
    if trial.value is not None:
        metrics.append(Metric("value", float(trial.value), stamp, 0))
    best = trial.user_attrs.get("best_epoch")
    if isinstance(best, int | float):
        metrics.append(Metric("best_epoch", float(best), stamp, 0))
    return metrics


class Warner:
    """One warning line a process, and a pause of RETRY_S after each failure."""

    def __init__(self, uri: str, console: Console, what: str) -> None:
        self.uri, self.console, self.what = uri, console, what
        self.warned = False
        self.off_until = 0.0

    @property
    def off(self) -> bool:
        return time.monotonic() < self.off_until

    def failed(self, exc: BaseException, goes_on: str) -> None:
        self.off_until = time.monotonic() + RETRY_S
        if not self.warned:
            self.warned = True
            self.console.print(
                f"[yellow]warning:[/] --mlflow {redact(self.uri)}: cannot log {self.what} "
                f"({why(exc)}); {goes_on}",
                highlight=False,
                soft_wrap=True,
            )


class TrialRuns:
    """The callback: each ended trial (complete, pruned or failed) as an MLflow run nested
    under its study's run, with its parameters, curve, state, fail reason, number, value and
    best epoch. A failure to log is a warning (Warner), never the trial's or the search's."""

    def __init__(self, uri: str, console: Console) -> None:
        self.uri = uri
        import mlflow  # noqa: F401  (here, not on the thread beside the trials' own imports)

        self.client: Any = None  # made on the thread, at the first trial (connect)
        self.console = console
        self.warner = Warner(uri, console, "the trials")
        self.params: dict[str, dict[str, Any]] = {}  # each study's parent run params
        self.parents: dict[str, tuple[str, str]] = {}  # study name -> (experiment, run)
        # each ended trial: (study name, its storage, its study id, the trial)
        self.pending: queue.Queue[tuple[str, Any, int, FrozenTrial] | None] = queue.Queue()
        self.thread = threading.Thread(target=self._logging, name="hpo-mlflow", daemon=True)
        self.thread.start()
        atexit.register(self.close)  # a caller that does not close: its trials still logged

    def describe(self, study_name: str, spec: StudySpec) -> None:
        """What the study's parent run records, if this process creates it."""
        self.params[study_name] = study_params(spec)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Queue the ended trial for the logging thread; back at once."""
        if trial.state in STATUS and self.thread.is_alive():
            store = optuna_private.rdb_storage_of(study)
            self.pending.put((study.study_name, store, optuna_private.study_id(study), trial))

    def _logging(self) -> None:
        """The thread: log each queued trial, until None."""
        while (item := self.pending.get()) is not None:
            try:
                if not self.warner.off:
                    with quiet():
                        self.log(*item)
            except Exception as exc:  # any error of MLflow or its transport: a warning
                self.warner.failed(exc, "the search goes on without logging them")
            finally:
                self.pending.task_done()
        self.pending.task_done()

    def close(self, timeout: float = CLOSE_S) -> None:
        """Wait up to `timeout` s for the queued trials to be logged, then end the thread;
        the trials left unlogged, if any, are said in one line."""
        if not self.thread.is_alive():
            return
        self.pending.put(None)
        self.thread.join(timeout)
        left = self.pending.qsize()
        if self.thread.is_alive() and left:
            self.console.print(
                f"[yellow]warning:[/] --mlflow {redact(self.uri)}: {left} trial(s) not logged "
                f"in {timeout:g} s; the search's storage has them",
                highlight=False,
            )

    def connect(self) -> Any:
        """The client, made once it is needed, on the logging thread. Tried again for a while:
        workers that open a new SQLite store at once race to create its tables (MLflow's
        migrations, which take seconds), and all but the first fail until it is done."""
        for attempt in range(CONNECT_TRIES):
            if self.client is not None:
                break
            try:
                self.client = client(self.uri)
            except Exception:
                if attempt == CONNECT_TRIES - 1:
                    raise
                time.sleep(CONNECT_PAUSE_S)
        return self.client

    def log(self, study_name: str, store: Any, study_id: int, trial: FrozenTrial) -> str:
        """Log `trial` of `study_name` (its parent run settled through the study's storage
        `store` the first time); its run's id."""
        self.connect()
        if study_name not in self.parents:
            params = self.params.get(study_name)
            claim = ParentClaim(store, study_id, self.uri)
            self.parents[study_name] = study_run(self.client, study_name, claim, params)
        exp_id, parent = self.parents[study_name]
        tags = {
            PARENT_TAG: parent,
            STUDY_TAG: study_name,
            ROLE_TAG: "trial",
            "hpo.trial": str(trial.number),
            "hpo.state": trial.state.name,
        }
        reason = trial.user_attrs.get("fail_reason")
        if reason is not None:
            tags["hpo.fail_reason"] = str(reason)[:MAX_VALUE]
        run = self.client.create_run(
            exp_id,
            start_time=ms(trial.datetime_start),
            tags=tags,
            run_name=f"trial {trial.number}",
        )
        run_id = run.info.run_id
        params = {**trial.params, "trial_number": trial.number}
        log_batch(self.client, run_id, trial_metrics(trial), params)
        self.client.set_terminated(run_id, STATUS[trial.state], ms(trial.datetime_complete))
        return run_id


def trial_runs(uri: str | None, console: Console) -> TrialRuns | None:
    """The callback for `--mlflow URI`, or None (nothing logged, mlflow never imported)."""
    return TrialRuns(uri, console) if uri else None
