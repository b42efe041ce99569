"""The storage calls Optuna has no method for: a study attr changed by compare-and-set, and
the queue's trial counts of many studies in one query.

A mixin of hpo.search.storage's ReconnectingRDBStorage (its `engine`, its `shown` URL), over
the RDB schema (hpo.optuna_private.models).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import sqlalchemy
from optuna.trial import TrialState

from hpo.errors import HpoError
from hpo.optuna_private import models

CAS_TRIES = 100  # compare-and-set attempts on a study attr before giving up (update_study_attr)


class StudyQueries:
    """Queries of an RDBStorage's tables (`engine`) that Optuna's API does not make."""

    engine: sqlalchemy.Engine
    shown: str

    def update_study_attr(
        self, study_id: int, key: str, change: Callable[[Any], Any]
    ) -> tuple[Any, bool]:
        """Change a study user attr with no lost update: read it, `change(value)` (None when
        absent) gives the new value (None: leave it), written only if the stored text is
        still what was read (compare-and-set in one UPDATE; a concurrent first write fails
        on the table's unique key), else read again and retried. Returns (the value now,
        whether this call wrote it). A writer whose value always differs (a version
        counter) is safe even where the database compares text without case."""
        table = models.StudyUserAttributeModel.__table__
        where = (table.c.study_id == study_id, table.c.key == key)
        for _ in range(CAS_TRIES):
            with self.engine.connect() as connection:
                read = sqlalchemy.select(table.c.value_json).where(*where)
                old = connection.execute(read).scalar_one_or_none()
            current = None if old is None else json.loads(old)
            value = change(current)
            if value is None:
                return current, False
            text = json.dumps(value)
            try:
                with self.engine.begin() as connection:
                    if old is None:
                        insert = sqlalchemy.insert(table)
                        connection.execute(
                            insert.values(study_id=study_id, key=key, value_json=text)
                        )
                        return value, True
                    written = connection.execute(
                        sqlalchemy.update(table)
                        .where(*where, table.c.value_json == old)
                        .values(value_json=text)
                    ).rowcount
            except sqlalchemy.exc.IntegrityError:
                continue  # another writer made it first: read theirs
            if written:
                return value, True
        raise HpoError(
            f"storage {self.shown}: study attr {key!r} kept changing under {CAS_TRIES} "
            "attempts to update it; try again"
        )

    def last_trial_id(self) -> int:
        """The newest trial's id in the whole storage (0 when none): ids are given in the
        order trials are made, by the database, so "started after" needs no clock."""
        trials = models.TrialModel.__table__
        with self.engine.connect() as connection:
            found = connection.execute(sqlalchemy.select(sqlalchemy.func.max(trials.c.trial_id)))
            return int(found.scalar() or 0)

    def trial_tally(self, study_ids: list[int], since: int) -> list[tuple]:
        """For the queue (hpo.search.queue_standing.tallies): the trials of `study_ids` grouped by
        study, state and fail_reason (JSON), each group's count and how many of it were
        started after trial id `since` (last_trial_id: the database's order, not the
        workers' clocks, which may be in other time zones). One query, whatever the number
        of studies: a worker choosing among many queued studies costs the database no more
        than one study."""
        if not study_ids:
            return []
        trials, attrs = models.TrialModel.__table__, models.TrialUserAttributeModel.__table__
        reason = sqlalchemy.and_(
            attrs.c.trial_id == trials.c.trial_id, attrs.c.key == "fail_reason"
        )
        started = sqlalchemy.and_(trials.c.trial_id > since, trials.c.state != TrialState.WAITING)
        recent = sqlalchemy.case((started, 1), else_=0)
        query = (
            sqlalchemy.select(
                trials.c.study_id,
                trials.c.state,
                attrs.c.value_json,
                sqlalchemy.func.count(),
                sqlalchemy.func.sum(recent),
            )
            .select_from(trials.outerjoin(attrs, reason))
            .where(trials.c.study_id.in_(study_ids))
            .group_by(trials.c.study_id, trials.c.state, attrs.c.value_json)
        )
        with self.engine.connect() as connection:
            return [tuple(row) for row in connection.execute(query)]


def update_study_attr(
    store: Any, study_id: int, key: str, change: Callable[[Any], Any]
) -> tuple[Any, bool]:
    """A compare-and-set of a study attr (hpo's storage: StudyQueries.update_study_attr); a
    plain Optuna storage (a test's in-memory one) has no concurrent writer to lose."""
    if hasattr(store, "update_study_attr"):
        return store.update_study_attr(study_id, key, change)
    current = store.get_study_user_attrs(study_id).get(key)
    new = change(current)
    if new is None:
        return current, False
    store.set_study_user_attr(study_id, key, new)
    return new, True
