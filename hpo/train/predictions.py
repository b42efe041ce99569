"""A trial's validation predictions at its best epoch, kept as an Optuna artifact of the trial.

They are what ensemble selection (hpo.results.selection) chooses from after the search, with
no model retrained: each trial already predicted every validation row at every epoch.

- holdout trial: the predictions of the validation rows, in their order;
- k-fold trial: out-of-fold predictions, each row predicted by the fold model that did not
  train on it, in the order of the training rows (Validation.kept_rows says which).

Stored in a compressed .npz: probabilities as float16 (IMDB's 10,000 validation rows: about
20 KB), regression values as float32 (float16 ends at 65,504 and keeps 3 digits: prices would
not survive it). The trial's user attr `val_predictions` holds the artifact's id and which
rows they are of (the validation scheme and a digest of the rows' targets), so analyze never
scores them against other rows.
"""

from __future__ import annotations

import hashlib
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.artifacts import download_artifact, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound

from hpo.errors import HpoError, first_line

ATTR = "val_predictions"


def compact(predictions: np.ndarray, task: str) -> np.ndarray:
    """The stored form: float16 probabilities, float32 regression values."""
    return predictions.astype(np.float32 if task == "regression" else np.float16)


def rows_in_order(predictions: np.ndarray) -> np.ndarray:
    """(rows, outputs) in training-row order: a stacked k-fold model's (rows per fold, folds,
    outputs) is fold after fold, which is the order of the rows the folds held out."""
    if predictions.ndim == 3:
        return predictions.transpose(1, 0, 2).reshape(-1, predictions.shape[-1])
    return predictions


def rows_digest(y: np.ndarray) -> str:
    """Which rows predictions are of, as the digest of their targets in order."""
    values = np.ascontiguousarray(np.asarray(y, dtype=np.float64))
    return hashlib.sha256(values.tobytes()).hexdigest()[:16]


class BestEpochs:
    """Each epoch's predictions while a trial trains, only as many as can still turn out to be
    its best epoch's: the best so far, and the last `window` (a later epoch's smoothed window,
    hpo.train.curves, may still centre on one of them)."""

    def __init__(self, window: int) -> None:
        self.window = max(1, window)
        self.by_epoch: dict[int, np.ndarray] = {}

    def add(self, epoch: int, predictions: np.ndarray, best: int | None) -> None:
        self.by_epoch[epoch] = predictions
        for old in [e for e in self.by_epoch if e != best and e <= epoch - self.window]:
            del self.by_epoch[old]


def keep(
    trial: optuna.Trial, store: Any, predictions: np.ndarray, epoch: int, rows: dict[str, Any]
) -> None:
    """Upload one epoch's validation predictions as an artifact of `trial`; `rows` says which
    rows they are of ({"validation": …, "targets": rows_digest(…)})."""
    ordered = rows_in_order(predictions)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"val_predictions_trial{trial.number}.npz"
        np.savez_compressed(path, predictions=ordered)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            artifact_id = upload_artifact(
                artifact_store=store, file_path=str(path), study_or_trial=trial
            )
        size = path.stat().st_size
    meta = {"artifact_id": artifact_id, "rows": len(ordered), "epoch": epoch, "bytes": size}
    trial.set_user_attr(ATTR, {**meta, **rows})


def of_rows(trial: optuna.trial.FrozenTrial, rows: dict[str, Any]) -> bool:
    """Whether `trial` kept predictions, and of these rows (a study whose validation scheme or
    data changed since has others)."""
    meta = trial.user_attrs.get(ATTR)
    return bool(meta) and all(meta.get(key) == value for key, value in rows.items())


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
            with np.load(path) as saved:
                return saved["predictions"].astype(np.float32)
        except ArtifactNotFound as exc:
            raise HpoError(
                f"trial {trial.number}'s validation predictions are not in the artifact store "
                "(is --artifacts the store the study was run with?)"
            ) from exc
        except Exception as exc:  # a bucket's credentials, a damaged file: one line, not a trace
            raise HpoError(
                f"trial {trial.number}'s validation predictions could not be read "
                f"({type(exc).__name__}: {first_line(exc)})"
            ) from exc
