"""A trial's validation predictions at its best epoch, kept as an Optuna artifact of the trial.

They are what ensemble selection (hpo.results.selection) chooses from after the search, with
no model retrained: each trial already predicted every validation row at every epoch.

- holdout trial: the predictions of the validation rows, in their order;
- k-fold trial: out-of-fold predictions, each row predicted by the fold model that did not
  train on it, in the order of the training rows (Validation.kept_rows says which).

Stored as float16 in a compressed .npz (IMDB's 10,000 validation rows: about 20 KB), with the
artifact's id in the trial's user attr `val_predictions`.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.artifacts import download_artifact, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound

from hpo.errors import HpoError

ATTR = "val_predictions"
DTYPE = np.float16


def rows_in_order(predictions: np.ndarray) -> np.ndarray:
    """(rows, outputs) in training-row order: a stacked k-fold model's (rows per fold, folds,
    outputs) is fold after fold, which is the order of the rows the folds held out."""
    if predictions.ndim == 3:
        return predictions.transpose(1, 0, 2).reshape(-1, predictions.shape[-1])
    return predictions


def keep(trial: optuna.Trial, store: Any, predictions: np.ndarray, epoch: int) -> None:
    """Upload one epoch's validation predictions as an artifact of `trial`."""
    rows = rows_in_order(predictions).astype(DTYPE)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"val_predictions_trial{trial.number}.npz"
        np.savez_compressed(path, predictions=rows)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            artifact_id = upload_artifact(
                artifact_store=store, file_path=str(path), study_or_trial=trial
            )
        size = path.stat().st_size
    trial.set_user_attr(
        ATTR, {"artifact_id": artifact_id, "rows": len(rows), "epoch": epoch, "bytes": size}
    )


def fetch(trial: optuna.trial.FrozenTrial, store: Any) -> np.ndarray | None:
    """The kept predictions of `trial` as float32 (rows, outputs); None when it kept none."""
    meta = trial.user_attrs.get(ATTR)
    if not meta:
        return None
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "predictions.npz"
        try:
            download_artifact(
                artifact_store=store, file_path=str(path), artifact_id=meta["artifact_id"]
            )
        except ArtifactNotFound as exc:
            raise HpoError(
                f"trial {trial.number}'s validation predictions are not in the artifact store "
                "(is --artifacts the store the study was run with?)"
            ) from exc
        with np.load(path) as saved:
            return saved["predictions"].astype(np.float32)
