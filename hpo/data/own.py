"""Users' own data, prepared the way chapter 3 prepares Boston housing: a study file's [data].

A table (.csv, .parquet) with a target column, or keras' own .npz layout (x_train, y_train and
optionally x_test, y_test). This module is the stage's entry point: it calls hpo.data.learn
once per file version and caches the result in memory per process and on disk (hpo.cache),
so a second worker neither re-reads the file nor re-learns anything. Pure numpy and pandas
(imported only when data is read): no keras here.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hpo import cache
from hpo.data import files
from hpo.data.files import file_kind, read_file, shape_of, stamp, unknown_type
from hpo.data.learn import learn_arrays, learn_table
from hpo.data.preparation import Preparation
from hpo.data.spec import TASKS, DataSpec
from hpo.data.task import task_note
from hpo.data.values import some
from hpo.errors import HpoError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("hpo.data.own")
FORMAT = 1  # bump when the prepared layout changes, so old caches are not reused
ARRAYS = ("x_train", "y_train", "x_test", "y_test")

# How often prepared data came from where: tests and logs read it, nothing depends on it.
stats = {"memory_hits": 0, "disk_hits": 0, "prepared": 0}


@dataclass(frozen=True)
class OwnData:
    preparation: Preparation
    x_train: np.ndarray  # shuffled with split_seed
    y_train: np.ndarray  # int64 class indices (classification) or float32 (regression)
    x_test: np.ndarray
    y_test: np.ndarray
    unseen: dict[str, int]  # unseen categorical values in the test rows, per column
    notes: tuple[str, ...]  # one-liners for the user; notes[0] is about the task


# --- caching and the public entry points --------------------------------------------------


def _fingerprint(spec: DataSpec, stamps: tuple) -> str:
    return cache.key(FORMAT, spec.record(), [list(s) for s in stamps])


def _read_disk(folder: Path) -> OwnData | None:
    arrays = cache.read_arrays(folder, ARRAYS)
    if arrays is None:
        return None
    try:
        prep = Preparation.from_dict(json.loads((folder / "preparation.json").read_text()))
        meta = json.loads((folder / "notes.json").read_text())
        return OwnData(prep, **arrays, unseen=dict(meta["unseen"]), notes=tuple(meta["notes"]))
    except (OSError, ValueError, KeyError, TypeError, HpoError):
        return None  # half written by another process, or damaged: prepare again


@functools.lru_cache(maxsize=8)
def _cached(spec: DataSpec, stamps: tuple, root: Path) -> OwnData:
    folder = root / f"own-{_fingerprint(spec, stamps)}"
    own = _read_disk(folder)
    if own is not None:
        stats["disk_hits"] += 1
        log.info("data %s: prepared arrays read from cache %s", spec.train.name, folder)
        return own
    stats["prepared"] += 1
    learn = learn_arrays if spec.kind == "arrays" else learn_table
    prep, arrays, unseen, notes = learn(spec)
    log.info("data %s: prepared, caching in %s", spec.train.name, folder)
    documents = {"preparation": prep.to_dict(), "notes": {"unseen": unseen, "notes": notes}}
    cache.write_arrays(folder, arrays, documents)
    return OwnData(prep, **arrays, unseen=unseen, notes=tuple(notes))


def _get(spec: DataSpec) -> OwnData:
    if file_kind(spec.train) is None:
        raise HpoError(f"data.train: {spec.train.name}: {unknown_type(spec.train)}")
    if spec.test is not None and file_kind(spec.test) is None:
        raise HpoError(f"data.test: {spec.test.name}: {unknown_type(spec.test)}")
    stamps = (stamp(spec.train, "train"),)
    if spec.test is not None:
        stamps += (stamp(spec.test, "test"),)
    before = _cached.cache_info().hits
    own = _cached(spec, stamps, cache.root())
    if _cached.cache_info().hits > before:
        stats["memory_hits"] += 1
    return own


def _own(spec: DataSpec) -> OwnData:
    """The prepared data. A stated task equal to the inferred one shares the inferred
    preparation (and its caches): only the note differs."""
    if spec.task is not None and spec.task not in TASKS:
        raise HpoError(f"study.task: must be one of {', '.join(TASKS)}, got {spec.task!r}")
    base = _get(dataclasses.replace(spec, task=None))
    if spec.task is None:
        return base
    if spec.task == base.preparation.task:
        prep = base.preparation
        note = task_note(prep.task, prep.labels, None)
        return dataclasses.replace(base, notes=(note, *base.notes[1:]))
    return _get(spec)


def load(spec: DataSpec, min_train_rows: int = 2, why: str = "") -> OwnData:
    """Read, check, learn the preparation on the training rows, apply it to train and test.
    Cached in memory per process and on disk under cache.root() / "own-<fingerprint>".
    min_train_rows: what the validation scheme needs; `why` names it in the message, e.g.
    "validation kfold:4" or "validation kfold:4 needs at least 8"."""
    own = _own(spec)
    n = len(own.x_train)
    if n < min_train_rows:
        need = why or "hpo"
        if "at least" not in need:
            need += f" needs at least {min_train_rows}"
        raise HpoError(f"{spec.train.name}: {n} training rows, {need}")
    return own


def infer_task(spec: DataSpec) -> str:
    """The task stated in spec, checked against the target, or inferred from it (shares
    load's caches: the file is read and prepared once)."""
    return _own(spec).preparation.task


def training_rows(spec: DataSpec) -> int:
    """How many training rows the file has after the test rows are held out (shares load's
    caches, as infer_task does)."""
    return len(_own(spec).x_train)


def clear_caches() -> None:
    """Forget everything read and prepared in this process (as a new process would)."""
    _cached.cache_clear()
    files.forget()


def read_rows(
    path: Path, preparation: Preparation
) -> tuple[pd.DataFrame | None, np.ndarray, dict[str, int]]:
    """New rows to predict from a file (.csv/.parquet for a table preparation, .npz with array
    `x` (or `x_test`) for arrays) → (the raw DataFrame for tables, None for arrays; x prepared;
    unseen category counts). Same checks and messages as load."""
    path = Path(path).expanduser()
    kind = file_kind(path)
    if kind is None:
        raise HpoError(f"{path.name}: {unknown_type(path)}")
    if shape_of(kind) != preparation.kind:
        want = ".npz" if preparation.kind == "arrays" else ".csv or .parquet"
        raise HpoError(f"{path.name}: the model was trained on {want} data, not {kind}")
    stamp(path)  # a clear message for a missing file
    raw = read_file(path)
    if preparation.kind == "table":
        x, unseen = preparation.transform(raw, path.name)
        return raw, x, unseen
    key = next((k for k in ("x", "x_test") if k in raw), None)
    if key is None:
        raise HpoError(f"{path.name}: missing array x (or x_test) (arrays: {some(sorted(raw))})")
    x, _ = preparation.transform(raw[key], path.name)
    return None, x, {}
