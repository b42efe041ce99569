"""The model a search hands over: the best trial retrained, its seeds' ensemble, or an
ensemble chosen from the search's own trials.

The third is Caruana's ensemble selection (hpo.results.selection) over the validation
predictions each trial kept at its best epoch (hpo.train.predictions): the top candidates of
the search, chosen greedily with replacement on the study's own metric, no model retrained to
choose them. Its score is reported nested (weights chosen on some validation rows, scored on
the others), beside the best single trial's under the same protocol, so neither flatters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial

from hpo.data.prepared import Prepared
from hpo.errors import HpoError
from hpo.results import selection
from hpo.study.studyfile import StudySpec
from hpo.train import predictions

HANDOVERS = ("best", "seeds", "selected")
DEFAULT = "selected"
CANDIDATES = 25  # AutoGluon's ensemble size; TabRepo saw no gain above 25
STEPS = 25
ATTR = "handover_artifacts"  # study user attr: the artifact ids of the handed-over files
FILES = {"best": "model.keras", "seeds": "ensemble.keras", "selected": "selected.keras"}


@dataclass
class Selection:
    """The ensemble chosen from the candidates' kept predictions."""

    candidates: list[FrozenTrial]  # best first: the trials whose predictions were compared
    weights: np.ndarray  # one per candidate, summing to 1
    metric: str  # what chose it: the study's metric as hpo.results.selection names it
    nested: selection.NestedScore
    rows: int  # validation rows the predictions cover

    def members(self) -> list[tuple[FrozenTrial, float]]:
        """(trial, weight) of the trials in the ensemble, heaviest first."""
        return [(self.candidates[i], w) for i, w in selection.members(self.weights)]

    def summary(self) -> dict[str, Any]:
        """JSON-ready, for the study's user attrs and params.json."""
        return {
            "members": [
                {"trial": t.number, "weight": w, "epochs": t.user_attrs["best_epoch"]}
                for t, w in self.members()
            ],
            "candidates": [t.number for t in self.candidates],
            "metric": self.metric,
            "rows": self.rows,
            "nested": {"ensemble": self.nested.ensemble, "best_single": self.nested.best_single},
            "in_sample": self.nested.in_sample,
        }


@dataclass
class Handed:
    """What analyze handed over, and what it compared it with."""

    name: str  # best | seeds | selected
    selection: Selection | None = None  # the ensemble chosen from the trials, if any
    selected_test: dict[str, float] | None = None  # its test metrics
    notes: list[str] = field(default_factory=list)  # why a handover fell back, and the like

    @property
    def file(self) -> str:
        return FILES[self.name]

    def summary(self) -> dict[str, Any]:
        selected = None
        if self.selection is not None:
            selected = {**self.selection.summary(), "test": self.selected_test}
        return {"handover": self.name, "selected": selected, "notes": self.notes}


def selection_metric(spec: StudySpec, loss: str) -> str:
    """The study's metric as a selection score: a regression val_loss is its (fixed) loss, MAE
    for huber, which is MAE-like away from zero."""
    name = spec.metric.removeprefix("val_")
    if spec.task == "regression" and name == "loss":
        return loss if loss in ("mae", "mse") else "mae"
    return name


def select(
    candidates: list[FrozenTrial], spec: StudySpec, data: Prepared, store: Any
) -> tuple[Selection | None, str | None]:
    """The ensemble chosen from `candidates` (best first), or None and why not."""
    rows = spec.validation.kept_rows(len(data.y_train))
    y = np.asarray(data.y_train[rows])
    kept, trials, missing, elsewhere = [], [], 0, 0
    for trial in candidates:
        try:
            found = predictions.fetch(trial, store)
        except HpoError:  # kept in another store: a worker's local folder on another machine
            elsewhere += 1
            continue
        if found is None or len(found) != len(y):
            missing += 1
            continue
        kept.append(found)
        trials.append(trial)
    away = (
        f"{elsewhere} of the top {len(candidates)} trials' predictions are not in this "
        "artifact store (kept on another machine? give every worker one shared --artifacts)"
    )
    if not kept:
        why = (
            away
            if elsewhere
            else (
                f"none of the top {len(candidates)} trials kept its validation predictions (run "
                "before hpo kept them, or trained with model.fit)"
            )
        )
        return None, f"{why}: no ensemble of trials"
    metric = selection_metric(spec, trials[0].params.get("loss", ""))
    score, maximize = selection.scorer(spec.task, metric)
    stacked = np.stack(kept)
    del kept  # at most the candidates' predictions are held, once
    nested = selection.nested_scores(stacked, y, score, maximize, steps=STEPS)
    notes = [away] if elsewhere else []
    if missing:
        notes.append(
            f"{missing} of the top {len(candidates)} trials kept no validation predictions"
        )
    return Selection(trials, nested.weights, metric, nested, len(y)), "; ".join(notes) or None
