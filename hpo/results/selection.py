"""Ensemble selection over the trials' stored validation predictions (Caruana et al., 2004).

Greedy forward selection with replacement, as in auto-sklearn's EnsembleSelection and
AutoGluon's greedy weighted ensemble: start from the empty ensemble and, `steps` times, add the
model whose addition gives the best score of the running mean prediction. A model's weight is
the number of times it was picked over `steps`.

Predictions have the shape (models, rows, outputs), all models on the same rows in the same
order: outputs = 1 for binary (the probability of class 1) and regression (the value), K for
multiclass (softmax probabilities). Targets `y` have the shape (rows,).

The weights are chosen on the same rows they are then scored on, so that score flatters the
ensemble; `nested_scores` gives an honest one, chosen and scored on different rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hpo.data.spec import TASKS
from hpo.errors import HpoError

# Keras clips probabilities to [EPSILON, 1 - EPSILON] before taking logarithms.
EPSILON = 1e-7

Score = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""score(pred, y): pred of shape (..., rows, outputs), y of shape (rows,) -> scores of shape (...).

Batched over leading axes so that `select` scores every candidate of a step in one call.
"""


@dataclass(frozen=True)
class Trajectory:
    """The greedy path: the model picked at each step and the ensemble's score after it."""

    picks: np.ndarray  # (steps,) model indices
    scores: np.ndarray  # (steps,) score of the running mean after each step


@dataclass(frozen=True)
class NestedScore:
    """Scores of held-out rows, each predicted by a choice made on the other rows.

    `ensemble` and `best_single` follow the same protocol, so they compare fairly; `weights` is
    the selection made on all rows (the one to use) and `in_sample` its score on those same rows,
    which is optimistic.
    """

    ensemble: float
    best_single: float
    weights: np.ndarray
    in_sample: float


def _labels(y: np.ndarray, classes: int) -> np.ndarray:
    labels = np.asarray(y).astype(np.int64, copy=False)
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise HpoError(f"class labels must lie in 0..{classes - 1}")
    return labels


def _outputs(pred: np.ndarray, task: str) -> int:
    outputs = pred.shape[-1]
    if task == "binary" and outputs != 1:
        raise HpoError(f"binary predictions need 1 output (probability of class 1), not {outputs}")
    if task == "multiclass" and outputs < 2:
        raise HpoError("multiclass predictions need one output per class")
    if task == "regression" and outputs != 1:
        raise HpoError(f"regression predictions need 1 output, not {outputs}")
    return outputs


def _binary_accuracy(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    _outputs(pred, "binary")
    return np.mean((pred[..., 0] >= 0.5) == _labels(y, 2), axis=-1)


def _binary_crossentropy(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    _outputs(pred, "binary")
    # The probability given to the true class: |p - 1| = 1 - p for class 0, p for class 1.
    # In place, as large temporaries are what a step spends its time on.
    p = np.clip(pred[..., 0], EPSILON, 1 - EPSILON)
    p -= 1.0 - _labels(y, 2)
    return -np.mean(np.log(np.abs(p, out=p), out=p), axis=-1)


def _multiclass_accuracy(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    labels = _labels(y, _outputs(pred, "multiclass"))
    return np.mean(np.argmax(pred, axis=-1) == labels, axis=-1)


def _multiclass_crossentropy(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    labels = _labels(y, _outputs(pred, "multiclass"))
    p = pred[..., np.arange(labels.size), labels]  # the probability given to the true class
    np.clip(p, EPSILON, 1 - EPSILON, out=p)
    return -np.mean(np.log(p, out=p), axis=-1)


def _mae(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    _outputs(pred, "regression")
    return np.mean(np.abs(pred[..., 0] - y), axis=-1)


def _mse(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    _outputs(pred, "regression")
    return np.mean(np.square(pred[..., 0] - y), axis=-1)


_SCORERS: dict[tuple[str, str], tuple[Score, bool]] = {
    ("binary", "accuracy"): (_binary_accuracy, True),
    ("binary", "loss"): (_binary_crossentropy, False),
    ("multiclass", "accuracy"): (_multiclass_accuracy, True),
    ("multiclass", "loss"): (_multiclass_crossentropy, False),
    ("regression", "mae"): (_mae, False),
    ("regression", "mse"): (_mse, False),
}


def scorer(task: str, metric: str) -> tuple[Score, bool]:
    """(score function, maximize) for a task and a metric named as the study's, "val_" optional.

    "loss" is cross-entropy and is for classification only: a regression study's val_loss is
    whichever loss it trained on, so the caller names it as "mae" or "mse".
    """
    if task not in TASKS:
        raise HpoError(f"unknown task {task!r} (use {', '.join(TASKS)})")
    name = metric.removeprefix("val_")
    if (task, name) not in _SCORERS:
        known = ", ".join(m for t, m in _SCORERS if t == task)
        hint = " (name the regression loss: mae or mse)" if task == "regression" else ""
        raise HpoError(f"no {task} metric {metric!r} for ensemble selection: use {known}{hint}")
    return _SCORERS[(task, name)]


def _checked(predictions: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Predictions as float64 (they may be stored as float16) and y, with their shapes checked."""
    pred = np.asarray(predictions, dtype=np.float64)
    y = np.asarray(y)
    if pred.ndim != 3:
        raise HpoError(f"predictions need the shape (models, rows, outputs), not {pred.shape}")
    models, rows, outputs = pred.shape
    if models == 0:
        raise HpoError("no models to choose an ensemble from")
    if rows == 0 or outputs == 0:
        raise HpoError(f"predictions of shape {pred.shape} have no rows or no outputs")
    if y.shape != (rows,):
        raise HpoError(f"targets of shape {y.shape} do not match {rows} rows of predictions")
    return pred, y


def _best(scores: np.ndarray, maximize: bool) -> int:
    """Index of the best score; the lowest index among ties; a NaN score ranks last."""
    scores = np.asarray(scores, dtype=np.float64)
    scores = np.where(np.isnan(scores), -np.inf if maximize else np.inf, scores)
    return int(np.argmax(scores) if maximize else np.argmin(scores))


def greedy_path(
    predictions: np.ndarray, y: np.ndarray, score: Score, maximize: bool, steps: int = 25
) -> Trajectory:
    """Forward selection with replacement, `steps` picks; ties go to the lowest index.

    Callers order models best-first, so a tie goes to the better single trial.
    """
    pred, y = _checked(predictions, y)
    if steps < 1:
        raise HpoError(f"ensemble selection needs at least 1 step, not {steps}")
    total = np.zeros(pred.shape[1:])
    candidates = np.empty_like(pred)  # the running mean with each model added, reused each step
    picks = np.empty(steps, dtype=np.int64)
    scores = np.empty(steps)
    for k in range(steps):
        np.add(total, pred, out=candidates)
        candidates /= k + 1
        step_scores = np.asarray(score(candidates, y), dtype=np.float64)
        best = _best(step_scores, maximize)
        picks[k], scores[k] = best, step_scores[best]
        total += pred[best]
    return Trajectory(picks=picks, scores=scores)


def select(
    predictions: np.ndarray, y: np.ndarray, score: Score, maximize: bool, steps: int = 25
) -> np.ndarray:
    """Weights (models,) summing to 1: the times each model was picked over `steps`."""
    path = greedy_path(predictions, y, score, maximize, steps)
    return np.bincount(path.picks, minlength=np.shape(predictions)[0]) / steps


def ensemble_prediction(predictions: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The weighted mean prediction (rows, outputs), in float64."""
    pred = np.asarray(predictions, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if pred.ndim != 3 or weights.shape != (pred.shape[0],):
        raise HpoError(f"weights of shape {weights.shape} do not match predictions {pred.shape}")
    if np.any(weights < 0) or not weights.sum() > 0:
        raise HpoError("ensemble weights must be non-negative with a positive sum")
    used = np.flatnonzero(weights)  # a model left out adds nothing, not even its NaNs
    return np.tensordot(weights[used], pred[used], axes=1) / weights.sum()


def members(weights: np.ndarray) -> list[tuple[int, float]]:
    """(model index, weight) of the models in the ensemble, heaviest first, then by index."""
    weights = np.asarray(weights, dtype=np.float64)
    order = sorted(np.flatnonzero(weights), key=lambda i: (-weights[i], i))
    return [(int(i), float(weights[i])) for i in order]


def nested_scores(
    predictions: np.ndarray,
    y: np.ndarray,
    score: Score,
    maximize: bool,
    steps: int = 25,
    folds: int = 5,
    seed: int = 0,
) -> NestedScore:
    """Honest scores of ensemble selection and of picking the best single model.

    The rows are split into `folds` parts by a seeded permutation. Each part is predicted by
    the ensemble chosen on the other rows and by the single model that scores best there; the
    held-out predictions of all parts are pooled and scored once.
    """
    pred, y = _checked(predictions, y)
    rows = pred.shape[1]
    if folds < 2:
        raise HpoError(f"nested scoring needs at least 2 folds, not {folds}")
    if rows < folds:
        raise HpoError(f"{rows} rows are too few to split into {folds} folds")
    weights = select(pred, y, score, maximize, steps)  # also checks steps before the folds run
    ensemble = np.empty(pred.shape[1:])
    single = np.empty(pred.shape[1:])
    permutation = np.random.default_rng(seed).permutation(rows)
    for held in np.array_split(permutation, folds):
        train = np.ones(rows, dtype=bool)
        train[held] = False
        chosen, y_train = pred[:, train], y[train]
        fold_weights = select(chosen, y_train, score, maximize, steps)
        ensemble[held] = ensemble_prediction(pred[:, held], fold_weights)
        single[held] = pred[_best(score(chosen, y_train), maximize), held]
    return NestedScore(
        ensemble=float(score(ensemble, y)),
        best_single=float(score(single, y)),
        weights=weights,
        in_sample=float(score(ensemble_prediction(pred, weights), y)),
    )
