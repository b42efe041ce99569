"""The preparation of a study's own data, kept in the study itself.

What hpo learned from the training rows (means, stds, categories, label mapping; see
hpo.data.preparation.Preparation) is written into the study's user attrs when its first worker loads
the data, so `analyze` and `predict` on any machine prepare new rows exactly the same way, and
a later worker that finds different data (the file was edited) stops instead of mixing trials
of two datasets. The JSON is split into chunks: MySQL stores a user attr as TEXT (64 KB).

Several first workers may start at once, each with its own copy of the file. Checking for a
stored preparation and then writing one would let two of them both write (and interleave their
chunks), so each writes its chunks under keys named by their SHA-256, then claims the index
with one INSERT that the table's unique (study, key) lets only one worker make; the others read
the winner's index and go on only if their data is the same. The digest is checked on load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from typing import Any

import optuna
import sqlalchemy

from hpo.errors import HpoError, first_line
from hpo.optuna_private import models, rdb_storage_of, study_id  # the claim: one INSERT

KEY = "preparation"
CHUNK = 50_000  # characters per user attr, below MySQL's 65,535-byte TEXT


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _matches(index: dict[str, Any], sha256: str) -> bool:
    """Whether `index` is of the text whose digest is `sha256` (studies stored before the
    full digest kept its first 16 hex digits)."""
    stored = index.get("sha256") if isinstance(index, dict) else None
    return isinstance(stored, str) and len(stored) >= 16 and sha256.startswith(stored)


def save_or_check(study: optuna.Study, preparation: dict[str, Any], source: str) -> None:
    """Store `preparation` in the study, or check it equals the one stored by its first worker."""
    text = json.dumps(preparation, sort_keys=True)
    sha256 = _sha256(text)
    index = study.user_attrs.get(KEY)
    if index is None:
        prefix = f"{KEY}.{sha256[:16]}"  # another file's chunks never overwrite these
        chunks = [text[i : i + CHUNK] for i in range(0, len(text), CHUNK)] or [""]
        for number, chunk in enumerate(chunks):
            study.set_user_attr(f"{prefix}.{number}", chunk)
        # Claimed last: a worker killed halfway leaves no index, and the next one writes again.
        index = _claim(study, {"chunks": len(chunks), "sha256": sha256, "prefix": prefix})
    if not _matches(index, sha256):
        raise HpoError(
            f"{source} is not the data study {study.study_name!r} was started with (its "
            "preparation differs: the file was changed); restore it or choose another --study"
        )


def _claim(study: optuna.Study, index: dict[str, Any]) -> dict[str, Any]:
    """Store `index` under KEY unless a worker did first; the index that holds now."""
    backend = rdb_storage_of(study)
    if isinstance(backend, optuna.storages.RDBStorage):
        row = {"study_id": study_id(study), "key": KEY, "value_json": json.dumps(index)}
        insert = models.StudyUserAttributeModel.__table__.insert().values(**row)
        # hpo's storage takes one call at a time, so a worker keeps to one connection.
        with getattr(backend, "one_call_at_a_time", contextlib.nullcontext()):
            try:
                with backend.engine.begin() as connection:
                    connection.execute(insert)
            except sqlalchemy.exc.IntegrityError:
                pass  # another worker's index came first: compared by the caller
            except sqlalchemy.exc.DBAPIError as exc:
                raise HpoError(
                    f"study {study.study_name!r}: the storage failed while the data's "
                    f"preparation was stored ({first_line(exc.orig or exc)}); run it again"
                ) from exc
    elif KEY not in study.user_attrs:  # in-memory or journal: no second writer races this one
        study.set_user_attr(KEY, index)
    holds = study.user_attrs.get(KEY)
    if holds is None:  # the INSERT broke another constraint: the study itself is gone
        raise HpoError(f"study {study.study_name!r}: its data preparation could not be stored")
    return holds


def load(study: optuna.Study) -> dict[str, Any] | None:
    """The preparation stored by save_or_check, checked against its digest, or None for a
    study of a built-in dataset."""
    attrs = study.user_attrs
    index = attrs.get(KEY)
    if index is None:
        return None
    prefix = index.get("prefix", KEY) if isinstance(index, dict) else KEY
    try:
        text = "".join(attrs[f"{prefix}.{number}"] for number in range(index["chunks"]))
    except (KeyError, TypeError) as exc:
        raise HpoError(
            f"study {study.study_name!r}: its stored data preparation is incomplete "
            f"({first_line(exc)} is missing); it cannot prepare new rows"
        ) from exc
    if not _matches(index, _sha256(text)):
        raise HpoError(
            f"study {study.study_name!r}: its stored data preparation does not match its "
            "SHA-256 (changed in the storage after it was written); it cannot prepare new rows"
        )
    return json.loads(text)
