"""The model a search hands over: the best trial retrained (`best`), its seeds' ensemble
(`seeds`), or the trial ensemble (`trial-ensemble`, the default), chosen from the search's own
trials.

The trial ensemble is Caruana's ensemble selection (hpo.results.selection) over the validation
predictions each trial kept at its best epoch (hpo.train.predictions): the top candidates of
the search, chosen greedily with replacement on the study's own metric, no model retrained to
choose them. Its score is reported nested (weights chosen on some validation rows, scored on
the others), beside the best single trial's under the same protocol, so neither flatters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial

from hpo.data.arrays import Prepared
from hpo.errors import HpoError
from hpo.results import selection
from hpo.study.studyfile import StudySpec
from hpo.train import predictions

# The three models analyze can hand over, by the name --handover gives them: the best trial
# retrained, its seeds' ensemble, and the trial ensemble (several trials, chosen as above).
HANDOVERS = ("best", "seeds", "trial-ensemble")
ALIASES = {"selected": "trial-ensemble"}  # its name before issue 36, still accepted
# The measurements (docs/results.md#handover) justify the trial ensemble over the seeds'.
DEFAULT = "trial-ensemble"
CANDIDATES = 25  # AutoGluon's ensemble size; TabRepo saw no gain above 25
STEPS = 25
ATTR = "handover_artifacts"  # study user attr: the artifact ids of the handed-over files
FILES = {
    "best": "model.keras",
    "seeds": "seed-ensemble.keras",
    "trial-ensemble": "trial-ensemble.keras",
}
# What earlier hpo wrote for the seeds' ensemble and the trial ensemble: still loaded.
OLD_FILES = {"seeds": "ensemble.keras", "trial-ensemble": "selected.keras"}


def canonical(name: str) -> str:
    """A --handover name as hpo now calls it: `selected` is the trial ensemble's old name."""
    return ALIASES.get(name, name)


# In every report folder analyze writes: the study it is of and the files hpo wrote there.
# analyze replaces only a folder so marked, holding only those files; predict trusts the
# storage's record of a report folder only when the folder is so marked for that study.
MARK = ".hpo-report.json"


def mark(folder: Path, study: str) -> None:
    """Mark `folder` as hpo's report of `study`, listing the files in it now."""
    written = sorted(p.name for p in folder.iterdir())
    (folder / MARK).write_text(json.dumps({"study": study, "files": written}, indent=1))


def read_mark(folder: Path) -> dict[str, Any]:
    """The mark of a report folder hpo wrote ({"study", "files"}); {} when there is none."""
    try:
        found = json.loads((folder / MARK).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(found, dict):
        return {}
    return found


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

    name: str  # best | seeds | trial-ensemble
    selection: Selection | None = None  # the trial ensemble, if one was built
    trial_ensemble_test: dict[str, float] | None = None  # its test metrics
    notes: list[str] = field(default_factory=list)  # why a handover fell back, and the like

    @property
    def file(self) -> str:
        return FILES[self.name]

    def summary(self) -> dict[str, Any]:
        selected = None
        if self.selection is not None:
            selected = {**self.selection.summary(), "test": self.trial_ensemble_test}
        # (records written before issue 36 name this key "selected")
        return {"handover": self.name, "trial_ensemble": selected, "notes": self.notes}


def selection_metric(spec: StudySpec, loss: str) -> str:
    """The study's metric as a selection score: a regression val_loss is its (fixed) loss, MAE
    for huber, which is MAE-like away from zero."""
    name = spec.metric.removeprefix("val_")
    if spec.task == "regression" and name == "loss":
        return loss if loss in ("mae", "mse") else "mae"
    return name


def choose_ensemble(
    candidates: list[FrozenTrial], spec: StudySpec, data: Prepared, store: Any
) -> tuple[Selection | None, str | None]:
    """The ensemble chosen from `candidates` (best first), or None; and a note on the trials
    left out (no predictions kept, kept of other rows, kept in another store)."""
    rows = spec.validation.kept_rows(len(data.y_train))
    y = np.asarray(data.y_train[rows])
    of_rows = {"validation": str(spec.validation), "targets": predictions.rows_digest(y)}
    kept, trials = [], []
    left_out = {"none": 0, "other rows": 0, "elsewhere": 0}
    for trial in candidates:
        if predictions.ATTR not in trial.user_attrs:
            left_out["none"] += 1
        elif not predictions.of_rows(trial, of_rows):
            left_out["other rows"] += 1
        else:
            try:
                kept.append(predictions.fetch(trial, store))
                trials.append(trial)
            except HpoError:  # kept in another store: a worker's own folder on another machine
                left_out["elsewhere"] += 1
    notes = [
        f"{count} of the top {len(candidates)} trials {WHY[reason]}"
        for reason, count in left_out.items()
        if count
    ]
    if not kept:
        return None, "; ".join(notes) + ": no trial ensemble"
    metric = selection_metric(spec, trials[0].params.get("loss", ""))
    score, maximize = selection.scorer(spec.task, metric)
    try:
        nested = selection.nested_scores(np.stack(kept), y, score, maximize, steps=STEPS)
    except HpoError as exc:  # e.g. fewer validation rows than the nested score's 5 parts
        return None, f"{exc}: no trial ensemble"
    return Selection(trials, nested.weights, metric, nested, len(y)), "; ".join(notes) or None


WHY = {
    "none": "kept no validation predictions (run before hpo kept them, or through model.fit)",
    "other rows": "kept predictions of other rows (the study's validation or data changed since)",
    "elsewhere": "kept their predictions in another artifact store (on another machine? give "
    "every worker one shared --artifacts)",
}
