"""The preparation of a study's own data, kept in the study itself.

What hpo learned from the training rows (means, stds, categories, label mapping; see
hpo.data.preparation.Preparation) is written into the study's user attrs when its first worker loads
the data, so `analyze` and `predict` on any machine prepare new rows exactly the same way, and
a later worker that finds different data (the file was edited) stops instead of mixing trials
of two datasets. The JSON is split into chunks: MySQL stores a user attr as TEXT (64 KB).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import optuna

from hpo.errors import HpoError

KEY = "preparation"
CHUNK = 50_000  # characters per user attr, below MySQL's 65,535-byte TEXT


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_or_check(study: optuna.Study, preparation: dict[str, Any], source: str) -> None:
    """Store `preparation` in the study, or check it equals the one stored by its first worker."""
    text = json.dumps(preparation, sort_keys=True)
    stored = study.user_attrs.get(KEY)
    if stored is None:
        chunks = [text[i : i + CHUNK] for i in range(0, len(text), CHUNK)] or [""]
        for number, chunk in enumerate(chunks):
            study.set_user_attr(f"{KEY}.{number}", chunk)
        # Written last: a worker killed halfway leaves no index, and the next one writes again.
        study.set_user_attr(KEY, {"chunks": len(chunks), "sha256": _digest(text)})
    elif stored.get("sha256") != _digest(text):
        raise HpoError(
            f"{source} is not the data study {study.study_name!r} was started with (its "
            "preparation differs: the file was changed); restore it or choose another --study"
        )


def load(study: optuna.Study) -> dict[str, Any] | None:
    """The preparation stored by save_or_check, or None for a study of a built-in dataset."""
    attrs = study.user_attrs
    index = attrs.get(KEY)
    if index is None:
        return None
    text = "".join(attrs[f"{KEY}.{number}"] for number in range(index["chunks"]))
    return json.loads(text)
