"""Where a study's files live beside its database: an Optuna artifact store from a location.

A folder (the default, storage/artifacts) or, for a cluster whose workers share no disk, an
S3 bucket (`s3://bucket`, optuna's Boto3ArtifactStore: `pip install boto3`, credentials from
the usual AWS variables) or a Google Cloud Storage bucket (`gs://bucket`, `pip install
google-cloud-storage`). hpo keeps there what a trial or an analysis leaves for later: each
trial's validation predictions, the report's figures, the handed-over model.
"""

from __future__ import annotations

import uuid
import warnings
from pathlib import Path
from typing import Any

from hpo.errors import HpoError

DEFAULT = "storage/artifacts"


def is_artifact_id(value: Any) -> bool:
    """Whether `value`, read from a shared storage, is an artifact id as Optuna makes them (a
    UUID): a store turns an id into a path, so anything else is refused before it is used."""
    try:
        return isinstance(value, str) and str(uuid.UUID(value)) == value
    except ValueError:
        return False


def open_store(location: str | Path, create: bool = True) -> Any:
    """The artifact store at `location`; with `create`, a missing folder is made (a worker
    writing), else it is an error (analyze or predict reading what was never written)."""
    import optuna
    from optuna import artifacts

    text = str(location)
    with warnings.catch_warnings():  # Optuna marks its artifact stores experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if text.startswith(("s3://", "gs://")):
            bucket = text.split("://", 1)[1].strip("/")
            if not bucket or "/" in bucket:
                raise HpoError(f"--artifacts {text}: name a bucket only, as s3://BUCKET")
            try:
                if text.startswith("s3://"):
                    return artifacts.Boto3ArtifactStore(bucket)
                return artifacts.GCSArtifactStore(bucket)
            except ImportError as exc:
                package = "boto3" if text.startswith("s3://") else "google-cloud-storage"
                raise HpoError(
                    f"--artifacts {text} needs {package}: pip install {package}"
                ) from exc
        folder = Path(text).expanduser()
        if not folder.is_dir():
            if not create:
                raise HpoError(f"--artifacts {text}: no such folder (the study's artifact store)")
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise HpoError(f"--artifacts {text}: cannot create it ({exc.strerror})") from exc
        return artifacts.FileSystemArtifactStore(str(folder))
