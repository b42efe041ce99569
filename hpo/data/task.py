"""The task of a user's file (binary, multiclass or regression): stated, or inferred from the
target, and its class labels in a fixed order."""

from __future__ import annotations

from typing import Any

import numpy as np

from hpo.data.spec import TASKS, DataSpec
from hpo.data.values import distinct, format_labels, is_integral, label_keys
from hpo.errors import HpoError

MAX_CLASSES_INFERRED = 20  # an integer-valued target with more distinct values is a regression


def guess_task(y: np.ndarray, y_dtype_kind: str) -> tuple[str, str]:
    """("classification" | "regression", why) from the training file's target values."""
    if y_dtype_kind not in "iuf":
        return "classification", "a target of text or true/false labels"
    a = y.astype(np.float64)
    distinct = len(np.unique(a))
    if not is_integral(a):
        return "regression", "a numeric target with fractional values"
    if distinct <= MAX_CLASSES_INFERRED:
        return "classification", f"a whole-number target with {distinct} distinct values"
    return "regression", f"a whole-number target with {distinct} distinct values"


def task_and_labels(
    spec: DataSpec,
    y_file: Any,
    y_train: Any,
    y_all: list,
    source: str,
    label: str,
) -> tuple[str, list | None, str]:
    """The task (stated, checked; or inferred), the sorted class labels, and the task note.
    y_file: the training file's target (inference), y_train: the training rows' target,
    y_all: every target array (train and test: the classes the model must output)."""
    import pandas as pd

    y_file = np.asarray(y_file)
    kind = y_file.dtype.kind
    if y_file.dtype == object:  # a column pandas kept as objects: numbers if it converts
        converted = pd.to_numeric(pd.Series(y_file), errors="coerce")
        if converted.notna().all():
            kind = converted.to_numpy().dtype.kind
            y_file = converted.to_numpy()
    inferred, why = guess_task(y_file, kind)
    stated = spec.task
    if stated is not None and stated not in TASKS:
        raise HpoError(f"study.task: must be one of {', '.join(TASKS)}, got {stated!r}")
    if (stated or inferred) == "regression":
        labels = None
        task = "regression"
    elif inferred == "regression" and "fractional" in why:
        raise HpoError(
            f"{source}: task {stated} needs class labels, but the target {label!r} holds "
            'fractional numbers; use task = "regression"'
        )
    else:
        labels = distinct(y_all)
        in_training = len(np.unique(label_keys(y_train)))
        if len(labels) < 2 or in_training < 2:
            where = "" if len(labels) < 2 else " in the training rows"
            raise HpoError(
                f"{source}: the target {label!r} has one class{where} "
                f"({format_labels(labels)}); there is nothing to learn"
            )
        task = stated or ("binary" if len(labels) == 2 else "multiclass")
        if task == "binary" and len(labels) != 2:
            raise HpoError(
                f"{source}: task binary needs 2 classes, the target {label!r} has "
                f'{len(labels)} ({format_labels(labels)}); use task = "multiclass"'
            )
    return task, labels, task_note(task, labels, None if stated else why)


def task_note(task: str, labels: list | None, why: str | None) -> str:
    """The first note: the task, stated (why None) or inferred from `why`."""
    desc = (
        "regression"
        if labels is None
        else (f"{task} ({len(labels)} classes: {format_labels(labels)})")
    )
    if why is None:
        return f"task: {desc} (stated in the study file)"
    if task == "regression" and "fractional" in why:
        return f"task inferred: {desc}, from {why}"
    if task == "regression":
        other = "multiclass"
    elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in labels):
        other = "regression"
    else:
        other = "multiclass" if task == "binary" else None
    hint = f'set task = "{other}" in [study]' if other else "set task in [study]"
    return f"task inferred: {desc}, from {why}; to override, {hint}"
