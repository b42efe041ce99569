"""A study's warm start: the configurations it runs first, and the finished trials it copies
from an earlier study (`hpo optimize … --warm-start OTHER_STUDY[@STORAGE_URL]`).

Both happen once per study, when it is created, and only in the process that created it:
hpo.search.study_loop.open_study asks the storage to make the study, and its unique study
name settles a race between workers (the one that lost loads the study, enqueues nothing and
copies nothing). A resume, or another worker, never adds them again.

- **Run first**: a built-in dataset's study of hpo's Dense stack runs the book's
  configuration as trial 0 (`[study] baseline = false` leaves it out), then the study file's
  `[[enqueue]]` tables, each with Optuna's `enqueue_trial`, unless a copied trial already
  ran it (`ran`: a partial table is matched on the values it gives). Each is marked with the
  user attr `enqueued` ("book", "enqueue[i]"), which the report reads to compare the search
  with the book's baseline.
- **Copied**: the COMPLETE trials of the other study whose parameters fit this study's space
  (Space.admits), with their values, curves (intermediate values), user attrs (history,
  best_epoch) and this study's distributions (Optuna refuses a parameter whose distribution
  differs from the study's other trials'). Pruned and failed trials are not copied: a pruned
  trial's value is that of an unfinished curve. Each copy holds the user attr
  `warm_start_from` (study, trial): the sampler sees it, the budget (--trials) does not count
  it (hpo.search.budget.COPIED). Its kept validation predictions are copied only when they
  are in this study's artifact store; analyze then uses them only where their rows' digest is
  this study's (hpo.train.predictions.of_rows).
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from hpo import artifacts as artifact_stores
from hpo.errors import HpoError
from hpo.search.budget import COPIED
from hpo.search.storage import open_storage, redact
from hpo.study.space import Choice, Dimension, IntRange, book_config
from hpo.study.studyfile import StudySpec

ENQUEUED = "enqueued"  # trial user attr: which configuration run first it is
BOOK = "book"  # ENQUEUED of the book's configuration
RECORD = "warm_start"  # study user attr: the study its trials were copied from, and how many
PREDICTIONS = "val_predictions"  # hpo.train.predictions.ATTR (that stage imports Keras)
# The book's models have no L2 penalty and no batch normalization: where [space] lists them
# and admits these values, the baseline trial trains without them too.
BOOK_EXTRAS: dict[str, Any] = {"l2": 0.0, "batch_norm": False}
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def book_params(spec: StudySpec) -> tuple[dict[str, Any] | None, str | None]:
    """The book's configuration for `spec`'s dataset as this study's trial parameters (only
    those its space has), or None and why not (None, None: not a built-in dataset's study of
    hpo's Dense stack, or `baseline = false`). The space is never widened to hold it."""
    if not spec.baseline or spec.data is not None or spec.model is not None:
        return None, None
    book = book_config(spec.dataset, spec.task)
    space, params = spec.space, {}
    for name in space.dims:
        value = book.get(name, BOOK_EXTRAS.get(name))
        if value is None:
            continue
        problem = space.outside(name, value)
        if problem and name in BOOK_EXTRAS:
            continue  # sampled: the book has no such parameter
        if problem:
            return None, (
                f"note: the book's configuration is not run first: its {name} {problem} of "
                "this study's space (add it to [space] to compare with the book)"
            )
        for key in space.keys(name, params):
            params[key] = value
    return params, None


def enqueue_first(study: optuna.Study, spec: StudySpec) -> list[str]:
    """Enqueue the configurations a new study runs first; the lines to print."""
    lines = []
    book, note = book_params(spec)
    if note:
        lines.append(note)
    first = [(book, BOOK)] if book else []
    first += [(params, f"enqueue[{i}]") for i, params in enumerate(spec.enqueue)]
    for params, mark in first:
        if not ran(study, params):
            study.enqueue_trial(params, user_attrs={ENQUEUED: mark})
    if first:
        what = ["the book's configuration"] if book else []
        what += [f"{len(spec.enqueue)} [[enqueue]] configuration(s)"] if spec.enqueue else []
        lines.append(f"run first: {' and '.join(what)}")
    return lines


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool | str) or isinstance(b, bool | str):
        return type(a) is type(b) and a == b
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)


def ran(study: optuna.Study, params: dict[str, Any]) -> bool:
    """Whether a trial of `study` (complete, running or waiting, a copied one included) has
    every value of `params`, a configuration to run first: it is not run again. Optuna's
    skip_if_exists compares whole parameter sets, so a partial [[enqueue]] table would run
    again beside a copied trial that ran it."""
    alive = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
    for trial in study.get_trials(deepcopy=False, states=alive):
        has = trial.system_attrs.get("fixed_params", trial.params)
        if all(key in has and _same(has[key], value) for key, value in params.items()):
            return True
    return False


@dataclass(frozen=True)
class Source:
    """The study a warm start copies from: its name and its storage's URL."""

    study: str
    url: str

    @property
    def shown(self) -> str:
        """As a line may show it: the password hidden."""
        return f"{self.study}@{redact(self.url)}"

    def record(self) -> dict[str, str]:
        """What the warm-started study records of it (RECORD): no password."""
        return {"study": self.study, "storage": redact(self.url)}


def parse_source(text: str, storage_url: str) -> Source:
    """--warm-start's OTHER_STUDY[@STORAGE_URL]; the storage defaults to this study's. The
    first @ followed by a URL's scheme:// splits them (a study name may hold an @, and a
    URL's password does)."""
    name, url = text, storage_url
    for at in re.finditer("@", text):
        if _URL.match(text, at.end()):
            name, url = text[: at.start()], text[at.end() :]
            break
    if not name.strip():
        raise HpoError("--warm-start: name the study to copy from: OTHER_STUDY[@STORAGE_URL]")
    return Source(name, url)


def open_source(source: Source) -> optuna.Study:
    """The study to copy from, or one line: an unreachable storage, no such study."""
    try:
        storage = open_storage(source.url)
    except HpoError as exc:
        raise HpoError(f"--warm-start {source.shown}: {exc}") from None
    try:
        storage.get_study_id_from_name(source.study)
    except KeyError:
        raise HpoError(
            f"--warm-start {source.shown}: no study named {source.study!r} there "
            "(hpo list shows the studies of a storage)"
        ) from None
    return optuna.load_study(study_name=source.study, storage=storage)


def check_source(
    source: Source,
    recorded: Any,
    recorded_model: Any,
    spec: StudySpec,
    model: dict[str, Any] | None,
) -> None:
    """Refuse, in one line, a study whose trials are not this study's kind: another dataset,
    another metric or direction, another model (`recorded`, `recorded_model`: its study
    attrs, read from storage: data only)."""
    where = f"--warm-start {source.shown}"
    if not isinstance(recorded, dict):
        raise HpoError(f"{where}: not a study hpo ran (it records no dataset and metric)")
    if recorded.get("dataset") != spec.dataset:
        raise HpoError(
            f"{where}: it tunes {recorded.get('dataset')}, this study {spec.dataset}: a warm "
            "start copies trials of the same dataset"
        )
    theirs = (recorded.get("metric"), recorded.get("direction"))
    if theirs != (spec.metric, spec.direction):
        raise HpoError(
            f"{where}: it ranks trials by {theirs[0]} ({theirs[1]}), this study by "
            f"{spec.metric} ({spec.direction}): their values would not compare"
        )
    their_build = recorded_model.get("build") if isinstance(recorded_model, dict) else None
    our_build = model.get("build") if model else None
    if their_build != our_build:
        shown = {None: "hpo's Dense stack"}
        raise HpoError(
            f"{where}: it trains {shown.get(their_build, their_build)}, this study "
            f"{shown.get(our_build, our_build)}: its parameters would build another model"
        )


def check_record(study: optuna.Study, source: Source) -> None:
    """A study that exists already: warm-started from `source` when it was created (nothing
    more to copy), or one line."""
    record = study.user_attrs.get(RECORD)
    name = study.study_name
    if not isinstance(record, dict):
        raise HpoError(
            f"--warm-start {source.shown}: study {name!r} exists already and was started "
            "without it; a warm start copies trials into a new study only (choose a new --study)"
        )
    if (record.get("study"), record.get("storage")) != (source.study, redact(source.url)):
        raise HpoError(
            f"--warm-start {source.shown}: study {name!r} was warm-started from "
            f"{record.get('study')}@{record.get('storage')}; a study is warm-started once "
            "(choose a new --study)"
        )


def distribution(dim: Dimension) -> BaseDistribution:
    """The distribution Space.suggest gives a parameter of `dim`."""
    if isinstance(dim, Choice):
        return CategoricalDistribution(list(dim.values))
    if isinstance(dim, IntRange):
        return IntDistribution(dim.low, dim.high, log=dim.log, step=dim.step)
    return FloatDistribution(dim.low, dim.high, log=dim.log, step=dim.step)


@dataclass
class Copied:
    """What a warm start copied: how many trials, the others by why not, and how many kept
    validation predictions this study's artifact store holds."""

    copied: int = 0
    skipped: Counter[str] | None = None
    predictions: int = 0

    def lines(self, source: Source) -> list[str]:
        skipped = self.skipped or Counter()
        why = ", ".join(f"{n} {reason}" for reason, n in skipped.most_common())
        line = f"warm start: copied {self.copied} trials from {source.shown}"
        line += f"; skipped {sum(skipped.values())}: {why}" if skipped else ""
        lines = [line]
        if self.copied:
            lines.append(
                f"warm start: {self.predictions} of them kept their validation predictions "
                "(those in this study's artifact store), for the trial ensemble"
            )
        return lines


def _skip_reason(trial: FrozenTrial, spec: StudySpec) -> str | None:
    if trial.state != TrialState.COMPLETE:
        return f"{trial.state.name.lower()} (only complete trials are copied)"
    if trial.value is None or not math.isfinite(trial.value):
        return "without a finite value"
    why = spec.space.admits(trial.params)
    if why is None:
        return None
    missing = re.fullmatch(r"parameter (\S+) is missing", why)
    if missing:
        return f"without {missing[1]} (this study's space has it)"
    return f"with {why.split('=', 1)[0]} outside this study's space"


def _kept(meta: Any, store: Any) -> bool:
    """Whether kept predictions `meta` (read from the other study) are in `store`."""
    if store is None or not isinstance(meta, dict):
        return False
    artifact_id = meta.get("artifact_id")
    if not artifact_stores.is_artifact_id(artifact_id):
        return False
    try:
        store.open_reader(artifact_id).close()
    except Exception:  # not there (another store), or unreadable: the trial keeps none
        return False
    return True


def copy(trial: FrozenTrial, spec: StudySpec, source: Source, store: Any) -> FrozenTrial:
    """A copy of `trial` (which fits `spec`'s space) for this study: its active parameters
    with this study's distributions, its value, curve and user attrs, marked COPIED."""
    space = spec.space
    params: dict[str, Any] = {}
    distributions: dict[str, BaseDistribution] = {}
    for name, dim in space.dims.items():
        for key in space.keys(name, trial.params):
            params[key] = trial.params[key]
            distributions[key] = distribution(dim)
    attrs = {k: v for k, v in trial.user_attrs.items() if k not in (PREDICTIONS, COPIED)}
    if _kept(trial.user_attrs.get(PREDICTIONS), store):
        attrs[PREDICTIONS] = trial.user_attrs[PREDICTIONS]
    attrs[COPIED] = {"study": source.study, "trial": trial.number}
    made = optuna.trial.create_trial(
        state=TrialState.COMPLETE,
        value=trial.value,
        params=params,
        distributions=distributions,
        user_attrs=attrs,
        intermediate_values=dict(trial.intermediate_values),
    )
    made.datetime_start = trial.datetime_start  # when it ran, not now: the queue's rates
    made.datetime_complete = trial.datetime_complete
    return made


def copy_trials(
    study: optuna.Study, source_study: optuna.Study, source: Source, spec: StudySpec, store: Any
) -> Copied:
    """Copy the finished trials of `source_study` that fit `spec`'s space into `study`
    (Optuna's add_trials), recorded in the study attr RECORD."""
    done = Copied(skipped=Counter())
    copies = []
    for trial in source_study.get_trials(deepcopy=False):
        reason = _skip_reason(trial, spec)
        if reason is not None:
            done.skipped[reason] += 1
            continue
        copies.append(copy(trial, spec, source, store))
        done.predictions += PREDICTIONS in copies[-1].user_attrs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.add_trials(copies)
    done.copied = len(copies)
    study.set_user_attr(
        RECORD, {**source.record(), "copied": done.copied, "skipped": dict(done.skipped)}
    )
    return done
