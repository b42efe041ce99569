"""A study's data, model-ready: the data stage's entry point.

The path runs top to bottom and never back up: this module picks the built-in loader
(hpo.data.builtin: keras' file found, read and vectorized, or the cached arrays) or the
own-data loader (hpo.data.own: the user's file read, checked and prepared, or the cached
arrays), and wraps the arrays in a Prepared.
"""

from __future__ import annotations

from pathlib import Path

from hpo.data import builtin, own
from hpo.data.arrays import Prepared
from hpo.data.spec import Source


def load_source(source: Source, data_dir: str | Path | None = None) -> Prepared:
    """The prepared data of `source`: a built-in dataset, or the user's own file ([data])."""
    if source.table is None:
        return builtin.load(source.dataset, data_dir, source.num_words, source.input, source.maxlen)
    need = source.validation.minimum_rows()
    found = own.load(
        source.table,
        min_train_rows=need,
        why=f"validation {source.validation} needs at least {need}",
    )
    prep = found.preparation
    return Prepared(
        name=source.dataset,
        task=prep.task,
        n_outputs=prep.n_outputs,
        input_scale=source.table.scale,
        n_features=prep.n_features,
        packed=False,
        x_train=found.x_train,
        y_train=found.y_train,
        x_test=found.x_test,
        y_test=found.y_test,
        preparation=prep,
        notes=found.notes,
        input_kind="table",
    )
