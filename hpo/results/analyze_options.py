"""`hpo analyze`'s options, built once (by the command, or by `hpo.analyze`'s arguments) and
passed down, as hpo.search.search_options is for a search."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hpo import artifacts as artifact_stores
from hpo import names
from hpo.results import handover as handover_lib
from hpo.search.search_options import location_options
from hpo.search.storage import DEFAULT_URL

REPORTS = Path("storage/reports")  # analyze's folders: one a study, by its name


def report_folder(name: str) -> Path:
    """The default report folder of study `name` (a safe folder name, whatever the name)."""
    return REPORTS / names.folder(name)


@dataclass(frozen=True)
class AnalyzeOptions:
    """What `hpo analyze` was asked, whichever way it was asked."""

    target: str  # the dataset or STUDY.toml the study was run with
    study: str | None = None  # default: the study file's name
    storage_url: str = DEFAULT_URL
    seeds: int = 1  # each configuration retrained with this many seeds
    top: int = 1  # the best trials retrained
    candidates: int = handover_lib.CANDIDATES  # the trial ensemble is chosen from these
    handover: str = handover_lib.DEFAULT  # the model hpo predict uses
    out: Path | None = None  # the report's folder; default: REPORTS / the study's folder
    artifacts: str | None = artifact_stores.DEFAULT
    data_dir: str | None = None
    # Folders a study's [model] module is looked for in, before the study file's folder and
    # the installed modules (--code-path).
    code_paths: tuple[str, ...] = ()
    # --mlflow: the tracking URI the handed-over model is logged and registered at
    mlflow: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", str(self.target))
        object.__setattr__(self, "out", Path(self.out) if self.out else None)
        object.__setattr__(self, "code_paths", tuple(str(p) for p in self.code_paths))

    def folder(self, name: str) -> Path:
        """The report's folder for the study `name`."""
        return self.out or report_folder(name)

    def predict_argv(self, model_folder: Path) -> list[str]:
        """`hpo predict`'s command line for the model handed over in `model_folder`."""
        argv = ["predict", self.target, "NEW_ROWS.csv", "--out", "predictions.csv"]
        argv += ["--study", self.study] if self.study else []
        argv += location_options(self.storage_url, None)
        for folder in self.code_paths:
            argv += ["--code-path", folder]
        return argv + (["--model", str(model_folder)] if self.out else [])
