"""A search's options, built once and passed down.

`hpo optimize` (hpo.cli) and `hpo.optimize` (hpo.api) each build one SearchOptions from what
they were given; the launch (hpo.search.launch), the worker's study loop (hpo.search.study_loop)
and `hpo submit` (hpo.search.queue) read it, and it writes the command line that child workers
run and resume lines show (`argv`), so an option added here reaches every one of them.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpo import artifacts as artifact_stores
from hpo.errors import HpoError
from hpo.search import batched, stop_rules
from hpo.search.local_workers import RECYCLE_AFTER, Recycler
from hpo.search.storage import DEFAULT_URL, HEARTBEAT_S, RECONNECT_S, redact, redact_arg
from hpo.study import studyfile
from hpo.study.studyfile import StudySpec

# The options that change the study file's settings (StudySpec.with_overrides); the queue
# keeps those a study was submitted with.
OVERRIDES = ("sampler", "pruner", "max_epochs", "patience", "seed")


@dataclass(frozen=True)
class SearchOptions:
    """What `hpo optimize` was asked, whichever way it was asked."""

    target: str  # a built-in dataset or a STUDY.toml
    trials: int = 50  # finished trials the study should have in all
    study: str | None = None  # the study's name; default: the study file's
    storage_url: str = DEFAULT_URL
    sampler: str | None = None
    pruner: str | None = None
    max_epochs: int | None = None
    patience: int | None = None
    seed: int | None = None
    timeout: float | None = None  # seconds after which no trial starts
    data_dir: str | None = None
    artifacts: str | None = artifact_stores.DEFAULT  # None: trials keep no predictions
    workers: str = "1"  # worker processes on this machine: a number or "auto"
    recycle_after: str | None = None  # when this process restarts (the CLI's); None: never
    batch_trials: int | str = batched.AUTO
    heartbeat: int = HEARTBEAT_S
    reconnect: float = RECONNECT_S
    log_dir: Path = Path("storage/logs")  # the child workers' logs
    # The model's code: a function passed from Python (hpo.optimize(build=fn); it wins over the
    # study file's [model] build, and reaches no other process), and the folders a [model]
    # module is looked for in before the study file's folder and the installed ones.
    build: Callable | None = None
    code_paths: tuple[str, ...] = ()
    # --warm-start OTHER_STUDY[@URL]: a new study copies that study's finished trials first
    # (hpo.search.warm_start); not repeated in `argv`: it is done once, when the study is made.
    warm_start: str | None = None
    # Stop rules (hpo.search.stop_rules), the study's own once given: stop after N finished
    # trials without improvement, or once the best value reaches target_value.
    stop_after: int | None = None
    target_value: float | None = None
    mlflow: str | None = None  # --mlflow: the tracking URI each ended trial is logged to

    def __post_init__(self) -> None:
        """Each option checked (an HpoError, one line) and written as the command line
        writes it: a number of workers from Python (workers=4) is the text "4"."""
        if self.heartbeat < 1 or self.reconnect < 0:
            raise HpoError("--heartbeat must be at least 1, --reconnect at least 0")
        if self.build is not None and not callable(self.build):
            raise HpoError(f"build=: must be a function, got {type(self.build).__name__}")
        object.__setattr__(self, "code_paths", check_code_paths(self.code_paths))
        stop_rules.check(self.stop_after, self.target_value)
        object.__setattr__(self, "mlflow", check_mlflow(self.mlflow))
        recycle = None if self.recycle_after is None else Recycler(self.recycle_after).setting
        for name, value in (
            ("target", str(self.target)),
            ("workers", str(self.workers)),
            ("recycle_after", recycle),
            ("batch_trials", batched.parse(self.batch_trials)),
        ):
            object.__setattr__(self, name, value)

    def recycler(self) -> Recycler | None:
        """When this process restarts itself (a new count for each process), or None."""
        return None if self.recycle_after is None else Recycler(self.recycle_after)

    def overrides(self) -> dict[str, Any]:
        """The study file's settings these options change (None: the file's)."""
        return {name: getattr(self, name) for name in OVERRIDES}

    def spec(self) -> StudySpec:
        """The study file of the target, with the options applied."""
        own_model = self.build is not None
        return studyfile.load(self.target, own_model).with_overrides(**self.overrides())

    def name(self, spec: StudySpec) -> str:
        return self.study or spec.name

    def location(self) -> list[str]:
        """--storage, --data-dir and --artifacts as a command line repeats them."""
        return location_options(self.storage_url, self.data_dir, self.artifacts)

    def argv(self, name: str) -> list[str]:
        """The command line of a worker on this study: children run it, and resume lines show
        it. The data folder is spelt out: it may have come from an HPO_DATA_DIR of this process
        only. Options at their defaults are left out; --workers and --timeout are the
        caller's to add."""
        argv = ["optimize", self.target, "--trials", str(self.trials), "--study", name]
        argv += self.location()
        defaults = {
            "heartbeat": HEARTBEAT_S,
            "reconnect": RECONNECT_S,
            "recycle_after": RECYCLE_AFTER,
            "batch_trials": batched.AUTO,
        }
        for option in (*OVERRIDES, *defaults):
            value = getattr(self, option)
            if value is not None and value != defaults.get(option):
                argv += [f"--{option.replace('_', '-')}", str(value)]
        for folder in self.code_paths:
            argv += ["--code-path", folder]
        if self.stop_after is not None:  # a child sets the same rule: no race with this one's
            argv += ["--stop-after", str(self.stop_after)]
        if self.target_value is not None:
            argv += ["--target", repr(float(self.target_value))]
        return argv + (["--mlflow", self.mlflow] if self.mlflow else [])


def check_code_paths(code_paths: str | Path | Sequence[str | Path] | None) -> tuple[str, ...]:
    """--code-path's folders (one, or several), each an existing folder, or one line."""
    if code_paths is None:
        return ()
    if isinstance(code_paths, str | Path):
        code_paths = [code_paths]
    folders = tuple(str(folder) for folder in code_paths)
    for folder in folders:
        if not Path(folder).is_dir():
            raise HpoError(f"--code-path {folder}: no such folder")
    return folders


def check_mlflow(uri: str | None) -> str | None:
    """--mlflow's URI (None or empty: nothing logged), refused in one line when mlflow is not
    installed: found without importing it, so a search without --mlflow never does."""
    if not uri:
        return None
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        raise HpoError("--mlflow: mlflow is not installed; pip install 'hpo[mlflow]'")
    uri = str(uri)
    allowed = os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("true", "1")
    local = uri.startswith("file:") or ("://" not in uri and not uri.startswith("databricks"))
    if local and not allowed:  # a folder: refused here, before any process starts
        raise HpoError(
            f"--mlflow {uri}: MLflow 3 refuses a file store; use sqlite:///PATH.db, or set "
            "MLFLOW_ALLOW_FILE_STORE=true"
        )
    return uri


def location_options(
    storage_url: str, data_dir: str | None, artifacts: str | None = artifact_stores.DEFAULT
) -> list[str]:
    """--storage, --data-dir and --artifacts as a command line repeats them (when not the
    defaults)."""
    argv = ["--storage", storage_url] if storage_url != DEFAULT_URL else []
    argv += ["--data-dir", str(data_dir)] if data_dir else []
    return argv + (["--artifacts", str(artifacts)] if artifacts != artifact_stores.DEFAULT else [])


def command_line(argv: Sequence[str]) -> str:
    """`hpo ARGV` as a user types it, with any database password replaced by ***."""
    shown = [
        redact(arg) if i and argv[i - 1] == "--storage" else redact_arg(arg)
        for i, arg in enumerate(argv)
    ]
    return shlex.join(["hpo", *shown])
