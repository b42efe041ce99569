"""The command line's shared options: their types, environment variables and help texts, one
place for every command that takes them (hpo.cli)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from hpo.results import handover as handover_lib


class SamplerName(StrEnum):
    tpe = "tpe"
    random = "random"
    cmaes = "cmaes"
    qmc = "qmc"


class Handover(StrEnum):
    best = "best"
    seeds = "seeds"
    trial_ensemble = "trial-ensemble"


def _handover(value: str | Handover) -> Handover:
    """--handover's value; `selected`, the trial ensemble's old name, still works."""
    try:
        return Handover(handover_lib.canonical(str(value)))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(Handover)}") from None


DEFAULT_HANDOVER = Handover(handover_lib.DEFAULT)
HandoverOpt = Annotated[
    Handover,
    typer.Option(
        parser=_handover, metavar=f"<{'|'.join(Handover)}>", help="The model hpo predict uses."
    ),
]
DEFAULT_CANDIDATES = handover_lib.CANDIDATES
CandidatesOpt = Annotated[
    int, typer.Option(help="Choose the trial ensemble from the N best trials.")
]


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
ArtifactsOpt = Annotated[
    str,
    typer.Option(
        "--artifacts",
        envvar="HPO_ARTIFACTS",
        show_default=True,
        help="Artifact store beside the study: a folder, s3://BUCKET or gs://BUCKET (trials' "
        "validation predictions, the report's figures, the handed-over model).",
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
TargetArg = Annotated[
    str,
    typer.Argument(
        help="A built-in dataset (imdb, reuters, boston_housing, mnist) or a STUDY.toml file."
    ),
]
TrialsOpt = Annotated[
    int, typer.Option("--trials", "-n", help="Finished trials the study should have in all.")
]
StudyOpt = Annotated[str | None, typer.Option(help="Study name (default: the study file's).")]
SamplerOpt = Annotated[SamplerName | None, typer.Option(help="Override the file's sampler.")]
PrunerOpt = Annotated[PrunerName | None, typer.Option(help="Override the file's pruner.")]
MaxEpochsOpt = Annotated[int | None, typer.Option(help="Override the epoch budget per trial.")]
PatienceOpt = Annotated[
    int | None,
    typer.Option(
        help="Override the study file's patience: a trial stops N epochs after its best "
        "one (0: every trial trains all its epochs)."
    ),
]
SeedOpt = Annotated[int | None, typer.Option(help="Seed the sampler and each trial's weights.")]
RecycleOpt = Annotated[
    str,
    typer.Option(
        help="When a worker process restarts to free the memory Keras keeps across trials: "
        "auto (once it grew 1 GB after its first trial), N (every N trials) or 0 (never).",
        metavar="auto|N",
    ),
]
BatchTrialsOpt = Annotated[
    str,
    typer.Option(
        help="Trials to ask for at once; those of one structure (all but the learning and "
        "dropout rates alike) train side by side as one model: N, or auto (1 on a CPU, "
        "8 on a GPU).",
        metavar="auto|N",
    ),
]
HeartbeatOpt = Annotated[
    int,
    typer.Option(
        help="Seconds between a running trial's heartbeats; a trial silent for 3 times "
        "that is failed and re-run."
    ),
]
ReconnectOpt = Annotated[
    float,
    typer.Option(
        envvar="HPO_RECONNECT_S",
        help="Seconds to wait for a database that went away before giving up.",
    ),
]

WorkersOpt = Annotated[
    str,
    typer.Option(
        help="Worker processes on this machine, all on the same study: a number, or auto "
        "(8 per GPU, else one per core, at most 8)."
    ),
]
TimeoutOpt = Annotated[float | None, typer.Option(help="Stop starting trials after S seconds.")]
WarmStartOpt = Annotated[
    str | None,
    typer.Option(
        "--warm-start",
        show_default=False,
        metavar="STUDY[@URL]",
        help="Make the study (a new one) with the complete trials of STUDY that fit its space "
        "copied in, for the sampler and the trial ensemble; they do not count in --trials. "
        "URL: STUDY's storage (default: this study's).",
    ),
]
StopAfterOpt = Annotated[
    int | None,
    typer.Option(
        "--stop-after",
        show_default=False,
        metavar="N",
        help="Stop the study when its best value has not improved for N finished trials in a "
        "row (a rule of the study, kept by every worker; default: the study's).",
    ),
]
TargetValueOpt = Annotated[
    float | None,
    typer.Option(
        "--target",
        show_default=False,
        metavar="VALUE",
        help="Stop the study once its best value reaches VALUE (≥ when maximizing, ≤ when "
        "minimizing; a rule of the study, kept by every worker; default: the study's).",
    ),
]
PoolTimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        show_default=False,
        metavar="SECONDS",
        help="A time budget the pool keeps: its clock starts when a worker first serves the "
        "study; once spent, no worker starts its trials (default: the study's).",
    ),
]
PriorityOpt = Annotated[
    float | None,
    typer.Option(
        help="Its share of the trials against other studies (2: twice 1's) [1, or as "
        "submitted before]."
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        envvar="HPO_DASHBOARD_TOKEN",
        show_default=False,
        help="Required of every request (?token= once, or Authorization: Bearer); beyond "
        "127.0.0.1 without it or --read-only, one is made and printed.",
    ),
]
ReadOnlyOpt = Annotated[
    bool, typer.Option("--read-only", help="Refuse every write: delete, rename, tell, upload.")
]
SlotsOpt = Annotated[
    str,
    typer.Option(help="Trials trained at once on this machine: a number, or auto (as --workers)."),
]
StudiesOpt = Annotated[
    str, typer.Option(help="Serve only the studies whose names match this glob.")
]
ReportOpt = Annotated[Path | None, typer.Option(help="Report folder [storage/reports/STUDY].")]
PollOpt = Annotated[float, typer.Option(help="Seconds between reads of an idle queue.")]
CodePathOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--code-path",
        envvar="HPO_CODE_PATH",
        show_default=False,
        metavar="DIR",
        help="A folder holding a study's [model] build module, looked in before the installed "
        "ones (repeatable; HPO_CODE_PATH: folders separated by os.pathsep).",
    ),
]
MlflowOpt = Annotated[
    str | None,
    typer.Option(
        "--mlflow",
        envvar="HPO_MLFLOW",
        show_default=False,
        metavar="URI",
        help="MLflow tracking URI (http://HOST:5000 or sqlite:///mlflow.db): each ended trial "
        "logged as a run nested under the study's; analyze logs and registers the handed-over "
        "model. Needs pip install 'hpo[mlflow]'.",
    ),
]
