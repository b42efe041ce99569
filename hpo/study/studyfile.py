"""Study files (studies/*.toml): parse and validate them into a StudySpec.

Every problem is reported as one line naming the file, the key and why, e.g.
`my.toml: study.metric: val_acc is not a metric hpo records (use val_accuracy or val_loss)`.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hpo.data.builtin import DATASET_TASKS
from hpo.data.keras_files import BUILTIN
from hpo.data.own import infer_task, training_rows
from hpo.data.spec import TASKS, DataSpec, Source, Validation, parse_table
from hpo.errors import HpoError
from hpo.study import algorithms
from hpo.study.model_code import ModelCode, parse_model
from hpo.study.space import Space, book_config, parse_space, table_max_epochs, table_space

METRICS = {
    "binary": {"val_accuracy": "maximize", "val_loss": "minimize"},
    "multiclass": {"val_accuracy": "maximize", "val_loss": "minimize"},
    "regression": {"val_mae": "minimize", "val_mse": "minimize", "val_loss": "minimize"},
}
STUDY_KEYS = {
    "name",
    "dataset",
    "task",
    "metric",
    "direction",
    "max_epochs",
    "validation",
    "num_words",
    "seed",
    "smooth_epochs",
    "patience",
    "input",
    "maxlen",
    "baseline",
}
# The inputs each built-in dataset can be fed as: "vectors", the book's chapter-3 input
# (multi-hot words, flat pixels, standardized columns), first; then word ids padded or cut to
# `maxlen` (chapter 11's sequence models), or 28x28x1 pixels (chapter 8's convnets).
INPUTS = {
    "imdb": ("vectors", "sequence"),
    "reuters": ("vectors", "sequence"),
    "mnist": ("vectors", "image"),
    "boston_housing": ("vectors",),
}
DEFAULT_MAXLEN = 500


@dataclass(frozen=True)
class StudySpec:
    name: str
    dataset: str
    task: str
    metric: str
    direction: str
    max_epochs: int
    validation: Validation
    space: Space
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe"})
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "median"})
    num_words: int = 10000
    seed: int | None = None
    smooth_epochs: int = 1  # rank trials by their validation curve averaged over this many epochs
    patience: int = 0  # a trial stops this many epochs after its best one; 0: it trains on
    path: str = ""
    data: DataSpec | None = None  # the user's own file ([data]); None: a built-in dataset
    model: ModelCode | None = None  # [model] build = "module:function"; None: hpo's Dense stack
    input: str = "vectors"  # how a built-in dataset is fed (INPUTS)
    maxlen: int | None = None  # input "sequence": word ids per sample, padded or cut
    # [[enqueue]]: configurations (full or partial: the rest is sampled) a new study runs
    # first, each checked against the space; hpo.search.warm_start enqueues them.
    enqueue: tuple[dict[str, Any], ...] = ()
    baseline: bool = True  # a built-in dataset's study runs the book's configuration first

    @property
    def source(self) -> Source:
        """What the data stage needs to know of this study."""
        return Source(
            self.dataset, self.validation, self.num_words, self.data, self.input, self.maxlen
        )

    def with_overrides(self, **changes: Any) -> StudySpec:
        """A copy with CLI options applied; None means 'keep the file's value'."""
        changes = {key: value for key, value in changes.items() if value is not None}
        for part in ("sampler", "pruner"):
            if part in changes:  # a new algorithm starts from its defaults, not the file's options
                name = changes[part]
                current = getattr(self, part)
                changes[part] = current if current["name"] == name else {"name": name}
        if "max_epochs" in changes and changes["max_epochs"] < 1:
            raise HpoError(f"--max-epochs must be at least 1, got {changes['max_epochs']}")
        if "patience" in changes and changes["patience"] < 0:
            raise HpoError(f"--patience must be at least 0, got {changes['patience']}")
        spec = replace(self, **changes)
        algorithms.check(spec.sampler, spec.pruner, spec.max_epochs, source="options")
        return spec


def studies_dir() -> Path:
    env = os.environ.get("HPO_STUDIES_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "studies"


def builtin_studies() -> list[Path]:
    return sorted(studies_dir().glob("*.toml"))


def resolve(target: str) -> Path:
    """A dataset name or a path to a study file → the study file's path."""
    path = Path(target).expanduser()
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise HpoError(f"{target}: no such study file")
        return path
    builtin = studies_dir() / f"{target}.toml"
    if builtin.is_file():
        return builtin
    known = ", ".join(p.stem for p in builtin_studies()) or ", ".join(BUILTIN)
    raise HpoError(f"unknown dataset {target!r} (built in: {known}; or pass a STUDY.toml path)")


def _require(table: dict, key: str, source: str, kind: type | tuple, what: str) -> Any:
    if key not in table:
        raise HpoError(f"{source}: study.{key}: missing ({what})")
    value = table[key]
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise HpoError(f"{source}: study.{key}: must be {what}, got {value!r}")
    return value


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise HpoError(f"{path}: not valid TOML ({exc})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise HpoError(f"{path}: cannot read ({exc})") from exc


def load(target: str, own_model: bool = False) -> StudySpec:
    """The study file of `target`; `own_model`: a build function is passed from Python
    (hpo.optimize(build=fn)), so the file needs no [model] table for its own [space] names
    or sequence input."""
    path = resolve(target)
    return parse(_read(path), str(path), own_model=own_model)


@dataclass(frozen=True)
class Identity:
    """Which study a study file names, and on what data, known without reading the data."""

    name: str
    dataset: str
    own_data: bool  # a [data] table: the user's own file


def identity(target: str) -> Identity:
    """The study name and dataset of `target`: what `hpo predict` needs, so it works where the
    training file is not (the preparation is stored with the study)."""
    path = resolve(target)
    doc = _read(path)
    study, data_table = doc.get("study"), doc.get("data")
    study = study if isinstance(study, dict) else {}
    name = study.get("name", path.stem)
    if isinstance(data_table, dict):
        return Identity(str(name), Path(str(data_table.get("train", ""))).name, True)
    return Identity(str(name), str(study.get("dataset", "")), False)


@dataclass(frozen=True)
class Known:
    """What parsing a [data] study needs of its training file, known without it: a queued
    study's record says what `hpo submit` found (hpo.search.queue), so a worker on another
    machine never reads the submitter's file."""

    task: str  # as inferred from, or checked against, the target column
    rows: int  # training rows, the test rows held out


def parse(
    doc: dict[str, Any], source: str, known: Known | None = None, own_model: bool = False
) -> StudySpec:
    """A study file's TOML → StudySpec. For own data the task and the training rows are read
    from the file (its [data] table), unless `known` gives them."""
    allowed_tables = {"study", "space", "sampler", "pruner", "data", "model", "enqueue"}
    unknown_tables = set(doc) - allowed_tables
    if unknown_tables:
        raise HpoError(
            f"{source}: unknown table [{sorted(unknown_tables)[0]}] "
            "(allowed: study, data, model, space, sampler, pruner, [[enqueue]])"
        )
    study = doc.get("study")
    if not isinstance(study, dict):
        raise HpoError(f"{source}: missing [study] table")
    unknown = set(study) - STUDY_KEYS
    if unknown:
        raise HpoError(
            f"{source}: study.{sorted(unknown)[0]}: unknown key "
            f"(allowed: {', '.join(sorted(STUDY_KEYS))})"
        )

    table = None
    if "data" in doc:
        table = _own_data(doc["data"], study, source)
        dataset = table.train.name
        task = known.task if known else infer_task(table)
        if task not in METRICS:
            raise HpoError(f"{source}: study.task: must be one of {', '.join(TASKS)}, got {task!r}")
    else:
        dataset, task = _builtin(study, source)

    metrics = METRICS[task]
    metric = study.get("metric", next(iter(metrics)))
    if metric not in metrics:
        raise HpoError(
            f"{source}: study.metric: {metric!r} is not a metric hpo records for a "
            f"{task} task (use {' or '.join(metrics)})"
        )
    direction = study.get("direction", metrics[metric])
    if direction not in ("maximize", "minimize"):
        raise HpoError(
            f"{source}: study.direction: must be maximize or minimize, got {direction!r}"
        )
    if direction != metrics[metric]:
        raise HpoError(
            f"{source}: study.direction: {metric} must be {metrics[metric]}d, not {direction}d"
        )

    try:
        default = "first:20%" if table else "first:10000"
        validation = Validation.parse(study.get("validation", default))
    except ValueError as exc:
        raise HpoError(f"{source}: study.validation: {exc}") from exc
    # Your own table: what the file leaves out of [space] and max_epochs is scaled to its rows.
    if table is None:
        rows = None
    else:
        rows = _fitting_rows(known.rows if known else training_rows(table), validation)
    max_epochs = study.get("max_epochs", 20 if rows is None else table_max_epochs(rows))
    if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
        raise HpoError(
            f"{source}: study.max_epochs: must be a positive integer, got {max_epochs!r}"
        )
    num_words = study.get("num_words", 10000)
    if isinstance(num_words, bool) or not isinstance(num_words, int) or num_words < 4:
        raise HpoError(f"{source}: study.num_words: must be an integer ≥ 4, got {num_words!r}")
    seed = study.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise HpoError(f"{source}: study.seed: must be an integer, got {seed!r}")
    smooth_epochs = study.get("smooth_epochs", 1)
    if (
        isinstance(smooth_epochs, bool)
        or not isinstance(smooth_epochs, int)
        or not 1 <= smooth_epochs <= max_epochs
    ):
        raise HpoError(
            f"{source}: study.smooth_epochs: must be an integer from 1 to max_epochs "
            f"({max_epochs}), got {smooth_epochs!r}"
        )
    patience = study.get("patience", 0)
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
        raise HpoError(
            f"{source}: study.patience: must be an integer ≥ 0 (0: no early stop), got {patience!r}"
        )
    model = parse_model(doc["model"], source) if "model" in doc else None
    kind, maxlen = _input(study, dataset if table is None else None, model or own_model, source)
    name = study.get("name", Path(source).stem)
    if not isinstance(name, str) or not name.strip():
        raise HpoError(f"{source}: study.name: must be a non-empty string, got {name!r}")

    # What [space] leaves out: the book's model for a built-in dataset; searched for your own.
    defaults = book_config(dataset, task) if rows is None else table_space(rows)
    custom = model is not None or own_model
    space = parse_space(doc.get("space", {}), task, source, defaults, custom=custom)
    if metric == "val_loss" and "loss" in space.searched():
        raise HpoError(
            f"{source}: study.metric: val_loss is not comparable across trials when "
            f"space.loss has several choices (use {next(iter(metrics))})"
        )

    enqueue = _enqueue(doc.get("enqueue", []), space, source)
    baseline = study.get("baseline", True)
    if not isinstance(baseline, bool):
        raise HpoError(f"{source}: study.baseline: must be true or false, got {baseline!r}")

    sampler = _algorithm(doc, "sampler", source, "tpe")
    pruner = _algorithm(doc, "pruner", source, "median")
    algorithms.check(sampler, pruner, max_epochs, source)
    return StudySpec(
        name=name,
        dataset=dataset,
        task=task,
        metric=metric,
        direction=direction,
        max_epochs=max_epochs,
        validation=validation,
        space=space,
        sampler=sampler,
        pruner=pruner,
        num_words=num_words,
        seed=seed,
        smooth_epochs=smooth_epochs,
        patience=patience,
        path=source,
        data=table,
        model=model,
        input=kind,
        maxlen=maxlen,
        enqueue=enqueue,
        baseline=baseline,
    )


def _enqueue(tables: Any, space: Space, source: str) -> tuple[dict[str, Any], ...]:
    """[[enqueue]] tables → the configurations a new study runs first. Each key must be a
    parameter of the space (name_1 … for a per-layer one) and its value one a trial may draw:
    Optuna would otherwise fail the trial (a choice it lacks) or run a value the space never
    offers. Keys left out are sampled."""
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise HpoError(
            f"{source}: enqueue: must be [[enqueue]] tables of parameter = value, "
            'e.g. [[enqueue]] units = 64 optimizer = "adam" (one per line)'
        )
    return tuple(_enqueued(table, i, space, source) for i, table in enumerate(tables))


def _enqueued(table: dict[str, Any], index: int, space: Space, source: str) -> dict[str, Any]:
    where = f"{source}: enqueue[{index}]"
    if not table:
        raise HpoError(f"{where}: empty: give at least one parameter = value")
    for key, value in table.items():
        name, layer = key, None
        found = re.fullmatch(r"(.+)_([1-9][0-9]*)", key)
        if key not in space.dims and found and found[1] in space.per_layer:
            name, layer = found[1], int(found[2])
        if name not in space.dims:
            known = ", ".join(space.dims)
            raise HpoError(f"{where}.{key}: not a parameter of this study (its space: {known})")
        if layer is None and name in space.per_layer:
            raise HpoError(f"{where}.{key}: {key} is per-layer: give {key}_1, {key}_2 …")
        problem = space.outside(name, value)
        if problem:
            raise HpoError(f"{where}.{key}: {problem}")
        layers = table.get("layers")
        if layer is not None and isinstance(layers, int) and layer > layers:
            raise HpoError(f"{where}.{key}: the table's layers is {layers}: no layer {layer}")
        for parent, values in space.when.get(name, {}).items():
            if parent in table and table[parent] not in values:
                shown = " or ".join(map(repr, values))
                raise HpoError(
                    f"{where}.{key}: absent where {parent} = {table[parent]!r} (its when: "
                    f"{parent} = {shown})"
                )
    return dict(table)


def _input(
    study: dict, dataset: str | None, own_model: ModelCode | bool | None, source: str
) -> tuple[str, int | None]:
    """[study] input and maxlen, checked against the dataset (None: your own table)."""
    kinds = INPUTS.get(dataset, ("vectors",)) if dataset else ("vectors",)
    kind = study.get("input", "vectors")
    if kind not in kinds:
        what = f"{dataset} is fed as" if dataset else "your own table is fed as"
        raise HpoError(f"{source}: study.input: {what} {' or '.join(kinds)}, not {kind!r}")
    if kind == "sequence" and not own_model:
        raise HpoError(
            f"{source}: study.input: word-id sequences need your own model "
            '([model] build = "module:function"); hpo\'s Dense stack takes "vectors"'
        )
    if "maxlen" in study and kind != "sequence":
        raise HpoError(f'{source}: study.maxlen: only for input = "sequence"')
    maxlen = study.get("maxlen", DEFAULT_MAXLEN) if kind == "sequence" else None
    if maxlen is not None and (
        isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 1
    ):
        raise HpoError(f"{source}: study.maxlen: must be a positive integer, got {maxlen!r}")
    return kind, maxlen


def _fitting_rows(total: int, validation: Validation) -> int:
    """The rows one trial fits its model on: the training rows less the validation ones."""
    held = total // validation.n if validation.kind == "kfold" else validation.holdout(total)
    return max(1, total - held)


def _builtin(study: dict, source: str) -> tuple[str, str]:
    """A built-in dataset's name and task, checked against what the file states."""
    builtin = ", ".join(BUILTIN)
    dataset = _require(study, "dataset", source, str, f"one of {builtin}, or a [data] table")
    if dataset not in BUILTIN:
        raise HpoError(
            f"{source}: study.dataset: unknown dataset {dataset!r} (built in: {builtin}; "
            "for your own file, a [data] table)"
        )
    task = study.get("task", DATASET_TASKS[dataset])
    if task not in TASKS:
        raise HpoError(f"{source}: study.task: must be one of {', '.join(TASKS)}, got {task!r}")
    if task != DATASET_TASKS[dataset]:
        raise HpoError(
            f"{source}: study.task: {dataset} is a {DATASET_TASKS[dataset]} dataset, not {task}"
        )
    return dataset, task


def _own_data(table: Any, study: dict, source: str) -> DataSpec:
    """The [data] table of a study on the user's own file; the task stated in [study], if any."""
    if not isinstance(table, dict):
        raise HpoError(f"{source}: [data] must be a table")
    if "dataset" in study:
        raise HpoError(
            f"{source}: study.dataset: a study tunes either a built-in dataset or the [data] "
            "table's file, not both"
        )
    task = study.get("task")
    if task is not None and task not in TASKS:
        raise HpoError(f"{source}: study.task: must be one of {', '.join(TASKS)}, got {task!r}")
    spec = parse_table(table, source, Path(source).resolve().parent)
    return replace(spec, task=task)


def _algorithm(doc: dict, part: str, source: str, default: str) -> dict[str, Any]:
    table = doc.get(part, {})
    if not isinstance(table, dict):
        raise HpoError(f"{source}: [{part}] must be a table")
    return {"name": default, **table}
